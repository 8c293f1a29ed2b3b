"""Kernel launches and host time of growing a tree (``tree.grow``) per step, against a baseline revision.

On a GPU a tree's growth is bound by its launches: each eager op costs ~10–40 µs of host time, whatever its size.
The CPU proxy here counts the aten ops one ``grow`` dispatches (views aside: they launch nothing) and times it, both
split into the draft's forwards and the rest (the bookkeeping). Baseline: the package at ``--base``, imported beside
this one as in ``chain_grow.py``; the shipped IMU draft after the demo prompt, 1 pending token, one row, seeded.

    OMP_NUM_THREADS=1 python benchmarks/tree_grow.py [--repeats 5] [--base cfbf4bd]
"""

import argparse
import importlib
import json
import platform
import statistics
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

import torch
from chain_grow import baseline, draft_after_prompt
from torch.utils._python_dispatch import TorchDispatchMode


class Ops(TorchDispatchMode):
    """Counts the aten ops dispatched that are not views, inside the draft's forwards and outside them."""

    def __init__(self):
        super().__init__()
        self.counts, self.inside = Counter(), False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.counts["forwards" if self.inside else "rest"] += 1
        return func(*args, **(kwargs or {}))


def timed_draft(dec):
    """Wrap ``dec``'s forwards (``step``, which may call ``forward``, and ``forward``) so that their time and ops are
    kept apart: returns the list the seconds of each outermost forward go to."""
    spent, depth = [], [0]

    def wrap(f):
        def run(*args, **kwargs):
            mode = torch.utils._python_dispatch._get_current_dispatch_mode()
            depth[0] += 1
            if isinstance(mode, Ops):
                mode.inside = True
            t = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                depth[0] -= 1
                if not depth[0]:
                    spent.append(time.perf_counter() - t)
                    if isinstance(mode, Ops):
                        mode.inside = False
        return run

    dec.step, dec.forward = wrap(dec.step), wrap(dec.forward)
    return spent


def measure(mod, dec, spent, start, pending, shape, s, calls: int) -> dict:
    """Ops of one grow, and the fastest of ``calls`` grows: total and bookkeeping (total less the forwards), in ms."""
    def once():
        dec.rollback(start)
        spent.clear()
        t = time.perf_counter()
        mod.grow(dec, pending, start, shape, s, [torch.Generator().manual_seed(0)], torch.ones(1, dtype=torch.long))
        return time.perf_counter() - t, sum(spent)

    with torch.inference_mode():
        once()  # first calls make what is cached (a tree's layout)
        with Ops() as ops:
            once()
        runs = [once() for _ in range(calls)]
    return {"ops_rest": ops.counts["rest"], "ops_forwards": ops.counts["forwards"],
            "total_ms": min(t for t, _ in runs) * 1e3, "rest_ms": min(t - f for t, f in runs) * 1e3}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="cfbf4bd", help="git revision to compare against")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--calls", type=int, default=10, help="grows per version and repeat (the fastest is kept)")
    p.add_argument("--out", default=f"benchmarks/results/tree_grow_cpu_{date.today()}.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    import imuspec
    from imuspec.sampling import Sampling
    from imuspec.tree import TreeShape

    shapes = [("chain 8", TreeShape.chain(8))] + [(f"tree {n}", TreeShape.for_budget(n)) for n in (8, 16, 32, 64)]
    with tempfile.TemporaryDirectory() as tmp:
        baseline(a.base, tmp)
        importlib.import_module("imuspec.demo")
        mods = {"base": importlib.import_module("imuspec_base.tree"), "new": imuspec.tree}
        dec, start, pending = draft_after_prompt(imuspec, room=64)
        spent = timed_draft(dec)
        rows = []
        for name, shape in shapes:
            for mode, s in (("greedy", Sampling()), ("sampling", Sampling(temperature=1.0))):
                row = {"shape": name, "budget": shape.budget, "depth": shape.depth, "width": shape.width,
                       "sampling": mode}
                for _ in range(a.repeats):  # the versions take turns: the load drifts
                    for v, mod in mods.items():
                        for key, x in measure(mod, dec, spent, start, pending, shape, s, a.calls).items():
                            row.setdefault(f"{v}_{key}", []).append(x)
                rows.append(row)

    print(f"grow per step, shipped IMU draft, 1 row: aten ops (views aside) outside / inside the draft's forwards;"
          f" ms min / median of {a.repeats} (each the fastest of {a.calls})")
    print(f"{'shape':>8} {'mode':>8} {'ops base':>9} {'ops new':>8} {'fwd ops':>7} {'book ms base':>13} "
          f"{'book ms new':>12} {'grow ms base':>13} {'grow ms new':>12}")
    med = statistics.median
    for r in rows:
        cells = [f"{min(r[k]):.2f}/{med(r[k]):.2f}" for k in ("base_rest_ms", "new_rest_ms", "base_total_ms",
                                                              "new_total_ms")]
        print(f"{r['shape']:>8} {r['sampling']:>8} {r['base_ops_rest'][0]:>9} {r['new_ops_rest'][0]:>8} "
              f"{r['new_ops_forwards'][0]:>7} {cells[0]:>13} {cells[1]:>12} {cells[2]:>13} {cells[3]:>12}")
    result = {"date": str(date.today()), "machine": platform.processor() or platform.machine(), "threads": 1,
              "torch": torch.__version__, "base": a.base, "rows": rows}
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
