"""EventGPT's frames and CLIP input, re-computed independently; the dense event representations on hand examples."""

import numpy as np
import pytest
import torch
from conftest import fixture_path
from PIL import Image

from imuspec.events import (
    EventError,
    EventStream,
    eventgpt_frames,
    eventgpt_pixel_values,
    histogram,
    read_events,
    time_surface,
    voxel_grid,
)

BLUE, RED, WHITE = (0, 0, 255), (255, 0, 0), (255, 255, 255)


def paint_in_order(x, y, p) -> np.ndarray:
    """EventGPT's painter written the slow way: a Python loop over the events, in file order."""
    xs, ys, ps = x.tolist(), y.tolist(), p.tolist()
    h, w = max(ys) + 1, max(xs) + 1
    rows = [[WHITE] * w for _ in range(h)]
    for xi, yi, pi in zip(xs, ys, ps):
        rows[yi][xi] = RED if pi == 1 else BLUE
    return np.array(rows, dtype=np.uint8)


def test_sample1_frames_equal_an_independent_painter():
    s = read_events(fixture_path("eventgpt", "sample1.npy"))
    frames = eventgpt_frames(s)
    assert len(frames) == 5
    per = 132_268 // 5
    for i, frame in enumerate(frames):
        a, b = i * per, (132_268 if i == 4 else (i + 1) * per)
        ref = paint_in_order(s.x[a:b], s.y[a:b], s.p[a:b])
        assert frame.dtype == np.uint8 and frame.shape == ref.shape == (480, 640, 3)
        np.testing.assert_array_equal(frame, ref)
        flat = frame.reshape(-1, 3)
        c = {name: int(np.all(flat == np.array(col), axis=1).sum()) for name, col in
             (("white", WHITE), ("blue", BLUE), ("red", RED))}
        assert sum(c.values()) == 480 * 640  # no other colour anywhere
        pix = s.y[a:b].astype(np.int64) * 640 + s.x[a:b]
        assert c["blue"] + c["red"] == len(np.unique(pix))
        # pixels hit by both polarities in this chunk: their colour depends on the painting order
        both = np.intersect1d(pix[s.p[a:b] == 0], pix[s.p[a:b] == 1]).size
        assert both > 0
        print(f"chunk {i}: events {a}..{b - 1} ({b - a}), white {c['white']}, blue (p=0) {c['blue']}, "
              f"red (p=1) {c['red']}, pixels with both polarities {both}")


def test_chunks_use_their_own_extent_and_last_event_wins():
    # 10 events, 2 per frame; frame 1's events reach x=5, y=2 only; frame 4 paints one pixel twice (blue, then red)
    x = np.array([0, 1, 2, 5, 3, 3, 4, 0, 7, 7])
    y = np.array([0, 1, 0, 2, 1, 1, 3, 0, 4, 4])
    p = np.array([1, 0, 0, 1, 1, 0, 1, 1, 0, 1])
    s = EventStream(x, y, np.arange(10), p, 8, 5)
    frames = eventgpt_frames(s)
    assert [f.shape for f in frames] == [(2, 2, 3), (3, 6, 3), (2, 4, 3), (4, 5, 3), (5, 8, 3)]
    assert tuple(frames[2][1, 3]) == BLUE  # (3,1): red then blue → blue
    assert tuple(frames[4][4, 7]) == RED   # (7,4): blue then red → red
    assert tuple(frames[0][0, 1]) == WHITE


def test_clip_processor_equals_a_plain_pil_pipeline():
    s = read_events(fixture_path("eventgpt", "sample1.npy"))
    pv = eventgpt_pixel_values(s)
    assert pv.shape == (5, 3, 336, 336) and pv.dtype == torch.float32
    mean = np.array([0.48145466, 0.4578275, 0.40821073])
    std = np.array([0.26862954, 0.26130258, 0.27577711])
    for frame, got in zip(eventgpt_frames(s), pv):
        h, w = frame.shape[:2]
        nh, nw = (336, int(336 * w / h)) if h <= w else (int(336 * h / w), 336)
        img = np.asarray(Image.fromarray(frame).resize((nw, nh), Image.BICUBIC), dtype=np.float64)
        top, left = (nh - 336) // 2, (nw - 336) // 2
        ref = (img[top:top + 336, left:left + 336] / 255 - mean) / std
        np.testing.assert_allclose(got.numpy().transpose(1, 2, 0), ref, atol=1e-5)


def test_eventgpt_refuses_100_ms():
    s = EventStream(np.arange(10), np.zeros(10, int), np.linspace(0, 100_000, 10).astype(int), np.ones(10, int),
                    16, 1, "long.npy")
    with pytest.raises(EventError, match=r"long\.npy: field 't' spans 100000 µs \(0\.\.100000\); EventGPT expects "
                                         r"streams shorter than 100000 µs"):
        eventgpt_frames(s)
    assert len(eventgpt_frames(s.slice(0, 9))) == 5  # 88,888 µs is accepted
    with pytest.raises(EventError, match="4 events, expected at least 5"):
        eventgpt_frames(s.slice(0, 4))


def test_histogram_voxel_grid_time_surface_by_hand():
    # sensor 3x2; events at t = 0, 50, 100 µs
    s = EventStream(np.array([0, 2, 0]), np.array([0, 1, 0]), np.array([0, 50, 100]), np.array([1, 0, 0]), 3, 2)
    h = histogram(s)
    assert h.shape == (2, 2, 3) and h[1, 0, 0] == 1 and h[0, 1, 2] == 1 and h[0, 0, 0] == 1 and h.sum() == 3
    v = voxel_grid(s, 3)  # normalised times 0, 1, 2
    expected = np.zeros((3, 2, 3), np.float32)
    expected[0, 0, 0], expected[1, 1, 2], expected[2, 0, 0] = 1, -1, -1
    np.testing.assert_array_equal(v, expected)
    v2 = voxel_grid(s, 2)  # normalised times 0, 0.5, 1: the middle event splits half and half
    assert v2[0, 1, 2] == v2[1, 1, 2] == -0.5 and v2[0, 0, 0] == 1 and v2[1, 0, 0] == -1
    ts = time_surface(s, tau_us=100.0)
    assert ts[0, 0, 0] == 1.0 and ts[1, 0, 0] == pytest.approx(np.exp(-1)) and ts[0, 1, 2] == pytest.approx(np.exp(-0.5))
    assert np.count_nonzero(ts) == 3
    ts_mid = time_surface(s, tau_us=100.0, t_ref_us=60)  # the event at 100 µs is in the future: ignored
    assert ts_mid[0, 0, 0] == 0 and ts_mid[1, 0, 0] == pytest.approx(np.exp(-0.6))


def test_voxel_grid_matches_a_scatter_loop():
    rng = np.random.default_rng(1)
    n = 3000
    s = EventStream(rng.integers(0, 20, n), rng.integers(0, 10, n), np.sort(rng.integers(0, 5000, n)),
                    rng.integers(0, 2, n), 20, 10)
    bins = 5
    ref = np.zeros((bins, 10, 20))
    tn = (s.t - s.t[0]) / (s.t[-1] - s.t[0]) * (bins - 1)
    for xi, yi, ti, pi in zip(s.x, s.y, tn, s.p):
        for b in range(bins):
            ref[b, yi, xi] += (2 * int(pi) - 1) * max(0.0, 1 - abs(ti - b))
    np.testing.assert_allclose(voxel_grid(s, bins), ref, atol=1e-5)
    np.testing.assert_allclose(voxel_grid(s, bins).sum(), (2 * s.p.astype(int) - 1).sum(), atol=1e-3)
    with pytest.raises(ValueError, match="bins = 0"):
        voxel_grid(s, 0)
