"""From a checkpoint folder and the user's sensor file to what the engine takes: a decoder and its prompt.

The family comes from ``config.json``'s ``model_type``; each family builds its own prompt with its own template and
modality tokens (see ``imuspec.models``). A plain LLaMA folder is a text-only side: the query under ``template`` (or
as it is), with BOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .checkpoint import load_decoder, read_json
from .model import Decoder
from .templates import Tokenizer, get_template


@dataclass
class Side:
    """A draft or target ready for :func:`imuspec.speculative.generate`."""

    decoder: Decoder
    prompt: Tensor  # token ids [T] or embeddings [T, H]
    tokenizer: Tokenizer


def model_type(folder: str | Path) -> str:
    return read_json(Path(folder) / "config.json").get("model_type", "llama")


def text_side(folder: str | Path, query: str, template: str | None, dtype, device, tokenizer: Tokenizer | None = None) -> Side:
    """A LLaMA folder prompted with text only (its own tokenizer, else ``tokenizer``)."""
    folder = Path(folder)
    has_tokenizer = any((folder / n).exists() for n in ("tokenizer.json", "tokenizer.model"))
    tok = Tokenizer(folder) if has_tokenizer or tokenizer is None else tokenizer
    text = get_template(template).prompt(query) if template else query
    decoder = load_decoder(folder, dtype, device)
    return Side(decoder, torch.tensor(tok.encode(text), device=device), tok)


def load_target(folder: str | Path, query: str, template: str | None = None, events: str | Path | None = None,
                video: str | Path | None = None, dtype=torch.float32, device="cpu") -> Side:
    """EventGPT (with ``events``), Video-LLaVA (with ``video``) or a text-only LLaMA target."""
    kind = model_type(folder)
    if kind == "EventChat_llama":
        from .events import read_events
        from .models.eventgpt import EventGPT

        if events is None:
            raise ValueError(f"{folder} is an EventGPT checkpoint: give the event file with --events FILE")
        m = EventGPT.from_pretrained(folder, dtype=dtype, device=device)
        return Side(m.decoder, m.prompt_embeds(query, m.pixel_values(read_events(events))), m.tokenizer)
    if kind == "video_llava":
        from .models.videollava import VideoLLaVA

        if video is None:
            raise ValueError(f"{folder} is a Video-LLaVA checkpoint: give the video with --video FILE")
        m = VideoLLaVA.from_pretrained(folder, dtype=dtype, device=device)
        return Side(m.decoder, m.prompt_embeds(query, video), m.tokenizer)
    if events is not None or video is not None:
        raise ValueError(f"--events and --video need an EventGPT or Video-LLaVA target; {folder} has model_type {kind!r}")
    return text_side(folder, query, template, dtype, device)


def load_draft(folder: str | Path, query: str, template: str | None, tokenizer: Tokenizer, imu: str | Path | None = None,
               imu_index: int | None = None, imu_encoder: str | Path | None = None, chronos: str | Path | None = None,
               tokenizer_folder: str | Path | None = None, dtype=torch.float32, device="cpu") -> Side:
    """An IMU draft with the recording ``imu`` (LLaSA, SensorLLM: a folder; OneLLM: its ``consolidated.*.pth``), or a
    text-only LLaMA draft, which borrows the target's tokenizer when it has none (the vocabulary must be shared)."""
    folder = Path(folder)
    kind = "onellm" if folder.suffix == ".pth" else model_type(folder)
    imu_family = kind == "onellm" or kind.startswith(("llava"))
    if imu_family != (imu is not None):
        raise ValueError(f"--imu goes with an IMU draft (LLaSA, OneLLM, SensorLLM); {folder} is model_type {kind!r}"
                         if imu is not None else f"{folder} is an IMU draft ({kind}): give the recording with --imu FILE")
    if not imu_family:
        return text_side(folder, query, template, dtype, device, tokenizer)
    from .imu import read_imu

    rec = read_imu(imu, imu_index)
    if kind == "onellm":
        from .models.onellm import OneLLM

        m = OneLLM.from_pretrained(folder, tokenizer_folder, dtype=dtype, device=device)
        return Side(m.decoder, m.prompt_embeds(query, rec), m.tokenizer)
    if kind.startswith("sensorllm"):
        from .models.sensorllm import SensorLLM

        if chronos is None:
            raise ValueError(f"{folder} is a SensorLLM checkpoint: give its Chronos folder with --chronos DIR")
        m = SensorLLM.from_pretrained(folder, chronos, dtype=dtype, device=device)
        series = torch.from_numpy(rec.data().T.astype(np.float32))  # Chronos mean-scales each channel: units cancel
        return Side(m.decoder, m.prompt_embeds(query, series), m.tokenizer)
    from .models.llasa import LLaSA

    m = LLaSA.from_pretrained(folder, imu_encoder=imu_encoder, dtype=dtype, device=device)
    return Side(m.decoder, m.prompt_embeds(query, rec), m.tokenizer or tokenizer)
