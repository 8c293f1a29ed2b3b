"""Per-activity view of an ``imuspec eval --synthetic`` run: how often the target names the activity and the scene
the world used, and the acceptance of each draft, per activity (which words does IMU context help with?).

    python benchmarks/eval_breakdown.py benchmarks/results/eval_synthetic/samples.jsonl
"""

import json
import sys
from collections import defaultdict
from pathlib import Path


def main(path: str) -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    groups = defaultdict(list)
    for r in rows:
        groups[r["meta"]["activity"]].append(r)
    table = {}
    print(f"{'activity':<15} {'n':>4} {'target: activity':>17} {'scene':>6} {'alpha imu':>10} {'alpha text':>11}")
    for name, rs in sorted(groups.items()) + [("all", rows)]:
        n = len(rs)
        t = {"n": n,
             "target_names_activity": sum(r["meta"]["activity"] in r["target"]["text"] for r in rs) / n,
             "target_names_scene": sum(r["meta"]["description"] in r["target"]["text"] for r in rs) / n,
             "alpha_imu": sum(r["imu"]["alpha"] for r in rs) / n, "alpha_text": sum(r["text"]["alpha"] for r in rs) / n}
        table[name] = t
        print(f"{name:<15} {n:>4} {t['target_names_activity']:>17.2f} {t['target_names_scene']:>6.2f} "
              f"{t['alpha_imu']:>10.3f} {t['alpha_text']:>11.3f}")
    out = Path(path).with_name("breakdown.json")
    out.write_text(json.dumps(table, indent=1))
    print(f"-> {out}")


if __name__ == "__main__":
    main(sys.argv[1])
