"""Weight-only int8 and int4 drafts: where decoding is memory-bound (a GPU at batch 1) a step costs about its weight
bytes, so a draft in int8 steps up to 2x and in int4 up to 4x faster than in bf16. The output cannot change: the
target verifies every token; only α (how often the quantized draft still agrees) and c move.

gpt-fast's schemes: int8 per output channel, symmetric (dequantized inside one fused kernel under torch.compile);
int4 per group of ``group`` input channels, asymmetric (w = q·scale + min, q in 0..15), packed for aten's tinygemm
kernel (``_weight_int4pack_mm``; its ``_for_cpu`` twin on a CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import Decoder

aten = torch.ops.aten
FEW_ROWS = 8  # up to this many tokens an int8 matmul is done as a fused multiply-and-sum


class Int8Linear(nn.Module):
    """``nn.Linear`` without bias, int8 weights and one scale per output channel."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        scale = w.float().abs().amax(1).clamp(min=1e-8) / 127
        self.register_buffer("weight", (w.float() / scale[:, None]).round().clamp(-128, 127).to(torch.int8))
        self.register_buffer("scales", scale.to(w.dtype))

    def dequantized(self) -> Tensor:
        return self.weight.float() * self.scales.float()[:, None]

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() // x.shape[-1] <= FEW_ROWS:
            # a decode or draft step: multiply-and-sum, which torch.compile fuses into one pass over the int8
            # weights (as a matmul, it would first write the dequantized weights out: a 7B step took 55 ms on an H200)
            return (x[..., None, :] * self.weight.to(x.dtype)).sum(-1) * self.scales
        return F.linear(x, self.weight.to(x.dtype)) * self.scales


class Int4Linear(nn.Module):
    """``nn.Linear`` without bias, 4-bit weights in groups of ``group`` input channels (scale and min per group)."""

    def __init__(self, linear: nn.Linear, group: int = 128, inner_k_tiles: int = 8):
        super().__init__()
        w = linear.weight.detach().float()
        n, k = w.shape
        if k % group or k % (inner_k_tiles * 16) or n % 8:
            raise ValueError(f"int4: a {n}x{k} weight; expected in_features divisible by the group ({group}) and by "
                             f"{inner_k_tiles * 16}, out_features by 8")
        g = w.reshape(n, k // group, group)
        lo, hi = g.amin(-1), g.amax(-1)
        scale = (hi - lo).clamp(min=1e-6) / 15
        q = ((g - lo[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.int32).reshape(n, k)
        self.group, self.in_features, self.out_features, self.cpu = group, k, n, w.device.type == "cpu"
        dtype = torch.float32 if self.cpu else torch.bfloat16  # tinygemm on CUDA takes bf16 activations
        # [k / group, n, 2]: (scale, min + 8 scale), the layout both kernels read
        self.register_buffer("scales_and_zeros", torch.stack([scale, lo + 8 * scale], -1).transpose(0, 1).contiguous().to(dtype))
        packed = (aten._convert_weight_to_int4pack_for_cpu(q, inner_k_tiles) if self.cpu
                  else aten._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), inner_k_tiles))
        self.register_buffer("weight", packed)

    def dequantized(self) -> Tensor:
        """The weight the kernel multiplies by (its product with the identity)."""
        eye = torch.eye(self.in_features, device=self.weight.device, dtype=self.scales_and_zeros.dtype)
        return self(eye).float().T

    def forward(self, x: Tensor) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1]).to(self.scales_and_zeros.dtype)
        mm = aten._weight_int4pack_mm_for_cpu if self.cpu else aten._weight_int4pack_mm
        return mm(x2, self.weight, self.group, self.scales_and_zeros).reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def quantize(decoder: Decoder, bits: int, group: int = 128) -> Decoder:
    """Every projection of ``decoder`` and its LM head as int8 or int4 weights, in place (projections fused first:
    one quantized matmul for q/k/v, one for gate/up). The embeddings and norms stay as they are."""
    if bits not in (4, 8):
        raise ValueError(f"bits={bits}; expected 8 or 4")
    make = Int8Linear if bits == 8 else lambda lin: Int4Linear(lin, group)
    for layer in decoder.model.layers:
        layer.self_attn.fuse()
        layer.mlp.fuse()
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    if child.bias is not None:
                        raise ValueError(f"{name}: a projection with a bias; weight-only quantization here has none")
                    setattr(parent, name, make(child))
    decoder.lm_head = make(decoder.lm_head)
    return decoder
