"""The synthetic paired world: one seed → a 50 ms moment seen by an event camera and felt by its IMU, with a narration.

A seed draws an activity, a scene, a pace and a direction, then a camera motion: each of yaw ψ, pitch θ, roll φ and
world position X, Y, Z is an offset plus a rate times t plus sinusoids (sway, tremor, gait bob, shaking), so every
derivative is analytic. The scene is a photograph from scikit-image printed on a vertical plane at Z = D in front of
the camera (mirrored beyond its edges). Frames are rendered through a pinhole along the motion and fed to the event
simulator; the IMU reads the same motion's derivatives. The narration names what the IMU can know (activity, pace,
direction) and what only the camera sees (the scene), e.g. "I am walking at a brisk pace toward a brick wall."

Conventions. Camera = sensor frame: x right, y down, z forward; the world frame is the camera's at ψ = θ = φ = 0
(Y down, so gravity is g_world = (0, +9.81, 0)). Camera-to-world rotation R = R_y(ψ) R_x(θ) R_z(φ): ψ > 0 turns
right, θ > 0 looks up, φ > 0 rolls clockwise (seen from behind). Gyroscope: body angular velocity ω (R' = R [ω]×) in
rad/s; accelerometer: specific force R^T (a_world − g_world) in m/s^2, so at rest it reads 9.81 m/s^2 along −y (up).
Walkers keep the heading they had at the window's start (over 50 ms a turn moves it by at most 6°).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.ndimage import map_coordinates

from .events.simulator import SimulatorConfig, simulate, to_gray
from .events.stream import EventStream
from .imu.recording import G, IMURecording
from .paired import PairedSample

ACTIVITIES: tuple[str, ...] = ("standing still", "walking", "running", "turning left", "turning right", "looking up",
                               "looking down", "shaking")
QUERY = "What am I doing, and what do I see?"
SENTENCES = ("I am {act} {prep} {scene}.", "I see {scene} and I am {act} {prep} it.")
PACES = {"walking": ("slow", "steady", "brisk"), "running": ("slow", "steady", "brisk"),
         "turning": ("slowly", "quickly"), "looking": ("slowly", "quickly"), "shaking": ("gently", "hard"),
         "standing": (None,)}
WALK_DIRECTIONS = ("toward", "past")  # along the optical axis, or sideways along the camera's x axis
# gait per pace: (speed m/s, step rate Hz, amplitude of the bob's vertical acceleration in g), each within ±10 %.
# The bob is one sinusoid per step, so running stays below 0.7 g: a sinusoid's trough is long, unlike a real
# stride's brief flight phase, and a bob reaching 1 g would read as free fall for whole windows.
GAIT = {"walking": {"slow": (1.0, 1.7, 0.25), "steady": (1.4, 1.9, 0.3), "brisk": (1.8, 2.1, 0.35)},
        "running": {"slow": (2.5, 2.6, 0.5), "steady": (3.2, 2.8, 0.55), "brisk": (4.0, 3.0, 0.6)},
        "turning": {"slowly": (0.6, 1.6, 0.15), "quickly": (0.6, 1.6, 0.15)}}
RATE_DPS = {"turning": {"slowly": (20, 45), "quickly": (60, 120)}, "looking": {"slowly": (15, 35), "quickly": (45, 90)}}
SHAKE_DEG = {"gently": (1.0, 2.5), "hard": (4.0, 8.0)}
YAW, PITCH, ROLL, X, Y, Z = range(6)


@dataclass(frozen=True)
class Scene:
    """``name`` is the scikit-image image (``skimage.data.<name>``), ``description`` the noun phrase narrations use."""

    name: str
    description: str

    def load(self) -> np.ndarray:
        """The image as grey float64 in [0, 1] (bundled with scikit-image: nothing is downloaded)."""
        import skimage.data

        return to_gray(getattr(skimage.data, self.name)())


def scenes() -> list[Scene]:
    return [Scene("astronaut", "an astronaut"), Scene("brick", "a brick wall"), Scene("camera", "a man with a camera"),
            Scene("chelsea", "a cat"), Scene("clock", "a clock"), Scene("coffee", "a cup of coffee"),
            Scene("coins", "a pile of coins"), Scene("grass", "a patch of grass"), Scene("gravel", "a gravel path"),
            Scene("horse", "a horse"), Scene("moon", "the moon"), Scene("rocket", "a rocket"),
            Scene("text", "a page of text")]


@dataclass(frozen=True)
class WorldConfig:
    """Sensor, rates and noise. IMU noise: white noise (std per sample) plus a per-sample constant bias (std)."""

    width: int = 128
    height: int = 96
    fov_deg: float = 60.0
    window_us: int = 50_000
    render_rate_hz: float = 2000.0
    imu_rate_hz: float = 800.0
    imu_margin: int = 4  # IMU periods beyond each end of the window
    accel_noise: float = 0.05  # m/s^2
    accel_bias: float = 0.05  # m/s^2
    gyro_noise: float = 0.003  # rad/s
    gyro_bias: float = 0.005  # rad/s
    distance_m: tuple[float, float] = (2.5, 5.0)  # the scene plane's distance, drawn per sample
    simulator: SimulatorConfig = field(default_factory=lambda: SimulatorConfig(shot_noise_rate_hz=1.0))

    def __post_init__(self):
        def need(ok: bool, name: str, expected: str):
            if not ok:
                raise ValueError(f"WorldConfig: {name} = {getattr(self, name)!r}; expected {expected}")

        for name in ("width", "height"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 8, name, "an integer >= 8 pixels")
        need(0 < self.fov_deg < 150, "fov_deg", "a pinhole field of view in (0, 150) degrees")
        need(0 < self.window_us < 100_000, "window_us", "0 < window < 100000 µs (EventGPT refuses 100 ms or more)")
        need(self.render_rate_hz * self.window_us * 1e-6 >= 4, "render_rate_hz", "at least 4 frames per window")
        need(self.imu_rate_hz * self.window_us * 1e-6 >= 2, "imu_rate_hz", "at least 2 IMU samples per window")
        need(self.imu_margin >= 1, "imu_margin", "at least 1 IMU period of margin")
        for name in ("accel_noise", "accel_bias", "gyro_noise", "gyro_bias"):
            need(getattr(self, name) >= 0, name, "a non-negative standard deviation")
        need(1.0 <= self.distance_m[0] <= self.distance_m[1], "distance_m", "(near, far) with 1 m <= near <= far")

    @property
    def focal_px(self) -> float:
        return self.width / 2 / np.tan(np.deg2rad(self.fov_deg) / 2)

    @property
    def t0_us(self) -> int:
        """Where windows start: late enough that the IMU's margin before it is at t >= 0."""
        return int(np.ceil(self.imu_margin * 1e6 / self.imu_rate_hz))


def _rot(axis: int, a: np.ndarray) -> np.ndarray:
    """[T, 3, 3] right-handed rotations by angles ``a`` [T] about ``axis`` (0 = x, 1 = y, 2 = z)."""
    c, s = np.cos(a), np.sin(a)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r = np.zeros((len(a), 3, 3))
    r[:, axis, axis] = 1
    r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c, -s, s, c
    return r


@dataclass(frozen=True, eq=False)
class Motion:
    """Channels (ψ, θ, φ, X, Y, Z) = ``offset`` + ``rate`` t + Σ amp sin(2π f t + phase) over ``waves`` rows
    (channel, amp, f, phase); t in seconds from the window's start, angles in rad, positions in m."""

    offset: np.ndarray
    rate: np.ndarray
    waves: np.ndarray

    def channels(self, t: np.ndarray, order: int = 0) -> np.ndarray:
        """[T, 6]: the channels' values (order 0) or their first or second time derivatives."""
        t = np.asarray(t, dtype=np.float64)
        ch, amp, f, ph = self.waves.T
        w = 2 * np.pi * f
        arg = t[:, None] * w + ph
        terms = [amp * np.sin(arg), amp * w * np.cos(arg), -amp * w**2 * np.sin(arg)][order]
        base = [self.offset + self.rate * t[:, None], np.broadcast_to(self.rate, (len(t), 6)), np.zeros((len(t), 6))]
        return base[order] + terms @ (ch[:, None] == np.arange(6)).astype(np.float64)

    def rotation(self, t: np.ndarray) -> np.ndarray:
        """[T, 3, 3] camera-to-world rotations."""
        c = self.channels(t)
        return _rot(1, c[:, YAW]) @ _rot(0, c[:, PITCH]) @ _rot(2, c[:, ROLL])

    def position(self, t: np.ndarray) -> np.ndarray:
        return self.channels(t)[:, X:]

    def angular_velocity(self, t: np.ndarray) -> np.ndarray:
        """[T, 3] body rates in the sensor frame: ω = Rz^T Rx^T e_y ψ' + Rz^T e_x θ' + e_z φ' (rad/s)."""
        c, d = self.channels(t), self.channels(t, 1)
        rz_t = _rot(2, -c[:, ROLL])
        yaw = np.einsum("tij,tj->ti", rz_t @ _rot(0, -c[:, PITCH]), np.outer(d[:, YAW], [0, 1, 0]))
        return yaw + np.einsum("tij,tj->ti", rz_t, np.outer(d[:, PITCH], [1, 0, 0])) + np.outer(d[:, ROLL], [0, 0, 1])

    def specific_force(self, t: np.ndarray) -> np.ndarray:
        """[T, 3] what an ideal accelerometer reads: R^T (a_world − g_world), m/s^2."""
        a = self.channels(t, 2)[:, X:] - np.array([0.0, G, 0.0])
        return np.einsum("tji,tj->ti", self.rotation(t), a)


@dataclass(frozen=True)
class Plan:
    """Everything one seed draws: the semantics, the scene plane's distance and the camera motion."""

    seed: int
    activity: str
    scene: Scene
    pace: str | None
    direction: str | None
    sentence: int
    distance_m: float
    motion: Motion
    params: dict  # the drawn motion parameters (speed, step rate, bob, yaw / pitch rate...), for meta and tests


def _family(activity: str) -> str:
    return activity.split()[0] if activity.split()[0] in PACES else "standing"


def _directions(activity: str) -> tuple[str | None, ...]:
    fam = _family(activity)
    if fam in ("walking", "running"):
        return WALK_DIRECTIONS
    return (activity.split()[1],) if fam in ("turning", "looking") else (None,)


def _draw_motion(rng: np.random.Generator, activity: str, pace: str | None, direction: str | None):
    fam, deg = _family(activity), np.deg2rad
    offset = np.array([deg(rng.uniform(-10, 10)), deg(rng.uniform(-5, 5)), deg(rng.uniform(-3, 3)),
                       rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.2), 0.0])
    rate, waves, params = np.zeros(6), [], {}

    def wave(channels, amp, f):  # one sinusoid shared (same phase) by channels = {channel: weight}
        phase = rng.uniform(0, 2 * np.pi)
        waves.extend((c, amp * k, f, phase) for c, k in channels.items() if k)

    for c in (YAW, PITCH, ROLL):  # physiological tremor and slow postural sway, for everyone
        wave({c: 1}, deg(rng.uniform(0.05, 0.15)), rng.uniform(6, 12))
        wave({c: 1}, deg(rng.uniform(0.2, 0.5)), rng.uniform(0.2, 0.5))
    for c in (X, Z):
        wave({c: 1}, rng.uniform(0.003, 0.008), rng.uniform(0.2, 0.5))
    heading = np.array([np.sin(offset[YAW]), np.cos(offset[YAW])])  # (X, Z) of the camera's forward at t = 0
    if fam in GAIT:
        speed, step_hz, bob_g = (v * rng.uniform(0.9, 1.1) for v in GAIT[fam][pace])
        bob = bob_g * G / (2 * np.pi * step_hz) ** 2  # about 2 cm either way: running bobs harder, not further
        side = rng.choice([-1.0, 1.0])
        u = heading if direction != "past" else side * np.array([heading[1], -heading[0]])  # walk along forward or x
        w = np.array([u[1], -u[0]])
        rate[[X, Z]] = speed * u
        wave({Y: 1}, bob, step_hz)  # the head rises and falls once per step
        wave({X: w[0], Z: w[1]}, 0.6 * bob, step_hz / 2)  # and sways sideways once per stride
        wave({X: u[0], Z: u[1]}, 0.1 * speed / (2 * np.pi * step_hz), step_hz)  # speed surges per step
        wave({PITCH: 1}, deg(2 * bob_g), step_hz)  # 0.5-0.8° walking, 1-1.3° running
        wave({ROLL: 1}, deg(3 * bob_g), step_hz / 2)
        wave({YAW: 1}, deg(2 * bob_g), step_hz / 2)
        params |= dict(speed_mps=speed, step_hz=step_hz, bob_m=bob, bob_g=bob_g)
    if fam in RATE_DPS:
        r = rng.uniform(*RATE_DPS[fam][pace]) * (1 if direction in ("right", "up") else -1)
        rate[YAW if fam == "turning" else PITCH] = deg(r)
        params[f"{'yaw' if fam == 'turning' else 'pitch'}_rate_dps"] = r
    if fam == "shaking":
        for c in (YAW, PITCH, ROLL):
            wave({c: 1}, deg(rng.uniform(*SHAKE_DEG[pace])), rng.uniform(5, 10))
        for c in (X, Y, Z):
            wave({c: 1}, rng.uniform(0.001, 0.003), rng.uniform(5, 10))
    return Motion(offset, rate, np.array(waves, dtype=np.float64)), params


def plan(seed: int, config: WorldConfig = WorldConfig()) -> Plan:
    """What ``seed`` draws (numpy's ``default_rng(seed)``); the IMU noise comes from ``default_rng([seed, 1])``."""
    rng = np.random.default_rng(seed)
    activity = ACTIVITIES[rng.integers(len(ACTIVITIES))]
    all_scenes = scenes()
    scene = all_scenes[rng.integers(len(all_scenes))]
    fam = _family(activity)
    pace = PACES[fam][rng.integers(len(PACES[fam]))]
    directions = _directions(activity)
    direction = directions[rng.integers(len(directions))] if len(directions) > 1 else directions[0]
    sentence = int(rng.integers(len(SENTENCES)))
    distance = rng.uniform(*config.distance_m)
    motion, params = _draw_motion(rng, activity, pace, direction)
    return Plan(seed, activity, scene, pace, direction, sentence, distance, motion, params)


def _phrase(activity: str, pace: str | None, direction: str | None) -> tuple[str, str]:
    """(activity phrase, preposition before the scene)."""
    fam = _family(activity)
    if fam in ("walking", "running"):
        return f"{fam} at a {pace} pace", direction
    return {"standing": ("standing still", "in front of"), "turning": (f"{activity} {pace}", "past"),
            "looking": (f"{activity} {pace}", "at"), "shaking": (f"shaking {pace}", "in front of")}[fam]


def narrate(activity: str, pace: str | None, direction: str | None, scene: Scene, sentence: int = 0) -> str:
    act, prep = _phrase(activity, pace, direction)
    return SENTENCES[sentence].format(act=act, prep=prep, scene=scene.description)


def narration_corpus() -> list[str]:
    """Every sentence the grammar can produce (for training a tokenizer, and to check narrations against)."""
    out = []
    for activity in ACTIVITIES:
        fam = _family(activity)
        for pace in PACES[fam]:
            for d in _directions(activity):
                out += [narrate(activity, pace, d, s, k) for s in scenes() for k in range(len(SENTENCES))]
    return out


@functools.cache
def _texture(name: str, width: int, height: int) -> np.ndarray:
    """The scene as printed on the plane: contrast-equalised (CLAHE, so dim photographs still texture the view),
    in 5..95 % reflectance (paper under room light: no black pixel, log intensity stays finite) and resized so a
    texel is one sensor pixel at the plane's distance and the print covers 1.3 views each way. Cached per size."""
    from skimage.exposure import equalize_adapthist
    from skimage.transform import resize

    img = equalize_adapthist(Scene(name, "").load(), clip_limit=0.03)
    scale = 1.3 * max(width / img.shape[1], height / img.shape[0])
    tex = resize(img, (round(scale * img.shape[0]), round(scale * img.shape[1])), order=1, anti_aliasing=True)
    return 0.05 + 0.9 * tex


def render(p: Plan, t_s: np.ndarray, config: WorldConfig = WorldConfig()) -> np.ndarray:
    """[T, H, W] grey frames at times ``t_s`` (s from the window's start): each pixel's ray meets the plane
    Z = distance, which is sampled bilinearly (mirrored beyond the photograph)."""
    tex = _texture(p.scene.name, config.width, config.height)
    f = config.focal_px
    v, u = np.mgrid[0:config.height, 0:config.width].astype(np.float64)
    rays = np.stack([(u - (config.width - 1) / 2) / f, (v - (config.height - 1) / 2) / f, np.ones_like(u)])
    rays = rays.reshape(3, -1)
    d = p.motion.rotation(t_s) @ rays  # [T, 3, N] world directions
    pos = p.motion.position(t_s)[:, :, None]
    if (d[:, 2] <= 0.05).any():
        raise ValueError(f"synthetic:{p.seed}: the camera turned away from the scene plane")
    lam = (p.distance_m - pos[:, 2]) / d[:, 2]
    texel = p.distance_m / f  # metres per texel
    cols = (pos[:, 0] + lam * d[:, 0]) / texel + (tex.shape[1] - 1) / 2
    rows = (pos[:, 1] + lam * d[:, 1]) / texel + (tex.shape[0] - 1) / 2
    frames = map_coordinates(tex, [rows.ravel(), cols.ravel()], order=1, mode="mirror")
    return frames.reshape(len(t_s), config.height, config.width)


def imu(p: Plan, config: WorldConfig = WorldConfig()) -> IMURecording:
    """The IMU over the window plus ``imu_margin`` periods each side (t in s on the events' clock), with noise."""
    rng = np.random.default_rng([p.seed, 1])
    n = int(np.ceil(config.window_us * 1e-6 * config.imu_rate_hz))
    k = np.arange(-config.imu_margin, n + config.imu_margin + 1)
    tau = k / config.imu_rate_hz
    accel = p.motion.specific_force(tau) + config.accel_bias * rng.standard_normal(3)
    gyro = p.motion.angular_velocity(tau) + config.gyro_bias * rng.standard_normal(3)
    accel += config.accel_noise * rng.standard_normal(accel.shape)
    gyro += config.gyro_noise * rng.standard_normal(gyro.shape)
    return IMURecording(config.t0_us * 1e-6 + tau, accel, gyro, "m/s^2", "rad/s", config.imu_rate_hz,
                        f"synthetic:{p.seed}", "synthetic")


def make_sample(seed: int, config: WorldConfig = WorldConfig()) -> PairedSample:
    """One paired sample: events in [t0_us, t1_us), the IMU covering it, the narration and what drew them."""
    p = plan(seed, config)
    t0, t1 = config.t0_us, config.t0_us + config.window_us
    n = int(np.ceil(config.window_us * 1e-6 * config.render_rate_hz))
    t_us = np.linspace(t0, t1, n + 1)
    frames = render(p, (t_us - t0) * 1e-6, config)
    source = f"synthetic:{seed}"
    ev = simulate(zip(frames, t_us), replace(config.simulator, seed=seed), source=source)
    keep = ev.t < t1
    events = EventStream(ev.x[keep], ev.y[keep], ev.t[keep], ev.p[keep], ev.width, ev.height, source)
    text = narrate(p.activity, p.pace, p.direction, p.scene, p.sentence)
    meta = dict(activity=p.activity, scene=p.scene.name, description=p.scene.description, pace=p.pace,
                direction=p.direction, seed=seed, sentence=p.sentence, distance_m=p.distance_m, **p.params)
    return PairedSample(imu(p, config), events, t0, t1, source, text, meta)


def make_samples(seeds: Iterable[int], config: WorldConfig = WorldConfig(),
                 progress: bool = True) -> list[PairedSample]:
    from tqdm import tqdm

    seeds = list(seeds)
    return [make_sample(s, config) for s in tqdm(seeds, disable=not progress, unit="sample", desc="synthetic world")]
