"""Issue 14, figure (b): the shipped event target as "the user's target", an IMU draft distilled against it with
``imuspec distill --draft-init target:2`` (its first 2 layers, the shipped LIMU-BERT, a fresh projector) on world
samples plus the real AEDAT4 recording, and its ``--no-imu`` twin; against the shipped IMU draft (trained from
scratch by the recipe) and the shipped text draft. α per pair on held-out synthetic moments (seeds from 1,000,000,
never distilled on) and on the real recording's 50 ms windows (which the distillation saw, unlabeled, as a user's
own recording), with 95 % Student-t intervals, by ``imuspec eval``.

    OMP_NUM_THREADS=1 PYTHONPATH=src python3 benchmarks/distill_imu.py [--world 150] [--synthetic 30]
"""

import argparse
import json
import shutil
import time
from pathlib import Path

from imuspec.cli import main as cli
from imuspec.distill import DistillConfig, distill
from imuspec.world import QUERY

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "src" / "imuspec" / "weights"
AEDAT4 = ROOT.parent / "shared" / "fixtures" / "aedat4" / "davis_sample_short.aedat4"
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=150)
    ap.add_argument("--synthetic", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--work", default="/tmp/imuspec_distill_imu")
    a = ap.parse_args()
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "q.txt").write_text(QUERY + "\n")
    cfg = DistillConfig(window_us=50_000, hop_us=10_000, holdout=0.2, epochs=a.epochs, max_new_tokens=40)
    data = [f"world:{a.world}", str(AEDAT4)]
    runs = {}
    runs["imu"] = distill(WEIGHTS / "target", data, work / "q.txt", "target:2", "limu-bert", False, cfg, work / "imu")
    shutil.copytree(work / "imu" / "teacher", work / "text" / "teacher")  # the same teacher answers
    runs["text"] = distill(WEIGHTS / "target", data, work / "q.txt", "target:2", None, True, cfg, work / "text", resume=True)
    pairs = {"distilled target:2": (work / "imu" / "draft", work / "text" / "draft"),
             "shipped (from scratch)": (WEIGHTS / "imu_draft", WEIGHTS / "text_draft")}
    result = {"machine": "2-core AMD EPYC CPU, one thread", "date": time.strftime("%Y-%m-%d"), "config": vars(a),
              "distill": {k: {n: r[n] for n in ("seconds", "peak_rss_mb", "teacher", "items", "holdout", "moments",
                                                  "recordings")} | {"heldout_alpha": [(h["epoch"], h["mean"]) for h in
                                                                                      r["heldout_alpha"]]}
                          for k, r in runs.items()}, "eval": {}}
    for name, (imu, text) in pairs.items():
        for src, args in (("synthetic", ["--synthetic", str(a.synthetic)]), ("aedat4", ["--aedat4", str(AEDAT4)])):
            out = work / "eval" / f"{name.split()[0]}_{src}"
            cli(["eval", "--target", str(WEIGHTS / "target"), "--draft", str(imu), "--text-draft", str(text), *args,
                 "--out", str(out), "--max-new-tokens", "40"])
            s = json.loads((out / "summary.json").read_text())
            result["eval"][f"{name} / {src}"] = {m: s["modes"][m] for m in s["modes"]} | {
                "imu_minus_text": s.get("imu_minus_text"), "n_samples": s["n_samples"]}
    print(f"{'pair / data':40} {'α IMU draft':>28} {'α text draft':>28}")
    for k, v in result["eval"].items():
        cell = lambda d: f"{d['mean']:.3f} [{d['lo']:.3f}, {d['hi']:.3f}]"  # noqa: E731
        print(f"{k:40} {cell(v['imu']['alpha']):>28} {cell(v['text']['alpha']):>28}")
    for k, r in result["distill"].items():
        print(f"distill {k}: seconds {json.dumps({n: round(x, 1) for n, x in r['seconds'].items()})}, teacher "
              f"{r['teacher']['tokens_per_s'] or 0:.1f} tokens/s, peak RSS MB {r['peak_rss_mb']}, held-out α per epoch "
              f"{[(e, round(m, 3)) for e, m in r['heldout_alpha']]}")
    path = RESULTS / f"distill_imu_cpu_{time.strftime('%Y-%m-%d')}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
