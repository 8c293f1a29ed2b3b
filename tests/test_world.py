"""The synthetic paired world: determinism, the IMU against the motion it claims (finite differences of the rendered
poses), the events and frames against the gyroscope, gravity, gait, the sample contract and the narration grammar."""

from dataclasses import replace

import numpy as np
import pytest
from skimage.registration import phase_cross_correlation

from imuspec.events.render import eventgpt_pixel_values
from imuspec.imu.recording import G
from imuspec.world import (ACTIVITIES, WorldConfig, make_sample, make_samples, narrate, narration_corpus, plan, render, scenes)

CFG = WorldConfig()
QUIET = replace(CFG, accel_noise=0.0, accel_bias=0.0, gyro_noise=0.0, gyro_bias=0.0)


def seed_for(activity: str, n: int = 1, **where) -> list[int]:
    """The first ``n`` seeds whose plan has ``activity`` (and the given pace / direction)."""
    out = []
    for s in range(10_000):
        p = plan(s)
        if p.activity == activity and all(getattr(p, k) == v for k, v in where.items()):
            out.append(s)
            if len(out) == n:
                return out
    raise AssertionError(f"no seed draws {activity} {where}")


def window(sample):
    t = sample.imu.t
    return (t >= sample.t0_us * 1e-6) & (t <= sample.t1_us * 1e-6)


def test_same_seed_same_sample_other_seed_differs():
    a, b, c = make_sample(11), make_sample(11), make_sample(12)
    for f in "xytp":
        assert np.array_equal(getattr(a.events, f), getattr(b.events, f))
    assert np.array_equal(a.imu.accel, b.imu.accel) and np.array_equal(a.imu.gyro, b.imu.gyro)
    assert a.text == b.text and a.meta == b.meta
    assert len(a.events) != len(c.events) or not np.array_equal(a.events.x, c.events.x)
    assert not np.allclose(a.imu.gyro, c.imu.gyro)
    assert [s.text for s in make_samples([11, 12], progress=False)] == [a.text, c.text]


def test_every_activity_scene_pace_and_direction_is_reachable():
    plans = [plan(s) for s in range(300)]
    assert {p.activity for p in plans} == set(ACTIVITIES)
    assert {p.scene.name for p in plans} == {s.name for s in scenes()}
    assert len({s.description for s in scenes()}) == len(scenes())
    assert {p.pace for p in plans if p.activity == "walking"} == {"slow", "steady", "brisk"}
    assert {p.direction for p in plans if p.activity == "running"} == {"toward", "past"}
    assert {p.pace for p in plans if p.activity == "turning left"} == {"slowly", "quickly"}


@pytest.mark.parametrize("activity", ACTIVITIES)
def test_sample_contract(activity):
    (seed,) = seed_for(activity)
    s = make_sample(seed)
    ev, imu = s.events, s.imu
    assert s.source == f"synthetic:{seed}" and s.meta["activity"] == activity and s.meta["seed"] == seed
    assert len(ev) >= 500 and (ev.width, ev.height) == (CFG.width, CFG.height)
    assert s.t0_us <= ev.t.min() and ev.t.max() < s.t1_us == s.t0_us + CFG.window_us
    assert np.all(np.diff(ev.t) >= 0) and ev.x.max() < CFG.width and ev.y.max() < CFG.height
    period = 1 / CFG.imu_rate_hz
    assert imu.t[0] <= s.t0_us * 1e-6 - 3 * period and imu.t[-1] >= s.t1_us * 1e-6 + 3 * period
    assert imu.gyro_unit == "rad/s" and imu.accel_unit == "m/s^2"
    x = s.imu_input(40)
    assert x.shape == (40, 6) and np.isfinite(x).all()
    assert activity in s.text and s.meta["description"] in s.text
    assert s.text in set(narration_corpus())


def test_eventgpt_input():
    s = make_sample(seed_for("standing still")[0])
    assert tuple(eventgpt_pixel_values(s.events, size=64).shape) == (5, 3, 64, 64)


def test_standing_still_makes_few_motion_events():
    """Most of a still camera's events are shot noise; turning makes many more, so events follow the motion."""
    still = [len(make_sample(s, replace(CFG, simulator=replace(CFG.simulator, shot_noise_rate_hz=0.0))).events)
             for s in seed_for("standing still", 3, scene=scenes()[3])]  # the cat
    turning = [len(make_sample(s).events) for s in seed_for("turning left", 3, pace="quickly", scene=scenes()[3])]
    assert max(still) * 5 < min(turning)


@pytest.mark.parametrize("activity, pace", [("turning left", "slowly"), ("turning right", "quickly"),
                                            ("looking up", "quickly"), ("looking down", "slowly")])
def test_gyro_matches_rendered_and_event_motion(activity, pace):
    """Image shift over the window (phase correlation of the first and last rendered frames) equals the gyroscope's
    rotation × focal length: yaw ω_y > 0 (turning right) moves the scene left, pitch ω_x > 0 (looking up) moves it
    down. The events move the same way: the velocity that best sharpens the warped events (contrast maximisation)."""
    (seed,) = seed_for(activity, pace=pace)
    s, p, f = make_sample(seed), plan(seed), CFG.focal_px
    w = s.imu.gyro[window(s)].mean(0)
    axis = 1 if activity.startswith("turning") else 0
    rate = np.deg2rad(p.params["yaw_rate_dps" if axis else "pitch_rate_dps"])
    assert np.sign(w[axis]) == np.sign(rate) == (1 if activity.endswith(("right", "up")) else -1)
    assert abs(w[axis] - rate) < 0.1 * abs(rate) + np.deg2rad(6)  # tremor and gait sway add a few deg/s
    frames = render(p, np.array([0.0, CFG.window_us * 1e-6]))
    shift = -phase_cross_correlation(frames[0], frames[1], upsample_factor=20)[0]  # (dy, dx) of the image content
    expect = np.array([f * w[0], -f * w[1]]) * CFG.window_us * 1e-6
    assert np.all(np.abs(shift - expect) < 0.12 * np.abs(expect).max() + 0.3), (shift, expect)
    # events: warp to the window's middle with a candidate image velocity; the true one gives the sharpest image
    ev = s.events
    t = (ev.t - ev.t.mean()) * 1e-6
    pos = (ev.y if axis == 0 else ev.x).astype(np.float64)
    other = (ev.x if axis == 0 else ev.y).astype(np.float64)
    centre = np.abs(pos - (CFG.height if axis == 0 else CFG.width) / 2) < 20  # rotational flow grows off-centre
    speeds = np.linspace(-260, 260, 105)  # px/s

    def sharpness(v):
        warped = np.round(pos[centre] - v * t[centre]).astype(int) + 400
        return np.var(np.bincount(warped * 200 + other[centre].astype(int), minlength=1000 * 200))

    best = speeds[np.argmax([sharpness(v) for v in speeds])]
    expect_v = (f * w[0] if axis == 0 else -f * w[1])
    assert np.sign(best) == np.sign(expect_v) and abs(best - expect_v) < 0.2 * abs(expect_v) + 10, (best, expect_v)


def _numeric(motion, t, h=1e-4):
    """Specific force and body rate by central differences of the poses the frames are rendered from."""
    p = [motion.position(t + k * h) for k in (-1, 0, 1)]
    acc = (p[0] - 2 * p[1] + p[2]) / h**2
    r0, r, r1 = (motion.rotation(t + k * h) for k in (-1, 0, 1))
    force = np.einsum("tji,tj->ti", r, acc - np.array([0, G, 0]))
    skew = np.swapaxes(r, 1, 2) @ (r1 - r0) / (2 * h)  # R^T R' = [ω]×
    return force, np.stack([skew[:, 2, 1], skew[:, 0, 2], skew[:, 1, 0]], 1)


@pytest.mark.parametrize("activity", ["running", "shaking", "turning right", "walking"])
def test_imu_is_the_derivative_of_the_rendered_motion(activity):
    (seed,) = seed_for(activity)
    quiet, noisy = make_sample(seed, QUIET), make_sample(seed)
    tau = quiet.imu.t - quiet.t0_us * 1e-6
    force, rate = _numeric(plan(seed).motion, tau)
    np.testing.assert_allclose(quiet.imu.accel, force, atol=2e-3 * np.abs(force).max())
    np.testing.assert_allclose(quiet.imu.gyro, rate, atol=1e-4 * max(np.abs(rate).max(), 1))
    da, dg = noisy.imu.accel - quiet.imu.accel, noisy.imu.gyro - quiet.imu.gyro  # bias + white noise
    assert 0.7 * CFG.accel_noise < (da - da.mean(0)).std() < 1.3 * CFG.accel_noise
    assert 0.7 * CFG.gyro_noise < (dg - dg.mean(0)).std() < 1.3 * CFG.gyro_noise
    assert np.abs(da.mean(0)).max() < 4 * CFG.accel_bias and np.abs(dg.mean(0)).max() < 4 * CFG.gyro_bias


def test_standing_still_reads_gravity_up():
    for seed in seed_for("standing still", 4):
        a = make_sample(seed).imu.accel
        assert abs(np.linalg.norm(a, axis=1).mean() - G) < 0.25
        assert a[:, 1].mean() < -0.97 * G  # −y is up in the sensor frame (x right, y down, z forward)
        assert np.abs(a[:, [0, 2]].mean(0)).max() < 0.15 * G  # start pitch / roll tilt it by at most a few degrees


def test_gait_bob_amplitude_and_running_shakes_more():
    """Over 2 s of motion the head's vertical acceleration (finite differences of the rendered positions) swings by
    the drawn bob (bob_g · g = bob_m (2π f_step)²), and the accelerometer's |a| varies more running than walking."""
    t = np.linspace(0, 2, 8001)
    spread = {}
    for activity in ("walking", "running"):
        spread[activity] = []
        for seed in seed_for(activity, 4):
            p = plan(seed)
            h = 1e-4
            y = [p.motion.position(t + k * h)[:, 1] for k in (-1, 0, 1)]
            ay = (y[0] - 2 * y[1] + y[2]) / h**2
            assert abs(np.abs(ay).max() - p.params["bob_g"] * G) < 0.03 * p.params["bob_g"] * G
            assert abs(p.params["bob_m"] * (2 * np.pi * p.params["step_hz"]) ** 2 - p.params["bob_g"] * G) < 1e-9
            spread[activity].append(np.linalg.norm(p.motion.specific_force(t), axis=1).std())
    assert min(spread["running"]) > max(spread["walking"])
    assert np.mean(spread["running"]) > 1.4 * np.mean(spread["walking"])


def test_pace_changes_the_motion():
    gyro = {pace: [np.abs(plan(s).motion.angular_velocity(np.linspace(0, 0.05, 41))[:, 1].mean())
                   for s in seed_for("turning left", 3, pace=pace)] for pace in ("slowly", "quickly")}
    assert min(gyro["quickly"]) > max(gyro["slowly"])
    speed = {pace: [plan(s).params["speed_mps"] for s in seed_for("walking", 3, pace=pace)] for pace in ("slow", "brisk")}
    assert min(speed["brisk"]) > max(speed["slow"])


def test_narration_grammar():
    corpus = narration_corpus()
    assert len(corpus) == len(set(corpus))
    words = {w for line in corpus for w in line.rstrip(".").split()}
    assert len(words) <= 150
    texts = {narrate(p.activity, p.pace, p.direction, p.scene, p.sentence) for p in map(plan, range(200))}
    assert texts <= set(corpus) and len(texts) > 100
    assert "I am walking at a brisk pace toward a brick wall." in corpus
    assert "I see the moon and I am looking up slowly at it." in corpus


@pytest.mark.parametrize("bad, field", [(dict(window_us=100_000), "window_us"), (dict(width=0), "width"),
                                        (dict(fov_deg=0.0), "fov_deg"), (dict(imu_rate_hz=10.0), "imu_rate_hz"),
                                        (dict(gyro_noise=-1.0), "gyro_noise")])
def test_bad_config_is_refused(bad, field):
    with pytest.raises(ValueError, match=field):
        WorldConfig(**bad)
