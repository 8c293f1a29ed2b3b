"""The ``imuspec`` command line."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .demo import add_demo_parser
from .evaluate import add_eval_parser
from .events import cli as events_cli
from .imu.inspect import add_inspect_imu_parser
from .train import add_train_parser

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _device(name: str | None) -> str:
    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def _window(text: str) -> tuple[int, int]:
    try:
        t0, t1 = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--window {text!r}: expected START_US:END_US, two integers (µs on the recording's clock)") from None
    return t0, t1


def _paired_sample(a: argparse.Namespace):
    """The window of ``--paired FILE`` or of ``--imu FILE`` with ``--events``/``--video``; None without --window."""
    from .paired import from_aedat4, from_files

    if a.paired and (a.imu or a.events or a.video):
        raise ValueError("--paired FILE holds both the events and the IMU: give it without --imu, --events, --video")
    if a.window is None:
        if a.paired:
            raise ValueError("--paired needs --window START_US:END_US (µs on the file's clock)")
        return None
    if a.paired:
        return from_aedat4(a.paired, *_window(a.window))
    if not a.imu or not (a.events or a.video):
        raise ValueError("--window needs --paired FILE, or --imu FILE with --events FILE or --video FILE")
    return from_files(a.imu, *_window(a.window), events=a.events, video=a.video, imu_index=a.imu_index)


def cmd_generate(a: argparse.Namespace) -> int:
    from pathlib import Path

    from .families import draft_kind, is_imu_draft, load_draft, load_target
    from .sampling import Sampling
    from .speculative import GenerationConfig, generate
    from .templates import get_template
    from .vocab import drafter

    if a.template:
        get_template(a.template)  # an unknown name fails before any loading
    dev, dtype = _device(a.device), DTYPES[a.dtype]
    sample = _paired_sample(a)
    events, imu = (sample.events, sample) if sample else (a.events, a.imu)
    target = load_target(a.target, a.prompt, a.template, events, a.video, dtype, dev)
    if a.imu and not a.draft and not sample:
        raise ValueError("--imu is the draft's input: give an IMU draft with --draft")
    if sample and a.draft and not is_imu_draft(draft_kind(Path(a.draft))):
        imu = None  # a text-only draft next to a paired window
    draft = load_draft(a.draft, a.prompt, a.template, target.tokenizer, imu, a.imu_index, a.imu_encoder, a.chronos,
                       a.target, dtype, dev) if a.draft else None
    cfg = GenerationConfig(
        max_new_tokens=a.max_new_tokens,
        gamma=a.gamma,
        sampling=Sampling(a.temperature, a.top_k, a.top_p),
        seed=a.seed,
        eos_token_ids=tuple(target.decoder.config.eos_ids),
    )
    drafting = None
    if draft:
        drafting, pair = drafter(draft.decoder, draft.tokenizer, target.decoder, target.tokenizer)
        print(pair.note(cfg.sampling.greedy), file=sys.stderr)
    for side, role in ((target, "target"), (draft, "draft")):
        if side is None:
            continue
        need = len(side.prompt) + cfg.max_new_tokens + (cfg.gamma if draft else 0)
        limit = side.decoder.config.max_position_embeddings
        if need > limit:
            raise ValueError(
                f"the {role} prompt is {len(side.prompt)} tokens; with --max-new-tokens {a.max_new_tokens} and "
                f"--gamma {a.gamma} it needs {need} positions, more than the {role}'s max_position_embeddings {limit}"
            )
        if role == "draft" and drafting is not draft.decoder:  # its own tokens may outnumber the target's
            need = min(limit, need + cfg.max_new_tokens + cfg.gamma)
        side.decoder.setup_cache(need)
        if a.compile:
            side.decoder.compile_steps()
    g = generate(target.decoder, target.prompt, cfg, drafting, draft and draft.prompt)
    text = target.tokenizer.decode(g.tokens)
    if a.json:
        s = g.stats.to_dict()
        keys = ("steps", "accepted_per_step", "alpha", "tau", "draft_s", "target_s", "tokens_per_s")
        print(json.dumps({"text": text, "token_ids": g.tokens, "stats": {k: s[k] for k in keys}}))
    else:
        print(text)
        st = g.stats
        alpha = f"alpha {st.alpha:.3f}, " if st.alpha is not None else ""
        print(f"[{st.n_tokens} tokens, {st.steps} target steps, {alpha}tau {st.tau or 0:.2f}, "
              f"{st.tokens_per_s:.1f} tokens/s]", file=sys.stderr)
    return 0


def cmd_bench_engine(a: argparse.Namespace) -> int:
    from .bench import bench_engine, format_table

    r = bench_engine(a.target_shape, a.draft_shape, a.eps, a.alpha, a.gamma, a.prompt_len, a.new_tokens,
                     _device(a.device), DTYPES[a.dtype], a.seed, hf=not a.no_hf, compile=a.compile)
    print(json.dumps(r, indent=1) if a.json else format_table(r))
    return 0


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--compile", action="store_true",
                   help="compile the decode/verify steps (CUDA graphs; pays off on a GPU for long outputs)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imuspec", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="decode with a target, speculatively when a draft is given")
    g.add_argument("--target", required=True, help="Hugging Face LLaMA folder (config.json + weights + tokenizer)")
    g.add_argument("--draft", help="draft checkpoint: a LLaMA, LLaSA or SensorLLM folder or OneLLM's consolidated .pth "
                   "(without a tokenizer of its own it borrows the target's; with another vocabulary its proposals "
                   "are re-tokenised, imuspec.vocab); without it the target decodes alone")
    g.add_argument("--prompt", required=True)
    g.add_argument("--template", help="template for text-only sides (vicuna_v1, llava_v1, eventgpt_v1, v1); "
                   "default: the prompt as it is. Multimodal families use their own")
    g.add_argument("--events", help="event file for an EventGPT target (.npy, .aedat4, .h5, .txt)")
    g.add_argument("--video", help="video file for a Video-LLaVA target")
    g.add_argument("--imu", help="IMU recording for an IMU draft (any format `imuspec inspect-imu` reads)")
    g.add_argument("--paired", metavar="FILE", help="an AEDAT4 file holding events and IMU: the target reads the "
                   "window's events, the draft the IMU over the same window (needs --window)")
    g.add_argument("--window", metavar="START_US:END_US", help="the moment to describe, in µs on the recording's clock "
                   "(IMU seconds x 1e6 = event µs), with --paired or --imu and --events/--video. The project's trained "
                   "LLaSA drafts read the window's IMU; original LLaSA/OneLLM/SensorLLM checkpoints read their usual "
                   "input (6 s / 2 s / the recording) from the window's start, and fail if it is too short")
    g.add_argument("--imu-index", type=int, help="which recording of a multi-recording file (SensorCaps, .ts, .npz)")
    g.add_argument("--imu-encoder", help="LIMU-BERT state dict for a LLaSA draft that does not hold its encoder")
    g.add_argument("--chronos", help="Chronos folder for a SensorLLM draft")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--gamma", type=int, default=4, help="draft tokens per target forward")
    g.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    _run_options(g)
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True)
    e = bsub.add_parser("engine", help="ours vs transformers on a controlled-agreement pair")
    e.add_argument("--target-shape", default="cpu-100m", help="preset or key=value list (layers, hidden, heads, kv, ff, vocab)")
    e.add_argument("--draft-shape", default="cpu-5m")
    e.add_argument("--eps", type=float, help="block scale; default: calibrated to --alpha")
    e.add_argument("--alpha", type=float, default=0.8, help="greedy agreement to calibrate eps to")
    e.add_argument("--gamma", type=int, default=4)
    e.add_argument("--prompt-len", type=int, default=64)
    e.add_argument("--new-tokens", type=int, default=128)
    e.add_argument("--no-hf", action="store_true", help="skip transformers' generate and assisted generation")
    _run_options(e)
    e.set_defaults(func=cmd_bench_engine)

    events_cli.add_inspect_events_parser(sub)
    events_cli.add_simulate_events_parser(sub)
    add_inspect_imu_parser(sub)
    add_train_parser(sub)
    add_eval_parser(sub)
    add_demo_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
