"""Aten ops (views aside) of ``Decoder.keep``: what a tree step adds after its verify, moving the accepted path's
K/V into place layer by layer (a chain's accepted tokens are already in place and need none). On a GPU each eager
op costs ~10-40 µs of host time, so this counts launches for the Vicuna-7B layer count, on the CPU with tiny
layers (the count does not depend on their width).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/tree_keep_ops.py
"""

import argparse
import json
from datetime import date
from pathlib import Path

import torch
from tree_grow import Ops

from imuspec.synthetic import controlled_pair, parse_shape


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, nargs="+", default=[2, 32])
    p.add_argument("--path", type=int, nargs="+", default=[5, 8], help="accepted-path lengths (a tree's depth)")
    p.add_argument("--out", default=f"benchmarks/results/tree_keep_ops_cpu_{date.today()}.json")
    a = p.parse_args()
    rows = []
    for layers in a.layers:
        shape = parse_shape(f"layers={layers},hidden=64,heads=4,kv=4,ff=128,vocab=512")
        dec, _ = controlled_pair(shape, shape, 0.05, 0, "cpu", torch.float32)
        dec.setup_cache(64)
        for n in a.path:
            src = torch.arange(20, 20 + 2 * n, 2)[None]  # a path's scattered slots, moved to [10, 10 + n)
            with torch.inference_mode(), Ops() as ops:
                dec.keep(src, 10)
            rows.append({"layers": layers, "path": n, "ops": ops.counts["rest"]})
            print(f"layers {layers:3}  path {n}: {ops.counts['rest']} aten ops per keep")
    Path(a.out).write_text(json.dumps({"date": str(date.today()), "torch": torch.__version__, "rows": rows}, indent=1))
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
