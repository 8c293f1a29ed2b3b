"""Wall time of ``imuspec demo`` as a user runs it (a fresh process: imports, loading, the sample, decoding, the plot).

    python benchmarks/demo_wall.py [--repeats 3]
"""

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=f"benchmarks/results/demo_wall_cpu_{date.today()}.json")
    a = p.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.repeats):
            t = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "imuspec.cli", "demo", "--json"], cwd=tmp, capture_output=True,
                               text=True, check=True)
            runs.append({"wall_s": time.perf_counter() - t, **json.loads(r.stdout)})
    print(f"{'run':>3} {'wall s':>7} {'alpha':>6} {'tau':>5} {'target tok/s':>13} {'spec tok/s':>11} {'speed-up':>9} identical")
    for i, r in enumerate(runs):
        print(f"{i:>3} {r['wall_s']:>7.2f} {r['alpha']:>6.3f} {r['tau']:>5.2f} {r['target_tokens_per_s']:>13.1f} "
              f"{r['speculative_tokens_per_s']:>11.1f} {r['speedup']:>9.2f} {r['identical_to_target']}")
    result = {"date": str(date.today()), "machine": platform.processor() or platform.machine(),
              "cpus": torch.get_num_threads(), "torch": torch.__version__, "runs": runs,
              "max_wall_s": max(r["wall_s"] for r in runs)}
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"max wall {result['max_wall_s']:.2f} s -> {a.out}")


if __name__ == "__main__":
    main()
