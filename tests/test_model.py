"""Our decoder against transformers' LlamaForCausalLM (fp32, max abs error 1e-4)."""

import pytest
import torch

from conftest import CONFIGS, hf_pair

TOL = 1e-4


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_prefill_decode_and_verify_after_rollback_match_hf(name):
    hf, ours = hf_pair(name)
    ids = torch.randint(0, 96, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
        ours.setup_cache(64)
        prefill = ours(ids=ids[:, :16])
        assert (prefill - ref[:, :16]).abs().max() < TOL
        step = ours(ids=ids[:, 16:17])  # one-token decode
        assert (step - ref[:, 16:17]).abs().max() < TOL
        ours(ids=torch.randint(0, 96, (1, 5)))  # a rejected draft block: 5 wrong tokens written...
        ours.rollback(17)  # ...and forgotten
        verify = ours(ids=ids[:, 17:24])  # a multi-token verify over the stale slots
        assert (verify - ref[:, 17:24]).abs().max() < TOL
        assert int(ours.length) == 24


def test_cache_slots_round_up_to_aligned_rows_and_compute_the_same():
    """setup_cache rounds its slots up to a multiple of 8 (16-byte rows of attention scores in bf16: cuBLAS's aligned
    kernels); the extra slots are masked like any unused ones, so a step over 24 slots equals one over exactly 17."""
    hf, ours = hf_pair("gqa")
    ids = torch.randint(0, 96, (1, 17), generator=torch.Generator().manual_seed(2))
    out = {}
    with torch.no_grad():
        for align in (8, 1):
            ours.setup_cache(17, align=align)
            out[align] = (ours.max_len, ours.model.layers[0].self_attn.kv_cache.k.shape[2],
                          ours(ids=ids[:, :12]), ours(ids=ids[:, 12:]))
    assert out[8][:2] == (24, 24) and out[1][:2] == (17, 17)
    assert all((a - b).abs().max() < TOL for a, b in zip(out[8][2:], out[1][2:]))


def test_inputs_embeds_equal_token_ids():
    hf, ours = hf_pair("gqa")
    ids = torch.randint(0, 96, (1, 10))
    with torch.no_grad():
        ours.setup_cache(16)
        a = ours(ids=ids)
        ours.rollback(0)
        b = ours(embeds=ours.embed(ids))
        ref = hf(inputs_embeds=hf.model.embed_tokens(ids)).logits
    assert torch.equal(a, b) and (b - ref).abs().max() < TOL


def test_batch_rows_with_their_own_lengths():
    """Two rows at different lengths give each row's single-sequence logits."""
    hf, ours = hf_pair("gqa")
    a, b = torch.randint(0, 96, (1, 12)), torch.randint(0, 96, (1, 12))
    with torch.no_grad():
        ref_a, ref_b = hf(a).logits, hf(b).logits
        ours.setup_cache(32, batch=2)
        ours(ids=torch.cat([a[:, :8], b[:, :8]]))
        ours.rollback(torch.tensor([8, 5]))  # row 1 keeps only 5 tokens
        out = ours(ids=torch.cat([a[:, 8:11], b[:, 5:8]]))
    assert (out[0] - ref_a[0, 8:11]).abs().max() < TOL
    assert (out[1] - ref_b[0, 5:8]).abs().max() < TOL


def test_tree_verification_with_positions_and_mask():
    """Two branches after a shared prefix, verified in one forward with a tree mask, equal each branch alone."""
    hf, ours = hf_pair("mha")
    prefix = torch.randint(0, 96, (1, 6))
    br1, br2 = torch.tensor([[5, 7]]), torch.tensor([[9, 11]])
    with torch.no_grad():
        ref1 = hf(torch.cat([prefix, br1], 1)).logits[:, 6:]
        ref2 = hf(torch.cat([prefix, br2], 1)).logits[:, 6:]
        ours.setup_cache(16)
        ours(ids=prefix)
        mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)[None]
        out = ours(ids=torch.cat([br1, br2], 1), positions=torch.tensor([[6, 7, 6, 7]]), tree_mask=mask)
    assert (out[:, :2] - ref1).abs().max() < TOL
    assert (out[:, 2:] - ref2).abs().max() < TOL


def test_rope_frequencies_stay_float32_under_a_dtype_change():
    _, ours = hf_pair("llama3")
    ref = ours.inv_freq.clone()
    ours = ours.to(torch.bfloat16)
    assert ours.inv_freq.dtype == torch.float32 and torch.equal(ours.inv_freq, ref)
    assert ours.lm_head.weight.dtype == torch.bfloat16


def test_compiled_steps_regional_and_whole_match_eager():
    """compile_steps' regional graph (one layer compiled, stamped out for all) and the whole-model graph compute the
    eager step: a decode and a tree verify after a prefill (torch.compile on the CPU: inductor, no CUDA graphs)."""
    hf, ours = hf_pair("gqa")
    ids = torch.randint(0, 96, (1, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)[None]
    tree = dict(positions=torch.tensor([[11, 12, 12]]), tree_mask=mask)
    with torch.no_grad():
        ours.setup_cache(32)
        ours(ids=ids[:, :10])
        ref = [ours(ids=ids[:, 10:11]), ours(ids=torch.tensor([[3, 4, 5]]), **tree)]
        for regional in (True, False):
            ours.compile_steps(fuse=regional, regional=regional)  # fuse once: the second call keeps the fused layers
            ours.rollback(10)
            got = [ours.step(ids[:, 10:11]).clone(), ours.step(torch.tensor([[3, 4, 5]]), **tree).clone()]
            assert all((g - r).abs().max() < TOL for g, r in zip(got, ref)), regional
            assert int(ours.length) == 14
