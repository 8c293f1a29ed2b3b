"""Video-LLaVA (PKU-YuanGroup/Video-LLaVA) as a target, from transformers' ``VideoLlavaForConditionalGeneration`` (-hf)
checkpoints.

As in transformers' port: the 8 frames go through the video tower (a CLIP vision model) one by one; hidden layer
``vision_feature_layer`` (−2) is kept whole, CLS included (257 tokens a frame at 224 px), projected by
``multi_modal_projector`` (Linear 1024→4096, GELU, Linear 4096→4096) and spliced, frame after frame (8 × 257 = 2,056
tokens), where the prompt says ``<video>``; the prompt is ``<video>\\n{query}`` rendered with ``llava_v1``. The image
tower shipped in the checkpoint is not loaded: only video is an input here.

Key layouts read: the hub's (``language_model.model.*``, ``language_model.lm_head.weight``, ``video_tower.*``,
``multi_modal_projector.*``, ``image_tower.*``; towers with or without ``vision_model.``) and transformers 5's
in-memory one (``model.language_model.*``, ``lm_head.weight``, ``model.video_tower.*``, ...).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import VideoLlavaConfig
from transformers.models.video_llava.modeling_video_llava import VideoLlavaMultiModalProjector

from ..checkpoint import CheckpointError, build_decoder, load_into, load_state_dict, read_json
from ..model import Decoder, LlamaConfig
from ..multimodal import splice, tokenize_with_placeholder
from ..templates import Tokenizer, get_template
from ..video import read_video, video_pixels
from .clip import build_tower, check_pixels, load_tower, take

VIDEO_TOKEN = "<video>"
N_FRAMES = 8
_LM_PREFIXES = {"language_model.model.": "model.", "language_model.lm_head.": "lm_head.", "model.language_model.": "model."}


class VideoLLaVA(nn.Module):
    """A Video-LLaVA checkpoint: ``.decoder`` (Vicuna), ``.video_tower``, ``.multi_modal_projector``, ``.tokenizer``."""

    template = "llava_v1"

    def __init__(self, decoder: Decoder, config: VideoLlavaConfig, tokenizer: Tokenizer):
        super().__init__()
        self.decoder, self.config, self.tokenizer = decoder, config, tokenizer
        self.video_tower = build_tower(config.vision_config)
        self.multi_modal_projector = VideoLlavaMultiModalProjector(config)

    def encode_video(self, pixels: Tensor) -> Tensor:
        """Frames [T, 3, S, S] → projected features [T × tokens per frame, H], frame after frame."""
        check_pixels(pixels, self.config.vision_config, "video frames")
        w = self.multi_modal_projector.linear_1.weight
        out = self.video_tower(pixels.to(device=w.device, dtype=w.dtype), output_hidden_states=True)
        layer = self.config.vision_feature_layer
        layers = [layer] if isinstance(layer, int) else list(layer)
        return self.multi_modal_projector(torch.cat([out.hidden_states[i] for i in layers], dim=-1)).flatten(0, 1)

    def video_pixels(self, path: str | Path) -> Tensor:
        """The 8 uniformly sampled, preprocessed frames of a video file [8, 3, S, S]."""
        return video_pixels(read_video(path, N_FRAMES).frames, self.config.vision_config.image_size)

    def prompt_ids(self, query: str) -> list[int]:
        prompt = get_template(self.template).prompt(f"{VIDEO_TOKEN}\n{query}")
        return tokenize_with_placeholder(self.tokenizer, prompt, VIDEO_TOKEN)

    def prompt_embeds(self, query: str, video: Tensor | str | Path) -> Tensor:
        """Prompt embeddings [T, H] for ``query`` about a video file or its preprocessed frames [8, 3, 224, 224]."""
        pixels = video if isinstance(video, Tensor) else self.video_pixels(video)
        with torch.no_grad():
            return splice(self.decoder, self.prompt_ids(query), [self.encode_video(pixels)])

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> VideoLLaVA:
        folder = Path(folder)
        d = read_json(folder / "config.json")
        if d.get("model_type") != "video_llava":
            raise CheckpointError(f"{folder / 'config.json'}: model_type is {d.get('model_type')!r}, expected 'video_llava'")
        config = VideoLlavaConfig.from_dict(d)
        text = LlamaConfig.from_hf(config.text_config.to_dict())
        tokenizer = Tokenizer(folder)
        if tokenizer.vocab_size > text.vocab_size:
            raise CheckpointError(f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens, the embedding "
                                  f"table only {text.vocab_size} (config.json 'text_config.vocab_size')")
        sd = load_state_dict(folder)
        tower = take(sd, "model.video_tower.", "video_tower.")
        projector = take(sd, "model.multi_modal_projector.", "multi_modal_projector.")
        take(sd, "model.image_tower.", "image_tower.")
        lm = {}
        for k, v in sd.items():
            p = next((p for p in _LM_PREFIXES if k.startswith(p)), "")
            lm[_LM_PREFIXES.get(p, "") + k[len(p):]] = v
        model = cls(build_decoder(text, lm, f"{folder} (language model)"), config, tokenizer)
        load_tower(model.video_tower, tower, f"{folder} (video_tower.*)")
        load_into(model.multi_modal_projector, projector, f"{folder} (multi_modal_projector.*)")
        return model.to(device=device, dtype=dtype).eval()
