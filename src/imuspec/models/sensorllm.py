"""SensorLLM (cruiseresearchgroup/SensorLLM) as an IMU draft: each channel a Chronos series, LLaMA-3 decoder.

Prompt (stage 2, ``MultiChannelTimeSeriesDatasetStage2``): for every channel ``<x_acc_start>`` + ``<ts>`` × (L+1) +
``<x_acc_end>`` + newline, then the question, as the user turn of the LLaMA-3 chat template under the dataset's
instruction. The L+1 Chronos encoder embeddings of a channel, through ``ts_proj`` (Linear→GELU→Linear→GELU→Linear),
replace that channel's ``<ts>`` run. The checkpoint is a Hugging Face LLaMA folder (``model_type: sensorllmstage1``
or ``sensorllmstage2``) plus ``model.ts_proj.{0,2,4}.*``; Chronos comes from its own folder.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointError, build_decoder, load_into, load_state_dict, read_json
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


def ts_projector(d_in: int, hidden: tuple[int, ...], d_out: int) -> nn.Sequential:
    """SensorLLM's ``ts_proj``: Linear + GELU per hidden size, then Linear to the LLM width (indices 0, 2, 4)."""
    layers, last = [], d_in
    for h in hidden:
        layers += [nn.Linear(last, h), nn.GELU()]
        last = h
    return nn.Sequential(*layers, nn.Linear(last, d_out))


class SensorLLM:
    """``prompt_embeds(query, series)``: channel series [C, L] spliced into SensorLLM's prompt."""

    def __init__(self, decoder: Decoder, chronos: ChronosEncoder, projector: nn.Sequential, tokenizer: Tokenizer,
                 config: SensorLLMConfig):
        self.decoder, self.chronos, self.projector, self.tokenizer, self.config = (
            decoder, chronos, projector, tokenizer, config)
        vocab = tokenizer.hf.get_vocab()
        tags = [config.ts_token] + [t for start, end, _ in config.channels for t in (start, end)]
        absent = [t for t in tags if t not in vocab]
        if absent:
            raise CheckpointError(f"the tokenizer has no {absent[0]!r} token (SensorLLM adds its channel tags and "
                                  f"{config.ts_token!r} to the tokenizer it saves)")
        self.ts_id, self.tag_ids = vocab[config.ts_token], [(vocab[s], vocab[e]) for s, e, _ in config.channels]

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        chronos_folder: str | Path,
        config: SensorLLMConfig = SensorLLMConfig(),
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> SensorLLM:
        folder = Path(folder)
        d = read_json(folder / "config.json")
        if d.get("model_type") not in MODEL_TYPES:
            raise CheckpointError(
                f"{folder / 'config.json'}: model_type is {d.get('model_type')!r}, expected one of {MODEL_TYPES}"
            )
        llama = LlamaConfig.from_hf(d, str(folder / "config.json"))
        sd = load_state_dict(folder)
        proj_sd = {k: v for k, v in sd.items() if k.startswith("model.ts_proj.")}
        # the LLM's weights; a full trainer save may also hold the Chronos backbone, which comes from chronos_folder
        llm_sd = {k: v for k, v in sd.items() if not k.startswith(("model.ts_proj.", "model.pt_encoder_backbone."))}
        chronos = ChronosEncoder.from_pretrained(chronos_folder, dtype).to(device)
        proj = ts_projector(chronos.d_model, config.proj_hidden, llama.hidden_size)
        load_into(nn.ModuleDict({"model": nn.ModuleDict({"ts_proj": proj})}), proj_sd, str(folder))
        tok = Tokenizer(folder)
        if tok.vocab_size > llama.vocab_size:
            raise CheckpointError(f"{folder}: the tokenizer has {tok.vocab_size} tokens, the model {llama.vocab_size}")
        decoder = build_decoder(llama, llm_sd, str(folder), dtype, device)
        return cls(decoder.eval(), chronos, proj.to(device=device, dtype=dtype).eval(), tok, config)

    def prompt_ids(self, query: str, n_ts: int) -> list[int]:
        """Token ids with each channel's ``<ts>`` run (n_ts long) replaced by one PLACEHOLDER_ID, in channel order.

        The text is tokenized in one call with the tokenizer's own special-token rule, as SensorLLM does; its template
        already starts with the BOS string, so a LLaMA-3 tokenizer puts two BOS in front, as in SensorLLM's training.
        """
        c = self.config
        runs = "".join((text if c.channel_text else "") + s + c.ts_token * n_ts + e + "\n" for s, e, text in c.channels)
        template = get_template(c.template)
        template = replace(template, system=c.system) if c.system is not None else template
        ids = self.tokenizer.hf(self.tokenizer.hf.bos_token + template.prompt(runs + query)).input_ids
        for start_id, end_id in self.tag_ids:
            if ids.count(start_id) != 1:
                raise ValueError(f"the prompt holds {ids.count(start_id)} channel start tags id {start_id}, expected 1")
            p = ids.index(start_id)
            if ids[p + 1:p + 1 + n_ts] != [self.ts_id] * n_ts or ids[p + 1 + n_ts] != end_id:
                raise ValueError(f"the tokenizer does not keep {c.ts_token!r} × {n_ts} between channel tags intact")
            ids = ids[:p + 1] + [PLACEHOLDER_ID] + ids[p + 1 + n_ts:]
        return ids

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
