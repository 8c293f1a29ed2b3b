"""Chronos (amazon-science/chronos-forecasting) as a time-series encoder: ``MeanScaleUniformBins`` + a T5 encoder.

Each channel is its own series: cut to the last ``context_length`` values, divided by its mean absolute value (1 where
that is 0), bucketed into ``n_tokens - n_special_tokens - 1`` uniform bins over [low, high] (ids offset past the
special tokens), EOS appended; the T5 encoder (transformers' ``T5EncoderModel``) returns one embedding per id, L+1.
Settings come from the checkpoint's ``config.json`` ``chronos_config``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointError, load_into, load_state_dict, read_json


@dataclass(frozen=True)
class ChronosTokenizerConfig:
    n_tokens: int = 4096
    n_special_tokens: int = 2
    pad_token_id: int = 0
    eos_token_id: int = 1
    use_eos_token: bool = True
    context_length: int = 512
    low_limit: float = -15.0
    high_limit: float = 15.0

    @classmethod
    def from_chronos_config(cls, d: dict, source: str) -> ChronosTokenizerConfig:
        """Read ``config.json``'s ``chronos_config``; only the seq2seq ``MeanScaleUniformBins`` models encode."""
        if d.get("tokenizer_class") != "MeanScaleUniformBins":
            raise CheckpointError(
                f"{source}: chronos_config.tokenizer_class is {d.get('tokenizer_class')!r}, expected 'MeanScaleUniformBins'"
            )
        if d.get("model_type") != "seq2seq":
            raise CheckpointError(f"{source}: chronos_config.model_type is {d.get('model_type')!r}, expected 'seq2seq'")
        try:
            kw = d.get("tokenizer_kwargs", {})
            return cls(
                n_tokens=int(d["n_tokens"]), n_special_tokens=int(d["n_special_tokens"]),
                pad_token_id=int(d["pad_token_id"]), eos_token_id=int(d["eos_token_id"]),
                use_eos_token=bool(d["use_eos_token"]), context_length=int(d["context_length"]),
                low_limit=float(kw.get("low_limit", -15.0)), high_limit=float(kw.get("high_limit", 15.0)),
            )
        except KeyError as e:
            raise CheckpointError(f"{source}: chronos_config has no field {e.args[0]!r}") from None


def mean_scale_uniform_bins(series: Tensor, c: ChronosTokenizerConfig) -> tuple[Tensor, Tensor]:
    """Token ids [C, min(L, context_length) (+1 with EOS)] and scales [C] of ``series`` [C, L] (or [L])."""
    x = torch.as_tensor(series).to(torch.float32)
    x = x[None] if x.ndim == 1 else x
    if x.ndim != 2 or x.shape[-1] == 0:
        raise ValueError(f"Chronos series: expected shape [C, L] with L > 0, got {tuple(series.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("Chronos series contain NaN or inf (gaps must be handled before tokenizing)")
    x = x[:, -c.context_length:]
    scale = x.abs().mean(-1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    centers = torch.linspace(c.low_limit, c.high_limit, c.n_tokens - c.n_special_tokens - 1)
    edges = torch.cat([torch.tensor([-1e20]), (centers[1:] + centers[:-1]) / 2, torch.tensor([1e20])])
    ids = torch.bucketize(x / scale[:, None], edges, right=True) + c.n_special_tokens
    ids = ids.clamp(0, c.n_tokens - 1)
    if c.use_eos_token:
        ids = torch.cat([ids, torch.full((len(ids), 1), c.eos_token_id)], 1)
    return ids, scale


class ChronosEncoder(nn.Module):
    """Series [C, L] → encoder embeddings [C, L+1, d_model] (the last one at EOS)."""

    def __init__(self, t5: nn.Module, tokenizer: ChronosTokenizerConfig):
        super().__init__()
        self.t5, self.tokenizer = t5, tokenizer

    @property
    def d_model(self) -> int:
        return self.t5.config.d_model

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype = torch.float32) -> ChronosEncoder:
        """The encoder half of a Chronos-T5 folder (``config.json`` with ``chronos_config`` + weights)."""
        from transformers import T5Config, T5EncoderModel

        folder = Path(folder)
        d = read_json(folder / "config.json")
        if "chronos_config" not in d:
            raise CheckpointError(f"{folder / 'config.json'}: no 'chronos_config' field (not a Chronos checkpoint)")
        tok = ChronosTokenizerConfig.from_chronos_config(d["chronos_config"], str(folder / "config.json"))
        cfg = T5Config.from_dict(d)
        if cfg.vocab_size < tok.n_tokens:
            raise CheckpointError(f"{folder}: vocab_size {cfg.vocab_size} < chronos_config.n_tokens {tok.n_tokens}")
        sd = {k: v for k, v in load_state_dict(folder).items() if k.startswith("encoder.") or k == "shared.weight"}
        emb = sd.get("shared.weight", sd.get("encoder.embed_tokens.weight"))  # tied; checkpoints keep either
        if emb is None:
            raise CheckpointError(f"{folder}: missing key 'shared.weight' (the token embedding)")
        sd["shared.weight"] = sd["encoder.embed_tokens.weight"] = emb
        with torch.device("meta"):
            t5 = T5EncoderModel(cfg)
        t5 = t5.to_empty(device="cpu")
        load_into(t5, sd, str(folder))
        return cls(t5.to(dtype).eval(), tok)

    def tokenize(self, series: Tensor) -> tuple[Tensor, Tensor]:
        return mean_scale_uniform_bins(series, self.tokenizer)

    def forward(self, series: Tensor) -> Tensor:
        ids, _ = self.tokenize(series)
        dev = next(self.t5.parameters()).device
        return self.t5(input_ids=ids.to(dev), attention_mask=torch.ones_like(ids, device=dev)).last_hidden_state
