"""From a checkpoint folder and the user's sensor input to what the engine takes: a decoder and its prompt.

The family comes from ``config.json``'s ``model_type``; each family builds its own prompt with its own template and
modality tokens (see ``imuspec.models``). A plain LLaMA folder is a text-only side: the query under ``template`` (a named one,
``chat``, ``plain``; default: the tokenizer's chat template where it has one), BOS as its tokenizer adds it. :func:`open_target` / :func:`open_draft` load a checkpoint once as a :class:`Family` that
prompts any number of inputs; :func:`load_target` / :func:`load_draft` do both for one input (a file or data in
memory), as ``imuspec generate`` needs.

IMU drafts and time windows: the project's trained LLaSA-family drafts (``config.json`` has ``limu_bert``) read a
paired sample's window (or the ``imu_span_us`` of ``config.json`` that end with it) as ``imu_encoder.config.seq_len``
points (:meth:`PairedSample.imu_input`), its distilled SensorLLM drafts as ``imu_points`` (per channel, Chronos from
the ``pt_encoder_backbone_ckpt`` they record), distilled OneLLM drafts (``params.json`` has ``imu_span_us``) the span
ending with it as their 400 positions, in OneLLM's units; the original
LLaSA, OneLLM and SensorLLM checkpoints read their usual input (LLaSA 6 s, OneLLM 2 s, SensorLLM the recording)
starting at the window's start, which fails if the recording is too short for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .checkpoint import load_decoder, read_json
from .imu.preprocess import limu_bert_normalize, onellm_values, span_input, starting_at
from .imu.recording import IMURecording
from .model import Decoder
from .paired import PairedSample
from .templates import Tokenizer, has_tokenizer


@dataclass
class Side:
    """A draft or target ready for :func:`imuspec.speculative.generate`."""

    decoder: Decoder
    prompt: Tensor  # token ids [T] or embeddings [T, H]
    tokenizer: Tokenizer


@dataclass
class Family:
    """A loaded checkpoint: ``embed(query, sensor_input)`` builds its prompt for one input (None for text-only)."""

    decoder: Decoder
    tokenizer: Tokenizer
    embed: Callable[[str, Any], Tensor]
    kind: str

    def side(self, query: str, x: Any = None) -> Side:
        return Side(self.decoder, self.embed(query, x), self.tokenizer)


def model_type(folder: str | Path) -> str:
    return read_json(Path(folder) / "config.json").get("model_type", "llama")


def _text(folder: Path, template: str | None, dtype, device, tokenizer: Tokenizer | None = None) -> Family:
    """A LLaMA folder prompted with text only (its own tokenizer, else ``tokenizer``)."""
    tok = Tokenizer(folder) if has_tokenizer(folder) or tokenizer is None else tokenizer
    embed = lambda q, _=None: torch.tensor(tok.prompt_ids(q, template), device=device)  # noqa: E731
    return Family(load_decoder(folder, dtype, device), tok, embed, "llama")


def open_target(folder: str | Path, template: str | None = None, dtype=torch.float32, device="cpu") -> Family:
    """EventGPT (input: an event file or :class:`~imuspec.events.EventStream`), Video-LLaVA (a video file) or a
    text-only LLaMA (no input)."""
    folder, kind = Path(folder), model_type(folder)
    if kind == "EventChat_llama":
        from .events import EventStream, read_events
        from .models.eventgpt import EventGPT

        m = EventGPT.from_pretrained(folder, dtype=dtype, device=device)

        def embed(q, events):
            return m.prompt_embeds(q, m.pixel_values(events if isinstance(events, EventStream) else read_events(events)))

        return Family(m.decoder, m.tokenizer, embed, kind)
    if kind == "video_llava":
        from .models.videollava import VideoLLaVA

        m = VideoLLaVA.from_pretrained(folder, dtype=dtype, device=device)
        return Family(m.decoder, m.tokenizer, m.prompt_embeds, kind)
    return _text(folder, template, dtype, device)


def load_target(folder: str | Path, query: str, template: str | None = None, events=None, video=None,
                dtype=torch.float32, device="cpu") -> Side:
    """:func:`open_target` prompted with ``events`` (EventGPT: a file or an EventStream) or ``video`` (Video-LLaVA)."""
    kind = model_type(folder)
    if kind == "EventChat_llama" and events is None:
        raise ValueError(f"{folder} is an EventGPT checkpoint: give the event file with --events FILE")
    if kind == "video_llava" and video is None:
        raise ValueError(f"{folder} is a Video-LLaVA checkpoint: give the video with --video FILE")
    if kind not in ("EventChat_llama", "video_llava") and (events is not None or video is not None):
        raise ValueError(f"--events and --video need an EventGPT or Video-LLaVA target; {folder} has model_type {kind!r}")
    x = events if kind == "EventChat_llama" else video
    return open_target(folder, template, dtype, device).side(query, x)


def draft_kind(folder: Path) -> str:
    from .models.onellm import checkpoint_file

    return "onellm" if checkpoint_file(folder) else model_type(folder)


def is_imu_draft(kind: str) -> bool:
    return kind == "onellm" or kind.startswith(("llava", "sensorllm"))


def _from_start(x: IMURecording | PairedSample) -> IMURecording:
    """What an original IMU LLM reads: the recording, from the window's start for a paired sample."""
    return starting_at(x.imu, x.t0_us * 1e-6) if isinstance(x, PairedSample) else x


def _span(x: IMURecording | PairedSample, n: int, span_us: int | None = None, values=limu_bert_normalize) -> np.ndarray:
    """What a trained draft reads: the window, or the ``span_us`` ending with it (a whole recording: its span, or
    its last ``span_us``), as ``n`` points in ``values``' units."""
    if isinstance(x, PairedSample):
        return x.imu_input(n, span_us, values)
    return span_input(x, x.t[0] if span_us is None else max(x.t[0], x.t[-1] - span_us * 1e-6), x.t[-1], n, values)


def open_draft(folder: str | Path, template: str | None, tokenizer: Tokenizer, imu_encoder: str | Path | None = None,
               chronos: str | Path | None = None, tokenizer_folder: str | Path | None = None, dtype=torch.float32,
               device="cpu", layers: int | None = None) -> Family:
    """An IMU draft (LLaSA, SensorLLM: a folder; OneLLM: its ``consolidated.*.pth`` or the folder holding it, its
    tokenizer there or ``tokenizer_folder``'s) whose input is an
    :class:`IMURecording` or a :class:`PairedSample`, or a text-only LLaMA draft, which borrows the target's
    ``tokenizer`` when it has none (the vocabulary must be shared); ``layers`` keeps its LLM's first K layers."""
    family = _open_draft(Path(folder), template, tokenizer, imu_encoder, chronos, tokenizer_folder, dtype, device)
    if layers is not None:
        from .model import first_layers

        try:
            first_layers(family.decoder, layers)
        except ValueError as e:
            raise ValueError(f"--draft-layers {layers}: the draft {folder}: {e}") from None
    return family


def _open_draft(folder: Path, template, tokenizer, imu_encoder, chronos, tokenizer_folder, dtype, device) -> Family:
    kind = draft_kind(folder)
    if not is_imu_draft(kind):
        return _text(folder, template, dtype, device, tokenizer)
    if kind == "onellm":
        from .models.onellm import OneLLM

        m = OneLLM.from_pretrained(folder, tokenizer_folder, dtype=dtype, device=device)
        n, span = m.encoder.config.window, m.config.imu_span_us  # a distilled draft has imu_span_us
        read = _from_start if span is None else lambda x: torch.from_numpy(_span(x, n, span, onellm_values).T.copy())
        return Family(m.decoder, m.tokenizer, lambda q, x: m.prompt_embeds(q, read(x)), kind)
    if kind.startswith("sensorllm"):
        from .models.sensorllm import SensorLLM, backbone

        config = read_json(folder / "config.json")
        chronos = chronos or backbone(folder, config)
        if chronos is None:
            recorded = config.get("pt_encoder_backbone_ckpt")
            why = f" (config.json's pt_encoder_backbone_ckpt {recorded!r} is not a folder here)" if recorded else ""
            raise ValueError(f"{folder} is a SensorLLM checkpoint: give its Chronos folder with --chronos DIR{why}")
        m = SensorLLM.from_pretrained(folder, chronos, dtype=dtype, device=device)
        if "imu_points" in config:  # distilled: the window (or the span ending with it), as it was trained
            n, span = config["imu_points"], config.get("imu_span_us")
            series = lambda x: torch.from_numpy(np.ascontiguousarray(_span(x, n, span).T))  # noqa: E731
        else:  # Chronos mean-scales each channel: units cancel
            series = lambda x: torch.from_numpy(_from_start(x).data().T.astype(np.float32))  # noqa: E731
        return Family(m.decoder, m.tokenizer, lambda q, x: m.prompt_embeds(q, series(x)), kind)
    from .models.llasa import LLaSA

    m = LLaSA.from_pretrained(folder, imu_encoder=imu_encoder, dtype=dtype, device=device)
    config = read_json(folder / "config.json")
    if "limu_bert" in config:
        n, span = m.imu_encoder.config.seq_len, config.get("imu_span_us")
        return Family(m.decoder, m.tokenizer or tokenizer, lambda q, x: m.prompt_embeds(q, _span(x, n, span)), kind)
    return Family(m.decoder, m.tokenizer or tokenizer, lambda q, x: m.prompt_embeds(q, _from_start(x)), kind)


def load_draft(folder: str | Path, query: str, template: str | None, tokenizer: Tokenizer,
               imu: str | Path | PairedSample | None = None, imu_index: int | None = None,
               imu_encoder: str | Path | None = None, chronos: str | Path | None = None,
               tokenizer_folder: str | Path | None = None, dtype=torch.float32, device="cpu",
               layers: int | None = None) -> Side:
    """:func:`open_draft` prompted with ``imu``: a recording file (``imu_index`` picks one of several) or a paired
    sample; none for a text-only draft."""
    folder = Path(folder)
    kind = draft_kind(folder)
    if is_imu_draft(kind) != (imu is not None):
        raise ValueError(f"--imu goes with an IMU draft (LLaSA, OneLLM, SensorLLM); {folder} is model_type {kind!r}"
                         if imu is not None else f"{folder} is an IMU draft ({kind}): give the recording with --imu FILE")
    if isinstance(imu, (str, Path)):
        from .imu import read_imu

        imu = read_imu(imu, imu_index)
    family = open_draft(folder, template, tokenizer, imu_encoder, chronos, tokenizer_folder, dtype, device, layers)
    return family.side(query, imu)
