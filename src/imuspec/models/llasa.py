"""LLaSA (BASHLab/LLaSA): LIMU-BERT hidden states -> mlp2x_gelu projector -> Vicuna decoder, in LLaVA-1.5's layout.

LLaSA is LLaVA-1.5 with LIMU-BERT as the "vision tower": a normalised (120, 6) window (20 Hz, accelerometer / 9.8,
gyroscope rad/s) goes through the LIMU-BERT encoder, its 120 x 72 hidden states through the projector, and the 120
vectors replace ``<image>`` (index -200) in a ``llava_v1`` prompt whose user turn is ``"<image>\\n" + query``.

Checkpoints as LLaVA saves them: ``config.json`` (``model_type: llava_llama``, ``mm_hidden_size: 72``,
``mm_projector_type``), LLaMA keys (``model.layers...``, ``lm_head.weight``), ``model.mm_projector.{0,2}.*``. The
LIMU-BERT weights are either in the checkpoint as the tower (``model.vision_tower.vision_tower.0.*``, LLaSA wraps the
encoder in ``nn.Sequential``) or, as LLaSA itself loads them, a separate LIMU-BERT pretraining state dict
(``imu_encoder=``). LoRA runs (``adapter_config.json`` + ``adapter_model.{safetensors,bin}`` + ``non_lora_trainables.bin``)
are merged onto their ``base`` LLaMA folder like LLaVA's ``load_pretrained_model``: W += (alpha / r) B A.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointError, build_decoder, load_into, load_state_dict, load_weights_file, read_json
from ..encoders.limu_bert import Encoder, LimuBert, LimuBertConfig
from ..imu.preprocess import limu_bert_input
from ..imu.recording import IMURecording
from ..model import Decoder, LlamaConfig
from ..multimodal import splice, tokenize_with_placeholder
from ..templates import Tokenizer, get_template, has_tokenizer

PROJECTOR = "model.mm_projector."
TOWER = "model.vision_tower.vision_tower.0."
IMAGE = "<image>"


def build_projector(kind: str, in_dim: int, hidden: int) -> nn.Sequential:
    """LLaVA's ``mm_projector_type``: ``linear`` or ``mlp{N}x_gelu`` (Linear, then N-1 x (GELU, Linear))."""
    if kind == "linear":
        return nn.Sequential(nn.Linear(in_dim, hidden))
    m = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if not m:
        raise CheckpointError(f"mm_projector_type {kind!r} is not supported (known: linear, mlpNx_gelu)")
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden)]
    for _ in range(int(m.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(hidden, hidden)]
    return nn.Sequential(*layers)


def _lora_merge(sd: dict[str, Tensor], folder: Path) -> None:
    """Add a peft LoRA adapter's (alpha / r) B A to the base weights in ``sd`` (in place)."""
    cfg = read_json(folder / "adapter_config.json")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern") or cfg.get("fan_in_fan_out"):
        raise CheckpointError(f"{folder / 'adapter_config.json'}: rank_pattern / alpha_pattern / fan_in_fan_out are not supported")
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scale = alpha / (r ** 0.5 if cfg.get("use_rslora") else r)
    names = [n for n in ("adapter_model.safetensors", "adapter_model.bin") if (folder / n).exists()]
    if not names:
        raise CheckpointError(f"{folder}: adapter_config.json but no adapter_model.safetensors or adapter_model.bin")
    adapter, source = load_weights_file(folder / names[0]), str(folder / names[0])
    stray = [k for k in adapter if not re.search(r"\.lora_[AB]\.weight$", k) or not k.startswith("base_model.model.")]
    if stray:
        raise CheckpointError(f"{source}: unexpected keys {stray[:5]} (expected base_model.model.<module>.lora_A/lora_B.weight)")
    for key_a in (k for k in adapter if k.endswith(".lora_A.weight")):
        module = key_a[len("base_model.model."):-len(".lora_A.weight")]
        key_b, target = key_a.replace(".lora_A.", ".lora_B."), module + ".weight"
        if key_b not in adapter:
            raise CheckpointError(f"{source}: {key_a!r} has no matching {key_b!r}")
        if target not in sd:
            raise CheckpointError(f"{source}: LoRA targets {target!r}, which the base model does not have")
        w = sd[target]
        sd[target] = (w.float() + scale * (adapter[key_b].float() @ adapter[key_a].float())).to(w.dtype)


def prompt_ids(tokenizer: Tokenizer, query: str, template: str = "llava_v1") -> list[int]:
    """BOS + the ``llava_v1`` prompt with ``<image>\\n`` before ``query``; PLACEHOLDER_ID where the IMU goes."""
    text = query if IMAGE in query else f"{IMAGE}\n{query}"
    return tokenize_with_placeholder(tokenizer, get_template(template).prompt(text), IMAGE)


class LLaSA(nn.Module):
    """An IMU draft: :attr:`decoder` + :meth:`prompt_embeds` plug into :func:`imuspec.speculative.generate`."""

    def __init__(self, decoder: Decoder, projector: nn.Sequential, imu_encoder: Encoder, tokenizer: Tokenizer | None,
                 template: str = "llava_v1"):
        super().__init__()
        self.decoder, self.projector, self.imu_encoder = decoder, projector, imu_encoder
        self.tokenizer, self.template = tokenizer, get_template(template)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        base: str | Path | None = None,
        imu_encoder: str | Path | None = None,
        imu_config: LimuBertConfig = LimuBertConfig(),
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> LLaSA:
        """A LLaVA-format LLaSA folder; ``base`` for LoRA runs; ``imu_encoder`` a LIMU-BERT ``.pt`` state dict.

        A config.json field ``limu_bert`` (the project's trained drafts write it) overrides ``imu_config``.
        """
        folder = Path(folder)
        cfg_json = read_json(folder / "config.json")
        if "limu_bert" in cfg_json:
            imu_config = LimuBertConfig(**cfg_json["limu_bert"])
        if cfg_json.get("model_type") not in ("llava_llama", "llava"):
            raise CheckpointError(f"{folder / 'config.json'}: model_type {cfg_json.get('model_type')!r}; expected 'llava_llama'")
        if cfg_json.get("mm_hidden_size") != imu_config.hidden:
            raise CheckpointError(f"{folder / 'config.json'}: mm_hidden_size {cfg_json.get('mm_hidden_size')}; "
                                  f"expected {imu_config.hidden} (LIMU-BERT's hidden size)")
        cfg = LlamaConfig.from_hf({**cfg_json, "model_type": "llama"}, str(folder / "config.json"))
        lora = (folder / "adapter_config.json").exists()
        if lora:
            if base is None:
                raise CheckpointError(f"{folder}: a LoRA run (adapter_config.json); pass base= the LLaMA folder it was trained on")
            sd = dict(load_state_dict(base))
            extra = load_weights_file(folder / "non_lora_trainables.bin")
            extra = {k.removeprefix("base_model."): v for k, v in extra.items()}
            if any(k.startswith("model.model.") for k in extra):
                extra = {k.removeprefix("model."): v for k, v in extra.items()}
            sd.update(extra)
            _lora_merge(sd, folder)
        else:
            sd = load_state_dict(folder)

        projector = build_projector(cfg_json.get("mm_projector_type", "linear"), imu_config.hidden, cfg.hidden_size)
        load_into(projector, {k[len(PROJECTOR):]: v for k, v in sd.items() if k.startswith(PROJECTOR)}, f"{folder} (mm_projector)")
        tower = {k[len(TOWER):]: v for k, v in sd.items() if k.startswith(TOWER)}
        if imu_encoder is not None:
            encoder = LimuBert.from_pretrained(imu_encoder, imu_config).transformer
        elif tower:
            encoder = Encoder(imu_config)
            load_into(encoder, tower, f"{folder} (vision tower)")
        else:
            raise CheckpointError(f"{folder}: no LIMU-BERT weights ({TOWER}* keys); pass imu_encoder= a LIMU-BERT "
                                  "pretraining state dict (LLaSA loads its encoder from such a file)")
        rest = {k: v for k, v in sd.items() if not k.startswith((PROJECTOR, "model.vision_tower."))}
        decoder = build_decoder(cfg, rest, str(folder), dtype, device)
        tok_dir = next((d for d in (folder, base) if d and has_tokenizer(d)), None)
        tokenizer = Tokenizer(tok_dir) if tok_dir else None
        return cls(decoder, projector.to(device, dtype), encoder.to(device).eval(), tokenizer).eval()

    @torch.no_grad()
    def imu_features(self, x: Tensor | np.ndarray) -> Tensor:
        """Projected features [S, H] of one normalised window [S, 6] (LIMU-BERT hidden states, then the projector)."""
        x = torch.as_tensor(np.asarray(x, dtype=np.float32) if isinstance(x, np.ndarray) else x).float()
        if x.ndim != 2:
            raise ValueError(f"IMU window has shape {tuple(x.shape)}; expected [120, 6] (one normalised window)")
        p = next(self.projector.parameters())
        h = self.imu_encoder(x[None].to(p.device))[0]
        return self.projector(h.to(p.dtype))

    def prompt_embeds(self, query: str, imu: IMURecording | Tensor | np.ndarray) -> Tensor:
        """``llava_v1`` prompt with ``<image>\\n`` before ``query`` and the IMU features spliced there: [T, H].

        ``imu`` is a recording (resampled and normalised by :func:`limu_bert_input`, first 6 s) or a window that is
        already normalised, as LLaSA's ``.npy`` inputs after dividing the accelerometer by 9.8.
        """
        x = limu_bert_input(imu) if isinstance(imu, IMURecording) else imu
        return splice(self.decoder, self.prompt_ids(query), [self.imu_features(x)])

    def prompt_ids(self, query: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("this LLaSA has no tokenizer (none in the checkpoint or base folder)")
        return prompt_ids(self.tokenizer, query, self.template.name)

    def save_pretrained(self, folder: str | Path, projector_type: str, imu_span_us: int | None = None) -> None:
        """Write LLaVA's layout with the LIMU-BERT encoder as the tower and its config under ``limu_bert``;
        ``imu_span_us``: the IMU span that ends with a paired window, when it is not the window itself."""
        from dataclasses import asdict

        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        lb = self.imu_encoder.config
        config = {**self.decoder.config.to_hf(), "model_type": "llava_llama", "mm_hidden_size": lb.hidden,
                  "mm_projector_type": projector_type, "limu_bert": asdict(lb)}
        if imu_span_us is not None:
            config["imu_span_us"] = imu_span_us
        (folder / "config.json").write_text(json.dumps(config, indent=1))
        sd = dict(self.decoder.state_dict())
        sd.update({PROJECTOR + k: v for k, v in self.projector.state_dict().items()})
        sd.update({TOWER + k: v for k, v in self.imu_encoder.state_dict().items()})
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder)
