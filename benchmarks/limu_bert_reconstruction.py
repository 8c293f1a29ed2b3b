"""LIMU-BERT masked-span reconstruction on real IMU, and its encoder latency on CPU.

Windows: BasicMotions (10 Hz, train + test), the watch recordings (50 Hz) and the SensorCaps windows (10 Hz, 40
entries holding 4 distinct IMU arrays), each resampled to 20 Hz, cut into 120-sample windows and normalised as
LIMU-BERT's pretraining did (accelerometer m/s^2 / 9.8, gyroscope rad/s). Masks follow ``mask.json``: 15 % of the
120 steps (18) in spans of up to 10, zeroed, seeded per window and draw. MSE is over the masked steps and the 6
channels, in normalised units. Compared: the four pretrained encoders, the same network with random weights (mean of
3 seeds) and linear interpolation across the masked span. A second table masks one contiguous 10-step span.

    PYTHONPATH=src python benchmarks/limu_bert_reconstruction.py [--out benchmarks/results/...json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from imuspec.encoders.limu_bert import LimuBert, interpolate_masked, mask_windows, span_mask
from imuspec.imu.preprocess import limu_bert_windows
from imuspec.imu.readers import read_basicmotions_ts, read_sensorcaps_jsonl, read_watch_npz

FIX = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures"
WEIGHTS = ("hhar", "motion", "shoaib", "uci")


def datasets() -> dict[str, tuple[np.ndarray, int]]:
    """name -> (windows [W, 120, 6], mask draws per window)."""
    bm = [r for s in ("TRAIN", "TEST") for r in read_basicmotions_ts(FIX / "basicmotions" / f"BasicMotions_{s}.ts")]
    watch = read_watch_npz(FIX / "watch_imu" / "watch_imu.npz")
    caps = read_sensorcaps_jsonl(FIX / "llasa" / "sensorcaps_untrained_10hz.jsonl")
    stack = lambda recs: np.unique(np.concatenate([limu_bert_windows(r)[0] for r in recs]), axis=0)  # noqa: E731
    return {"basicmotions": (stack(bm), 5), "watch": (stack(watch), 1), "sensorcaps": (stack(caps), 50)}


def masks(n: int, kind: str, seed: int) -> np.ndarray:
    rngs = [np.random.default_rng([seed, i]) for i in range(n)]
    if kind == "mask.json":
        return np.stack([span_mask(120, r) for r in rngs])
    starts = [int(r.integers(1, 120 - 10)) for r in rngs]  # one 10-step span with known neighbours on both sides
    return np.stack([np.arange(s, s + 10) for s in starts])


def evaluate(x: np.ndarray, draws: int, kind: str, seed: int = 0) -> dict[str, float]:
    xs = np.repeat(x, draws, 0)
    pos = masks(len(xs), kind, seed)
    target = xs[np.arange(len(xs))[:, None], pos]
    inp, p = torch.tensor(mask_windows(xs, pos)), torch.tensor(pos)

    def mse(model: LimuBert) -> float:
        with torch.inference_mode():
            out = torch.cat([model.reconstruct(inp[i:i + 512], p[i:i + 512]) for i in range(0, len(inp), 512)])
        return float(((out.numpy() - target) ** 2).mean())

    res = {f"pretrained_{w}": mse(LimuBert.from_pretrained(FIX / "limu_bert" / f"pretrain_base_{w}_20_120.pt")) for w in WEIGHTS}
    rand = []
    for s in range(3):
        torch.manual_seed(s)
        rand.append(mse(LimuBert().eval()))
    res["random_init"] = float(np.mean(rand))
    res["interpolation"] = float(((interpolate_masked(xs, pos) - target) ** 2).mean())
    res["n_windows"], res["n_masks"] = len(x), len(xs)
    return res


def latency(n: int = 300) -> dict[str, float]:
    """Encoder forward (hidden states, what LLaSA uses) for one (1, 120, 6) window, and per window in a batch of 64."""
    model = LimuBert.from_pretrained(FIX / "limu_bert" / "pretrain_base_uci_20_120.pt")
    x1, x64 = torch.randn(1, 120, 6), torch.randn(64, 120, 6)
    out = {}
    with torch.inference_mode():
        for name, x, reps in (("batch1", x1, n), ("batch64", x64, max(10, n // 20))):
            for _ in range(10):
                model(x)
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                model(x)
                ts.append(time.perf_counter() - t)
            out[f"{name}_median_ms_per_window"] = 1e3 * float(np.median(ts)) / len(x)
            out[f"{name}_p90_ms_per_window"] = 1e3 * float(np.percentile(ts, 90)) / len(x)
    return out


def table(results: dict) -> str:
    cols = [f"pretrained_{w}" for w in WEIGHTS] + ["random_init", "interpolation"]
    lines = []
    for kind, per in results["reconstruction"].items():
        lines.append(f"\nmasking: {kind}   (MSE over masked steps, normalised units; lower is better)")
        lines.append(f"{'dataset':<14}{'windows':>8}{'masks':>7}" + "".join(f"{c.replace('pretrained_', 'pt_'):>14}" for c in cols))
        for name, r in per.items():
            best = min(r[c] for c in cols)
            cells = "".join(f"{('*' if r[c] == best else '') + f'{r[c]:.4f}':>14}" for c in cols)
            lines.append(f"{name:<14}{r['n_windows']:>8}{r['n_masks']:>7}{cells}")
    lat = results["latency_cpu"]
    lines.append(f"\nLIMU-BERT encoder on CPU ({results['machine']['torch_threads']} threads, load average "
                 f"{results['machine']['load_avg_1min_before_latency']:.1f}): "
                 f"{lat['batch1_median_ms_per_window']:.3f} ms per window at batch 1 (p90 {lat['batch1_p90_ms_per_window']:.3f}), "
                 f"{lat['batch64_median_ms_per_window']:.3f} ms per window at batch 64")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "limu_bert_reconstruction_cpu_2026-11-26.json"))
    a = ap.parse_args()
    load = os.getloadavg()[0]  # the CPU is shared: latency is only as good as the machine is idle
    lat = latency()
    data = datasets()
    results = {
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "load_avg_1min_before_latency": load},
        "reconstruction": {kind: {name: evaluate(x, draws, kind) for name, (x, draws) in data.items()}
                           for kind in ("mask.json", "one_span_10")},
        "latency_cpu": lat,
    }
    print(table(results))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1))
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
