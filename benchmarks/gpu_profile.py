"""Where a Vicuna-7B-shaped decode step spends its time on the GPU (issues 6 and 12): the engine's own step
(``Decoder.compile_steps``: regional graphs, replayed as CUDA graphs) timed and profiled kernel by kernel, for the
one-token decode step and a 9-token verify step, with each attention path; the gaps are the step's time that no
kernel covers. The same graph compiled without CUDA graphs is timed beside it (what the graphs save).

    PYTHONPATH=src python benchmarks/gpu_profile.py --out benchmarks/results/gpu_profile_<card>_<date>.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from imuspec import kernels
from imuspec.synthetic import controlled_pair, parse_shape

CATEGORIES = [("attention", r"attention|fmha|flash|sdpa|_attn|split_kernel|decode_att|merge"),
              ("splitK reduce", r"splitKreduce"),
              ("gemm/gemv", r"gemm|gemv|cutlass|sm90|xmma|nvjet|splitK|cublas"),
              ("triton fused", r"triton"), ("copy/index", r"copy|index|scatter|gather|fill|cat|memcpy|memset")]


def category(name: str) -> str:
    return next((c for c, pat in CATEGORIES if re.search(pat, name, re.I)), "other")


def step_ms(fn, n: int = 50) -> tuple[float, float]:
    """Median and min milliseconds of ``fn()`` over CUDA events (after 5 warm-ups)."""
    times = []
    for _ in range(n + 5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times[5:]), min(times[5:])


def kernels_of(fn, steps: int = 10) -> dict:
    """Per-step device time by kernel category, the kernel count and the top kernels, from the profiler."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    by_cat, n, events = defaultdict(float), 0, []
    for e in prof.key_averages():
        if e.device_type.name == "CUDA" and e.device_time_total > 0:
            by_cat[category(e.key)] += e.device_time_total / steps / 1e3  # ms per step
            n += e.count
            events.append(e)
    top = [(e.key[:100], category(e.key), e.device_time_total / steps / 1e3, e.count / steps)
           for e in sorted(events, key=lambda e: -e.device_time_total)[:16]]
    return {"kernel_ms": dict(by_cat), "kernel_ms_total": sum(by_cat.values()), "kernels_per_step": n / steps,
            "top": top}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="vicuna-7b")
    ap.add_argument("--context", type=int, default=640)
    ap.add_argument("--cache", type=int, default=963, help="static cache slots (gpu_wave's: 640 + 256 + 67)")
    ap.add_argument("--attention", nargs="+", choices=["few", "kernel"], default=["few", "kernel"],
                    help="few: few-query attention over the whole static cache; kernel: imuspec.kernels' Triton "
                    "split-K, which reads only the valid slots")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1, 9])
    ap.add_argument("--no-graph-too", action="store_true", help="also time and profile the graph compiled without "
                    "CUDA graphs (its kernels are the profiler's to see even where graph replays hide them)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    t0 = time.perf_counter()
    cfg = parse_shape(a.shape)
    model, _ = controlled_pair(cfg, parse_shape("cpu-5m"), 0.05, 0, "cuda", torch.bfloat16)
    model.setup_cache(a.cache)
    params = {id(p): p for p in model.parameters()}.values()
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    gemv_bytes = weight_bytes - model.model.embed_tokens.weight.numel() * model.model.embed_tokens.weight.element_size()
    ctx = torch.randint(3, cfg.vocab_size, (1, a.context), device="cuda")
    r = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shape": a.shape,
         "context": a.context, "cache_slots": a.cache, "weight_gb": weight_bytes / 1e9,
         "projection_weight_gb": gemv_bytes / 1e9, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
         "runs": {}}
    with torch.inference_mode():
        model(ids=ctx)
        for attention in a.attention:
            for t in a.lengths:
                key = f"{attention}_T{t}"
                ids = torch.randint(3, cfg.vocab_size, (1, t), device="cuda")
                c0 = time.perf_counter()
                model.compile_steps(kernel=attention == "kernel")  # fuses once; regional graphs, CUDA graphs

                def run():
                    model.rollback(a.context)
                    return model.step(ids)

                for _ in range(3):
                    run()
                torch.cuda.synchronize()
                row = {"compile_s": time.perf_counter() - c0}
                row["step_ms"], row["step_ms_min"] = step_ms(run)
                row.update(kernels_of(run))
                # the step's time that no kernel covers: launch gaps between the graph's kernels, and the host
                row["gap_ms"] = row["step_ms"] - row["kernel_ms_total"]
                row["achieved_tb_s"] = weight_bytes / row["step_ms"] / 1e9
                # the projections' bytes over all GEMM time, the few-query attention's batched GEMVs included
                # (a lower bound on the projections' own rate: their kernels are listed apart in "top")
                gemm = row["kernel_ms"].get("gemm/gemv", 0)
                row["gemm_tb_s"] = gemv_bytes / gemm / 1e9 if gemm else None
                if a.no_graph_too:
                    fwd = torch.compile(model.forward, mode="default", fullgraph=True, dynamic=False)

                    def plain():
                        model.rollback(a.context)
                        return fwd(ids=ids)

                    for _ in range(3):
                        plain()
                    row["no_graph_step_ms"], _ = step_ms(plain)
                    row["no_graph"] = kernels_of(plain)  # the same kernels, each launched by the host
                r["runs"][key] = row
                print(json.dumps({key: {k: v for k, v in row.items() if k not in ("top", "no_graph")}}), flush=True)
                for name, cat, ms, count in row["top"]:
                    print(f"  {ms:7.3f} ms  {count:5.1f}x  {cat:14s} {name}", flush=True)
                torch._dynamo.reset()
                r["wall_s"] = time.perf_counter() - t0
                with open(a.out, "w") as f:  # partial results survive a time limit
                    json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
