"""Adaptive sizing: each step's chain length or tree from measured costs and acceptance, down to the target alone.

The target's verify cost v(T) for T tokens is measured once per model shape and device (T = 1..64) and kept as JSON
in the user's cache folder. While decoding, acceptance per depth (per tree width), the accepted depth of each shape
tried and the draft's cost per forward are measured; each step takes the shape that maximises predicted tokens per
second, (1 + E[accepted depth]) / (depth · t_draft + v(nodes + 1)), against 1 / v(1) for the target alone. When the
target alone wins, drafting stops and is probed again after ``probe_every`` × (a probe's cost in target steps)
steps, so probing loses at most 1/probe_every of the time. The output never depends on it.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .model import Decoder
from .runtime import cache_dir
from .tree import TreeShape

PROFILE_TOKENS = 64


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}-{torch.get_num_threads()}threads"


def profile_key(model: Decoder) -> str:
    """The checkpoint's name (where its config has one) and shape, dtype and device: what v(T) depends on."""
    c = model.config
    name = os.path.basename(str(c.extra.get("_name_or_path", "")).rstrip("/")) or "llama"
    shape = f"L{c.num_hidden_layers}-h{c.hidden_size}-a{c.num_attention_heads}-kv{c.num_key_value_heads}-" \
            f"ff{c.intermediate_size}-v{c.vocab_size}"
    key = f"{name}_{shape}_{str(model.dtype).removeprefix('torch.')}_{device_name(model.device)}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)


def measure_verify_cost(model: Decoder, max_tokens: int, repeats: int = 3) -> list[float]:
    """Seconds of one forward of T = 1..max_tokens tokens (the fastest of ``repeats``), on an empty cache."""
    cuda = model.device.type == "cuda"
    gen = torch.Generator().manual_seed(0)
    times = []
    with torch.inference_mode():
        for t in range(1, max_tokens + 1):
            ids = torch.randint(0, model.config.vocab_size, (1, t), generator=gen).to(model.device)
            best = float("inf")
            for _ in range(repeats + (t == 1)):  # one more the first time: a warm-up
                model.rollback(0)
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(ids=ids)
                if cuda:
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t0)
            times.append(best)
    model.rollback(0)
    return times


def profile_path(model: Decoder) -> Path:
    return cache_dir() / "verify_cost" / f"{profile_key(model)}.json"


def save_profile(model: Decoder, seconds: list[float]) -> None:
    """Keep v(T) for T = 1..len(seconds) in the cache folder (written atomically)."""
    path = profile_path(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"key": profile_key(model), "tokens": list(range(1, len(seconds) + 1)),
                               "seconds": seconds}))
    tmp.replace(path)


def verify_profile(model: Decoder, max_tokens: int = PROFILE_TOKENS) -> list[float]:
    """v(T) in seconds for T = 1..len, from the cache folder or measured now (once per model shape and device)."""
    path = profile_path(model)
    want = min(max_tokens, model.max_len)
    if path.exists():
        try:
            times = json.loads(path.read_text())["seconds"]
            if len(times) >= want:
                return times
        except (ValueError, KeyError):
            pass  # a damaged cache file is measured again
    times = measure_verify_cost(model, want)
    save_profile(model, times)
    return times


def chain_tau(alpha: list[float], depth: int) -> float:
    """Expected tokens per step of a chain of ``depth`` with conditional acceptance ``alpha[d-1]`` at depth d."""
    tau, reach = 1.0, 1.0
    for d in range(depth):
        reach *= alpha[min(d, len(alpha) - 1)]
        tau += reach
    return tau


def fallback_message(fallback: dict) -> str:
    """What ``imuspec generate`` says once when drafting was switched off."""
    return (f"note: drafting does not pay here (acceptance alpha {fallback['alpha']:.2f}, draft cost c "
            f"{fallback['c']:.2f} of a target step), so the target decoded alone, probing the draft now and then; "
            f"output unchanged. Remedies: a draft distilled from this target (`imuspec distill`), or a cheaper "
            f"draft (`--draft-layers`)")


@dataclass
class FixedPlan:
    """Every step the same shape (``--no-adapt``)."""

    shape: TreeShape
    fallback: dict | None = None

    def next_shape(self) -> TreeShape:
        return self.shape

    def update(self, shape, depth, accepted, nodes, draft_s, verify_s, timed=True) -> None:
        pass


@dataclass
class Planner:
    """Chooses each step's shape among ``shapes`` (or the target alone) from what decoding has measured so far."""

    target: Decoder
    shapes: list[TreeShape]
    probe_every: int = 32
    smooth: float = 0.8  # weight of the past in running means
    fallback: dict | None = None  # {"alpha", "c"} when it first chose the target alone
    verify_s: list[float] = field(init=False)
    _scale: float = 1.0  # measured / profiled verify time of chains and the target alone (the machine's load now)
    _extra_s: dict = field(default_factory=dict)  # width > 1 -> seconds a tree's step costs beyond v(nodes + 1)
    _draft_s: dict = field(default_factory=dict)  # width -> seconds per draft forward
    _depth: dict = field(default_factory=dict)  # shape -> running mean accepted depth
    _hits: dict = field(default_factory=dict)  # width -> [[reached, accepted] per depth]
    _idle: int = 0  # target-only steps since the last drafting step

    def __post_init__(self):
        need = max(s.nodes for s in self.shapes) + 1
        self.verify_s = verify_profile(self.target, max(PROFILE_TOKENS, need))

    def _profiled(self, t: int) -> float:
        v = self.verify_s
        if t <= len(v):
            return v[t - 1]
        return v[-1] + (t - len(v)) * (v[-1] - v[-2])  # linear beyond what was measured

    def _v(self, t: int) -> float:
        return self._profiled(t) * self._scale

    def alpha(self, width: int, depth: int) -> list[float]:
        """Conditional acceptance per depth for trees of ``width``, Laplace-smoothed; depths not reached yet take the
        deepest measured one's (0.5 before any data), so deeper shapes get tried when acceptance is high."""
        h = self._hits.get(width, [])
        seen = [(r[1] + 1) / (r[0] + 2) for r in h[:depth]]
        return seen + [seen[-1] if seen else 0.5] * (depth - len(seen))

    def predicted_tau(self, shape: TreeShape) -> float:
        if shape in self._depth:
            return 1 + self._depth[shape]
        return chain_tau(self.alpha(shape.width, shape.depth), min(shape.depth, shape.nodes))

    def predicted_speed(self, shape: TreeShape | None) -> float:
        """Tokens per second predicted for a step of ``shape`` (None: the target alone)."""
        if shape is None:
            return 1 / self._v(1)
        draft_s = self._draft_s.get(shape.width, next(iter(self._draft_s.values()), 0.0))
        extra = self._extra_s.get(shape.width, 0.0)
        return self.predicted_tau(shape) / (shape.depth * draft_s + self._v(shape.nodes + 1) + extra)

    def next_shape(self) -> TreeShape | None:
        if not self._draft_s:  # nothing measured yet: the cheapest shape measures α and c
            return min(self.shapes, key=lambda s: (s.nodes, s.depth))
        best = max(self.shapes, key=self.predicted_speed)
        if self.predicted_speed(best) >= self.predicted_speed(None):
            return best
        if self.fallback is None:
            h = next((h for h in (self._hits.get(1), *self._hits.values()) if h), None)  # none: nothing drafted yet
            self.fallback = {"alpha": h[0][1] / h[0][0] if h else 0.0,  # measured acceptance of the first draft token
                             "c": next(iter(self._draft_s.values())) / self._v(1)}
        self._idle += 1
        cost = self.predicted_tau(best) / self.predicted_speed(best) / self._v(1)  # a probe, in target steps
        if self._idle >= self.probe_every * cost:  # look again, at most 1/probe_every of the time lost
            return best
        return None

    def update(self, shape: TreeShape | None, depth: int, accepted: int, nodes: int, draft_s: float,
               verify_s: float, timed: bool = True) -> None:
        """Record one step: its shape (None: target alone), drafted and accepted depth, nodes and phase times;
        ``timed=False``: its times count nothing (the step compiled a new graph: on a GPU 15 s, not 5 ms).
        A tree's verify time also holds the tree's own work (its mask graph, moving the accepted path's cache slots):
        that is its width's extra cost. Counted as the machine's load, it made every shape look dearer alike, which
        favours the deepest."""
        a = self.smooth
        w = shape.width if shape is not None else 1
        if timed and w == 1:
            self._scale = a * self._scale + (1 - a) * verify_s / self._profiled(nodes + 1)
        elif timed:
            extra = max(0.0, verify_s - self._v(nodes + 1))
            self._extra_s[w] = a * self._extra_s[w] + (1 - a) * extra if w in self._extra_s else extra
        if shape is None:
            return
        self._idle = 0
        per = draft_s / max(depth, 1)
        if w not in self._draft_s:  # a first draft time is needed to plan at all
            self._draft_s[w] = per
        elif timed:  # falls at once, rises smoothly: one slow step (a stall) must not stop drafting for good
            self._draft_s[w] = min(per, a * self._draft_s[w] + (1 - a) * per)
        self._depth[shape] = a * self._depth[shape] + (1 - a) * accepted if shape in self._depth else accepted
        h = self._hits.setdefault(w, [])
        for d in range(min(depth, accepted + 1)):  # reached depth d + 1; accepted there unless d == accepted
            if d == len(h):
                h.append([0, 0])
            h[d][0] += 1
            h[d][1] += d < accepted
