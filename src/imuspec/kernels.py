"""A split-K decode attention kernel in Triton (flash-decoding) for the few-query steps on a GPU.

Why: ``few_query_attention`` reads the whole static cache and takes five kernels a layer (two batched GEMVs, mask,
softmax, casts): 0.35 ms of a 4.9 ms Vicuna-7B step on an H200, where the valid K/V bytes need ~0.05 ms. Here each
program reads one chunk of one KV head's valid slots only (``n_valid``, per row), the query heads of its group and
the T new tokens stacked as rows of one tile; the chunks' partial softmaxes are merged afterwards (a few small
elementwise ops that torch.compile fuses). The mask still applies inside the valid range (causal block, trees).
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the model falls back to few_query_attention
    triton = None

BLOCK_N = 64  # cache slots per inner iteration
MAX_ROWS = 64  # query rows (group heads × new tokens) one tile holds


def available(device: torch.device) -> bool:
    return triton is not None and device.type == "cuda"


if triton is not None:

    @triton.jit
    def _split_kernel(Q, K, V, M, NV, O, ML,
                      sqb, sqh, sqt, skb, skh, sks, svb, svh, svs, smb, smt, sms,
                      sob, soh, sos, som, slb, slh, sls,
                      scale, n_kv, T, chunk,
                      G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
        bh, split = tl.program_id(0), tl.program_id(1)
        b, kvh = bh // n_kv, bh % n_kv
        r = tl.arange(0, BLOCK_M)  # row = g * T + t
        g, t = r // T, r % T
        row_ok = r < G * T
        d = tl.arange(0, D)
        q = tl.load(Q + b * sqb + (kvh * G + g)[:, None] * sqh + t[:, None] * sqt + d[None, :],
                    mask=row_ok[:, None], other=0.0)
        n_valid = tl.load(NV + b).to(tl.int32)
        lo = split * chunk
        hi = tl.minimum(lo + chunk, n_valid)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        for start in range(lo, hi, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            n_ok = n < hi
            k = tl.load(K + b * skb + kvh * skh + n[:, None] * sks + d[None, :], mask=n_ok[:, None], other=0.0)
            s = (tl.dot(q, tl.trans(k)) * scale).to(tl.float32)  # inductor passes the scale as fp64
            keep = tl.load(M + b * smb + t[:, None] * smt + n[None, :] * sms, mask=n_ok[None, :], other=0)
            s = tl.where(keep != 0, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_safe[:, None])
            a = tl.exp(m_i - m_safe)
            l_i = l_i * a + tl.sum(p, 1)
            v = tl.load(V + b * svb + kvh * svh + n[:, None] * svs + d[None, :], mask=n_ok[:, None], other=0.0)
            acc = acc * a[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        base = O + b * sob + kvh * soh + split * sos
        tl.store(base + r[:, None] * som + d[None, :], acc)
        lb = ML + b * slb + kvh * slh + split * sls
        tl.store(lb + r, m_i)
        tl.store(lb + BLOCK_M + r, l_i)


def multiprocessors(device: torch.device) -> int:
    """The GPU's multiprocessor count, read once outside compiled code (which cannot query the device)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


def decode_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, n_valid: Tensor, sms: int) -> Tensor:
    """Attention of q [B, H, T, D] over the cache k, v [B, H_kv, S, D], reading only slots < ``n_valid`` [B] of each
    row, ``mask`` [B, T, S] (bool) inside them; the same function as ``few_query_attention``. The slots are split
    into enough chunks for ~4 waves of the ``sms`` multiprocessors, never a chunk under one block."""
    b, h, t, d = q.shape
    kv, s = k.shape[1], k.shape[2]
    g = h // kv
    block_m = max(16, triton.next_power_of_2(g * t))
    n_split = max(1, min(triton.cdiv(4 * sms, b * kv), triton.cdiv(s, BLOCK_N)))
    chunk = triton.cdiv(triton.cdiv(s, n_split), BLOCK_N) * BLOCK_N
    o = torch.empty(b, kv, n_split, block_m, d, device=q.device, dtype=torch.float32)
    ml = torch.empty(b, kv, n_split, 2 * block_m, device=q.device, dtype=torch.float32)
    m8 = mask.to(torch.uint8)  # a bool tensor as bytes (inductor cannot bitcast bool)
    _split_kernel[(b * kv, n_split)](
        q, k, v, m8, n_valid, o, ml,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), m8.stride(0), m8.stride(1), m8.stride(2),
        o.stride(0), o.stride(1), o.stride(2), o.stride(3), ml.stride(0), ml.stride(1), ml.stride(2),
        d**-0.5, kv, t, chunk, G=g, BLOCK_M=block_m, BLOCK_N=BLOCK_N, D=d, num_warps=4, num_stages=2,
    )
    m, l = ml[..., :block_m], ml[..., block_m:]  # [B, KV, splits, rows]
    w = torch.exp(m - m.amax(2, keepdim=True))  # an empty split has m = -inf: weight 0
    y = (o * w[..., None]).sum(2) / (l * w).sum(2)[..., None]  # [B, KV, rows, D]
    return y[:, :, : g * t].reshape(b, h, t, d).to(q.dtype)
