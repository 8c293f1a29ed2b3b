"""``imuspec distill``: a cheap draft distilled to agree with the user's own target, on unlabeled moments.

Stages, each resumable, all under ``torchrun`` (DDP):

1. ``moments`` (:mod:`imuspec.moments`): recordings → sliding windows; the held-out split goes by recording (by time,
   with a window's gap, when there is only one).
2. ``teacher``: the target (EventGPT: the window's events; Video-LLaVA: the 8 frames shown over the window; a text
   LLaMA: the query alone) answers every (moment, query) greedily, ``--teacher-batch`` items at once
   (:func:`~imuspec.speculative.generate_batch`); at every answer position its top-k probabilities
   and the remaining mass are stored, ``6k + 6`` bytes a token (int32 ids, fp16 probabilities, fp16 rest, int32
   token), in shards of ``--shard-size`` items written atomically: a killed run recomputes no finished shard. Ranks
   take shards ``rank::world``.
3. ``draft``: the draft learns those distributions (total variation, forward KL or top-k KL) with AdamW; each epoch
   ends with a checkpoint and a held-out teacher-forced acceptance estimate (the draft's argmax equals the target's
   token: what a greedy draft's acceptance is), and the best epoch is written as ``OUT/draft``.

Draft initialisations: ``target:K`` (the target's LLM cut to its first K layers: its embeddings, final norm and LM
head, so the same vocabulary by construction), ``DIR[:K]`` (a LLaMA, LLaSA or SensorLLM folder, or a OneLLM
checkpoint, cut; its vocabulary the target's, or the target's with tokens appended after it, as SensorLLM appends its
tags), plus an IMU encoder and a fresh projector, saved in the layout of the family the encoder belongs to: LIMU-BERT
→ LLaSA's (:class:`LlasaPath`), Chronos → SensorLLM's (:class:`SensorLLMPath`: its tags appended to the vocabulary,
one feature block per IMU channel), OneLLM's IMU path (``onellm:PTH``, :class:`OneLLMPath`: frozen but for its
LLM-width projection and tags; the 2 s ending with each window, kept in its ``params.json``) → OneLLM's. A SensorLLM
folder keeps its own ``ts_proj`` and trains it further, a OneLLM initialisation its own IMU path. ``--imu-span-us``:
the IMU span ending with each window, kept in the draft's config; or no encoder with ``--no-imu``. A draft with more
tokens than the target is trained on its logits over the target's ids only. Also the generic training pieces the
world's recipe (:mod:`imuspec.train`) uses: :class:`Stage`, :func:`fit`, :func:`distillation`.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .distributed import barrier, close, gather, init_distributed, rank, unshard, world
from .model import Decoder, LlamaConfig, first_layers
from .multimodal import PLACEHOLDER_ID
from .runtime import positive
from .templates import Tokenizer, get_template, has_tokenizer

# --- generic training pieces (the world's recipe uses them too) -----------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """AdamW with linear warm-up and cosine decay over ``epochs`` passes in global batches of ``batch``."""

    epochs: float
    lr: float
    batch: int = 32
    warmup: int = 20


def hf_llama(c: LlamaConfig) -> nn.Module:
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(HFConfig(**c.to_hf()))


def decoder_from(lm: nn.Module, c: LlamaConfig) -> Decoder:
    """Our inference decoder with a trained ``LlamaForCausalLM``'s weights (the names are the same)."""
    d = Decoder(c)
    d.load_state_dict(lm.state_dict())
    return d


def pad(seqs: list[list[int]], value: int, device) -> tuple[Tensor, Tensor]:
    """Right-padded [N, T] and the lengths [N]."""
    n = max(map(len, seqs))
    out = torch.tensor([s + [value] * (n - len(s)) for s in seqs], device=device)
    return out, torch.tensor([len(s) for s in seqs], device=device)


def valid(lengths: Tensor, t: int) -> Tensor:
    return torch.arange(t, device=lengths.device) < lengths[:, None]


def _per_sample(d: Tensor, lengths: Tensor) -> Tensor:
    return ((d * valid(lengths, d.shape[1])).sum(1) / lengths).mean()


def distillation(logits: Tensor, teacher: Tensor, lengths: Tensor, kind: str) -> Tensor:
    """Forward KL(p ‖ q) or total variation ½‖p − q‖₁ between the teacher's dense p and the draft's q, per sample mean."""
    p, logq = teacher.float(), F.log_softmax(logits.float(), -1)
    if kind == "fkl":
        d = (p * (torch.log(p.clamp_min(1e-12)) - logq)).sum(-1)
    elif kind == "tvd":
        d = 0.5 * (p - logq.exp()).abs().sum(-1)
    else:
        raise ValueError(f"distillation loss {kind!r}; expected 'fkl' or 'tvd'")
    return _per_sample(d, lengths)


LOSSES = ("tvd", "fkl", "topk-kl")


def topk_distillation(logits: Tensor, ids: Tensor, p: Tensor, rest: Tensor, lengths: Tensor, kind: str) -> Tensor:
    """The same losses against a stored top-k (``ids``, ``p`` [B, T, k]) and its remaining mass ``rest`` [B, T]:
    ``tvd`` over the k + 1 buckets (the rest as one), ``fkl`` forward KL over the k stored tokens, ``topk-kl`` KL
    over the k + 1 buckets. With k = V, ``tvd`` and ``fkl`` are the dense losses."""
    logq = F.log_softmax(logits.float(), -1).gather(-1, ids.long())
    p, rest = p.float(), rest.float()
    kl = (p * (torch.log(p.clamp_min(1e-12)) - logq)).sum(-1)
    q_rest = (1 - logq.exp().sum(-1)).clamp_min(1e-12)
    if kind == "tvd":
        d = 0.5 * ((p - logq.exp()).abs().sum(-1) + (rest - q_rest).abs())
    elif kind == "fkl":
        d = kl
    elif kind == "topk-kl":
        d = kl + rest * (torch.log(rest.clamp_min(1e-12)) - torch.log(q_rest))
    else:
        raise ValueError(f"distillation loss {kind!r}; expected one of {LOSSES}")
    return _per_sample(d, lengths)


def fit(model: nn.Module, loss_of, n: int, stage: Stage, seed: int, desc: str, on_epoch=None,
        resume: dict | None = None) -> list[float]:
    """Train ``model`` on ``n`` examples; ``loss_of(module, idx, epoch)`` is the mean loss of examples ``idx`` through
    ``module`` (DDP-wrapped when distributed). Each rank takes its share of every global batch, so k processes give
    the same steps as one; returns the loss of each step averaged over the global batch.

    ``on_epoch(epoch, losses, opt, sched)`` runs after each epoch (checkpoints); ``resume`` = {losses, opt, sched}
    from such a checkpoint continues at the next step as if never stopped."""
    from torch.nn.parallel import DistributedDataParallel
    from tqdm import tqdm

    if stage.batch % world():
        raise ValueError(f"{desc}: global batch {stage.batch} is not divisible by {world()} processes")
    if n < stage.batch:
        raise ValueError(f"{desc}: {n} examples, fewer than one global batch of {stage.batch}")
    module = DistributedDataParallel(model) if dist.is_initialized() else model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=0.0)
    per_epoch = max(1, n // stage.batch)
    total = max(1, round(stage.epochs * per_epoch))
    warm = min(stage.warmup, total // 4 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    losses: list[float] = []
    if resume:
        losses = list(resume["losses"])
        opt.load_state_dict(resume["opt"])
        sched.load_state_dict(resume["sched"])
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(n, generator=g)[: per_epoch * stage.batch] for _ in range(-(-total // per_epoch))])
    bar = tqdm(range(len(losses), total), desc=desc, disable=rank() != 0, unit="step")
    model.train()
    for step in bar:
        idx = order[step * stage.batch:(step + 1) * stage.batch][rank()::world()]
        loss = loss_of(module, idx, step // per_epoch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        value = loss.detach().clone()
        if dist.is_initialized():
            dist.all_reduce(value)
            value /= world()
        losses.append(float(value))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if on_epoch is not None and ((step + 1) % per_epoch == 0 or step + 1 == total):
            model.eval()
            on_epoch(step // per_epoch + 1, losses, opt, sched)
            model.train()
    model.eval()
    return losses


# --- the draft as trained ----------------------------------------------------------------------------------------

class ImuPath(nn.Module):
    """What an IMU draft family adds to its LLM, as distillation trains it: a frozen encoder and a trained projector,
    the encoder's input for one moment, the draft's prompt (one PLACEHOLDER_ID per feature block) and the folder
    layout ``generate --draft`` loads. One subclass per family (LLaSA's :class:`LlasaPath`, ...)."""

    def features(self, x: Tensor) -> list[Tensor]:
        """Feature blocks [B, N_j, H] for a batch of encoder inputs, one per placeholder, in prompt order."""
        raise NotImplementedError

    def input(self, sample) -> np.ndarray:
        """One moment's encoder input (a :class:`~imuspec.paired.PairedSample`'s IMU, prepared as the family reads it)."""
        raise NotImplementedError

    def prompt_ids(self, tok: Tokenizer, query: str) -> list[int]:
        raise NotImplementedError

    def save(self, decoder: Decoder, tok: Tokenizer, folder: Path) -> None:
        raise NotImplementedError

    def vocabulary(self, decoder: Decoder, tok: Tokenizer) -> Decoder:
        """The LLM with the tokens the family's prompt needs that its vocabulary lacks (default: none)."""
        return decoder

    def check(self, c: LlamaConfig) -> None:
        """Raise before any work where an LLM of config ``c`` cannot be saved in this family's layout."""


class LlasaPath(ImuPath):
    """LLaSA's: LIMU-BERT over ``points`` positions of the IMU span, an ``mlp2x_gelu`` projector, ``llava_v1``."""

    def __init__(self, encoder: nn.Module, projector: nn.Module, points: int, span_us: int | None):
        super().__init__()
        self.encoder, self.projector, self.points, self.span_us = encoder.requires_grad_(False), projector, points, span_us

    def features(self, x: Tensor) -> list[Tensor]:
        with torch.no_grad():
            h = self.encoder(x)
        return [self.projector(h)]

    def input(self, sample) -> np.ndarray:
        return sample.imu_input(self.points, self.span_us)

    def prompt_ids(self, tok: Tokenizer, query: str) -> list[int]:
        from .models.llasa import prompt_ids

        return prompt_ids(tok, query)

    def save(self, decoder: Decoder, tok: Tokenizer, folder: Path) -> None:
        from .models.llasa import LLaSA

        LLaSA(decoder, self.projector, self.encoder, tok).save_pretrained(folder, "mlp2x_gelu", self.span_us)


class SensorLLMPath(ImuPath):
    """SensorLLM's: each IMU channel a series over ``points`` positions of the IMU span (``[6, points]``,
    accelerometer in m/s² / 9.8, gyroscope in rad/s, about UCI-HAR's raw units; Chronos mean-scales each channel, so
    a unit's scale cancels), a frozen Chronos encoder, a trained ``ts_proj``, the channel's L+1 embeddings between
    its tags: six feature blocks. Its prompts and folder use its own tokenizer: the LLM's with SensorLLM's tokens
    appended (:func:`~imuspec.models.sensorllm.add_ts_tokens`), or a SensorLLM folder's own."""

    def __init__(self, chronos: nn.Module, chronos_folder: Path, projector: nn.Module, config, points: int,
                 span_us: int | None, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.encoder, self.projector = chronos.requires_grad_(False).eval(), projector
        self.chronos_folder, self.config, self.points, self.span_us, self.tokenizer = (
            chronos_folder, config, points, span_us, tokenizer)

    def train(self, mode: bool = True) -> SensorLLMPath:
        super().train(mode)
        self.encoder.eval()  # frozen: no dropout in Chronos' T5
        return self

    def vocabulary(self, decoder: Decoder, tok: Tokenizer) -> Decoder:
        from .models.sensorllm import add_ts_tokens

        decoder, self.tokenizer = add_ts_tokens(decoder, self.tokenizer or tok, self.config)
        return decoder

    def features(self, x: Tensor) -> list[Tensor]:
        with torch.no_grad():
            h = self.encoder(x.flatten(0, 1).cpu()).to(x.device)  # [B·6, L+1, d]
        return list(self.projector(h).unflatten(0, x.shape[:2]).unbind(1))

    def input(self, sample) -> np.ndarray:
        return np.ascontiguousarray(sample.imu_input(self.points, self.span_us).T)

    def prompt_ids(self, tok: Tokenizer, query: str) -> list[int]:
        from .models.sensorllm import prompt_ids

        c = self.encoder.tokenizer
        return prompt_ids(self.tokenizer, self.config, query, min(self.points, c.context_length) + c.use_eos_token)

    def save(self, decoder: Decoder, tok: Tokenizer, folder: Path) -> None:
        from .models.sensorllm import SensorLLM

        SensorLLM(decoder, self.encoder, self.projector, self.tokenizer, self.config).save_pretrained(
            folder, self.chronos_folder, self.points, self.span_us)


class OneLLMPath(ImuPath):
    """OneLLM's: its IMU path frozen up to the resampler, the LLM-width parts (``clip_proj2``, the start and end tags)
    trained; its (6, 400) input in raw units over the ``span_us`` ending with each window (kept in ``params.json``);
    BOS, the 32 embeddings, the ``v1`` prompt; saved as a OneLLM folder."""

    def __init__(self, encoder: nn.Module, span_us: int):
        from .encoders.onellm_imu import LLM_WIDTH

        super().__init__()
        self.encoder, self.span_us = encoder.requires_grad_(False), span_us
        for name in LLM_WIDTH:
            getattr(encoder, name).requires_grad_(True)

    def features(self, x: Tensor) -> list[Tensor]:
        with torch.no_grad():
            h = self.encoder.resampled(x)
        return [self.encoder.project(h)]

    def input(self, sample) -> np.ndarray:
        from .imu.preprocess import onellm_values

        return sample.imu_input(self.encoder.config.window, self.span_us, onellm_values).T.copy()

    def prompt_ids(self, tok: Tokenizer, query: str) -> list[int]:
        from .models.onellm import prompt_ids

        return prompt_ids(tok, query)

    def check(self, c: LlamaConfig) -> None:
        from .models.onellm import OneLLMConfig

        try:
            OneLLMConfig.from_llama(c, self.encoder.config)
        except ValueError as e:
            raise ValueError(f"the draft's LLM cannot be saved in OneLLM's layout: {e}") from None

    def save(self, decoder: Decoder, tok: Tokenizer, folder: Path) -> None:
        from .models.onellm import OneLLM, OneLLMConfig

        c = OneLLMConfig.from_llama(decoder.config, self.encoder.config, self.span_us)
        OneLLM(decoder, self.encoder, tok, c).save_pretrained(folder)


class DraftModel(nn.Module):
    """``LlamaForCausalLM`` on per-item prompts [text | feature block | text | ... | answer]; an IMU draft has an
    :class:`ImuPath` (its feature blocks replace the prompt's placeholders), a text-only one none. ``vocab``: the
    logits kept (the target's ids, where the draft has tokens of its own appended)."""

    def __init__(self, lm: nn.Module, path: ImuPath | None = None, vocab: int | None = None):
        super().__init__()
        self.lm, self.path, self.vocab = lm, path, vocab

    def forward(self, prompts: list[list[int]], answer: Tensor, lengths: Tensor, imu: Tensor | None = None) -> Tensor:
        """Logits [B, T, V] that predict each answer token, teacher-forced."""
        emb, dev = self.lm.get_input_embeddings(), answer.device
        blocks = self.path.features(imu) if self.path is not None else []
        seqs, starts = [], []
        for i, ids in enumerate(prompts):
            parts, j, a = [], 0, 0
            for b, t in enumerate(ids):
                if t == PLACEHOLDER_ID:
                    parts += [emb(torch.tensor(ids[a:b], device=dev)), blocks[j][i]]
                    j, a = j + 1, b + 1
            if j != len(blocks):
                raise ValueError(f"a draft prompt holds {j} placeholders for {len(blocks)} feature blocks")
            parts.append(emb(torch.tensor(ids[a:], device=dev)))
            prompt_len = sum(len(x) for x in parts)
            parts.append(emb(answer[i, : int(lengths[i]) - 1]))
            seqs.append(torch.cat(parts))
            starts.append(prompt_len - 1)
        n = max(len(s) for s in seqs)
        x = torch.stack([F.pad(s, (0, 0, 0, n - len(s))) for s in seqs])
        mask = torch.stack([torch.arange(n, device=dev) < len(s) for s in seqs]).long()
        h = self.lm.model(inputs_embeds=x, attention_mask=mask).last_hidden_state
        pos = (torch.tensor(starts, device=dev)[:, None] + torch.arange(answer.shape[1], device=dev)).clamp(max=n - 1)
        return self.lm.lm_head(torch.gather(h, 1, pos[:, :, None].expand(-1, -1, h.shape[-1])))[..., :self.vocab]


@dataclass(frozen=True)
class Init:
    """``target:K``, or a folder with an optional ``:K``."""

    source: str  # "target" or a folder
    layers: int | None

    @classmethod
    def parse(cls, spec: str) -> Init:
        head, _, tail = spec.rpartition(":")
        if head and tail.isdigit():
            return cls(head, int(tail))
        if spec == "target":
            raise ValueError("--draft-init target: expected target:K, K the number of the target's layers to keep")
        return cls(spec, None)


def _cut(decoder: Decoder, k: int | None, what: str) -> Decoder:
    try:
        return first_layers(decoder, k) if k is not None else decoder
    except ValueError as e:
        raise ValueError(f"--draft-init {what}: {e}") from None


def imu_path(spec: str, hidden: int, cfg: DistillConfig) -> ImuPath:
    """``--imu-encoder``'s path for an LLM of width ``hidden``, with a fresh projector."""
    from .models.llasa import build_projector

    name = spec.partition(":")[0]
    torch.manual_seed(cfg.seed)
    if name == "limu-bert":
        enc = _limu_bert(spec, cfg.imu_points)
        return LlasaPath(enc, build_projector("mlp2x_gelu", enc.config.hidden, hidden), cfg.imu_points, cfg.imu_span_us)
    if name == "chronos":
        return _sensorllm_path(spec, hidden, cfg)
    if name == "onellm":
        return OneLLMPath(_onellm_imu(spec).fresh_llm_width(hidden), _onellm_span(cfg))
    raise ValueError(f"--imu-encoder {spec}: expected limu-bert[:PT], chronos:DIR or onellm:PTH")


def _chronos(spec: str, folder: Path | None) -> nn.Module:
    """A Chronos encoder from ``folder`` (``--imu-encoder`` ``spec`` names it in errors)."""
    from .checkpoint import CheckpointError
    from .encoders.chronos import ChronosEncoder

    if folder is None:
        raise ValueError(f"--imu-encoder {spec}: expected chronos:DIR, DIR a Chronos checkpoint folder")
    if not (folder / "config.json").is_file():
        raise ValueError(f"--imu-encoder {spec}: {folder}: no config.json there; expected a Chronos checkpoint folder")
    try:
        return ChronosEncoder.from_pretrained(folder)
    except CheckpointError as e:
        raise ValueError(f"--imu-encoder {spec}: {e}") from None


def _sensorllm_path(spec: str, hidden: int, cfg: DistillConfig) -> SensorLLMPath:
    """Chronos from ``chronos:DIR`` and a fresh ``ts_proj`` of SensorLLM's widths (2048, 3072 for a 4096-wide LLaMA)
    scaled to the LLM's; the prompt under ``llava_v1`` (SensorLLM's LLaMA-3 template presumes LLaMA-3's tokens)."""
    from .models.sensorllm import SensorLLMConfig, ts_projector

    folder = Path(spec.partition(":")[2]) if spec.partition(":")[2] else None
    enc = _chronos(spec, folder)
    c = SensorLLMConfig(proj_hidden=(hidden // 2, 3 * hidden // 4), template="llava_v1")
    return SensorLLMPath(enc, folder, ts_projector(enc.d_model, c.proj_hidden, hidden), c, cfg.imu_points,
                         cfg.imu_span_us)


def _sensorllm_folder(folder: Path, imu_encoder: str | None, cfg: DistillConfig) -> tuple[Decoder, SensorLLMPath | None]:
    """A SensorLLM folder's LLM and, with an IMU, its own path: its ``ts_proj`` (trained further) and tokenizer, and
    Chronos from ``chronos:DIR``, or (``chronos``) the folder's ``pt_encoder_backbone_ckpt``."""
    from .checkpoint import read_json
    from .models.sensorllm import SensorLLM, backbone, load_llm

    if imu_encoder is None:
        return load_llm(folder)[0], None
    name, _, given = imu_encoder.partition(":")
    if name != "chronos":
        raise ValueError(f"--draft-init {folder}: a SensorLLM folder reads the IMU through Chronos; expected "
                         f"--imu-encoder chronos:DIR or none (the folder's own), not {imu_encoder}")
    config = read_json(folder / "config.json")
    chronos_folder = Path(given) if given else backbone(folder, config)
    if chronos_folder is None:
        raise ValueError(f"--draft-init {folder}: config.json's pt_encoder_backbone_ckpt "
                         f"{config.get('pt_encoder_backbone_ckpt')!r} is not a Chronos folder here; give one with "
                         "--imu-encoder chronos:DIR")
    m = SensorLLM.from_pretrained(folder, _chronos(f"chronos:{chronos_folder}", chronos_folder))
    return m.decoder, SensorLLMPath(m.chronos, chronos_folder, m.projector, m.config, cfg.imu_points, cfg.imu_span_us,
                                    m.tokenizer)


def default_encoder(init: Init) -> str:
    """The IMU encoder when none is given: a SensorLLM folder's own Chronos, a OneLLM checkpoint's own IMU path,
    else the shipped LIMU-BERT."""
    from .families import model_type
    from .models.onellm import checkpoint_file

    folder = Path(init.source)
    if init.source == "target":
        return "limu-bert"
    if checkpoint_file(folder) is not None:
        return "onellm"
    own = (folder / "config.json").is_file() and model_type(folder).startswith("sensorllm")
    return "chronos" if own else "limu-bert"


def _onellm_span(cfg: DistillConfig, init_span_us: int | None = None) -> int:
    """A OneLLM draft's IMU span: ``--imu-span-us``, else a distilled OneLLM init's, else OneLLM's own 2 s."""
    from .imu.preprocess import ONELLM_RATE_HZ, ONELLM_WINDOW

    return cfg.imu_span_us or init_span_us or round(1e6 * ONELLM_WINDOW / ONELLM_RATE_HZ)


def _onellm_imu(spec: str) -> nn.Module:
    """``onellm:PTH``: the IMU path of a OneLLM checkpoint (its ``.pth`` or folder)."""
    from .models.onellm import load_imu_path

    path = spec.partition(":")[2]
    if not path:
        raise ValueError(f"--imu-encoder {spec}: imuspec ships no OneLLM weights; expected onellm:PTH, PTH a OneLLM "
                         "checkpoint (consolidated .pth or its folder) whose IMU path to use")
    return load_imu_path(path)


def _limu_bert(spec: str, points: int) -> nn.Module:
    """LIMU-BERT: ``limu-bert`` the shipped one (pretrained by the world's recipe on its IMU, LIMU-BERT's own
    masked reconstruction), ``limu-bert:PT`` a LIMU-BERT pretraining state dict; its positions cut to ``points``."""
    from .encoders.limu_bert import Encoder, LimuBert, LimuBertConfig

    path = spec.partition(":")[2]
    if path:
        if not Path(path).is_file():
            raise ValueError(f"--imu-encoder {spec}: {path}: file not found")
        sd = {k.removeprefix("transformer."): v for k, v in LimuBert.from_pretrained(path).state_dict().items()
              if k.startswith("transformer.")}
        cfg = LimuBertConfig()
    else:
        from .checkpoint import load_state_dict, read_json
        from .models.llasa import TOWER

        shipped = Path(__file__).parent / "weights" / "imu_draft"
        cfg = LimuBertConfig(**read_json(shipped / "config.json")["limu_bert"])
        sd = {k[len(TOWER):]: v.float() for k, v in load_state_dict(shipped).items() if k.startswith(TOWER)}
    if points > cfg.seq_len:
        raise ValueError(f"--imu-points {points}: the encoder has {cfg.seq_len} positions; expected at most that")
    sd["embed.pos_embed.weight"] = sd["embed.pos_embed.weight"][:points]
    enc = Encoder(replace(cfg, seq_len=points))
    enc.load_state_dict(sd)
    return enc.eval()


def build_draft(init: Init, target_decoder: Decoder, target_folder: Path, imu_encoder: str | None,
                cfg: DistillConfig) -> tuple[DraftModel, LlamaConfig]:
    """The trainable draft and its LLaMA config; raises before any work on a bad K or another vocabulary."""
    from .checkpoint import load_decoder, read_json
    from .models.onellm import OneLLM, checkpoint_file

    path, want = None, target_decoder.config.vocab_size
    if init.source == "target":
        dec = _cut(target_decoder, init.layers, f"target:{init.layers}")
    elif checkpoint_file(Path(init.source)) is not None:
        m = OneLLM.from_pretrained(init.source, target_folder)  # its tokenizer, else the target's
        vocab = m.decoder.config.vocab_size
        if vocab != want:
            raise ValueError(f"--draft-init {init.source}: a OneLLM of vocab_size {vocab}, the target's ({target_folder}) "
                             f"is {want}; distillation needs one vocabulary")
        dec = _cut(m.decoder, init.layers, f"{init.source}:{init.layers}")
        if imu_encoder == "onellm":  # its own IMU path
            path = OneLLMPath(m.encoder, _onellm_span(cfg, m.config.imu_span_us))
    else:
        folder = Path(init.source)
        if not (folder / "config.json").is_file():
            raise ValueError(f"--draft-init {init.source}: no config.json there; expected target:K or a "
                             "LLaMA/LLaSA/SensorLLM folder or a OneLLM checkpoint")
        _check_vocabulary(folder, target_folder, want)
        kind = read_json(folder / "config.json").get("model_type", "llama")
        if kind.startswith("sensorllm"):
            dec, path = _sensorllm_folder(folder, imu_encoder, cfg)
        elif kind.startswith("llava"):
            from .models.llasa import LLaSA

            dec = LLaSA.from_pretrained(folder).decoder
        else:
            dec = load_decoder(folder)
        dec = _cut(dec, init.layers, f"{folder}:{init.layers}")
    if path is None and imu_encoder is not None:
        path = imu_path(imu_encoder, dec.config.hidden_size, cfg)
    if path is not None:
        dec = path.vocabulary(dec, Tokenizer(target_folder))
        try:
            path.check(dec.config)
        except ValueError as e:
            raise ValueError(f"--draft-init {init.source} with --imu-encoder {imu_encoder}: {e}") from None
    c = replace(dec.config, extra={})
    lm = hf_llama(c)
    lm.load_state_dict({k: v.float() for k, v in dec.state_dict().items()}, strict=False)
    if c.tie_word_embeddings:
        lm.tie_weights()
    return DraftModel(lm, path, want), c


def _check_vocabulary(folder: Path, target_folder: Path, want: int) -> None:
    """A folder's vocabulary must be the target's, or the target's with tokens appended after it (compared piece by
    piece; a folder without a tokenizer borrows the target's, as ``generate`` lends it)."""
    from .checkpoint import read_json
    from .vocab import Vocab, VocabPair

    vocab = read_json(folder / "config.json").get("vocab_size")
    if not isinstance(vocab, int) or vocab < want:
        raise ValueError(f"--draft-init {folder}: vocab_size {vocab} in config.json, the target's ({target_folder}) "
                         f"is {want}; distillation needs one vocabulary")
    if not has_tokenizer(folder):
        return
    pair = VocabPair.build(Vocab(Tokenizer(folder).hf, (), vocab), Vocab(Tokenizer(target_folder).hf, (), want))
    if not (pair.same or pair.prefix):
        raise ValueError(f"--draft-init {folder}: its tokenizer's vocabulary ({vocab:,} ids) is neither the target's "
                         f"({target_folder}, {want:,}) nor the target's with tokens appended after it; distillation "
                         "needs one vocabulary")


def save_draft(model: DraftModel, c: LlamaConfig, tok: Tokenizer, folder: Path) -> None:
    """The IMU path's layout (an IMU draft) or a LLaMA folder: what ``generate --draft`` loads."""
    from .checkpoint import save_decoder

    decoder = decoder_from(model.lm, c)
    tmp = folder.with_name(folder.name + ".tmp")
    if model.path is not None:
        model.path.save(decoder, tok, tmp)
    else:
        save_decoder(decoder, tmp, tok)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)


# --- prompts -----------------------------------------------------------------------------------------------------

def text_prompt_ids(tok: Tokenizer, query: str) -> list[int]:
    """A text-only target's prompt: the query as a user turn in the tokenizer's chat template where it has one,
    else the query as it is (:meth:`Tokenizer.prompt_ids`)."""
    return tok.prompt_ids(query)


def draft_prompt_ids(tok: Tokenizer, query: str, path: ImuPath | None, text_target: bool) -> list[int]:
    """What the draft reads at decoding time: its IMU path's prompt (an IMU draft), the target's own text prompt (a
    text target), else ``vicuna_v1`` as ``imuspec eval`` prompts text drafts."""
    if path is not None:
        return path.prompt_ids(tok, query)
    return text_prompt_ids(tok, query) if text_target else tok.encode(get_template("vicuna_v1").prompt(query))


def check_positions(draft: DraftModel, c: LlamaConfig, tok: Tokenizer, sample, queries, max_new_tokens: int) -> None:
    """The longest IMU draft prompt (its feature blocks expanded, as for ``sample``) and an answer fit the LLM's
    positions (SensorLLM's prompt holds 6 × (points + 1) feature positions)."""
    blocks = draft.path.features(torch.from_numpy(draft.path.input(sample))[None].float())
    longest = max(len(draft.path.prompt_ids(tok, q)) for q in queries) - len(blocks) + sum(b.shape[1] for b in blocks)
    if longest + max_new_tokens > c.max_position_embeddings:
        raise ValueError(f"the draft's prompt holds {longest} positions with its IMU features, and --max-new-tokens "
                         f"{max_new_tokens} more: past its LLM's max_position_embeddings {c.max_position_embeddings}; "
                         "give fewer --imu-points or a smaller --max-new-tokens")


# --- teacher -----------------------------------------------------------------------------------------------------

def _shard_path(out: Path, j: int) -> Path:
    return out / "teacher" / f"shard-{j:05d}.safetensors"


@torch.inference_mode()  # as generate_batch leaves the cache
def teacher_items(target, prompts: list[Tensor], max_new_tokens: int, eos: tuple[int, ...], k: int):
    """The target's greedy answers to ``prompts`` (ids or embeddings), decoded as one batch
    (:func:`~imuspec.speculative.generate_batch`: each row's tokens are those it gets alone), and per answer its
    top-k probabilities + rest, teacher-forced one item at a time (a single forward each, so exactly batch 1's)."""
    from .speculative import GenerationConfig, generate_batch

    dec = target.decoder
    need = max(len(p) for p in prompts) + max_new_tokens + 1
    if dec.max_len < need:
        dec.setup_cache(need)
    answers = [g.tokens for g in generate_batch(dec, prompts, GenerationConfig(max_new_tokens, eos_token_ids=eos))]
    rows = []
    for prompt, tokens in zip(prompts, answers):
        dec.rollback(0)
        x = prompt if prompt.is_floating_point() else dec.embed(prompt.to(dec.device))
        x = torch.cat([x.to(dec.dtype), dec.embed(torch.tensor(tokens[:-1], dtype=torch.long, device=dec.device))])
        p = torch.softmax(dec(embeds=x[None])[0, len(prompt) - 1:].float(), -1)
        top = p.topk(min(k, p.shape[-1]), -1)
        rest = (1 - top.values.sum(-1)).clamp_min(0)
        rows.append((tokens, top.indices.int().cpu(), top.values.half().cpu(), rest.half().cpu()))
    return rows


def run_teacher(target, prompt_of, n_items: int, out: Path, shard_size: int, max_new_tokens: int, k: int,
                batch: int = 1) -> dict:
    """Every item through the target, in shards (ranks take shards rank::world), ``batch`` items of a shard decoded
    at once; finished shards are kept."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    eos = tuple(sorted(set(target.decoder.config.eos_ids) | {target.tokenizer.eos_id}))
    shards = list(range(-(-n_items // shard_size)))
    mine = [j for j in shards[rank()::world()] if not _shard_path(out, j).exists()]
    done_before = sum(_shard_path(out, j).exists() for j in shards)
    todo = sum(len(range(j * shard_size, min(n_items, (j + 1) * shard_size))) for j in mine)
    bar = tqdm(total=todo, desc="teacher", unit="item", disable=rank() != 0)
    t0, n_tok = time.perf_counter(), 0
    for j in mine:
        rows, todo_j = [], range(j * shard_size, min(n_items, (j + 1) * shard_size))
        for a in range(0, len(todo_j), batch):
            group = todo_j[a:a + batch]
            rows += teacher_items(target, [prompt_of(i) for i in group], max_new_tokens, eos, k)
            bar.update(len(group))
        lengths = [len(r[0]) for r in rows]
        n_tok += sum(lengths)
        path = _shard_path(out, j)
        tmp = path.with_suffix(".tmp")
        save_file({"tokens": torch.tensor([t for r in rows for t in r[0]], dtype=torch.int32),
                   "offsets": torch.tensor(np.cumsum([0] + lengths)), "ids": torch.cat([r[1] for r in rows]),
                   "p": torch.cat([r[2] for r in rows]), "rest": torch.cat([r[3] for r in rows])}, str(tmp))
        os.replace(tmp, path)
    bar.close()
    seconds = time.perf_counter() - t0
    n_tok = sum(gather([n_tok]))
    barrier()
    return {"shards": len(shards), "shards_done_before": done_before, "shards_computed": len(shards) - done_before,
            "seconds": seconds, "tokens_computed": n_tok, "tokens_per_s": n_tok / seconds if seconds > 0 and n_tok else None,
            "bytes_per_token": 6 * k + 6, "batch": batch}


def load_teacher(out: Path, n_items: int, shard_size: int) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Per item: tokens [T], top-k ids [T, k], probabilities [T, k], rest [T]."""
    from safetensors.torch import load_file

    items = []
    for j in range(-(-n_items // shard_size)):
        s = load_file(str(_shard_path(out, j)))
        o = s["offsets"].tolist()
        items += [tuple(s[k][a:b] for k in ("tokens", "ids", "p", "rest")) for a, b in zip(o, o[1:])]
    return items


# --- split, acceptance ---------------------------------------------------------------------------------------------

def split(moments, fraction: float, seed: int) -> tuple[list[int], list[int], str]:
    """Moment indices for training and held out: whole recordings held out; with a single recording, its last
    ``fraction`` of time, without the windows that would overlap the held-out ones."""
    recs = sorted({m.recording for m in moments})
    if fraction <= 0:
        return list(range(len(moments))), [], "none"
    if len(recs) > 1:
        rng = np.random.default_rng(seed)
        n_out = min(len(recs) - 1, max(1, round(fraction * len(recs))))
        held = set(rng.permutation(recs)[:n_out].tolist())
        out = [i for i, m in enumerate(moments) if m.recording in held]
        return [i for i in range(len(moments)) if i not in set(out)], out, f"by recording: {n_out} of {len(recs)} held out"
    if moments[0].sample is None:
        raise ValueError("--holdout: a single text query cannot be split; give more queries or --holdout 0")
    t0s = sorted(m.sample.t0_us for m in moments)
    cut = t0s[min(len(t0s) - 1, int(round((1 - fraction) * len(t0s))))]
    train = [i for i, m in enumerate(moments) if m.sample.t1_us <= cut]
    held = [i for i, m in enumerate(moments) if m.sample.t0_us >= cut]
    if not train or not held:
        raise ValueError(f"--holdout {fraction}: the one recording has too few windows to split in time")
    return train, held, f"by time within the one recording: windows from {cut} µs held out, none overlapping"


@torch.no_grad()
def heldout_alpha(model: DraftModel, batches) -> list[float]:
    """Per item, teacher-forced: the fraction of answer positions where the draft's argmax is the target's token."""
    out = []
    for prompts, answer, lengths, imu in batches:
        hit = (model(prompts, answer, lengths, imu).argmax(-1) == answer) & valid(lengths, answer.shape[1])
        out += (hit.sum(1) / lengths).tolist()
    return out


# --- the command ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DistillConfig:
    window_us: int = 50_000
    hop_us: int | None = None  # default: the window (no overlap)
    holdout: float = 0.2
    loss: str = "tvd"
    top_k: int = 64
    epochs: int = 3
    batch: int = 8
    lr: float = 1e-3
    max_new_tokens: int = 48
    imu_points: int = 40  # IMU positions over the window (a DAVIS IMU gives ~40 samples in 50 ms); Chronos: per channel
    shard_size: int = 16
    seed: int = 0
    imu_span_us: int | None = None  # the IMU span ending with each window (default: the window itself)
    teacher_batch: int = 1  # items the target answers at once


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check_out(out: Path, resume: bool) -> dict | None:
    """The report of a run in ``out`` (None if empty); a finished or unfinished run needs --resume."""
    report = out / "distill.json"
    if not report.exists():
        if not resume and (out / "teacher").exists():
            raise ValueError(f"--out {out}: holds an unfinished run; add --resume to continue it or choose another folder")
        return None
    state = json.loads(report.read_text())
    if not resume:
        what = "a finished" if state.get("finished") else "an unfinished"
        raise ValueError(f"--out {out}: holds {what} run (distill.json); add --resume or choose another folder")
    return state


def distill(target_folder: Path, data: list[str] | None, queries_file: Path, init: str, imu_encoder: str | None,
            no_imu: bool, cfg: DistillConfig, out: Path, resume: bool = False) -> dict:
    """The whole pipeline into ``out``; returns (and writes) ``out/distill.json``."""
    from .families import model_type, open_target
    from .moments import load_moments, read_queries, text_moments

    t_start = time.perf_counter()
    if cfg.loss not in LOSSES:
        raise ValueError(f"--loss {cfg.loss}: expected one of {LOSSES}")
    if cfg.teacher_batch < 1:
        raise ValueError(f"--teacher-batch {cfg.teacher_batch}: expected at least 1")
    if cfg.imu_span_us is not None and cfg.imu_span_us < cfg.window_us:
        raise ValueError(f"--imu-span-us {cfg.imu_span_us}: shorter than --window-us {cfg.window_us}; expected a span "
                         "at least the window (it ends with the window)")
    previous = check_out(out, resume)
    if previous and previous.get("finished"):
        return previous
    queries = read_queries(queries_file)
    kind = model_type(target_folder)
    text_target = kind not in ("EventChat_llama", "video_llava")
    if text_target and data:
        raise ValueError(f"--target {target_folder} is a text-only LLaMA: it reads no recordings; drop --data")
    if not text_target and not data:
        raise ValueError(f"--target {target_folder} is {kind}: give its recordings with --data")
    imu = not no_imu and not text_target
    spec = Init.parse(init)
    if imu and imu_encoder is None:
        imu_encoder = default_encoder(spec)
    device = init_distributed()
    target = open_target(target_folder, device=device)
    draft, c = build_draft(spec, _copy(target.decoder), target_folder, imu_encoder if imu else None, cfg)
    moments = text_moments(queries) if text_target else load_moments(data, cfg.window_us, cfg.hop_us or cfg.window_us)
    if kind == "video_llava" and any(m.video is None for m in moments):
        bad = next(m for m in moments if m.video is None)
        raise ValueError(f"--target {target_folder} is Video-LLaVA: it sees video frames, and --data {bad.recording} "
                         "has none; expected IMU+VIDEO, an Ego4D folder or a manifest with 'video'")
    seconds = {"setup": time.perf_counter() - t_start}  # the target, the draft initialisation, the moments
    train_m, held_m, how = split(moments, cfg.holdout, cfg.seed)
    items = [(m, q) for m in sorted(train_m + held_m) for q in moments[m].queries(queries)]
    where = {m: "train" for m in train_m} | {m: "heldout" for m in held_m}
    train_i = [i for i, (m, _) in enumerate(items) if where[m] == "train"]
    held_i = [i for i, (m, _) in enumerate(items) if where[m] == "heldout"]
    batch = min(cfg.batch, len(train_i) // world() * world())
    if batch < 1:
        raise ValueError(f"{len(train_i)} training items for {world()} processes; give more data or a smaller --holdout")
    if imu:
        check_positions(draft, c, Tokenizer(target_folder), moments[items[0][0]].sample, {q for _, q in items},
                        cfg.max_new_tokens)

    out.mkdir(parents=True, exist_ok=True)
    index = {"target": str(target_folder), "items": [[m, q] for m, q in items], "top_k": cfg.top_k,
             "max_new_tokens": cfg.max_new_tokens, "shard_size": cfg.shard_size, "window_us": cfg.window_us,
             "hop_us": cfg.hop_us, "data": data}
    (out / "teacher").mkdir(exist_ok=True)
    index_path = out / "teacher" / "index.json"
    if index_path.exists() and json.loads(index_path.read_text()) != index:
        raise ValueError(f"{index_path}: the teacher shards there were made for other data or settings; "
                         "choose another --out")
    barrier()
    if rank() == 0:
        index_path.write_text(json.dumps(index))
    report = {"command": sys.argv, "target": str(target_folder), "data": data, "queries": len(queries),
              "init": init, "imu_encoder": imu_encoder if imu else None, "imu": imu, "config": asdict(cfg),
              "world_size": world(), "device": str(device), "moments": len(moments),
              "recordings": len({m.recording for m in moments}), "holdout": how,
              "items": {"train": len(train_i), "heldout": len(held_i)}, "heldout_items": [items[i] for i in held_i],
              "seconds": seconds}

    if kind == "video_llava":
        from .models.videollava import N_FRAMES
        from .moments import WindowFrames
        from .video import video_pixels

        from transformers import VideoLlavaConfig

        shown, size = WindowFrames(N_FRAMES), VideoLlavaConfig.from_pretrained(target_folder).vision_config.image_size

    @functools.lru_cache(maxsize=1)  # a moment's items come one after another, its windows in time order
    def frames(m: int) -> Tensor:
        """Video-LLaVA's 8 frames, as shown over the moment's window (not over the whole video)."""
        s = moments[m].sample
        return video_pixels(shown(moments[m].video, s.t0_us, s.t1_us), size)

    def target_prompt(i: int) -> Tensor:
        m, q = items[i]
        s = moments[m].sample
        if s is None:
            return torch.tensor(text_prompt_ids(target.tokenizer, q), device=device)
        return target.embed(q, frames(m) if kind == "video_llava" else s.events)

    report["teacher"] = run_teacher(target, target_prompt, len(items), out, cfg.shard_size, cfg.max_new_tokens, cfg.top_k,
                                    cfg.teacher_batch)
    seconds["teacher"] = report["teacher"]["seconds"]
    report["peak_rss_mb"] = {"teacher": _rss_mb()}
    teacher = load_teacher(out, len(items), cfg.shard_size)
    report["teacher"]["tokens"] = sum(len(t[0]) for t in teacher)
    del target

    tok = Tokenizer(target_folder)
    prompts = [draft_prompt_ids(tok, q, draft.path, text_target) for _, q in items]
    sensor = torch.from_numpy(np.stack([draft.path.input(moments[m].sample) for m, _ in items])).float() if imu else None
    ans, lengths = pad([t[0].tolist() for t in teacher], tok.eos_id, "cpu")
    T, k = ans.shape[1], teacher[0][1].shape[1]
    ids = torch.zeros(len(items), T, k, dtype=torch.int32)
    p = torch.zeros(len(items), T, k, dtype=torch.float16)
    rest = torch.zeros(len(items), T, dtype=torch.float16)
    for i, (_, a, b, r) in enumerate(teacher):
        ids[i, : len(a)], p[i, : len(a)], rest[i, : len(a)] = a, b, r
    draft.to(device)

    def batch_of(g: list[int]):
        t = int(lengths[g].max())
        return ([prompts[i] for i in g], ans[g, :t].to(device), lengths[g].to(device),
                None if sensor is None else sensor[g].to(device))

    def alpha_now() -> list[float]:
        mine = held_i[rank()::world()]
        got = heldout_alpha(draft, [batch_of(mine[a:a + cfg.batch]) for a in range(0, len(mine), cfg.batch)])
        return unshard(gather(got), len(held_i))

    ckpt = out / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True) if resume and ckpt.exists() else None
    if state:
        draft.load_state_dict(state["model"])
        history, best = state["history"], state["best"]
    else:
        history, best = [{"epoch": 0, "per_item": alpha_now()}], None
        history[0]["mean"] = float(np.mean(history[0]["per_item"])) if held_i else None

    def on_epoch(epoch, losses, opt, sched):
        nonlocal best
        a = alpha_now()
        history.append({"epoch": epoch, "mean": float(np.mean(a)) if a else None, "per_item": a})
        better = best is None or (a and history[-1]["mean"] > history[best]["mean"])
        best = len(history) - 1 if better else best
        if rank() == 0:
            if better:
                save_draft(draft, c, tok, out / "draft")
            torch.save({"model": draft.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "losses": losses,
                        "history": history, "best": best}, ckpt.with_suffix(".tmp"))
            os.replace(ckpt.with_suffix(".tmp"), ckpt)
        barrier()

    def loss_of(m, idx, epoch):
        prompts_b, a, ln, x = batch_of([train_i[i] for i in idx.tolist()])
        g = [train_i[i] for i in idx.tolist()]
        t = a.shape[1]
        with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
            logits = m(prompts_b, a, ln, x)
        return topk_distillation(logits, ids[g, :t].to(device), p[g, :t].to(device), rest[g, :t].to(device), ln,
                                 cfg.loss)

    t = time.perf_counter()
    resume_fit = {"losses": state["losses"], "opt": state["opt"], "sched": state["sched"]} if state else None
    losses = fit(draft, loss_of, len(train_i), Stage(cfg.epochs, cfg.lr, batch, warmup=max(1, len(train_i) // batch)),
                 cfg.seed, "draft", on_epoch, resume_fit)
    seconds["draft"] = time.perf_counter() - t
    report["peak_rss_mb"]["draft"] = _rss_mb()
    seconds["total"] = time.perf_counter() - t_start
    report |= {"losses": losses, "heldout_alpha": history, "best_epoch": history[best]["epoch"] if best is not None else None,
               "draft": {"layers": c.num_hidden_layers, "params": sum(q.numel() for q in draft.parameters()),
                         "folder": str(out / "draft")}, "finished": True}
    if rank() == 0:
        (out / "distill.json").write_text(json.dumps(report, indent=1))
    barrier()
    return report


def _copy(decoder: Decoder) -> Decoder:
    """A copy of the target's decoder to cut (the target keeps its layers for the teacher)."""
    d = Decoder(decoder.config)
    d.load_state_dict(decoder.state_dict())
    return d


def add_distill_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="the target: an EventGPT or Video-LLaVA checkpoint (the frames of "
                   "each window) or a text-only LLaMA folder")
    p.add_argument("--data", nargs="+", help="AEDAT4 files, IMU+EVENTS / IMU+VIDEO pairs, Ego4D folders, JSONL "
                   "manifests, world:N; none for a text-only target (each query a moment)")
    p.add_argument("--queries", required=True, help="one question a line (or JSONL with 'query'); every moment is asked each")
    p.add_argument("--draft-init", required=True, help="target:K (the target's first K layers), or DIR[:K] (a LLaMA, "
                   "LLaSA or SensorLLM folder: the target's vocabulary, or it with tokens appended; a OneLLM "
                   "consolidated .pth or its folder)")
    p.add_argument("--imu-encoder", help="limu-bert (the shipped one; the default), limu-bert:PT (a LIMU-BERT state "
                   "dict): a LLaSA draft; chronos:DIR (a Chronos folder, frozen): a SensorLLM draft; onellm:PTH (the "
                   "IMU path of a OneLLM checkpoint): a OneLLM draft. Default for a SensorLLM folder: the Chronos its "
                   "config.json records; for a OneLLM checkpoint: its own IMU path")
    p.add_argument("--no-imu", action="store_true", help="the text-only twin of the same initialisation")
    d = DistillConfig()
    p.add_argument("--window-us", type=positive, default=d.window_us, help="a moment's event window (µs)")
    p.add_argument("--hop-us", type=positive, help="default: the window (no overlap)")
    p.add_argument("--holdout", type=float, default=d.holdout, help="fraction of recordings held out")
    p.add_argument("--loss", choices=LOSSES, default=d.loss, help="total variation, forward KL on the top-k, or KL "
                   "on the top-k + rest")
    p.add_argument("--top-k", type=positive, default=d.top_k, help="teacher probabilities stored per position")
    p.add_argument("--epochs", type=positive, default=d.epochs, help="passes over the training items")
    p.add_argument("--batch", type=positive, default=d.batch, help="global batch (split over torchrun ranks)")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW peak learning rate (warm-up, cosine decay)")
    p.add_argument("--max-new-tokens", type=positive, default=d.max_new_tokens, help="longest teacher answer")
    p.add_argument("--imu-points", type=positive, default=d.imu_points, help="IMU positions over the span: LIMU-BERT's, or "
                   "each channel's Chronos series (a SensorLLM prompt holds 6 × (N + 1) of them)")
    p.add_argument("--imu-span-us", type=positive, help="the draft's IMU span (µs) ending with each window, at least the "
                   "window (default: the window; OneLLM: its 2 s); LIMU-BERT's pretrained 6 s: --imu-span-us 6000000 "
                   "--imu-points 120. Where a recording began later, the span from its start")
    p.add_argument("--shard-size", type=positive, default=d.shard_size, help="teacher items per shard file")
    p.add_argument("--teacher-batch", type=positive, default=d.teacher_batch, help="items the target answers at once "
                   "(batched greedy decoding within a shard; the same answers as one at a time)")
    p.add_argument("--seed", type=int, default=d.seed, help="held-out split, batch order, fresh projector")
    p.add_argument("--threads", type=positive, metavar="N", help="CPU threads per process (default: OMP_NUM_THREADS when "
                   "set, else by the target's size)")
    p.add_argument("--out", required=True, help="folder for draft/, teacher/, checkpoint.pt and distill.json")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.set_defaults(func=cmd_distill)


def cmd_distill(a: argparse.Namespace) -> int:
    from .checkpoint import read_json
    from .runtime import set_threads

    c = read_json(Path(a.target) / "config.json")
    c = c.get("text_config", c)  # Video-LLaVA's LLM
    set_threads(a.threads, 12 * c.get("hidden_size", 0) ** 2 * c.get("num_hidden_layers", 0))  # ~ the target's step
    cfg = DistillConfig(a.window_us, a.hop_us, a.holdout, a.loss, a.top_k, a.epochs, a.batch, a.lr, a.max_new_tokens,
                        a.imu_points, a.shard_size, a.seed, a.imu_span_us, a.teacher_batch)
    r = distill(Path(a.target), a.data, Path(a.queries), a.draft_init, a.imu_encoder, a.no_imu, cfg, Path(a.out), a.resume)
    if rank() == 0:
        h = r["heldout_alpha"]
        print(json.dumps({"draft": str(Path(a.out) / "draft"), "moments": r["moments"], "items": r["items"],
                          "heldout_alpha": {"init": h[0]["mean"], "best": max((x["mean"] or 0) for x in h[1:]) if h[1:] else None},
                          "best_epoch": r["best_epoch"], "seconds": r["seconds"]}))
    close()
    return 0
