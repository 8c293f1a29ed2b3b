"""EventGPT (XduSyL/EventGPT, CVPR 2025) as a target: event frames → CLIP → projector → adaptor → pooling → Vicuna.

Each of the F event frames (5 in EventGPT, rendered and CLIP-processed to 3×336×336 by :mod:`imuspec.events`) goes
through CLIP ViT-L/14-336; its ``last_hidden_state`` (577 tokens, CLS included, before ``post_layernorm``) through
``visual_projector`` Linear(1024→4096), GELU, Linear(4096→4096) and ``feature_adaptor`` Linear(4096→4096). The F×577
features are pooled into F temporal tokens (each frame's mean over its tokens) followed by 577 spatial tokens (each
token's mean over frames): 582 tokens, spliced at ``<event>`` in ``<ev_start><event><ev_end>\\n{query}`` rendered with
``eventgpt_v1``. ``<ev_patch>`` (when ``mm_use_im_patch_token``, the default) and then ``<ev_start>``/``<ev_end>``
(when ``mm_use_im_start_end``) are added to the tokenizer in that order, as the original's inference does; otherwise
the tags are plain text.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import CLIPVisionConfig

from ..checkpoint import CheckpointError, build_decoder, hf_config, load_into, load_state_dict
from ..model import Decoder, LlamaConfig
from ..multimodal import splice, tokenize_with_placeholder
from ..templates import Tokenizer, get_template
from .clip import build_tower, check_pixels, load_tower, take, tower_config

EVENT_TOKEN, PATCH_TOKEN, START_TOKEN, END_TOKEN = "<event>", "<ev_patch>", "<ev_start>", "<ev_end>"
TOWER_PREFIX = "model.visual_tower.visual_tower."


def prompt_ids(tokenizer: Tokenizer, query: str) -> list[int]:
    """BOS + the ``eventgpt_v1`` prompt, with PLACEHOLDER_ID where the event tokens go."""
    prompt = get_template("eventgpt_v1").prompt(f"{START_TOKEN}{EVENT_TOKEN}{END_TOKEN}\n{query}")
    return tokenize_with_placeholder(tokenizer, prompt, EVENT_TOKEN)


class EventEncoder(nn.Module):
    """Event frames [F, 3, S, S] → [F + N, H]: F temporal tokens, then N spatial tokens (N = CLIP tokens per frame)."""

    def __init__(self, tower: CLIPVisionConfig, hidden_size: int):
        super().__init__()
        self.visual_tower = build_tower(tower)
        self.visual_projector = nn.Sequential(
            nn.Linear(tower.hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
        )
        self.feature_adaptor = nn.Linear(hidden_size, hidden_size)

    def forward(self, pixels: Tensor) -> Tensor:
        """[F, 3, S, S] → [F + N, H], or a batch [B, F, 3, S, S] → [B, F + N, H] (training)."""
        batch = pixels if pixels.ndim == 5 else pixels[None]
        b, f = batch.shape[:2]
        frames = batch.flatten(0, 1)
        check_pixels(frames, self.visual_tower.config, "event frames")
        w = self.feature_adaptor.weight
        x = self.visual_tower(frames.to(device=w.device, dtype=w.dtype)).last_hidden_state  # [B*F, N, C]
        x = self.feature_adaptor(self.visual_projector(x)).unflatten(0, (b, f))  # [B, F, N, H]
        out = torch.cat([x.mean(dim=2), x.mean(dim=1)], dim=1)
        return out if pixels.ndim == 5 else out[0]


class EventGPT(nn.Module):
    """An EventGPT checkpoint: ``.decoder`` (Vicuna), ``.encoder`` (:class:`EventEncoder`), ``.tokenizer``."""

    def __init__(self, decoder: Decoder, encoder: EventEncoder, tokenizer: Tokenizer):
        super().__init__()
        self.decoder, self.encoder, self.tokenizer = decoder, encoder, tokenizer

    def prompt_ids(self, query: str) -> list[int]:
        return prompt_ids(self.tokenizer, query)

    def pixel_values(self, stream) -> Tensor:
        """The vision input [5, 3, S, S] of an :class:`~imuspec.events.EventStream` at this tower's resolution S."""
        from ..events.render import eventgpt_pixel_values

        return eventgpt_pixel_values(stream, size=self.encoder.visual_tower.config.image_size)

    def prompt_embeds(self, query: str, pixels: Tensor) -> Tensor:
        """Prompt embeddings [T, H] for ``query`` about the event frames ``pixels`` [F, 3, 336, 336]."""
        with torch.no_grad():
            return splice(self.decoder, self.prompt_ids(query), [self.encoder(pixels)])

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the original layout (what :meth:`from_pretrained` reads): config.json, the CLIP tower's config in
        ``visual_tower/``, model.safetensors (tower, projector and adaptor under ``model.``), the tokenizer."""
        from safetensors.torch import save_file

        folder = Path(folder)
        (folder / "visual_tower").mkdir(parents=True, exist_ok=True)
        tower = self.encoder.visual_tower.config
        (folder / "visual_tower" / "config.json").write_text(tower.to_json_string())
        config = {**self.decoder.config.to_hf(), "model_type": "EventChat_llama", "mm_visual_tower": "visual_tower",
                  "mm_hidden_size": tower.hidden_size, "mm_use_im_patch_token": True, "mm_use_im_start_end": True}
        (folder / "config.json").write_text(json.dumps(config, indent=1))
        sd = dict(self.decoder.state_dict())
        sd.update({TOWER_PREFIX + k: v for k, v in self.encoder.visual_tower.state_dict().items()})
        for name in ("visual_projector", "feature_adaptor"):
            sd.update({f"model.{name}.{k}": v for k, v in getattr(self.encoder, name).state_dict().items()})
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
        self.tokenizer.save_pretrained(folder)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        visual_tower: str | Path | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> EventGPT:
        """Load an EventGPT folder as the original saves it (``config.json`` with model_type ``EventChat_llama``).

        The CLIP tower's shape comes from ``visual_tower`` (a local CLIP folder) when given, else from the config's
        ``mm_visual_tower``; its weights from the checkpoint's ``model.visual_tower.visual_tower.*`` keys (which
        override the tower folder, as in the original), else from that folder.
        """
        folder = Path(folder)
        d = hf_config(folder)
        if d.get("model_type") != "EventChat_llama":
            raise CheckpointError(f"{folder / 'config.json'}: model_type is {d.get('model_type')!r}, expected 'EventChat_llama'")
        tower_source = visual_tower or d.get("mm_visual_tower")
        if isinstance(tower_source, str) and (folder / tower_source).is_dir():  # a tower shipped inside the folder
            tower_source = folder / tower_source
        if tower_source is None:
            raise CheckpointError(f"{folder / 'config.json'}: field 'mm_visual_tower' missing (or pass visual_tower=)")
        cfg = LlamaConfig.from_hf(d, str(folder / "config.json"))
        tok = Tokenizer(folder)
        if d.get("mm_use_im_patch_token", True):  # never in a prompt, but it takes the first free id
            tok.hf.add_tokens([PATCH_TOKEN], special_tokens=True)
        if d.get("mm_use_im_start_end", False):
            tok.hf.add_tokens([START_TOKEN, END_TOKEN], special_tokens=True)
            ids = tok.hf.convert_tokens_to_ids([START_TOKEN, END_TOKEN])
            if max(ids) >= cfg.vocab_size:
                raise CheckpointError(f"{folder}: {START_TOKEN} and {END_TOKEN} get ids {ids}, but the embedding "
                                      f"table has {cfg.vocab_size} rows (config.json 'vocab_size')")
        tok.vocab_size = len(tok.hf)

        sd = load_state_dict(folder)
        tower_sd = take(sd, TOWER_PREFIX)
        if not tower_sd and not Path(tower_source).is_dir():
            raise CheckpointError(f"{folder}: no {TOWER_PREFIX}* keys, and the vision tower {str(tower_source)!r} "
                                  "is not a local folder to take its weights from (pass visual_tower=)")
        encoder = EventEncoder(tower_config(tower_source), cfg.hidden_size)
        if tower_sd:
            load_tower(encoder.visual_tower, tower_sd, f"{folder} ({TOWER_PREFIX}*)")
        else:
            load_tower(encoder.visual_tower, load_state_dict(tower_source), str(tower_source))
        for name in ("visual_projector", "feature_adaptor"):
            load_into(getattr(encoder, name), take(sd, f"model.{name}."), f"{folder} (model.{name}.*)")
        return cls(build_decoder(cfg, sd, str(folder)), encoder, tok).to(device=device, dtype=dtype).eval()
