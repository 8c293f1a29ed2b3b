"""The imuspec command line. Each command's module is imported only when that command runs or shows its help, so
`imuspec --help` answers at once (no torch)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import warnings

from .runtime import add_run_options, device, n_weights, positive, set_threads, torch_dtype

DEFAULT_NEW_TOKENS = 128

DESCRIPTION = ("cross-modal speculative decoding: a cheap IMU-conditioned draft, an event-camera or video target, "
               "and exactly the target's own answer. 'imuspec COMMAND --help' lists a command's options.")

# command: (module, the function that adds its arguments to its parser, what it does)
COMMANDS = {
    "generate": ("imuspec.cli", "add_generate_parser", "decode with a target, speculatively when a draft is given"),
    "bench": ("imuspec.cli", "add_bench_parser", "benchmarks: the engine against transformers"),
    "inspect-events": ("imuspec.events.cli", "add_inspect_events_parser",
                       "summarise an event file; optionally write EventGPT's frames as PNGs"),
    "simulate-events": ("imuspec.events.cli", "add_simulate_events_parser",
                        "turn a video into an event file (ESIM / v2e-style simulator)"),
    "inspect-imu": ("imuspec.imu.inspect", "add_inspect_imu_parser", "read an IMU file and say what was read"),
    "train": ("imuspec.train", "add_train_parser",
              "train the project's pair from its synthetic world (runs under torchrun)"),
    "distill": ("imuspec.distill", "add_distill_parser",
                "distil a cheap draft against your target on unlabeled recordings (runs under torchrun)"),
    "eval": ("imuspec.evaluate", "add_eval_parser",
             "target alone vs IMU draft vs text draft on paired samples: alpha, tau, c, speed-up"),
    "demo": ("imuspec.demo", "add_demo_parser",
             "the shipped IMU draft speeding up the shipped event target on an embedded sample"),
}


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if not action.option_strings or "default" in text or d is None or d is argparse.SUPPRESS or isinstance(d, bool):
            return text
        return f"{text} (default: %(default)s)"


def _window(text: str) -> tuple[int, int]:
    try:
        t0, t1 = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--window {text!r}: expected START_US:END_US, two integers (µs on the recording's clock)") from None
    return t0, t1


def _count_or_auto(text: str) -> int | str:
    """--gamma / --tree: a positive integer or 'auto'."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None


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
    from .templates import TEMPLATES, StopStrings, check_template, get_template
    from .vocab import drafter

    check_template(a.template)  # an unknown name fails before any loading
    dev, dtype = device(a.device), torch_dtype(a.dtype)
    sample = _paired_sample(a)
    events, imu = (sample.events, sample) if sample else (a.events, a.imu)
    target = load_target(a.target, a.prompt, a.template, events, a.video, dtype, dev)
    if a.imu and not a.draft and not sample:
        raise ValueError("--imu is the draft's input: give an IMU draft with --draft")
    if sample and a.draft and not is_imu_draft(draft_kind(Path(a.draft))):
        imu = None  # a text-only draft next to a paired window
    draft = load_draft(a.draft, a.prompt, a.template, target.tokenizer, imu, a.imu_index, a.imu_encoder, a.chronos,
                       a.target, dtype, dev, a.draft_layers) if a.draft else None
    set_threads(a.threads, n_weights(target.decoder, draft and draft.decoder))
    sides = [(s, role) for s, role in ((target, "target"), (draft, "draft")) if s is not None]
    shape = GenerationConfig(gamma=a.gamma, tree=a.tree, adapt=not a.no_adapt)
    slots = shape.draft_slots if draft else 0  # draft tokens a verify step holds beyond the output
    room = min(s.decoder.config.max_position_embeddings - len(s.prompt) - slots for s, _ in sides)
    max_new = a.max_new_tokens or max(1, min(DEFAULT_NEW_TOKENS, room))
    if a.max_new_tokens is None and 1 <= room < DEFAULT_NEW_TOKENS:
        print(f"[--max-new-tokens {max_new}: as many as the models hold after the prompt]", file=sys.stderr)
    named = a.template in TEMPLATES
    cfg = GenerationConfig(
        max_new_tokens=max_new,
        gamma=a.gamma,
        sampling=Sampling(a.temperature, a.top_k, a.top_p),
        seed=a.seed,  # EOS: the target's own (config.json, generation_config.json)
        stop=StopStrings(target.tokenizer, get_template(a.template).stop_strings) if named else None,
        tree=a.tree,
        adapt=not a.no_adapt,
    )
    drafting = None
    if draft:
        drafting, pair = drafter(draft.decoder, draft.tokenizer, target.decoder, target.tokenizer)
        print(pair.note(cfg.sampling.greedy), file=sys.stderr)
    for side, role in sides:
        need = len(side.prompt) + cfg.max_new_tokens + slots
        limit = side.decoder.config.max_position_embeddings
        if need > limit:
            counted = f"--max-new-tokens {cfg.max_new_tokens}" + (f" and {slots} draft slots (--gamma, --tree)"
                                                                   if slots else "")
            raise ValueError(f"the {role} prompt is {len(side.prompt)} tokens; with {counted} it needs {need} "
                             f"positions, more than the {role}'s max_position_embeddings {limit}")
        if role == "draft" and drafting is not draft.decoder:  # its own tokens may outnumber the target's
            need = min(limit, need + cfg.max_new_tokens + slots)
        side.decoder.setup_cache(need)
        if a.compile:
            side.decoder.compile_steps()
    g = generate(target.decoder, target.prompt, cfg, drafting, draft and draft.prompt)
    text = target.tokenizer.decode(g.tokens)
    if g.stats.fallback:
        from .adapt import fallback_message

        print(fallback_message(g.stats.fallback), file=sys.stderr)
    if a.json:
        s = g.stats.to_dict()
        keys = ("steps", "accepted_per_step", "budget_per_step", "alpha", "tau", "draft_s", "target_s", "tokens_per_s")
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
    from .synthetic import n_params, parse_shape

    set_threads(a.threads, n_params(parse_shape(a.target_shape)))

    t0 = time.perf_counter()
    say = lambda phase: print(f"[{time.perf_counter() - t0:6.1f} s] {phase}", file=sys.stderr, flush=True)  # noqa: E731
    r = bench_engine(a.target_shape, a.draft_shape, a.eps, a.alpha, a.gamma, a.prompt_len, a.new_tokens,
                     device(a.device), torch_dtype(a.dtype), a.seed, hf=not a.no_hf, compile=a.compile, tree=a.tree,
                     batch=a.batch, say=say)
    print(json.dumps(r, indent=1) if a.json else format_table(r))
    return 0


def _run_options(p: argparse.ArgumentParser) -> None:
    add_run_options(p)
    p.add_argument("--compile", action="store_true",
                   help="compile the decode/verify steps (CUDA graphs; pays off on a GPU for long outputs)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_generate_parser(g: argparse.ArgumentParser) -> None:
    g.add_argument("--target", required=True, help="Hugging Face LLaMA folder (config.json + weights + tokenizer)")
    g.add_argument("--draft", help="draft checkpoint: a LLaMA, LLaSA or SensorLLM folder, OneLLM's consolidated .pth "
                   "or a folder holding it (without a tokenizer of its own it borrows the target's; with another "
                   "vocabulary its proposals are re-tokenised, imuspec.vocab); without it the target decodes alone")
    g.add_argument("--prompt", required=True, help="the question or text to continue")
    g.add_argument("--template", help="template for text-only sides: vicuna_v1, llava_v1, eventgpt_v1, v1, sensorllm; "
                   "'chat': the tokenizer's chat template (a user turn + the generation prompt); 'plain': the prompt as "
                   "it is (default: chat where tokenizer_config.json has a chat template, else plain). BOS goes in "
                   "front where the tokenizer adds one (add_bos_token, else its post-processor). It stops at the "
                   "model's EOS and at a named template's end-of-turn text. Multimodal families use their own")
    g.add_argument("--events", help="event file for an EventGPT target (.npy, .aedat4, .h5, .txt)")
    g.add_argument("--video", help="video file for a Video-LLaVA target")
    g.add_argument("--imu", help="IMU recording for an IMU draft (any format 'imuspec inspect-imu' reads)")
    g.add_argument("--paired", metavar="FILE", help="an AEDAT4 file holding events and IMU: the target reads the "
                   "window's events, the draft the IMU over the same window (needs --window)")
    g.add_argument("--window", metavar="START_US:END_US", help="the moment to describe, in µs on the recording's clock "
                   "(IMU seconds x 1e6 = event µs), with --paired or --imu and --events/--video. The project's trained "
                   "LLaSA drafts read the window's IMU; original LLaSA/OneLLM/SensorLLM checkpoints read their usual "
                   "input (6 s / 2 s / the recording) from the window's start, and fail if it is too short")
    g.add_argument("--imu-index", type=int, help="which recording of a multi-recording file (SensorCaps, .ts, .npz)")
    g.add_argument("--imu-encoder", help="LIMU-BERT state dict for a LLaSA draft that does not hold its encoder")
    g.add_argument("--chronos", help="Chronos folder for a SensorLLM draft")
    g.add_argument("--draft-layers", type=int, metavar="K", help="keep the draft LLM's first K layers (LLaMA family)")
    g.add_argument("--max-new-tokens", type=positive, help=f"most tokens to generate (default: {DEFAULT_NEW_TOKENS}, "
                   "or fewer where the models' max_position_embeddings hold fewer after the prompt)")
    g.add_argument("--gamma", type=_count_or_auto, default=4, help="draft tokens per target forward, or auto")
    g.add_argument("--tree", type=_count_or_auto, help="verify a token tree of N draft nodes per target forward "
                   "(EAGLE-2), or auto: chains or trees sized to the measured costs")
    g.add_argument("--no-adapt", action="store_true", help="keep --gamma / --tree fixed: no target-only fallback "
                   "when drafting does not pay (for benchmarks)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    g.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    g.add_argument("--top-p", type=float, default=1.0, help="sample from the smallest set holding this probability")
    _run_options(g)
    g.set_defaults(func=cmd_generate)


def add_bench_parser(b: argparse.ArgumentParser) -> None:
    bsub = b.add_subparsers(dest="bench", required=True)
    e = bsub.add_parser("engine", help="ours vs transformers on a controlled-agreement pair",
                        description="ours vs transformers on a controlled-agreement pair", formatter_class=HelpFormatter)
    e.add_argument("--target-shape", default="cpu-100m", help="preset (vicuna-7b, llama-68m, cpu-100m, cpu-5m) or "
                   "key=value list (layers, hidden, heads, kv, ff, vocab)")
    e.add_argument("--draft-shape", default="cpu-5m", help="preset or key=value list, as --target-shape")
    e.add_argument("--eps", type=float, help="block scale; default: calibrated to --alpha")
    e.add_argument("--alpha", type=float, default=0.8, help="greedy agreement to calibrate eps to")
    e.add_argument("--gamma", type=positive, default=4, help="draft tokens per target forward")
    e.add_argument("--tree", type=_count_or_auto, help="a token tree of N draft nodes per step (or auto) instead of a chain")
    e.add_argument("--prompt-len", type=positive, default=64, help="random prompt tokens")
    e.add_argument("--new-tokens", type=positive, default=128, help="tokens to generate")
    e.add_argument("--no-hf", action="store_true", help="skip transformers' generate and assisted generation")
    e.add_argument("--batch", type=int, default=1, help="rows decoded at once (prompts of different lengths), "
                   "against transformers' batched generate")
    _run_options(e)
    e.set_defaults(func=cmd_bench_engine)


def _command(argv: list[str]) -> str | None:
    """The command named on the command line (the first word; the top level has no options but --help)."""
    return next((w for w in argv if not w.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; of the commands, only the one ``argv`` names is built in full (all of them without ``argv``)."""
    p = argparse.ArgumentParser(prog="imuspec", description=DESCRIPTION,
                                formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = _command(argv) if argv is not None else None
    for name, (module, adder, summary) in COMMANDS.items():
        c = sub.add_parser(name, help=summary, description=summary, formatter_class=HelpFormatter)
        if argv is None or name == wanted:
            getattr(importlib.import_module(module), adder)(c)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser(argv).parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return a.func(a)
        except (ValueError, KeyError, FileNotFoundError) as e:
            print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
            return 2


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """On the command line a warning (a recording read only in part, …) is one line, as an error is."""
    print(f"warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
