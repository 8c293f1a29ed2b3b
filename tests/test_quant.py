"""Weight-only int8 / int4 drafts: each quantized matmul is the matmul by its dequantized weight, the weights stay
close to the float ones, and a quantized draft leaves the target's greedy output unchanged (CPU kernels)."""

import copy

import pytest
import torch
from torch import nn

from conftest import assert_lossless
from imuspec.model import Decoder, LlamaConfig
from imuspec.quant import Int4Linear, Int8Linear, quantize

CFG = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)


@pytest.mark.parametrize("make, tol", [(Int8Linear, 0.01), (lambda lin: Int4Linear(lin, 32), 0.1)])
def test_quantized_linear_is_its_dequantized_weight_close_to_the_float_one(make, tol):
    torch.manual_seed(0)
    lin = nn.Linear(256, 64, bias=False)
    q = make(lin)
    x = torch.randn(5, 256)
    w = q.dequantized()
    assert (q(x) - x @ w.T).abs().max() < 1e-4 * (x @ w.T).abs().max()
    assert (w - lin.weight).norm() / lin.weight.norm() < tol


def test_int4_refuses_a_shape_its_kernel_cannot_pack():
    with pytest.raises(ValueError, match="divisible"):
        Int4Linear(nn.Linear(96, 64, bias=False), 32)


@pytest.mark.parametrize("bits, min_alpha", [(8, 0.9), (4, 0.5)])
def test_a_quantized_copy_of_the_target_drafts_losslessly(bits, min_alpha):
    torch.manual_seed(1)
    target = Decoder(CFG).eval()
    draft = quantize(copy.deepcopy(target), bits, group=32)
    assert isinstance(draft.lm_head, Int8Linear if bits == 8 else Int4Linear) and draft.dtype == torch.float32
    prompt = torch.randint(3, 256, (12,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        stats = assert_lossless(target, prompt, draft, prompt, max_new_tokens=24, gamma=4)
    assert stats.alpha_token > min_alpha  # quantization noise, not another model
