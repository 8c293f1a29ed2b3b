"""SensorLLM (cruiseresearchgroup/SensorLLM) as an IMU draft: each channel a Chronos series, LLaMA-3 decoder.

Prompt (stage 2, ``MultiChannelTimeSeriesDatasetStage2``): for every channel ``<x_acc_start>`` + ``<ts>`` × (L+1) +
``<x_acc_end>`` + newline, then the question, as the user turn of the LLaMA-3 chat template under the dataset's
instruction. The L+1 Chronos encoder embeddings of a channel, through ``ts_proj`` (Linear→GELU→Linear→GELU→Linear),
replace that channel's ``<ts>`` run. The checkpoint is a Hugging Face LLaMA folder (``model_type: sensorllmstage1``
or ``sensorllmstage2``) plus ``model.ts_proj.{0,2,4}.*``; Chronos comes from its own folder, which SensorLLM records in
``config.json`` as ``pt_encoder_backbone_ckpt``.

Drafts that ``imuspec distill`` writes are in the same layout, with their own settings under ``config.json``'s
``sensorllm`` (projector widths, template) and the IMU they read (``imu_points`` over the window or the
``imu_span_us`` ending with it); :func:`add_ts_tokens` gives an LLM SensorLLM's tokens the way SensorLLM's own
resize does.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointError, build_decoder, empty_decoder, load_into, load_state_dict, read_json
from ..encoders.chronos import ChronosEncoder
from ..model import Decoder, LlamaConfig
from ..multimodal import PLACEHOLDER_ID, splice
from ..templates import Tokenizer, get_template

MODEL_TYPES = ("sensorllmstage1", "sensorllmstage2")
# (start tag, end tag, text before the start tag with add_ts_special_token_text) of the 6-channel sets (USC-HAD, UCI)
IMU_CHANNELS = tuple(
    (f"<{a}_{s}_start>", f"<{a}_{s}_end>", f"{a}-axis {name} readings: ")
    for s, name in (("acc", "accelerometer"), ("gyro", "gyroscope"))
    for a in "xyz"
)


@dataclass(frozen=True)
class SensorLLMConfig:
    channels: tuple[tuple[str, str, str], ...] = IMU_CHANNELS
    ts_token: str = "<ts>"
    proj_hidden: tuple[int, ...] = (2048, 3072)  # ts_backbone.yaml projection_hidden_dim
    channel_text: bool = False  # add_ts_special_token_text
    template: str = "sensorllm"
    system: str | None = None  # the dataset's instruction, if not the template's (USC-HAD)

    @classmethod
    def of(cls, config: dict) -> SensorLLMConfig:
        """A checkpoint's settings: those ``imuspec distill`` recorded under ``sensorllm``, else SensorLLM's own."""
        d = config.get("sensorllm")
        if d is None:
            return cls()
        return cls(**{**d, "channels": tuple(map(tuple, d["channels"])), "proj_hidden": tuple(d["proj_hidden"])})

    @property
    def tokens(self) -> list[str]:
        """What SensorLLM adds to its tokenizer: ``<ts>``, then each channel's start and end tags."""
        return [self.ts_token] + [t for start, end, _ in self.channels for t in (start, end)]


def ts_projector(d_in: int, hidden: tuple[int, ...], d_out: int) -> nn.Sequential:
    """SensorLLM's ``ts_proj``: Linear + GELU per hidden size, then Linear to the LLM width (indices 0, 2, 4)."""
    layers, last = [], d_in
    for h in hidden:
        layers += [nn.Linear(last, h), nn.GELU()]
        last = h
    return nn.Sequential(*layers, nn.Linear(last, d_out))


def backbone(folder: Path, config: dict) -> Path | None:
    """The Chronos folder a SensorLLM ``config.json`` records (``pt_encoder_backbone_ckpt``, relative to ``folder``
    or absolute), None where it records none or it is not a folder here (a hub name)."""
    recorded = config.get("pt_encoder_backbone_ckpt")
    if not recorded:
        return None
    path = folder / recorded
    return path if (path / "config.json").is_file() else None


def add_ts_tokens(decoder: Decoder, tokenizer: Tokenizer, config: SensorLLMConfig) -> tuple[Decoder, Tokenizer]:
    """The LLM and tokenizer with SensorLLM's tokens (:attr:`SensorLLMConfig.tokens`) as its own resize adds them:
    added special tokens after the whole vocabulary, their embedding and LM-head rows the mean of the old ones, the
    table rounded up to a multiple of 8. Where the LLM's table is padded past its tokenizer, placeholder tokens name
    the padding rows first, so the new tokens come after every id the LLM has: its vocabulary is a prefix of the new
    one and its ids and logits are unchanged. Nothing to add: ``decoder`` and ``tokenizer`` as they are."""
    have = tokenizer.hf.get_vocab()
    todo = [t for t in config.tokens if t not in have]
    if not todo:
        return decoder, tokenizer
    c, rows = decoder.config, decoder.config.vocab_size
    tok = copy.deepcopy(tokenizer)
    tok.hf.add_tokens([f"<unused_{i}>" for i in range(len(tok.hf), rows)] + todo, special_tokens=True)
    tok.vocab_size = len(tok.hf)
    grown = empty_decoder(replace(c, vocab_size=8 * math.ceil(tok.vocab_size / 8)), decoder.device)
    sd = decoder.state_dict()
    with torch.no_grad():
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            old = sd[name]
            sd[name] = torch.cat([old, old.float().mean(0, keepdim=True).to(old.dtype).expand(len(grown.lm_head.weight) - rows, -1)])
    grown.load_state_dict(sd)
    if c.tie_word_embeddings:
        grown.lm_head.weight = grown.model.embed_tokens.weight
    return grown.to(decoder.dtype), tok


def token_ids(tokenizer: Tokenizer, config: SensorLLMConfig) -> dict[str, int]:
    """The ids of SensorLLM's tokens, or an error naming the first the tokenizer lacks."""
    vocab = tokenizer.hf.get_vocab()
    absent = [t for t in config.tokens if t not in vocab]
    if absent:
        raise CheckpointError(f"the tokenizer has no {absent[0]!r} token (SensorLLM adds its channel tags and "
                              f"{config.ts_token!r} to the tokenizer it saves)")
    return {t: vocab[t] for t in config.tokens}


def prompt_ids(tokenizer: Tokenizer, config: SensorLLMConfig, query: str, n_ts: int) -> list[int]:
    """Token ids with each channel's ``<ts>`` run (n_ts long) replaced by one PLACEHOLDER_ID, in channel order.

    The text is tokenized in one call with the tokenizer's own special-token rule, as SensorLLM does; its template
    already starts with the BOS string, so a LLaMA-3 tokenizer puts two BOS in front, as in SensorLLM's training.
    """
    c, vocab = config, token_ids(tokenizer, config)
    ts_id = vocab[c.ts_token]
    runs = "".join((text if c.channel_text else "") + s + c.ts_token * n_ts + e + "\n" for s, e, text in c.channels)
    template = get_template(c.template)
    template = replace(template, system=c.system) if c.system is not None else template
    ids = tokenizer.hf(tokenizer.hf.bos_token + template.prompt(runs + query)).input_ids
    for start, end, _ in c.channels:
        start_id, end_id = vocab[start], vocab[end]
        if ids.count(start_id) != 1:
            raise ValueError(f"the prompt holds {ids.count(start_id)} channel start tags id {start_id}, expected 1")
        p = ids.index(start_id)
        if ids[p + 1:p + 1 + n_ts] != [ts_id] * n_ts or ids[p + 1 + n_ts] != end_id:
            raise ValueError(f"the tokenizer does not keep {c.ts_token!r} × {n_ts} between channel tags intact")
        ids = ids[:p + 1] + [PLACEHOLDER_ID] + ids[p + 1 + n_ts:]
    return ids


def load_llm(folder: Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
             ) -> tuple[Decoder, dict[str, Tensor]]:
    """A SensorLLM folder's LLM and its ``ts_proj`` weights (keys ``model.ts_proj.*``)."""
    d = read_json(folder / "config.json")
    if d.get("model_type") not in MODEL_TYPES:
        raise CheckpointError(
            f"{folder / 'config.json'}: model_type is {d.get('model_type')!r}, expected one of {MODEL_TYPES}"
        )
    llama = LlamaConfig.from_hf(d, str(folder / "config.json"))
    sd = load_state_dict(folder)
    proj_sd = {k: v for k, v in sd.items() if k.startswith("model.ts_proj.")}
    # the LLM's weights; a full trainer save may also hold the Chronos backbone, which comes from its own folder
    llm_sd = {k: v for k, v in sd.items() if not k.startswith(("model.ts_proj.", "model.pt_encoder_backbone."))}
    return build_decoder(llama, llm_sd, str(folder), dtype, device), proj_sd


class SensorLLM:
    """``prompt_embeds(query, series)``: channel series [C, L] spliced into SensorLLM's prompt."""

    def __init__(self, decoder: Decoder, chronos: ChronosEncoder, projector: nn.Sequential, tokenizer: Tokenizer,
                 config: SensorLLMConfig):
        self.decoder, self.chronos, self.projector, self.tokenizer, self.config = (
            decoder, chronos, projector, tokenizer, config)
        token_ids(tokenizer, config)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        chronos_folder: str | Path | ChronosEncoder,
        config: SensorLLMConfig | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> SensorLLM:
        """``chronos_folder``: Chronos' folder (or the encoder, loaded); ``config``: default, the folder's own
        (:meth:`SensorLLMConfig.of`)."""
        folder = Path(folder)
        decoder, proj_sd = load_llm(folder, dtype, device)
        config = config or SensorLLMConfig.of(read_json(folder / "config.json"))
        chronos = (chronos_folder if isinstance(chronos_folder, ChronosEncoder)
                   else ChronosEncoder.from_pretrained(chronos_folder, dtype)).to(device=device, dtype=dtype)
        proj = ts_projector(chronos.d_model, config.proj_hidden, decoder.config.hidden_size)
        load_into(nn.ModuleDict({"model": nn.ModuleDict({"ts_proj": proj})}), proj_sd, str(folder))
        tok = Tokenizer(folder)
        if tok.vocab_size > decoder.config.vocab_size:
            raise CheckpointError(f"{folder}: the tokenizer has {tok.vocab_size} tokens, the model {decoder.config.vocab_size}")
        return cls(decoder.eval(), chronos, proj.to(device=device, dtype=dtype).eval(), tok, config)

    def save_pretrained(self, folder: str | Path, chronos_folder: str | Path, imu_points: int,
                        imu_span_us: int | None = None) -> None:
        """SensorLLM's layout (``sensorllmstage2``: LLaMA keys + ``model.ts_proj.*``, the tokenizer with its tokens),
        the Chronos folder recorded as ``pt_encoder_backbone_ckpt`` (absolute), this config under ``sensorllm`` and
        what a distilled draft reads: ``imu_points`` over the window, or over the ``imu_span_us`` ending with it."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {**self.decoder.config.to_hf(), "model_type": "sensorllmstage2",
                  "pt_encoder_backbone_ckpt": str(Path(chronos_folder).resolve()), "sensorllm": asdict(self.config),
                  "imu_points": imu_points, "imu_span_us": imu_span_us}
        (folder / "config.json").write_text(json.dumps(config, indent=1))
        tied = ("lm_head.weight",) if self.decoder.config.tie_word_embeddings else ()
        sd = {k: v for k, v in self.decoder.state_dict().items() if k not in tied}
        sd.update({"model.ts_proj." + k: v for k, v in self.projector.state_dict().items()})
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
        self.tokenizer.save_pretrained(folder)

    def prompt_ids(self, query: str, n_ts: int) -> list[int]:
        return prompt_ids(self.tokenizer, self.config, query, n_ts)

    @torch.no_grad()
    def prompt_embeds(self, query: str, series: Tensor) -> Tensor:
        """Prompt embeddings [T, H] for channel series [C, L] (C = len(config.channels), raw units)."""
        if series.ndim != 2 or len(series) != len(self.config.channels):
            raise ValueError(
                f"SensorLLM series: expected shape [{len(self.config.channels)}, L] (one row per channel tag), "
                f"got {tuple(series.shape)}"
            )
        feats = self.projector(self.chronos(series))  # [C, L+1, H]
        return splice(self.decoder, self.prompt_ids(query, feats.shape[1]), list(feats))
