"""Issue 11: batched decoding with the shipped pair on held-out world moments (seeds from 1,000,000, never trained on).

Total tokens/s and per-row latency for B = 1, 2, 4, 8, 16: speculative (the IMU draft) and the target alone, both
batched by :func:`imuspec.speculative.generate_batch`, and transformers' batched greedy ``generate`` of the target
alone (its LLM as a LlamaForCausalLM sharing our weights, fed the same prompt embeddings via ``inputs_embeds``;
assisted generation takes one row). Every mode decodes the same rows; a row that differs from the target decoding it
alone is counted with the target's top-2 logit margin where it first differs.

    OMP_NUM_THREADS=1 python benchmarks/batch_throughput.py [--rows 16] [--repeats 3]
"""

import argparse
import json
import os
import platform
import statistics
from datetime import date
from pathlib import Path

import torch

from imuspec.bench import bench_batch, to_hf
from imuspec.demo import WEIGHTS
from imuspec.families import open_draft, open_target
from imuspec.speculative import GenerationConfig, generate, generate_batch
from imuspec.world import QUERY, make_samples

MODES = ("spec", "target", "hf")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--batches", default="1,2,4,8,16")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=f"benchmarks/results/batch_cpu_{date.today()}.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    target = open_target(WEIGHTS / "target")
    draft = open_draft(WEIGHTS / "imu_draft", None, target.tokenizer)
    samples = make_samples(range(1_000_000, 1_000_000 + a.rows), progress=False)
    with torch.inference_mode():
        tps = [target.embed(QUERY, s.events) for s in samples]
        dps = [draft.embed(QUERY, s) for s in samples]
    cfg = GenerationConfig(max_new_tokens=a.max_new_tokens, gamma=a.gamma, eos_token_ids=(target.tokenizer.eos_id,))
    target.decoder.setup_cache(max(map(len, tps)) + a.max_new_tokens + a.gamma)
    draft.decoder.setup_cache(max(map(len, dps)) + a.max_new_tokens + a.gamma)
    hf = to_hf(target.decoder)
    alone = [generate(target.decoder, tp, cfg).tokens for tp in tps]
    generate_batch(target.decoder, tps[:2], cfg, draft.decoder, dps[:2])  # warm-up

    results = []
    for b in map(int, a.batches.split(",")):
        runs = [bench_batch(target.decoder, draft.decoder, tps, dps, cfg, b, hf, alone) for _ in range(a.repeats)]
        r = {"batch": b, "runs": runs}
        for m in MODES:
            tok_s = [x[m]["tokens_per_s"] for x in runs]
            lat = [x[m]["latency_mean_s"] for x in runs]
            r[m] = {"tokens_per_s_median": statistics.median(tok_s), "tokens_per_s_min": min(tok_s),
                    "decode_tokens_per_s_median": runs[0][m]["decode_tokens_per_s"] and
                    statistics.median(x[m]["decode_tokens_per_s"] for x in runs),
                    "latency_mean_s_median": statistics.median(lat),
                    "rows_differing_from_alone": max(x[m]["rows_differing_from_alone"] for x in runs)}
        r["spec_over_target"] = r["spec"]["tokens_per_s_median"] / r["target"]["tokens_per_s_median"]
        r["spec_over_hf"] = r["spec"]["tokens_per_s_median"] / r["hf"]["tokens_per_s_median"]
        results.append(r)
        print(f"B={b:>2}  " + "  ".join(f"{m} {r[m]['tokens_per_s_median']:7.1f} tok/s (min {r[m]['tokens_per_s_min']:6.1f}, "
                                         f"row {1e3 * r[m]['latency_mean_s_median']:6.0f} ms, differ {r[m]['rows_differing_from_alone']})"
                                         for m in MODES)
              + f"  spec/target {r['spec_over_target']:.2f}x  spec/hf {r['spec_over_hf']:.2f}x  after prefill: spec "
              f"{r['spec']['decode_tokens_per_s_median']:.1f}, target {r['target']['decode_tokens_per_s_median']:.1f} tok/s",
              flush=True)

    out = {"date": str(date.today()), "machine": platform.processor() or platform.machine(), "threads": 1,
           "torch": torch.__version__, "load_average": os.getloadavg(), "rows": a.rows, "first_seed": 1_000_000,
           "max_new_tokens": a.max_new_tokens,
           "gamma": a.gamma, "target_prompt_lens": sorted({len(t) for t in tps}),
           "draft_prompt_lens": sorted({len(d) for d in dps}), "tokens": sum(map(len, alone)), "results": results}
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
