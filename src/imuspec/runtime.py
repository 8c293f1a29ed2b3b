"""Where and how the commands run: device, dtype and CPU thread count, shared by every command and its options.

Light on purpose (torch is imported only inside functions), so ``cli`` and the commands' modules can import it while
``imuspec --help`` stays fast.

Threads: a decode step of a small model is a few small matrix-vector products; split over threads it waits on their
synchronisation, and on a machine busy with other jobs OpenMP's spinning threads make it far slower (1.4 tokens/s
against 14.9 for SmolLM2-135M on a loaded 2-core machine). So a command gives a step one thread per
``WEIGHTS_PER_THREAD`` parameters × tokens it processes, at most the cores this process may use.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")
WEIGHTS_PER_THREAD = 250_000_000  # parameters × tokens of one step worth a thread of its own


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def device(name: str | None) -> str:
    """``name``, or cuda where present."""
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def cores() -> int:
    """The cores this process may use, shared with the other processes of a torchrun group on the host."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, n // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def threads_for(params: int, tokens_per_step: int = 1) -> int:
    """Threads for a step over ``params`` weights and ``tokens_per_step`` tokens: one where the step is too small
    to split."""
    return max(1, min(cores(), params * tokens_per_step // WEIGHTS_PER_THREAD))


def set_threads(requested: int | None, params: int, tokens_per_step: int = 1) -> int:
    """Set torch's CPU threads: ``requested`` (``--threads``), else what ``OMP_NUM_THREADS`` says when the user set
    it, else :func:`threads_for`. Returns the count in force."""
    import torch

    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads {requested}: expected a positive number of threads")
        torch.set_num_threads(requested)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(threads_for(params, tokens_per_step))
    return torch.get_num_threads()


def n_weights(*modules) -> int:
    """Parameters of the given modules (None skipped)."""
    return sum(p.numel() for m in modules if m is not None for p in m.parameters())


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1 (argparse names the flag in its error)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def add_run_options(p: argparse.ArgumentParser, seed: int | None = 0) -> None:
    """--device, --dtype, --threads (and --seed unless ``seed`` is None)."""
    if seed is not None:
        p.add_argument("--seed", type=int, default=seed, help="random seed (sampling, synthetic weights)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="weights and activations")
    p.add_argument("--threads", type=positive, metavar="N", help="CPU threads (default: OMP_NUM_THREADS when set, else "
                   f"one per {WEIGHTS_PER_THREAD // 10**6}M parameters x tokens of a step, at most the cores)")


def cache_dir() -> Path:
    """The user's cache folder for imuspec (``$IMUSPEC_CACHE``, else ``$XDG_CACHE_HOME/imuspec``, else ~/.cache)."""
    if os.environ.get("IMUSPEC_CACHE"):
        return Path(os.environ["IMUSPEC_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imuspec"
