"""GPU decode benchmark (issue 6), one run: memory floor, our AR and speculative decoding (γ sweep at two
acceptance rates), transformers' generate and assisted generation on the same weights, bf16 exactness, and the prefill
of an EventGPT-shaped target against an IMU draft's.

    PYTHONPATH=src python benchmarks/gpu_decode.py --out benchmarks/results/gpu_decode_<card>_<date>.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from imuspec.bench import hf_generate, leviathan_speedup, to_hf
from imuspec.speculative import GenerationConfig, generate
from imuspec.synthetic import agreement, calibrate, controlled_pair, n_params, parse_shape

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def copy_bandwidth(gib: float = 2.0) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written (median of 20)."""
    x = torch.randn(int(gib * 2**30) // 4, device="cuda")
    y = torch.empty_like(x)
    times = []
    for i in range(25):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        y.copy_(x)
        b.record()
        torch.cuda.synchronize()
        if i >= 5:
            times.append(a.elapsed_time(b) / 1e3)
    return 2 * x.numel() * 4 / statistics.median(times)


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())


def gpu_time(fn, repeats: int = 5) -> float:
    """Median seconds of ``fn`` over CUDA events, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target-shape", default="vicuna-7b")
    ap.add_argument("--draft-shape", default="llama-68m")
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.6, 0.8])
    ap.add_argument("--gammas", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7, 8])
    ap.add_argument("--prompt-len", type=int, default=640)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    ap.add_argument("--exactness-prompts", type=int, default=16)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    dtype, dev = DTYPES[a.dtype], torch.device("cuda")
    t0 = time.perf_counter()
    r: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": a.dtype,
               "date": time.strftime("%Y-%m-%d"), "target_shape": a.target_shape, "draft_shape": a.draft_shape,
               "prompt_len": a.prompt_len, "new_tokens": a.new_tokens}
    import transformers

    r["transformers"] = transformers.__version__
    bw = copy_bandwidth()
    t_cfg, d_cfg = parse_shape(a.target_shape), parse_shape(a.draft_shape)
    target, draft = controlled_pair(t_cfg, d_cfg, 0.05, a.seed, dev, dtype)
    floor_s = weight_bytes(target) / bw
    r.update(copy_bandwidth_tb_s=bw / 1e12, target_params=n_params(t_cfg), draft_params=n_params(d_cfg),
             target_weight_gb=weight_bytes(target) / 1e9, floor_ms=1e3 * floor_s, floor_tokens_per_s=1 / floor_s)
    gen = torch.Generator().manual_seed(a.seed + 1)
    prompt = torch.randint(3, t_cfg.vocab_size, (a.prompt_len,), generator=gen).to(dev)
    calib_ids = torch.randint(3, t_cfg.vocab_size, (a.prompt_len + a.new_tokens,), generator=gen).to(dev)
    for m in (target, draft):
        m.setup_cache(max(a.prompt_len + a.new_tokens + max(a.gammas), 582 + 45))
    hf_t, hf_d = (None, None) if a.no_hf else (to_hf(target), to_hf(draft))  # share our (unfused) weights

    # Prefill: an EventGPT-shaped target prompt (582 event tokens + ~45 text) against an IMU draft's (120 + ~45).
    with torch.inference_mode():
        def prefill(model, n):
            emb = torch.randn(n, model.config.hidden_size, device=dev, dtype=dtype)
            return lambda: (model.rollback(0), model(embeds=emb[None]))
        r["prefill_eventgpt_target_ms"] = 1e3 * gpu_time(prefill(target, 582 + 45))
        r["prefill_imu_draft_ms"] = 1e3 * gpu_time(prefill(draft, 120 + 45))

    target.compile_steps()
    draft.compile_steps()
    with torch.inference_mode():
        target.warm_steps([1] + [g + 1 for g in a.gammas])
        draft.warm_steps([1, 2])
    ar_cfg = GenerationConfig(eos_token_ids=(), max_new_tokens=a.new_tokens)
    runs = []
    for alpha in a.alphas:
        eps = calibrate(target, draft, 0.05, alpha, calib_ids)
        generate(target, prompt, GenerationConfig(eos_token_ids=(), max_new_tokens=8))  # compile / graph capture
        ar = generate(target, prompt, ar_cfg)
        step_s = ar.stats.target_s / ar.stats.steps
        row = {"alpha_target": alpha, "eps": eps, "teacher_forced_agreement": agreement(target, draft, calib_ids),
               "ar_tokens_per_s": ar.stats.tokens_per_s, "ar_decode_step_ms": 1e3 * step_s,
               "ar_fraction_of_floor": floor_s / step_s, "spec": []}
        for g in a.gammas:
            cfg = GenerationConfig(eos_token_ids=(), max_new_tokens=a.new_tokens, gamma=g)
            generate(target, prompt, GenerationConfig(eos_token_ids=(), max_new_tokens=2 * g + 2, gamma=g), draft, prompt)  # capture
            sp = generate(target, prompt, cfg, draft, prompt)
            s = sp.stats
            c = s.draft_s / (g * s.steps) / step_s
            v = s.target_s / s.steps / step_s
            pred = leviathan_speedup(s.alpha_token, g, c)
            row["spec"].append({
                "gamma": g, "tokens_per_s": s.tokens_per_s, "identical_to_ar": sp.tokens == ar.tokens,
                "first_divergence": first_divergence(sp.tokens, ar.tokens), "alpha": s.alpha,
                "alpha_token": s.alpha_token, "tau": s.tau, "c": c, "verify_cost": v,
                "speedup": s.tokens_per_s / ar.stats.tokens_per_s, "predicted_speedup": pred,
                "measured_over_predicted": s.tokens_per_s / ar.stats.tokens_per_s / pred,
                "loop_overhead": 1 - (s.prefill_s + s.draft_s + s.target_s) / s.wall_s,
            })
            print(json.dumps({"alpha": alpha, **row["spec"][-1]}), flush=True)
        best = max(row["spec"], key=lambda x: x["tokens_per_s"])
        row["best_gamma"] = best["gamma"]
        if hf_t is not None:
            hf_t.generation_config.eos_token_id = None
            toks, secs = hf_generate(hf_t, prompt, a.new_tokens, hf_d, best["gamma"])
            row.update(hf_assisted_tokens_per_s=a.new_tokens / secs, hf_assisted_identical_to_ours=toks == ar.tokens,
                       spec_over_hf_assisted=best["tokens_per_s"] * secs / a.new_tokens)
        runs.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "spec"}), flush=True)
        with open(a.out, "w") as f:  # partial results survive a time limit
            json.dump({**r, "runs": runs}, f, indent=1)
    r["runs"] = runs
    if hf_t is not None:
        toks, secs = hf_generate(hf_t, prompt, a.new_tokens)
        r.update(hf_generate_tokens_per_s=a.new_tokens / secs, hf_generate_identical_to_ours=toks == ar.tokens,
                 ar_over_hf_generate=ar.stats.tokens_per_s * secs / a.new_tokens)

    # bf16 exactness: speculative vs our own AR over several prompts, at the last alpha and its best gamma.
    div = []
    for i in range(a.exactness_prompts):
        p = torch.randint(3, t_cfg.vocab_size, (a.prompt_len,), generator=gen).to(dev)
        x = generate(target, p, ar_cfg).tokens
        y = generate(target, p, GenerationConfig(eos_token_ids=(), max_new_tokens=a.new_tokens, gamma=runs[-1]["best_gamma"]), draft, p).tokens
        div.append(first_divergence(x, y))
    r["exactness"] = {"prompts": a.exactness_prompts, "identical_fraction": sum(d is None for d in div) / len(div),
                      "first_divergence": div}
    r["wall_s"] = time.perf_counter() - t0
    with open(a.out, "w") as f:
        json.dump(r, f, indent=1)
    print(json.dumps({k: v for k, v in r.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
