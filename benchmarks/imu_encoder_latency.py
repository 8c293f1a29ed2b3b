"""Per-window latency of the OneLLM IMU encoder and of Chronos encoders on this machine (batch 1, fp32).

Windows: OneLLM's (6, 400) = 2 s at 200 Hz; Chronos/SensorLLM's six channels of 200 samples (USC-HAD: 2 s at
100 Hz), tokenization included. OneLLM and chronos-t5-large are real-sized with random weights (latency does not
depend on the values); chronos_dummy is the real fixture. Prints a table and writes JSON.

    python benchmarks/imu_encoder_latency.py [--repeats 2] [--out benchmarks/results/FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from imuspec.encoders.chronos import ChronosEncoder, ChronosTokenizerConfig
from imuspec.encoders.onellm_imu import OneLLMIMUConfig, OneLLMIMUEncoder

ROOT = Path(__file__).resolve().parents[1]
CHRONOS_DUMMY = ROOT / ".." / "shared" / "fixtures" / "chronos_dummy"


def random_init(module: torch.nn.Module) -> torch.nn.Module:
    """Allocate without torch's (slow) initialisers, then fill with N(0, 0.02): finite, realistic magnitudes."""
    module = module.to_empty(device="cpu")
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.02)
    return module.eval()


def onellm_imu() -> OneLLMIMUEncoder:
    with torch.device("meta"):
        enc = OneLLMIMUEncoder(OneLLMIMUConfig())  # D 1024, 16 heads, 24 CLIP-L blocks, 3 experts × 8 blocks
    return random_init(enc)


def chronos_t5_large() -> ChronosEncoder:
    from transformers import T5Config, T5EncoderModel

    # amazon/chronos-t5-large's config.json (encoder side)
    cfg = T5Config(vocab_size=4096, d_model=1024, d_kv=64, d_ff=4096, num_layers=24, num_heads=16,
                   feed_forward_proj="relu", relative_attention_num_buckets=32, relative_attention_max_distance=128)
    with torch.device("meta"):
        t5 = T5EncoderModel(cfg)
    return ChronosEncoder(random_init(t5), ChronosTokenizerConfig())


def time_it(fn, repeats: int) -> list[float]:
    with torch.inference_mode():
        fn()  # warm-up
        out = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "imu_encoder_latency_cpu.json")
    a = ap.parse_args()
    torch.manual_seed(0)
    imu = torch.randn(1, 6, 400) * 3
    series = torch.randn(6, 200) * 3
    threads = torch.get_num_threads()
    dummy = lambda: ChronosEncoder.from_pretrained(CHRONOS_DUMMY)  # noqa: E731
    # a tiny model on shared cores is dominated by thread hand-offs, so it is also timed on one thread
    cases = [("OneLLM IMU encoder", onellm_imu, imu, threads, "(6, 400): 2 s at 200 Hz → 32 × 4096"),
             ("Chronos chronos_dummy", dummy, series, threads, "6 × 200 samples → 6 × 201 × 64"),
             ("Chronos chronos_dummy", dummy, series, 1, "6 × 200 samples → 6 × 201 × 64"),
             ("Chronos t5-large shape", chronos_t5_large, series, threads, "6 × 200 samples → 6 × 201 × 1024")]
    rows, load_before = [], os.getloadavg()[0]
    for name, build, x, n_threads, shape in cases:
        model = build()
        torch.set_num_threads(n_threads)
        times = time_it(lambda: model(x), a.repeats)
        torch.set_num_threads(threads)
        rows.append({"encoder": name, "input": shape, "threads": n_threads,
                     "params": sum(p.numel() for p in model.parameters()),
                     "median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times), "times_s": times})
    print(f"{'encoder':<24} {'params':>8} {'threads':>7} {'median ms':>10} {'min ms':>9}  window")
    for r in rows:
        print(f"{r['encoder']:<24} {r['params'] / 1e6:>7.2f}M {r['threads']:>7} {r['median_ms']:>10.1f} "
              f"{r['min_ms']:>9.1f}  {r['input']}")
    load = (load_before, os.getloadavg()[0])
    print(f"1-min load average {load[0]:.1f} before, {load[1]:.1f} after, on {os.cpu_count()} cores: "
          "other processes share them")
    result = {"cpu_count": os.cpu_count(), "load_average_1min": load,
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(), "dtype": "float32",
              "batch": 1, "repeats": a.repeats, "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
