"""What every multimodal family shares: a prompt whose placeholder is replaced by projected sensor features.

A family (LLaSA, OneLLM, SensorLLM, EventGPT, Video-LLaVA) is a prompt-embedding builder in front of a
:class:`~imuspec.model.Decoder`; :func:`splice` is the one place where features enter the token stream.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .model import Decoder
from .templates import Tokenizer

PLACEHOLDER_ID = -200  # LLaVA's IMAGE_TOKEN_INDEX, also EventGPT's EVENT_TOKEN_INDEX and LLaSA's


def tokenize_with_placeholder(tok: Tokenizer, prompt: str, placeholder: str) -> list[int]:
    """BOS (where the tokenizer adds it) + ``prompt`` tokens with each ``placeholder`` string as PLACEHOLDER_ID.

    Like LLaVA's ``tokenizer_image_token``: the text between placeholders is tokenized piece by piece.
    """
    ids = [tok.bos_id] if tok.adds_bos else []
    for i, chunk in enumerate(prompt.split(placeholder)):
        if i:
            ids.append(PLACEHOLDER_ID)
        ids += tok.encode(chunk, bos=False) if chunk else []
    return ids


def splice(decoder: Decoder, ids: list[int], features: list[Tensor]) -> Tensor:
    """Prompt embeddings [T, H]: ``ids`` embedded, the i-th PLACEHOLDER_ID replaced by ``features[i]`` [N_i, H]."""
    slots = [i for i, t in enumerate(ids) if t == PLACEHOLDER_ID]
    if len(slots) != len(features):
        raise ValueError(f"the prompt has {len(slots)} modality placeholders but {len(features)} feature sets were given")
    hidden = decoder.config.hidden_size
    parts, start = [], 0
    dev = decoder.device
    for slot, f in zip(slots + [len(ids)], features + [None]):
        if slot > start:
            parts.append(decoder.embed(torch.tensor(ids[start:slot], device=dev)))
        if f is not None:
            if f.ndim != 2 or f.shape[1] != hidden:
                raise ValueError(f"modality features have shape {tuple(f.shape)}, expected [N, {hidden}]")
            parts.append(f.to(device=dev, dtype=decoder.dtype))
        start = slot + 1
    return torch.cat(parts)
