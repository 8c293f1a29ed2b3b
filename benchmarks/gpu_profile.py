"""Where a Vicuna-7B-shaped decode step spends its time on the GPU (issue 6): kernel-level breakdown with the
PyTorch profiler (compiled without CUDA graphs, so kernels are visible), against the CUDA-graph step time, for the
one-token decode step and a 9-token verify step; optionally with inductor's coordinate-descent tuning.

    PYTHONPATH=src python benchmarks/gpu_profile.py --out benchmarks/results/gpu_profile_<card>_<date>.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from imuspec import kernels
from imuspec.synthetic import controlled_pair, parse_shape

CATEGORIES = [("attention", r"attention|fmha|flash|sdpa|split_kernel"), ("gemm/gemv", r"gemm|gemv|cutlass|sm90|xmma|nvjet|splitK|cublas"),
              ("triton fused", r"triton"), ("copy/index", r"copy|index|scatter|gather|fill|cat")]


def category(name: str) -> str:
    return next((c for c, pat in CATEGORIES if re.search(pat, name, re.I)), "other")


def step_ms(fn, ids, n: int = 50) -> float:
    """Median milliseconds of ``fn(ids)`` over CUDA events (after 5 warm-ups)."""
    times = []
    for _ in range(n + 5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(ids)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times[5:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="vicuna-7b")
    ap.add_argument("--context", type=int, default=768)
    ap.add_argument("--coordinate-descent", action="store_true")
    ap.add_argument("--attention", choices=["few", "sdpa", "kernel"], default="few",
                    help="decode/verify attention path (kernel: imuspec.kernels' Triton split-K)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.coordinate_descent:
        torch._inductor.config.coordinate_descent_tuning = True
    cfg = parse_shape(a.shape)
    model, _ = controlled_pair(cfg, parse_shape("cpu-5m"), 0.05, 0, "cuda", torch.bfloat16)
    model.setup_cache(a.context + 16)
    for layer in model.model.layers:
        layer.self_attn.fuse()
        layer.mlp.fuse()
        layer.self_attn.few_queries = 0 if a.attention == "sdpa" else 16
        layer.self_attn.kernel_sms = kernels.multiprocessors(model.device) if a.attention == "kernel" else 0
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    ctx = torch.randint(3, cfg.vocab_size, (1, a.context), device="cuda")
    r = {"device": torch.cuda.get_device_name(), "shape": a.shape, "context": a.context,
         "coordinate_descent_tuning": a.coordinate_descent, "attention": a.attention, "weight_gb": weight_bytes / 1e9}
    with torch.inference_mode():
        model(ids=ctx)
        for mode in ("default", "reduce-overhead"):
            for t in (1, 9):
                fwd = torch.compile(model.forward, mode=mode, fullgraph=True, dynamic=False)
                ids = torch.randint(3, cfg.vocab_size, (1, t), device="cuda")

                def run(x):
                    model.rollback(a.context)
                    if mode == "reduce-overhead":
                        torch.compiler.cudagraph_mark_step_begin()
                    return fwd(ids=x)

                for _ in range(3):
                    run(ids)
                ms = step_ms(run, ids)
                key = f"{mode}_T{t}"
                r[f"{key}_ms"] = ms
                r[f"{key}_achieved_tb_s"] = weight_bytes / ms / 1e9
                if mode == "default":
                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        for _ in range(10):
                            run(ids)
                        torch.cuda.synchronize()
                    by_cat, n_kernels = defaultdict(float), 0
                    for e in prof.key_averages():
                        if e.device_type.name == "CUDA" and e.device_time_total > 0:
                            by_cat[category(e.key)] += e.device_time_total / 10 / 1e3  # ms per step
                            n_kernels += e.count
                    r[f"{key}_kernel_ms"] = dict(by_cat)
                    r[f"{key}_kernels_per_step"] = n_kernels / 10
                    r[f"{key}_top"] = [(e.key[:90], e.device_time_total / 10 / 1e3, e.count // 10)
                                       for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:12]
                                       if e.device_type.name == "CUDA"]
                print(json.dumps({k: v for k, v in r.items() if k.startswith(key)}), flush=True)
                torch._dynamo.reset()
    with open(a.out, "w") as f:
        json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
