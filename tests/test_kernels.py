"""The Triton split-K decode attention equals few_query_attention (causal and tree masks, GQA, per-row lengths).

Without a GPU it runs in Triton's interpreter, in a subprocess (TRITON_INTERPRET must be set before Triton is
imported); without Triton it skips."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="Triton is not installed (the kernel is GPU-only)")

CHECK = """
import torch
from imuspec import kernels
from imuspec.model import few_query_attention

dev = "cuda" if torch.cuda.is_available() else "cpu"
for b, h, kv, t, s, tree in [(1, 4, 4, 1, 200, False), (2, 8, 2, 3, 130, False), (3, 4, 4, 9, 70, True)]:
    g = torch.Generator().manual_seed(b * 100 + t)
    q, k, v = (torch.randn(b, n, m, 32, generator=g).to(dev) for n, m in ((h, t), (kv, s), (kv, s)))
    n = torch.randint(t, s, (b,), generator=g).to(dev)
    slots = (n - t)[:, None] + torch.arange(t, device=dev)
    mask = torch.arange(s, device=dev) <= slots[:, :, None]
    if tree:  # holes inside the new block and the cache; each token still sees itself
        mask &= torch.rand(b, t, s, generator=g).to(dev) > 0.3
        mask |= torch.arange(s, device=dev) == slots[:, :, None]
    ref = few_query_attention(q.double(), k.double(), v.double(), mask[:, None])
    out = kernels.decode_attention(q, k, v, mask, n, sms=8).double()
    err = float((out - ref).norm() / ref.norm())
    assert err < (1e-5 if dev == "cpu" else 3e-3), (b, h, kv, t, s, err)
print("ok")
"""


def test_decode_attention_matches_reference():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
