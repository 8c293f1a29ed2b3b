"""The readers' fuzz properties (tests/test_fuzz_readers.py) run deeper: many examples per reader, fresh randomness.

Every reader must read a random or mutated file or raise the project's own one-line error naming it, within the
hang limit and the memory bound of the test module. This runs that module through pytest with
``IMUSPEC_FUZZ_EXAMPLES`` set and derandomisation off, and records per reader the examples, the time and the outcome.

Usage: python benchmarks/fuzz_readers.py [--examples 1000] [--out benchmarks/results/fuzz_readers_cpu_2026-12-01.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=1000, help="examples per reader")
    ap.add_argument("--out", default="benchmarks/results/fuzz_readers_cpu_2026-12-01.json")
    a = ap.parse_args()
    env = dict(os.environ, IMUSPEC_FUZZ_EXAMPLES=str(a.examples), IMUSPEC_FUZZ_RANDOM="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT / "src"))
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "fuzz.xml"
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                            "tests/test_fuzz_readers.py", "-k", "fuzzed"], cwd=ROOT, env=env, capture_output=True,
                           text=True)
        wall = time.perf_counter() - t
        cases = ET.parse(xml).getroot().iter("testcase")
        rows = [dict(reader=c.get("name").split("[", 1)[1].rstrip("]"), examples=a.examples,
                     seconds=round(float(c.get("time")), 1),
                     outcome="failed: " + (c.find("failure").get("message") or "")[:300]
                     if c.find("failure") is not None else "passed") for c in cases]
    print(f"{'reader':16s} {'examples':>8s} {'seconds':>8s}  outcome")
    for r in rows:
        print(f"{r['reader']:16s} {r['examples']:8d} {r['seconds']:8.1f}  {r['outcome']}")
    result = dict(benchmark="fuzz_readers", date=time.strftime("%Y-%m-%d"), machine=platform.processor() or
                  platform.machine(), cpus=os.cpu_count(), wall_s=round(wall, 1), rows=rows,
                  command=" ".join(["python"] + sys.argv))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {a.out} ({wall:.0f} s)")
    if p.returncode:
        print(p.stdout[-4000:])
        raise SystemExit(1)


if __name__ == "__main__":
    main()
