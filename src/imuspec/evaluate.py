"""``imuspec eval``: on paired samples, the target alone vs speculative decoding with the IMU draft and a text-only draft.

Per sample and mode it records the tokens, α (kept / drafted, and Leviathan's per-token α), τ (tokens per target
forward), c (draft seconds per drafted token ÷ the target's seconds per token alone), tokens/s and the speed-up over
the target alone (wall time of the whole call, prefills included; prompt building excluded), and whether the output
equals the target's (greedy: it must). Each checkpoint is loaded once and warmed up on the first sample before timing.

Under ``torchrun --nproc_per_node K`` each rank takes samples[rank::K] (:mod:`imuspec.distributed`), the rows are
gathered, and rank 0 writes ``samples.jsonl``, ``summary.json`` (means with 95 % Student-t intervals) and ``eval.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .runtime import add_run_options, n_weights, positive, set_threads, torch_dtype

if TYPE_CHECKING:  # the command's heavy imports wait until it runs
    import torch

    from .families import Family
    from .paired import PairedSample
    from .speculative import GenerationConfig

METRICS = ("alpha", "alpha_token", "tau", "c", "speedup", "tokens_per_s")


def _fit(family: Family, prompt: torch.Tensor, cfg: GenerationConfig, role: str) -> None:
    """Grow the KV cache to this prompt + output + draft slots (never shrinks, so one allocation in a run)."""
    need = len(prompt) + cfg.max_new_tokens + cfg.draft_slots
    limit = family.decoder.config.max_position_embeddings
    if need > limit:
        raise ValueError(f"the {role} prompt is {len(prompt)} tokens; with {cfg.max_new_tokens} new tokens and "
                         f"{cfg.draft_slots} draft slots it needs {need} positions, more than the {role}'s "
                         f"max_position_embeddings {limit}")
    if family.decoder.max_len < need:
        family.decoder.setup_cache(need)


def evaluate_samples(target: Family, drafts: dict[str, Family], samples: list[PairedSample], query: str,
                     cfg: GenerationConfig, drafting: dict | None = None) -> list[dict]:
    """A batch of samples, one row each: the target alone, then each draft in front of it (``drafting[name]``: what
    :func:`imuspec.vocab.drafter` made of that draft, where its vocabulary differs). In a batch of more than one,
    phase times are the batch's (c compares batched forwards) and wall_s, tokens/s and speed-up are each row's
    latency within its batch."""
    from .speculative import generate_batch

    tps = [target.embed(query, s.events) for s in samples]
    for tp in tps:
        _fit(target, tp, cfg, "target")
    alone = generate_batch(target.decoder, tps, cfg)
    steps = max(g.stats.steps for g in alone)  # the batch's target forwards
    per_token = alone[0].stats.target_s / steps if steps else None  # target seconds per decoded token, prefill excluded
    rows = [{"target": {"tokens": g.tokens, "text": target.tokenizer.decode(g.tokens), "n_tokens": g.stats.n_tokens,
                        "wall_s": g.stats.wall_s, "tokens_per_s": g.stats.tokens_per_s}} for g in alone]
    for name, draft in drafts.items():
        dps = [draft.embed(query, s) for s in samples]
        for dp in dps:
            _fit(draft, dp, cfg, f"{name} draft")
        gens = generate_batch(target.decoder, tps, cfg, (drafting or {}).get(name, draft.decoder), dps)
        drafted = max(sum(g.stats.drafted_per_step) for g in gens)  # the batch's drafted depth
        c = gens[0].stats.draft_s / drafted / per_token if drafted and per_token else None
        for row, g, a in zip(rows, gens, alone):
            s = g.stats
            row[name] = {
                "tokens": g.tokens, "n_tokens": s.n_tokens, "alpha": s.alpha, "alpha_token": s.alpha_token, "tau": s.tau,
                "c": c, "tokens_per_s": s.tokens_per_s, "speedup": a.stats.wall_s / s.wall_s,
                "identical_to_target": g.tokens == a.tokens,
                "draft_s": s.draft_s, "target_s": s.target_s, "wall_s": s.wall_s,
            }
    return rows


def mean_ci(values: list[float], level: float = 0.95) -> dict:
    """Mean and its Student-t confidence interval (None where fewer than two values)."""
    from scipy import stats

    x = np.array([v for v in values if v is not None], dtype=float)
    if len(x) == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    m, sem = float(x.mean()), (float(stats.sem(x)) if len(x) > 1 else None)
    if sem is None:
        return {"mean": m, "lo": None, "hi": None, "n": 1}
    lo, hi = stats.t.interval(level, len(x) - 1, loc=m, scale=sem) if sem > 0 else (m, m)
    return {"mean": m, "lo": float(lo), "hi": float(hi), "n": len(x)}


def summarize(rows: list[dict], modes: list[str]) -> dict:
    out = {"n_samples": len(rows), "interval": "95% Student-t interval of the mean", "modes": {}}
    for mode in modes:
        keys = ("tokens_per_s",) if mode == "target" else METRICS
        out["modes"][mode] = {k: mean_ci([r[mode][k] for r in rows]) for k in keys}
        if mode != "target":
            out["modes"][mode]["mismatches"] = sum(not r[mode]["identical_to_target"] for r in rows)
    if "imu" in modes and "text" in modes:  # the question asked: paired per sample, so scene difficulty cancels
        out["imu_minus_text"] = {k: mean_ci([r["imu"][k] - r["text"][k] for r in rows
                                             if r["imu"][k] is not None and r["text"][k] is not None])
                                 for k in ("alpha", "tau", "speedup")}
    return out


def format_table(summary: dict) -> str:
    def cell(d):
        if d is None or d["mean"] is None:
            return "-"
        return f"{d['mean']:.3g}" + (f" [{d['lo']:.3g}, {d['hi']:.3g}]" if d["lo"] is not None else "")

    cols = ("alpha", "tau", "c", "speedup", "tokens_per_s")
    lines = [f"{summary['n_samples']} samples; mean [{summary['interval']}]",
             f"{'mode':8}" + "".join(f"{c:>26}" for c in cols) + f"{'mismatches':>12}"]
    for mode, m in summary["modes"].items():
        lines.append(f"{mode:8}" + "".join(f"{cell(m.get(c)):>26}" for c in cols) + f"{m.get('mismatches', '-'):>12}")
    if "imu_minus_text" in summary:
        lines.append(f"{'imu-text':8}" + "".join(f"{cell(summary['imu_minus_text'].get(c)):>26}" for c in cols)
                     + "   (paired difference per sample)")
    return "\n".join(lines)


def plot(rows: list[dict], summary: dict, path: Path) -> None:
    """α per sample (histogram per draft) and mean speed-up per draft with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drafts = [m for m in summary["modes"] if m != "target"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for m in drafts:
        ax1.hist([r[m]["alpha"] for r in rows if r[m]["alpha"] is not None], bins=np.linspace(0, 1, 21), alpha=0.6,
                 label=f"{m} draft")
    ax1.set(xlabel="α (kept / drafted) per sample", ylabel="samples", title="acceptance")
    ax1.legend()
    s = [summary["modes"][m]["speedup"] for m in drafts]
    err = [[d["mean"] - (d["lo"] if d["lo"] is not None else d["mean"]) for d in s],
           [(d["hi"] if d["hi"] is not None else d["mean"]) - d["mean"] for d in s]]
    ax2.bar(drafts, [d["mean"] for d in s], yerr=err, capsize=6)
    ax2.axhline(1.0, color="k", lw=0.8, ls="--")
    ax2.set(ylabel="speed-up over the target alone", title=f"mean, {summary['interval']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _samples(a: argparse.Namespace, rank: int, world: int) -> list[tuple[int, PairedSample]]:
    """This rank's share, with each sample's index in the whole set."""
    if a.synthetic is not None:
        from .world import WorldConfig, make_samples

        seeds = list(range(a.first_seed, a.first_seed + a.synthetic))[rank::world]
        idx = list(range(a.synthetic))[rank::world]
        return list(zip(idx, make_samples(seeds, WorldConfig(), progress=rank == 0))) if seeds else []
    from .paired import aedat4_windows

    ws = aedat4_windows(a.aedat4, a.window_us)[: a.max_windows]
    return list(enumerate(ws))[rank::world]


def _query(a: argparse.Namespace) -> str:
    if a.query:
        return a.query
    try:
        from .world import QUERY
    except ImportError:
        raise ValueError("give the question with --query (imuspec.world, which holds the default, is absent)") from None
    return QUERY


def cmd_eval(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import distributed
    from .distributed import close, gather, init_distributed
    from .families import open_draft, open_target
    from .speculative import GenerationConfig
    from .vocab import drafter

    if a.batch_size < 1:
        raise ValueError(f"--batch-size: expected a positive number of samples, got {a.batch_size}")
    own = init_distributed()  # this rank's device: its GPU under torchrun
    rank, world = distributed.rank(), distributed.world()
    dev = str(own) if a.device is None else a.device
    dtype, query = torch_dtype(a.dtype), _query(a)

    target = open_target(a.target, dtype=dtype, device=dev)
    set_threads(a.threads, n_weights(target.decoder))
    cfg = GenerationConfig(a.max_new_tokens, a.gamma, seed=a.seed, eos_token_ids=tuple(target.decoder.config.eos_ids),
                           tree=a.tree)
    drafts = {"imu": open_draft(a.draft, None, target.tokenizer, imu_encoder=a.imu_encoder, tokenizer_folder=a.target,
                                dtype=dtype, device=dev, layers=a.draft_layers)}
    if a.text_draft:
        drafts["text"] = open_draft(a.text_draft, "vicuna_v1", target.tokenizer, dtype=dtype, device=dev)
    pairs = {name: drafter(f.decoder, f.tokenizer, target.decoder, target.tokenizer) for name, f in drafts.items()}
    drafting, notes = {n: d for n, (d, _) in pairs.items()}, {n: p.note(True) for n, (_, p) in pairs.items()}
    if rank == 0:
        print("\n".join(f"{n} draft: {note}" for n, note in notes.items()), file=sys.stderr)
    if a.batch_size > 1 and any(d is not drafts[n].decoder for n, d in drafting.items()):
        raise ValueError(f"--batch-size {a.batch_size}: a draft with another vocabulary decodes one sample at a time "
                         f"(--batch-size 1)")
    mine = _samples(a, rank, world)
    if mine:  # warm-up: every model once, untimed
        evaluate_samples(target, drafts, [s for _, s in mine[:a.batch_size]], query,
                         GenerationConfig(a.gamma + 2, a.gamma, seed=a.seed, tree=a.tree), drafting)
    rows = []
    batches = [mine[k:k + a.batch_size] for k in range(0, len(mine), a.batch_size)]
    for batch in tqdm(batches, disable=rank != 0, desc="eval", unit="batch"):
        for (i, s), got in zip(batch, evaluate_samples(target, drafts, [s for _, s in batch], query, cfg, drafting)):
            rows.append({"index": i, "source": s.source, "t0_us": s.t0_us, "t1_us": s.t1_us, "reference": s.text,
                         "meta": s.meta} | got)
    rows = sorted(gather(rows), key=lambda r: r["index"])
    close()
    if rank != 0:
        return 0

    modes = ["target", *drafts]
    summary = summarize(rows, modes) | {"command": sys.argv, "query": query, "device": dev, "dtype": a.dtype,
                                        "max_new_tokens": a.max_new_tokens, "gamma": a.gamma, "tree": a.tree,
                                        "batch_size": a.batch_size,
                                        "processes": world,
                                        "vocabulary": notes}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "samples.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r, default=str) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    plot(rows, summary, out / "eval.png")
    print(format_table(summary))
    bad = [(r["index"], m) for r in rows for m in drafts if not r[m]["identical_to_target"]]
    for i, m in bad:
        print(f"MISMATCH: sample {i}, {m} draft: the speculative output differs from the target alone", file=sys.stderr)
    if bad:
        print(f"error: {len(bad)} speculative outputs differ from the target's (greedy decoding must match)",
              file=sys.stderr)
    return 1 if bad else 0


def add_eval_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="EventGPT checkpoint folder")
    p.add_argument("--draft", required=True, help="IMU draft (LLaSA-family folder, e.g. a project-trained draft)")
    p.add_argument("--imu-encoder", help="LIMU-BERT state dict for a LLaSA draft that does not hold its encoder")
    p.add_argument("--draft-layers", type=int, metavar="K", help="keep the IMU draft LLM's first K layers")
    p.add_argument("--text-draft", help="text-only LLaMA folder (vicuna_v1 prompt; the target's tokenizer if none)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", type=positive, metavar="N", help="N samples of imuspec.world, seeds from --first-seed")
    src.add_argument("--aedat4", metavar="FILE", help="consecutive windows of a camera file with events and IMU")
    p.add_argument("--first-seed", type=int, default=1_000_000,
                   help="first world seed of --synthetic (seeds from 1,000,000 are never trained on)")
    p.add_argument("--window-us", type=positive, default=50_000, help="window length for --aedat4 (µs)")
    p.add_argument("--max-windows", type=positive, metavar="N", help="only the first N windows of --aedat4 "
                   "(default: every window)")
    p.add_argument("--query", help="the question (default: imuspec.world.QUERY, the one the shipped pair was "
                   "trained on: 'What am I doing, and what do I see?')")
    p.add_argument("--out", required=True, help="folder for samples.jsonl, summary.json, eval.png")
    p.add_argument("--max-new-tokens", type=positive, default=48, help="most tokens per answer")
    p.add_argument("--gamma", type=positive, default=4, help="draft tokens per target forward")
    p.add_argument("--tree", type=positive, help="verify a token tree of N draft nodes per step instead of a chain")
    p.add_argument("--batch-size", type=positive, default=1, help="samples decoded at once (one row each)")
    add_run_options(p)
    p.set_defaults(func=cmd_eval)
