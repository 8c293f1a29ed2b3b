"""From a checkpoint folder and the user's sensor file to what the engine takes: a decoder and its prompt.

The family comes from ``config.json``'s ``model_type``; each family builds its own prompt with its own template and
modality tokens (see ``imuspec.models``). A plain LLaMA folder is a text-only side: the query under ``template`` (or
as it is), with BOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    family: str


def model_type(folder: str | Path) -> str:
    return read_json(Path(folder) / "config.json").get("model_type", "llama")


def text_side(folder: str | Path, query: str, template: str | None, dtype, device, tokenizer: Tokenizer | None = None) -> Side:
    """A LLaMA folder prompted with text only (its own tokenizer, else ``tokenizer``)."""
    folder = Path(folder)
    has_tokenizer = any((folder / n).exists() for n in ("tokenizer.json", "tokenizer.model"))
    tok = Tokenizer(folder) if has_tokenizer or tokenizer is None else tokenizer
    text = get_template(template).prompt(query) if template else query
    decoder = load_decoder(folder, dtype, device)
    return Side(decoder, torch.tensor(tok.encode(text), device=device), tok, "text")


def load_target(folder: str | Path, query: str, template: str | None = None, events: str | Path | None = None,
                video: str | Path | None = None, dtype=torch.float32, device="cpu") -> Side:
    """EventGPT (with ``events``), Video-LLaVA (with ``video``) or a text-only LLaMA target."""
    kind = model_type(folder)
    if kind == "EventChat_llama":
        from .events import eventgpt_pixel_values, read_events
        from .models.eventgpt import EventGPT

        if events is None:
            raise ValueError(f"{folder} is an EventGPT checkpoint: give the event file with --events FILE")
        m = EventGPT.from_pretrained(folder, dtype=dtype, device=device)
        return Side(m.decoder, m.prompt_embeds(query, eventgpt_pixel_values(read_events(events))), m.tokenizer, "eventgpt")
    if kind == "video_llava":
        from .models.videollava import VideoLLaVA

        if video is None:
            raise ValueError(f"{folder} is a Video-LLaVA checkpoint: give the video with --video FILE")
        m = VideoLLaVA.from_pretrained(folder, dtype=dtype, device=device)
        return Side(m.decoder, m.prompt_embeds(query, video), m.tokenizer, "videollava")
    if events is not None or video is not None:
        raise ValueError(f"--events and --video need an EventGPT or Video-LLaVA target; {folder} has model_type {kind!r}")
    return text_side(folder, query, template, dtype, device)


def load_draft(folder: str | Path, query: str, template: str | None, tokenizer: Tokenizer, dtype=torch.float32,
               device="cpu") -> Side:
    """A text-only LLaMA draft (its own tokenizer, else the target's, whose vocabulary it must share)."""
    return text_side(folder, query, template, dtype, device, tokenizer)
