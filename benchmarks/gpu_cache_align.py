"""What the static cache's slot count does to a compiled step on the GPU: attention runs over every slot, so an odd
count leaves cuBLAS's batched attention GEMMs with misaligned rows of scores. Times the decode step, a 9-token verify
and a 17-token tree verify of the Vicuna-7B shape over caches of each ``--slots`` (``setup_cache(align=1)``: exactly
that many), 640 tokens cached.

    PYTHONPATH=src python benchmarks/gpu_cache_align.py --out benchmarks/results/gpu_cache_align_<card>_<date>.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gpu_wave import step_time
from imuspec.synthetic import controlled_pair, parse_shape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="vicuna-7b")
    ap.add_argument("--slots", type=int, nargs="+", default=[968, 962, 963])
    ap.add_argument("--context", type=int, default=640)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    t0 = time.perf_counter()
    cuda = a.device == "cuda"
    cfg = parse_shape(a.shape)
    model, _ = controlled_pair(cfg, parse_shape("cpu-5m"), 0.05, 0, a.device, torch.bfloat16 if cuda else torch.float32)
    r = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__, "shape": a.shape,
         "context": a.context, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "step_ms": {}}
    ctx = torch.randint(3, cfg.vocab_size, (1, a.context), device=a.device)
    with torch.inference_mode():
        for slots in a.slots:
            model.setup_cache(slots, align=1)
            if cuda:
                model.compile_steps()
            model(ids=ctx)
            row = r["step_ms"][slots] = {}
            for name, t, tree in (("T1", 1, False), ("T9", 9, False), ("tree17", 17, True)):
                step_time(model, t, a.context, tree, repeats=1)  # compile and capture
                row[name] = 1e3 * step_time(model, t, a.context, tree)
                r["wall_s"] = time.perf_counter() - t0
                print(json.dumps({"slots": slots, name: row[name], "wall_s": r["wall_s"]}), flush=True)
                with open(a.out, "w") as f:  # partial results survive a time limit
                    json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
