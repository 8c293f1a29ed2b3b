"""Event streams as images: EventGPT's input exactly as the original builds it, and the usual dense representations.

EventGPT (XduSyL/EventGPT ``common/common.py``): refuse streams of 100 ms or more; cut the stream into 5 chunks of equal
event count (the last takes the remainder); paint each chunk on a white RGB canvas of size (y.max+1, x.max+1) *of that
chunk*, event by event in file order, p=0 as (0, 0, 255) and p=1 as (255, 0, 0), so the last event at a pixel decides
its colour; then the CLIP image processor of ``openai/clip-vit-large-patch14-336`` on each image.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import torch

from .stream import EventError, EventStream

EVENTGPT_MAX_US = 100_000
EVENTGPT_CHUNKS = 5
COLOURS = np.array([[0, 0, 255], [255, 0, 0]], dtype=np.uint8)  # p=0 blue, p=1 red
# openai/clip-vit-large-patch14-336 preprocessor_config.json
CLIP_336 = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, resample=3,
                image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
                do_resize=True, do_center_crop=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                do_convert_rgb=True)


def last_index(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``keys`` and, for each, the index of its last occurrence (numpy's fancy assignment does not
    promise last-write-wins, so the painter's order is made explicit)."""
    unique, first_from_end = np.unique(keys[::-1], return_index=True)
    return unique, len(keys) - 1 - first_from_end


def render_polarity_image(x: np.ndarray, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """One EventGPT frame: uint8 (y.max+1, x.max+1, 3), white, each pixel coloured by its last event's polarity."""
    h, w = int(y.max()) + 1, int(x.max()) + 1
    img = np.full((h * w, 3), 255, dtype=np.uint8)
    pixels, last = last_index(y.astype(np.int64) * w + x)
    img[pixels] = COLOURS[p[last]]
    return img.reshape(h, w, 3)


def eventgpt_frames(stream: EventStream, n: int = EVENTGPT_CHUNKS) -> list[np.ndarray]:
    """EventGPT's ``n`` frames of equal event count (uint8 HxWx3 each)."""
    stream.check_duration(EVENTGPT_MAX_US, "EventGPT")
    per = len(stream) // n
    if per == 0:
        raise EventError(f"{stream.source}: {len(stream)} events, expected at least {n} (one per EventGPT frame)")
    bounds = [i * per for i in range(n)] + [len(stream)]
    return [render_polarity_image(stream.x[a:b], stream.y[a:b], stream.p[a:b]) for a, b in pairwise(bounds)]


def clip_processor(size: int = 336):
    """transformers' CLIP image processor with the settings of ``openai/clip-vit-large-patch14-336``, built locally;
    the PIL backend, which is the processor EventGPT ran (transformers 4.37's slow ``CLIPImageProcessor``). ``size``
    scales resize and crop for smaller towers (the project's trained EventGPT-family target)."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(**{**CLIP_336, "size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}})


def eventgpt_pixel_values(stream: EventStream, processor=None, size: int = 336) -> torch.Tensor:
    """EventGPT's vision input for ``stream``: float32 [5, 3, size, size]."""
    processor = processor or clip_processor(size)
    return processor(images=eventgpt_frames(stream), return_tensors="pt")["pixel_values"]


# --- dense representations (pure functions; float32 arrays over the sensor) -----------------------------------------

def histogram(stream: EventStream) -> np.ndarray:
    """Event counts per pixel and polarity: [2, H, W], channel 0 = OFF (p=0), 1 = ON (p=1)."""
    hw = stream.height * stream.width
    idx = stream.p.astype(np.int64) * hw + stream.y.astype(np.int64) * stream.width + stream.x
    return np.bincount(idx, minlength=2 * hw).astype(np.float32).reshape(2, stream.height, stream.width)


def voxel_grid(stream: EventStream, bins: int) -> np.ndarray:
    """[bins, H, W]: each event adds its polarity (±1) to the two time bins around its normalised timestamp
    (t0 → bin 0, t_end → bin bins-1), weighted linearly (Zhu et al. 2019, E2VID)."""
    if bins < 1:
        raise ValueError(f"voxel_grid: bins = {bins}, expected >= 1")
    hw = stream.height * stream.width
    span = max(stream.duration_us, 1)
    tn = (stream.t - stream.t[0]) * ((bins - 1) / span)
    lo = np.floor(tn).astype(np.int64)
    frac = tn - lo
    pol = stream.p.astype(np.float64) * 2 - 1
    pix = stream.y.astype(np.int64) * stream.width + stream.x
    hi = np.minimum(lo + 1, bins - 1)
    grid = np.bincount(lo * hw + pix, weights=pol * (1 - frac), minlength=bins * hw)
    grid += np.bincount(hi * hw + pix, weights=pol * frac, minlength=bins * hw)
    return grid.astype(np.float32).reshape(bins, stream.height, stream.width)


def time_surface(stream: EventStream, tau_us: float, t_ref_us: int | None = None) -> np.ndarray:
    """[2, H, W]: exp(-(t_ref - t_last) / tau) of the last OFF / ON event at each pixel, 0 where none
    (t_ref defaults to the last timestamp; events after t_ref are ignored)."""
    if tau_us <= 0:
        raise ValueError(f"time_surface: tau_us = {tau_us}, expected > 0")
    t_ref = int(stream.t[-1]) if t_ref_us is None else t_ref_us
    n = int(np.searchsorted(stream.t, t_ref, side="right"))
    hw = stream.height * stream.width
    keys = stream.p[:n].astype(np.int64) * hw + stream.y[:n].astype(np.int64) * stream.width + stream.x[:n]
    cells, last = last_index(keys)
    out = np.zeros(2 * hw, dtype=np.float32)
    out[cells] = np.exp(-(t_ref - stream.t[last]) / tau_us)
    return out.reshape(2, stream.height, stream.width)
