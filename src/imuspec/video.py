"""Video files → uniformly sampled RGB frames with timestamps (through PyAV), and Video-LLaVA's frame preprocessing.

Sampling and preprocessing follow Video-LLaVA's LanguageBind video processor (decord path): frame numbers
``linspace(0, n - 1, 8)`` truncated to integers; pixels / 255, CLIP mean/std, short side to 224 (bilinear, no
antialiasing), centre crop 224 — and, unlike the original, no random horizontal flip at inference.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .events.stream import RecordingWarning

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class VideoError(ValueError):
    """A video file that cannot be read, has no video stream or no frames."""


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray  # [N, H, W, 3] uint8 RGB
    times_s: np.ndarray  # [N] presentation time of each frame in seconds, as stored in the file
    indices: np.ndarray  # [N] frame numbers (0-based, presentation order)
    n_frames: int  # frames in the file
    path: str


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: not a readable video file ({e})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: has no video stream")
    return container


def iter_frames(path: str | Path) -> Iterator[tuple[float, np.ndarray]]:
    """Every frame of the first video stream in presentation order, as (time in s, RGB uint8 [H, W, 3]).

    A file cut short (a recorder that stopped) or corrupt past some point yields the frames before it and warns
    (:class:`~imuspec.events.stream.RecordingWarning`) up to which time it could be decoded."""
    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 0)
        i, t, failure = 0, None, None
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else (i / rate if rate else float(i))
                yield t, frame.to_ndarray(format="rgb24")
                i += 1
        except av.error.FFmpegError as e:
            if i == 0:
                raise VideoError(f"{path}: decoding failed at the first frame ({e})") from None
            failure = f"decoding stopped: {e}"
        expected = stream.frames
        if failure or (expected and i < expected):
            length = (float(stream.duration * stream.time_base) if stream.duration else
                      container.duration / 1e6 if container.duration else None)
            of = f" of {length:.3f} s" if length else ""
            warnings.warn(f"{path}: the video could be decoded only up to {t:.3f} s{of} ({i} of "
                          f"{expected or 'an unknown number of'} frames; {failure or 'the file ends early'}): "
                          "cut or corrupt after that", RecordingWarning, stacklevel=2)


def count_frames(path: str | Path) -> int:
    """Frames in the first video stream: the container's count, else the number of video packets (no decoding)."""
    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        if stream.frames > 0:
            return stream.frames
        try:
            return sum(1 for p in container.demux(stream) if p.size)
        except av.error.FFmpegError as e:
            raise VideoError(f"{path}: reading failed ({e})") from None


def sample_indices(n_total: int, n: int) -> np.ndarray:
    """``n`` frame numbers spread evenly over [0, n_total - 1] (repeats when the video is shorter than ``n``)."""
    return np.linspace(0, n_total - 1, n).astype(np.int64)


def _collect(path: Path, want: np.ndarray) -> tuple[list, list, int]:
    """Decode up to the last wanted frame; return its frames and times and how many frames were decoded."""
    frames, times, last, seen = [], [], int(want[-1]), 0
    for i, (t, frame) in enumerate(iter_frames(path)):
        seen = i + 1
        for _ in range(int((want == i).sum())):
            frames.append(frame)
            times.append(t)
        if i >= last:
            break
    return frames, times, seen


def read_video(path: str | Path, n_frames: int = 8) -> Clip:
    """``n_frames`` frames sampled uniformly over the whole video, with their timestamps."""
    path = Path(path)
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    total = count_frames(path)
    if total == 0:
        raise VideoError(f"{path}: the video stream has no frames")
    want = sample_indices(total, n_frames)
    frames, times, seen = _collect(path, want)
    if len(frames) < n_frames:  # the container promised more frames than it decodes: sample what is there
        if seen == 0:
            raise VideoError(f"{path}: the video stream has no decodable frames")
        total, want = seen, sample_indices(seen, n_frames)
        frames, times, _ = _collect(path, want)
    return Clip(np.stack(frames), np.asarray(times, dtype=np.float64), want, total, str(path))


def video_pixels(frames: np.ndarray, size: int = 224) -> Tensor:
    """RGB uint8 frames [N, H, W, 3] → CLIP-normalised float32 [N, 3, size, size] (short side scaled, centre crop)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames: expected uint8 RGB [N, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    h, w = x.shape[-2:]
    new = (math.floor(h / w * size), size) if w < h else (size, math.floor(w / h * size))
    x = F.interpolate(x, size=new, mode="bilinear", align_corners=False)
    top, left = round((new[0] - size) / 2), round((new[1] - size) / 2)
    return x[..., top:top + size, left:left + size].contiguous()
