"""EventGPT's vision path per sample on this machine: 5 event frames through CLIP ViT-L/14-336 (random weights, the
real shape), the projector and adaptor (1024→4096→4096, 4096→4096) and the spatio-temporal pooling to 582 tokens.

    python benchmarks/eventgpt_latency.py [--repeats 2] [--dtypes float32,bfloat16] [--out FILE]

Stage times come from forward hooks on the one :class:`EventEncoder` forward that is timed, so they add up to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
import transformers
from transformers import CLIPVisionConfig

from imuspec.models.clip import KNOWN_TOWERS
from imuspec.models.eventgpt import EventEncoder

TOWER = "openai/clip-vit-large-patch14-336"
STAGES = ("visual_tower", "visual_projector", "feature_adaptor")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def time_encoder(enc: EventEncoder, pixels: torch.Tensor, repeats: int) -> dict:
    marks: dict[str, float] = {}
    for name in STAGES:
        mod = getattr(enc, name)
        mod.register_forward_pre_hook(lambda m, a, n=name: marks.__setitem__(n + "_start", time.perf_counter()))
        mod.register_forward_hook(lambda m, a, o, n=name: marks.__setitem__(n + "_end", time.perf_counter()))
    runs = []
    with torch.inference_mode():
        enc(pixels[:1])  # warm-up on one frame: first-call set-up without a whole sample's cost
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            out = enc(pixels)
            t1, c1 = time.perf_counter(), time.process_time()
            stage = {n: marks[n + "_end"] - marks[n + "_start"] for n in STAGES}
            stage["pooling"] = t1 - marks["feature_adaptor_end"]
            stage["total"] = t1 - t0
            stage["cpu_s"] = c1 - c0  # CPU time of this process over all its threads
            runs.append(stage)
    assert out.shape == (5 + 577, 4096), out.shape
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]} | {"runs": runs}


def gflop(cfg: CLIPVisionConfig, frames: int, hidden: int) -> float:
    """Multiply-adds × 2 of the tower's linear layers and attention, and of the projector and adaptor."""
    n, c, layers = (cfg.image_size // cfg.patch_size) ** 2 + 1, cfg.hidden_size, cfg.num_hidden_layers
    per_layer = n * (4 * c * c + 2 * c * cfg.intermediate_size) + 2 * n * n * c
    patches = (n - 1) * 3 * cfg.patch_size ** 2 * c
    head = n * (c * hidden + 2 * hidden * hidden)
    return 2 * frames * (layers * per_layer + patches + head) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--out", default=f"benchmarks/results/eventgpt_latency_cpu_{date.today()}.json")
    a = p.parse_args()

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(**KNOWN_TOWERS[TOWER])
    enc = EventEncoder(cfg, 4096).eval()
    pixels = torch.randn(5, 3, 336, 336)
    result = {
        "what": "EventGPT vision path per sample: CLIP ViT-L/14-336 on 5 frames + projector + adaptor + pooling",
        "tower": TOWER, "weights": "random (real shapes)", "frames": 5, "tokens_out": 582,
        "gflop_per_sample": gflop(cfg, 5, 4096),
        "params": {n: sum(p.numel() for p in getattr(enc, n).parameters()) for n in STAGES},
        "cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "repeats": a.repeats, "date": str(date.today()),
        "load_average_1m_before": os.getloadavg()[0], "results": {},
    }
    for name in a.dtypes.split(","):
        result["results"][name] = time_encoder(enc.to(getattr(torch, name)), pixels, a.repeats)

    result["load_average_1m_after"] = os.getloadavg()[0]  # the machine is shared: > threads means contention
    print(f"EventGPT vision path, 5 frames → 582 tokens, {result['cpu']}, {result['threads']} threads, "
          f"median of {a.repeats} (seconds per sample)")
    print(f"| dtype | {' | '.join(STAGES)} | pooling | total | GFLOP/s |")
    print("|---|" + "---|" * (len(STAGES) + 3))
    for name, r in result["results"].items():
        r["gflop_per_s"] = result["gflop_per_sample"] / r["total"]
        print(f"| {name} | " + " | ".join(f"{r[k]:.3f}" for k in (*STAGES, "pooling", "total")) + f" | {r['gflop_per_s']:.0f} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
