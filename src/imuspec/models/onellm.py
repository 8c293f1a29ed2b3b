"""OneLLM (csuhan/OneLLM) as an IMU draft: LLaMA-2 with 32 IMU embeddings right after BOS, template ``v1``.

One ``consolidated.00-of-01.pth`` holds everything under ``llma.``: the IMU path (see
:mod:`imuspec.encoders.onellm_imu`) and a Meta-format LLaMA-2 (``tok_embeddings``, ``layers.N.attention.wq``, ...).
OneLLM applies RoPE to interleaved pairs (``view_as_complex``); our :class:`~imuspec.model.Decoder` rotates halves
(Hugging Face), so ``wq``/``wk`` rows are permuted on import, as transformers' ``convert_llama_weights_to_hf`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoint import CheckpointError, build_decoder, load_weights_file
from ..encoders.onellm_imu import OneLLMIMUConfig, OneLLMIMUEncoder, load_imu_encoder
from ..imu import IMURecording
from ..imu.preprocess import onellm_input
from ..model import Decoder, LlamaConfig
from ..multimodal import PLACEHOLDER_ID, splice
from ..templates import Tokenizer, get_template


@dataclass(frozen=True)
class OneLLMConfig:
    """OneLLM's ``config/llama2/7B.json`` (Meta ``params.json`` fields) and the IMU path's sizes."""

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    multiple_of: int = 256
    norm_eps: float = 1e-5
    vocab_size: int = 32000
    max_seq_len: int = 2048
    imu: OneLLMIMUConfig = field(default_factory=OneLLMIMUConfig)
    template: str = "v1"

    def __post_init__(self):
        if self.imu.out_dim != self.dim:
            raise ValueError(f"imu.out_dim ({self.imu.out_dim}) must equal the LLM's dim ({self.dim})")

    def llama(self) -> LlamaConfig:
        h = int(2 * 4 * self.dim / 3)
        ffn = self.multiple_of * ((h + self.multiple_of - 1) // self.multiple_of)
        return LlamaConfig(
            vocab_size=self.vocab_size, hidden_size=self.dim, intermediate_size=ffn, num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads, rms_norm_eps=self.norm_eps, max_position_embeddings=self.max_seq_len,
        )


def meta_to_hf_rope(w: Tensor, n_heads: int) -> Tensor:
    """Reorder q/k projection rows from interleaved RoPE pairs (2i, 2i+1) to rotate-half pairs (i, i + d/2)."""
    out, inp = w.shape
    return w.view(n_heads, out // n_heads // 2, 2, inp).transpose(1, 2).reshape(out, inp)


def decoder_state_dict(sd: dict[str, Tensor], cfg: LlamaConfig, source: str) -> dict[str, Tensor]:
    """The LLaMA-2 tensors of a OneLLM state dict under Hugging Face names; a missing Meta key is an error."""
    names = {"llma.tok_embeddings.weight": "model.embed_tokens.weight", "llma.norm.weight": "model.norm.weight",
             "llma.output.weight": "lm_head.weight"}
    per_layer = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
                 "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
                 "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
                 "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm",
                 "ffn_norm": "post_attention_layernorm"}
    for i in range(cfg.num_hidden_layers):
        names.update({f"llma.layers.{i}.{m}.weight": f"model.layers.{i}.{h}.weight" for m, h in per_layer.items()})
    missing = [k for k in names if k not in sd]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{source}: missing key {missing[0]!r} of OneLLM's LLaMA-2{more}")
    out = {hf: sd[meta] for meta, hf in names.items()}
    for i in range(cfg.num_hidden_layers):
        for proj, heads in (("q_proj", cfg.num_attention_heads), ("k_proj", cfg.num_key_value_heads)):
            key = f"model.layers.{i}.self_attn.{proj}.weight"
            out[key] = meta_to_hf_rope(out[key], heads)
    return out


class OneLLM:
    """OneLLM's IMU route: ``prompt_embeds(query, imu)`` = BOS, start tag, 30 IMU tokens, end tag, ``v1`` prompt."""

    def __init__(self, decoder: Decoder, encoder: OneLLMIMUEncoder, tokenizer: Tokenizer, config: OneLLMConfig):
        self.decoder, self.encoder, self.tokenizer, self.config = decoder, encoder, tokenizer, config

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        tokenizer_folder: str | Path,
        config: OneLLMConfig = OneLLMConfig(),
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> OneLLM:
        """Load a ``consolidated.00-of-01.pth`` (tensors only, ``weights_only``) and the LLaMA-2 tokenizer."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: file not found (expected OneLLM's consolidated.00-of-01.pth)")
        sd = load_weights_file(path)
        tok = Tokenizer(tokenizer_folder)
        if tok.vocab_size != config.vocab_size:
            raise CheckpointError(
                f"{tokenizer_folder}: tokenizer has {tok.vocab_size} tokens, OneLLM config expects {config.vocab_size}"
            )
        llama = config.llama()
        decoder = build_decoder(llama, decoder_state_dict(sd, llama, str(path)), str(path), dtype, device)
        encoder = load_imu_encoder(sd, config.imu, str(path), dtype).to(device)
        return cls(decoder.eval(), encoder, tok, config)

    def prompt_ids(self, query: str) -> list[int]:
        """BOS, the placeholder for the 32 IMU embeddings, then the rest of the ``v1`` prompt (OneLLM's order)."""
        ids = self.tokenizer.encode(get_template(self.config.template).prompt(query))
        return ids[:1] + [PLACEHOLDER_ID] + ids[1:]

    @torch.no_grad()
    def prompt_embeds(self, query: str, imu: IMURecording | Tensor) -> Tensor:
        """Prompt embeddings [T, H] for a recording (its first 2 s, see :func:`~imuspec.imu.preprocess.onellm_input`)
        or one (6, 400) window."""
        if isinstance(imu, IMURecording):
            imu = torch.from_numpy(onellm_input(imu))
        imu_tokens = self.encoder(imu[None].to(self.decoder.device))[0]
        return splice(self.decoder, self.prompt_ids(query), [imu_tokens])
