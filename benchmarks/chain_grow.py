"""Per-step cost of drafting a chain (``tree.grow``, width 1) and the demo's speed-up, against a baseline revision.

The baseline is the package at ``--base`` (default: main before the chain fast path), extracted from git into a
temporary folder as ``imuspec_base`` and imported in the same process, so every timing is paired with its baseline's
under the same load. grow: the shipped IMU draft after its demo prompt, 1 pending token, one row; each repeat times
``--calls`` grows of each version in turn (and γ bare draft steps, the forwards' share), keeping the fastest.

    OMP_NUM_THREADS=1 python benchmarks/chain_grow.py [--repeats 5] [--base d1f58f4]
"""

import argparse
import importlib
import json
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import date
from io import BytesIO
from pathlib import Path

import torch

DEMO_KEYS = ("speedup", "alpha", "tau", "target_tokens_per_s", "speculative_tokens_per_s", "identical_to_target")


def baseline(rev: str, folder: str):
    """The package as it was at ``rev``, importable as ``imuspec_base``."""
    tar = subprocess.run(["git", "archive", rev, "src/imuspec"], capture_output=True, check=True).stdout
    tarfile.open(fileobj=BytesIO(tar)).extractall(folder, filter="data")
    Path(folder, "src", "imuspec").rename(Path(folder, "imuspec_base"))
    sys.path.insert(0, folder)
    return importlib.import_module("imuspec_base")


def draft_after_prompt(pkg, room: int = 16):
    """The shipped IMU draft with the demo's prompt prefilled, ``room`` cache slots after it: (decoder, prompt
    length, first pending token [1, 1])."""
    from imuspec.world import QUERY, make_sample

    fam = importlib.import_module(f"{pkg.__name__}.families")
    target = fam.open_target(pkg.demo.WEIGHTS / "target")
    draft = fam.open_draft(pkg.demo.WEIGHTS / "imu_draft", None, target.tokenizer)
    prompt = draft.embed(QUERY, make_sample(pkg.demo.DEMO_SEED))
    draft.decoder.setup_cache(len(prompt) + room)
    with torch.inference_mode():
        draft.decoder(embeds=prompt[None])
    return draft.decoder, len(prompt), torch.tensor([[5]])


def time_grow(mods, dec, start, pending, shape, s, calls: int) -> list[float]:
    """Per module, the fastest of ``calls`` grows in seconds, the modules taking turns call by call (the load
    drifts); last, the fastest of γ bare draft steps (the forwards a chain needs)."""
    best = [float("inf")] * (len(mods) + 1)
    with torch.inference_mode():
        for _ in range(calls):
            for i, mod in enumerate(mods):
                dec.rollback(start)
                gens = [torch.Generator().manual_seed(0)]
                t = time.perf_counter()
                mod.grow(dec, pending, start, shape, s, gens, torch.ones(1, dtype=torch.long))
                best[i] = min(best[i], time.perf_counter() - t)
            dec.rollback(start)
            t = time.perf_counter()
            for _ in range(shape.depth):
                dec.step(pending)
            best[-1] = min(best[-1], time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="d1f58f4", help="git revision to compare against")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--calls", type=int, default=20, help="grows per version and repeat (the fastest is kept)")
    p.add_argument("--demo-repeats", type=int, default=3, help="paired demo runs per version (0: none)")
    p.add_argument("--out", default=f"benchmarks/results/chain_grow_cpu_{date.today()}.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    import imuspec
    from imuspec.sampling import Sampling
    from imuspec.tree import TreeShape

    with tempfile.TemporaryDirectory() as tmp:
        base = baseline(a.base, tmp)
        importlib.import_module("imuspec_base.demo")
        importlib.import_module("imuspec.demo")
        dec, start, pending = draft_after_prompt(imuspec)
        rows = []
        for gamma in (4, 8):
            for name, s in (("greedy", Sampling()), ("sampling", Sampling(temperature=1.0))):
                shape = TreeShape.chain(gamma)
                runs = {"base": [], "new": [], "forwards": []}
                mods = (importlib.import_module("imuspec_base.tree"), imuspec.tree)
                for _ in range(a.repeats):
                    for k, v in zip(runs, time_grow(mods, dec, start, pending, shape, s, a.calls)):
                        runs[k].append(v)
                rows.append({"gamma": gamma, "sampling": name, **{k: [x * 1e3 for x in v] for k, v in runs.items()}})
        demo = []
        for _ in range(a.demo_repeats):
            for version, pkg in (("base", base), ("new", imuspec)):
                r = pkg.demo.run_demo(plot_path=None, repeats=3, threads=1)
                demo.append({"version": version, **{k: r[k] for k in DEMO_KEYS}})

    print(f"grow of a chain, shipped IMU draft, ms per grow: min / median of {a.repeats} "
          f"(each the fastest of {a.calls})")
    print(f"{'γ':>2} {'mode':>8} {'base':>15} {'new':>15} {'forwards':>15} {'base/new':>9}")
    for r in rows:
        cell = {k: f"{min(r[k]):.2f} / {statistics.median(r[k]):.2f}" for k in ("base", "new", "forwards")}
        r["base_over_new_median"] = statistics.median(b / n for b, n in zip(r["base"], r["new"]))
        print(f"{r['gamma']:>2} {r['sampling']:>8} {cell['base']:>15} {cell['new']:>15} {cell['forwards']:>15} "
              f"{r['base_over_new_median']:>8.2f}x")
    for version in ("base", "new"):
        sp = [d["speedup"] for d in demo if d["version"] == version]
        if sp:
            print(f"demo speed-up {version}: min {min(sp):.2f} median {statistics.median(sp):.2f} max {max(sp):.2f}"
                  f" (identical: {all(d['identical_to_target'] for d in demo if d['version'] == version)})")
    result = {"date": str(date.today()), "machine": platform.processor() or platform.machine(), "threads": 1,
              "torch": torch.__version__, "base": a.base, "grow_ms": rows, "demo": demo}
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
