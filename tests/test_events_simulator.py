"""The video-to-events simulator: analytic moving edges, a scalar re-implementation, and the real fixture videos."""

from itertools import pairwise

import numpy as np
import pytest
from conftest import fixture_path

from imuspec.cli import main
from imuspec.events import EventError, EventSimulator, SimulatorConfig, frames_from_video, read_events, simulate
from imuspec.video import VideoError
from imuspec.events.simulator import to_gray

EPS = 1e-3


def log_ramp_video(delta_l, speed_px_s, ramp_px=8.0, x0=4.0, width=64, rows=3, dt_us=1000, duration_s=0.3):
    """A ramp in log intensity (L_lo → L_lo + delta_l over ``ramp_px`` pixels) sweeping right at ``speed_px_s``:
    pixel x sees L rise (or fall) linearly from t = (x + x0)/v to (x + x0 + ramp)/v."""
    lo = np.log(0.2 + EPS)
    xs = np.arange(width, dtype=np.float64)
    for k in range(int(duration_s * 1e6 / dt_us) + 1):
        t = k * dt_us * 1e-6
        level = lo + delta_l * np.clip((speed_px_s * t - xs - x0) / ramp_px, 0, 1)
        yield np.tile(np.exp(level) - EPS, (rows, 1)), k * dt_us


@pytest.mark.parametrize("delta_l, thr", [(1.0, 0.15), (-1.0, 0.3)])
def test_moving_log_ramp_count_and_timing_are_analytic(delta_l, thr):
    v, ramp, x0, width, rows, duration = 200.0, 8.0, 4.0, 64, 3, 0.3
    cfg = SimulatorConfig(c_on=thr, c_off=thr, sigma=0.0, refractory_us=0.0, log_eps=EPS)
    s = simulate(log_ramp_video(delta_l, v, ramp, x0, width, rows, duration_s=duration), cfg)
    xs = np.arange(width)
    swept = abs(delta_l) * np.clip((v * duration - xs - x0) / ramp, 0, 1)   # |ΔL| each pixel saw by the end
    per_pixel = np.floor(swept / thr + 1e-9).astype(int)                   # one event per threshold crossed
    assert len(s) == rows * per_pixel.sum() == rows * (49 * int(1 / thr) + sum(per_pixel[49:]))
    assert np.all(s.p == (delta_l > 0))
    for x in (0, 17, 48, 52):
        got = np.sort(s.t[(s.x == x) & (s.y == 1)])
        k = np.arange(1, per_pixel[x] + 1)
        expected_us = ((x + x0) / v + k * thr / abs(delta_l) * ramp / v) * 1e6  # pixel x crosses level k*thr
        # L is exactly linear between frames away from the ramp's ends, so only float rounding and the floor to
        # integer microseconds remain: tolerance 1 µs
        assert len(got) == len(k)
        np.testing.assert_allclose(got, expected_us, atol=1.0)


def test_moving_sharp_edge_in_8bit_video():
    """A dark-to-bright step edge, anti-aliased in linear intensity and quantised to uint8, moving at 100 px/s:
    every pixel it crosses fires floor(log((200/255 + eps) / (40/255 + eps)) / C) ON events, each within one frame
    interval (1 ms) of the moment the edge's coverage of the pixel reaches the crossing level."""
    v, dt_us, width, c = 100.0, 1000, 40, 0.25
    dark, bright = 40, 200

    def video():
        for k in range(361):
            cover = np.clip(v * k * dt_us * 1e-6 - np.arange(width) - 2, 0, 1)  # pixel x is covered from (x+2)/v
            yield np.round(np.tile(dark + (bright - dark) * cover, (2, 1))).astype(np.uint8), k * dt_us

    s = simulate(video(), SimulatorConfig(c_on=c, c_off=c, sigma=0.0, refractory_us=0.0, log_eps=EPS))
    n_per_pixel = int(np.log((bright / 255 + EPS) / (dark / 255 + EPS)) / c)
    crossed = np.arange(width)[np.arange(width) + 3 <= v * 0.36]  # fully covered by t = 360 ms
    assert n_per_pixel == 6 and np.all(s.p == 1)
    for x in crossed:
        got = np.sort(s.t[(s.x == x) & (s.y == 0)])
        assert len(got) == n_per_pixel
        levels = np.log(dark / 255 + EPS) + c * np.arange(1, n_per_pixel + 1)
        cover = (np.exp(levels) - EPS - dark / 255) / ((bright - dark) / 255)
        np.testing.assert_allclose(got, (x + 2 + cover) / v * 1e6, atol=dt_us)
    assert len(s) == 2 * n_per_pixel * len(crossed)


def scalar_reference(frames, times, c_on, c_off, refractory_us, eps):
    """The same model written pixel by pixel with explicit loops (per-pixel thresholds given)."""
    levels = [np.log(f.ravel() + eps) for f in frames]
    out = []
    for i in range(levels[0].size):
        ref, last = levels[0][i], -np.inf
        for k in range(1, len(frames)):
            l0, l1, ta, tb = levels[k - 1][i], levels[k][i], times[k - 1], times[k]
            while True:
                if l1 - ref >= c_on[i]:
                    ref, pol = ref + c_on[i], 1
                elif ref - l1 >= c_off[i]:
                    ref, pol = ref - c_off[i], 0
                else:
                    break
                t = ta + (ref - l0) / (l1 - l0) * (tb - ta)
                if t - last >= refractory_us:
                    out.append((i, t, pol))
                    last = t
    return out


@pytest.mark.parametrize("refractory_us", [0.0, 3000.0])
def test_vectorised_equals_scalar_loops(refractory_us):
    rng = np.random.default_rng(3)
    h, w, n = 5, 6, 40
    frames = [np.clip(0.5 + 0.4 * np.sin(0.3 * k + rng.uniform(0, 6, (h, w))) * rng.uniform(0.5, 1, (h, w)), 0, 1)
              for k in range(n)]
    times = np.cumsum(rng.uniform(5000, 15000, n))
    cfg = SimulatorConfig(c_on=0.12, c_off=0.18, sigma=0.04, refractory_us=refractory_us, log_eps=EPS, seed=7)
    sim = EventSimulator(frames[0], times[0], cfg)
    got = []
    for f, t in zip(frames[1:], times[1:]):
        x, y, ts, p = sim.step(f, t)
        got += list(zip((y * w + x).tolist(), ts.tolist(), p.tolist()))
    ref = scalar_reference(frames, times, sim.c_on, sim.c_off, refractory_us, EPS)
    assert len(ref) > 500
    got, ref = sorted(got), sorted(ref)
    assert [(i, p) for i, _, p in got] == [(i, p) for i, _, p in ref]
    np.testing.assert_allclose([t for _, t, _ in got], [t for _, t, _ in ref], atol=1e-6)
    if refractory_us:
        for i in range(h * w):
            assert np.all(np.diff([t for j, t, _ in got if j == i]) >= refractory_us - 1e-6)


def test_leak_and_shot_noise_rates():
    static = [(np.full((20, 50), 0.5), k * 10_000) for k in range(201)]  # 2 s of a still scene, 1,000 pixels
    leak = simulate(iter(static), SimulatorConfig(sigma=0.05, refractory_us=0, leak_rate_hz=5.0))
    per_pixel = np.bincount(leak.y.astype(int) * 50 + leak.x, minlength=1000)
    assert np.all(leak.p == 1) and set(np.unique(per_pixel)) <= {9, 10}  # 5 Hz x 2 s, the last one at the edge
    shot = simulate(iter(static), SimulatorConfig(refractory_us=0, shot_noise_rate_hz=5.0, seed=1))
    assert abs(len(shot) - 10_000) < 400  # Poisson mean 10,000, std 100
    assert 0.47 < shot.p.mean() < 0.53


def video_levels(name, n=60, stride=2):
    frames = []
    for k, (f, t) in enumerate(frames_from_video(fixture_path("videos", name))):
        if k == n:
            break
        frames.append((f[::stride, ::stride], t))
    return frames


@pytest.mark.parametrize("name", ["sample_demo_3.mp4", "sample_demo_9.mp4"])
def test_real_video_density_and_polarity(name):
    """First 60 frames, every other pixel. Density: events per frame interval against the summed |Δ log I| of that
    interval. Polarity: each event against the sign of its pixel's Δ log I in its interval, and per pixel the events
    integrated back (ON x C_on - OFF x C_off) against the pixel's log change over the clip."""
    frames = video_levels(name)
    cfg = SimulatorConfig(seed=0)
    sim = EventSimulator(*frames[0], cfg)
    counts, diffs, agree, total = [], [], 0, 0
    integrated = np.zeros(frames[0][0].size)
    for (f0, _), (f1, t1) in pairwise(frames):
        x, y, _, p = sim.step(f1, t1)
        dl = np.log(to_gray(f1) + cfg.log_eps) - np.log(to_gray(f0) + cfg.log_eps)
        counts.append(len(p))
        diffs.append(np.abs(dl).sum())
        agree += np.count_nonzero((dl[y, x] > 0) == (p == 1))
        total += len(p)
        pix = y.astype(int) * f1.shape[1] + x
        np.add.at(integrated, pix, np.where(p == 1, sim.c_on[pix], -sim.c_off[pix]))
    change = (np.log(to_gray(frames[-1][0]) + cfg.log_eps) - np.log(to_gray(frames[0][0]) + cfg.log_eps)).ravel()
    r_time = np.corrcoef(counts, diffs)[0, 1]
    r_pixel = np.corrcoef(integrated, change)[0, 1]
    big = np.abs(change) > 2 * cfg.c_on
    sign_ok = np.mean(np.sign(integrated[big]) == np.sign(change[big]))
    # the model's invariant: what the events integrate to is within one threshold of the true log change
    within = np.mean(np.abs(integrated - change) < np.maximum(sim.c_on, sim.c_off) + 1e-9)
    print(f"{name}: {total} events over {len(frames)} frames; corr(events, sum|dlogI|) per interval {r_time:.3f}; "
          f"polarity = sign(dlogI) for {agree / total:.4f} of events; corr(integrated events, dlogI) per pixel "
          f"{r_pixel:.3f}; sign agrees on {sign_ok:.4f} of {big.sum()} pixels with |dlogI| > 2C; within one threshold on "
          f"{within:.4f} of pixels")
    assert total > 10_000
    assert r_time > 0.95
    assert agree == total  # noise off: every event's polarity is the sign of its pixel's change in that interval
    assert r_pixel > 0.9 and sign_ok > 0.99 and within > 0.999


def test_simulate_events_cli_round_trip(tmp_path, capsys):
    out = tmp_path / "demo3.h5"
    assert main(["simulate-events", str(fixture_path("videos", "sample_demo_3.mp4")), str(out)]) == 0
    s = read_events(out)
    assert (s.width, s.height) == (640, 360) and len(s) > 100_000
    assert 5.9e6 < s.duration_us < 6.1e6
    assert f"{len(s)} events" in capsys.readouterr().out


def test_simulator_bad_input(tmp_path):
    f = np.full((4, 5), 0.5)
    sim = EventSimulator(f, 0)
    with pytest.raises(EventError, match="frame timestamps must increase: got 0 µs after 0.0 µs"):
        sim.step(f, 0)
    with pytest.raises(EventError, match=r"frame of size \(3, 5\), expected \(4, 5\)"):
        sim.step(f[:3], 10)
    with pytest.raises(EventError, match=r"expected HxW \(grey\) or HxWx3"):
        sim.step(np.zeros((4, 5, 2)), 10)
    with pytest.raises(EventError, match="still: the frames produced no events"):
        simulate(iter([(f, 0), (f, 1000)]), source="still")
    with pytest.raises(EventError, match="one frame, expected at least two"):
        simulate(iter([(f, 0)]))
    (tmp_path / "v.mp4").write_text("not a video")
    with pytest.raises(VideoError, match=r"v\.mp4: not a readable video"):
        list(frames_from_video(tmp_path / "v.mp4"))
    with pytest.raises(FileNotFoundError, match="nope.mp4: no such video file"):
        list(frames_from_video(tmp_path / "nope.mp4"))
