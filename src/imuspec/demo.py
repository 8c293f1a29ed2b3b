"""``imuspec demo``: the shipped pair on an embedded paired sample, nothing to download.

The sample is a held-out moment of the synthetic world (:mod:`imuspec.world`, seeds from 1,000,000 are never trained
on): 50 ms of events for the EventGPT-family target and the IMU over the same 50 ms for the LLaSA-family draft. The
target decodes alone, then speculatively with the draft; the demo shows both agree token for token, which tokens the
draft got accepted, α, τ and the speed of each, and draws the IMU, the event frames and the acceptance per step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path


from .runtime import positive

WEIGHTS = Path(__file__).parent / "weights"
PLOT = Path(tempfile.gettempdir()) / "imuspec_demo.png"  # not into the working folder, a clone of the repository
DEMO_SEED = 1_000_011


def accepted_mask(accepted: list[int], produced: list[int]) -> list[bool]:
    """Per output token: was it a draft token the target accepted? The first token comes from the prefill; each step
    then adds its accepted draft tokens and one token of the target's own (cut at EOS or the length limit)."""
    mask = [False]
    for n, k in zip(accepted, produced):
        mask += [i < n for i in range(k)]
    return mask


def pieces(tokenizer, tokens: list[int]) -> list[str]:
    """The text each token adds (decoding prefixes, so word-boundary marks come out as spaces)."""
    out, prev = [], ""
    for i in range(1, len(tokens) + 1):
        text = tokenizer.decode(tokens[:i])
        out.append(text[len(prev):])
        prev = text
    return out


def plot(sample, frames, accepted: list[int], gamma: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imu = sample.imu.to_units("m/s^2", "rad/s")
    t_ms = (imu.t - sample.t0_us * 1e-6) * 1e3
    fig = plt.figure(figsize=(12, 7), layout="constrained")
    grid = fig.add_gridspec(3, len(frames))
    for row, (values, unit) in enumerate(((imu.accel, "accelerometer (m/s²)"), (imu.gyro, "gyroscope (rad/s)"))):
        ax = fig.add_subplot(grid[row, : len(frames) // 2 + 1])
        for c, axis in enumerate("xyz"):
            ax.plot(t_ms, values[:, c], label=axis)
        ax.axvspan(0, (sample.t1_us - sample.t0_us) / 1e3, color="0.9")
        ax.set(xlabel="ms from window start", ylabel=unit)
        ax.legend(loc="upper right", fontsize=8)
    ax = fig.add_subplot(grid[:2, len(frames) // 2 + 1:])
    steps = range(1, len(accepted) + 1)
    ax.bar(steps, accepted, color="tab:green", label="draft tokens accepted")
    ax.axhline(gamma, color="0.5", ls="--", label=f"γ = {gamma}")
    ax.set(xlabel="target step", ylabel="tokens", title="acceptance per step")
    ax.legend(fontsize=8)
    for i, f in enumerate(frames):
        ax = fig.add_subplot(grid[2, i])
        ax.imshow(f)
        ax.set(title=f"events {i + 1}/{len(frames)}", xticks=[], yticks=[])
    fig.suptitle(f"{sample.source}: {sample.text}", fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def timed_runs(target, target_prompt, cfg, draft=None, draft_prompt=None, repeats: int = 5):
    """The generation and its median tokens/s over ``repeats`` runs (after one warm-up)."""
    from .speculative import generate

    generate(target, target_prompt, cfg, draft, draft_prompt)
    runs = [generate(target, target_prompt, cfg, draft, draft_prompt) for _ in range(repeats)]
    return runs[0], statistics.median(r.stats.tokens_per_s for r in runs)


def run_demo(weights: Path = WEIGHTS, seed: int = DEMO_SEED, gamma: int = 4, max_new_tokens: int = 40,
             plot_path: Path | None = PLOT, repeats: int = 5, threads: int | None = None) -> dict:
    """``threads``: as ``--threads`` (see :func:`imuspec.runtime.set_threads`)."""
    from .events.render import eventgpt_frames
    from .families import open_draft, open_target
    from .runtime import n_weights, set_threads
    from .speculative import GenerationConfig
    from .world import QUERY, make_sample

    sample = make_sample(seed)
    target = open_target(weights / "target")
    draft = open_draft(weights / "imu_draft", None, target.tokenizer)
    set_threads(threads, n_weights(target.decoder))
    target_prompt, draft_prompt = target.embed(QUERY, sample.events), draft.embed(QUERY, sample)
    target.decoder.setup_cache(len(target_prompt) + max_new_tokens + gamma)
    draft.decoder.setup_cache(len(draft_prompt) + max_new_tokens + gamma)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, gamma=gamma, eos_token_ids=(target.tokenizer.eos_id,))

    alone, alone_tps = timed_runs(target.decoder, target_prompt, cfg, repeats=repeats)
    spec, spec_tps = timed_runs(target.decoder, target_prompt, cfg, draft.decoder, draft_prompt, repeats=repeats)
    st = spec.stats
    if plot_path is not None:
        plot(sample, eventgpt_frames(sample.events), st.accepted_per_step, gamma, plot_path)
    tok = target.tokenizer
    return {
        "text": tok.decode(spec.tokens),
        "alpha": st.alpha,
        "tau": st.tau,
        "speedup": spec_tps / alone_tps,
        "target_tokens_per_s": alone_tps,
        "speculative_tokens_per_s": spec_tps,
        "identical_to_target": spec.tokens == alone.tokens,
        "plot": str(Path(plot_path).resolve()) if plot_path is not None else None,
        "_marks": list(zip(pieces(tok, spec.tokens), accepted_mask(st.accepted_per_step, st.produced_per_step))),
        "_sample": {"source": sample.source, "reference": sample.text, **{k: sample.meta.get(k) for k in ("activity", "scene")}},
    }


def add_demo_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=DEMO_SEED, help="world seed of the sample (held out from training)")
    p.add_argument("--gamma", type=positive, default=4, help="draft tokens per target forward")
    p.add_argument("--max-new-tokens", type=positive, default=40, help="most tokens of the answer")
    p.add_argument("--plot", default=str(PLOT), help="PNG to write ('' for none)")
    p.add_argument("--weights", default=str(WEIGHTS), help="folder with target/ and imu_draft/ (default: shipped)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--threads", type=positive, metavar="N", help="CPU threads (default: OMP_NUM_THREADS when set, else "
                   "one: the shipped models' steps are too small to split)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(a: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.text import Text

    r = run_demo(Path(a.weights), a.seed, a.gamma, a.max_new_tokens, Path(a.plot) if a.plot else None,
                 threads=a.threads)
    marks, sample = r.pop("_marks"), r.pop("_sample")
    if a.json:
        print(json.dumps(r))
        return 0
    con = Console(highlight=False, soft_wrap=True)
    con.print(f"sample  {sample['source']}: {sample['activity']}, scene '{sample['scene']}' (50 ms of events + IMU)")
    con.print(f"world   {sample['reference']}")
    line = Text("target  ")
    for piece, accepted in marks:
        line.append(piece, style="bold green" if accepted else None)
    con.print(line)
    con.print("        [bold green]green[/] = drafted by the IMU model and accepted by the target" if con.is_terminal
              else "        (on a terminal, the tokens the IMU draft got accepted are green)")
    con.print(f"alpha {r['alpha']:.3f}   tau {r['tau']:.2f} tokens/step   target alone "
              f"{r['target_tokens_per_s']:.0f} tok/s   speculative {r['speculative_tokens_per_s']:.0f} tok/s   "
              f"speed-up {r['speedup']:.2f}x")
    con.print(f"identical to the target alone: {'yes' if r['identical_to_target'] else 'NO'}")
    if r["plot"]:
        con.print(f"plot    written to {r['plot']}")
    return 0 if r["identical_to_target"] else 1
