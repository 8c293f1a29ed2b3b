"""The recipe behind the shipped pair, from data the project generates (:mod:`imuspec.world`).

Stages, in order; ``imuspec train recipe`` runs them all, each also runs alone, all under ``torchrun`` (DDP):

1. ``data``: world samples → a cache of model inputs (EventGPT frames as uint8, IMU span inputs, narrations), and the
   tokenizer: BPE over every sentence the world can say and the templates, one vocabulary for target and drafts.
2. ``target``: the EventGPT-family target (CLIP tower, projector, adaptor, LLaMA) learns the narrations (cross-entropy).
3. ``limu-bert``: LIMU-BERT's own pretraining task, masked reconstruction, on the IMU inputs.
4. ``teacher``: the saved target's greedy answer to every sample and its next-token distributions along that answer.
5. ``draft`` and ``text-draft``: the LLaSA-family IMU draft (frozen LIMU-BERT, projector, LLaMA) and a text-only LLaMA
   of the same size, distilled on those distributions with forward KL or total variation distance (what acceptance
   depends on: a greedy draft's token is accepted iff it is the target's argmax; a sampled one with prob. 1 − TV).

The generic pieces (the optimiser schedule and DDP loop :func:`~imuspec.distill.fit`, the distillation losses) are
:mod:`imuspec.distill`'s, which distils drafts for any user's target; this module is the world-specific recipe.
Models train as transformers' ``LlamaForCausalLM`` (the reference implementation, same parameter names) and are saved
in the families' original layouts, so :class:`~imuspec.models.eventgpt.EventGPT` and
:class:`~imuspec.models.llasa.LLaSA` load them like any real checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import save_decoder
from .distill import Stage, decoder_from, distillation, fit, hf_llama, pad, valid
from .distributed import barrier, close, gather, init_distributed, rank, unshard, world
from .encoders.limu_bert import LimuBert, LimuBertConfig, mask_windows, span_mask
from .events.render import CLIP_336
from .model import LlamaConfig
from .multimodal import PLACEHOLDER_ID
from .runtime import positive, set_threads
from .templates import Tokenizer, get_template

SPECIAL = ["<unk>", "<s>", "</s>", "<ev_patch>", "<ev_start>", "<ev_end>"]
MEAN, STD = torch.tensor(CLIP_336["image_mean"]), torch.tensor(CLIP_336["image_std"])


@dataclass(frozen=True)
class RecipeConfig:
    n_samples: int = 8000
    first_seed: int = 0  # world seeds [first_seed, first_seed + n_samples); evaluation uses seeds from 1,000,000
    tower: dict = field(default_factory=lambda: dict(image_size=64, patch_size=8, hidden_size=128, num_hidden_layers=4,
                                                     num_attention_heads=4, intermediate_size=512))
    target: dict = field(default_factory=lambda: dict(hidden_size=256, num_hidden_layers=8, num_attention_heads=4,
                                                      intermediate_size=704))
    draft: dict = field(default_factory=lambda: dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=352))
    imu_points: int = 40  # LIMU-BERT positions over the 50 ms window (a DAVIS IMU gives ~40 samples there)
    loss: str = "tvd"  # draft distillation: "tvd" or "fkl"
    target_stage: Stage = Stage(epochs=15, lr=1e-3)
    limu_stage: Stage = Stage(epochs=30, lr=1e-3, batch=128)
    draft_stage: Stage = Stage(epochs=15, lr=2e-3)
    max_new_tokens: int = 40
    max_positions: int = 192
    seed: int = 0
    save_dtype: str = "bfloat16"  # the shipped weights; they load as float32 for decoding


PRESETS = {
    "full": RecipeConfig(),
    # seconds on a CPU: for tests of the machinery (DDP equivalence, formats), not for quality
    "tiny": RecipeConfig(
        n_samples=16, tower=dict(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64),
        target=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
        draft=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
        target_stage=Stage(epochs=2, lr=1e-3, batch=8, warmup=1), limu_stage=Stage(epochs=2, lr=1e-3, batch=8, warmup=1),
        draft_stage=Stage(epochs=2, lr=1e-3, batch=8, warmup=1), max_new_tokens=8),
}


# --- data ----------------------------------------------------------------------------------------------------------

def pixels_to_uint8(pixels: Tensor) -> Tensor:
    """Invert the CLIP processor's normalisation: its input was a uint8 image, so this is exact."""
    x = pixels.float() * STD[:, None, None] + MEAN[:, None, None]
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def uint8_to_pixels(frames: Tensor) -> Tensor:
    return ((frames.float() / 255) - MEAN[:, None, None].to(frames.device)) / STD[:, None, None].to(frames.device)


def make_data(cfg: RecipeConfig, path: Path) -> None:
    """World samples → ``path`` (safetensors): frames [N, 5, 3, S, S] uint8, imu [N, L, 6], texts in the metadata."""
    from safetensors.torch import save_file

    from .events.render import eventgpt_pixel_values
    from .world import make_samples

    seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.n_samples))
    mine = make_samples(seeds[rank()::world()], progress=rank() == 0)
    rows = [(pixels_to_uint8(eventgpt_pixel_values(s.events, size=cfg.tower["image_size"])),
             torch.from_numpy(s.imu_input(cfg.imu_points)), s.text, s.meta.get("activity"), s.meta.get("scene"))
            for s in mine]
    rows = unshard(gather(rows), len(seeds))
    if rank() == 0:
        frames, imu, texts, activity, scene = zip(*rows)
        meta = {"texts": json.dumps(texts), "activity": json.dumps(activity), "scene": json.dumps(scene),
                "seeds": json.dumps(seeds)}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"frames": torch.stack(frames), "imu": torch.stack(imu)}, str(path), metadata=meta)
    barrier()


def load_data(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        data = {k: f.get_tensor(k) for k in f.keys()}
    return {**data, **{k: json.loads(v) for k, v in meta.items()}}


def build_tokenizer(folder: Path) -> Tokenizer:
    """BPE (sentencepiece-style ``▁`` word marks) over every narration and every template: the shared vocabulary."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from .world import QUERY, narration_corpus

    corpus = narration_corpus() + [get_template("eventgpt_v1").prompt(f"<ev_start><event><ev_end>\n{QUERY}"),
                                   get_template("llava_v1").prompt(f"<image>\n{QUERY}"), get_template("vicuna_v1").prompt(QUERY)]
    raw = RawTokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    raw.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    raw.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=1024, special_tokens=SPECIAL, show_progress=False))
    hf = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    hf.save_pretrained(str(folder))
    tok = Tokenizer(folder)
    tok.adds_bos = True  # prompts start with BOS, as LLaMA's do
    tok.save_pretrained(folder)
    return tok


def llama_config(shape: dict, tok: Tokenizer, cfg: RecipeConfig) -> LlamaConfig:
    vocab = -(-tok.vocab_size // 64) * 64
    return LlamaConfig(vocab_size=vocab, max_position_embeddings=cfg.max_positions, bos_token_id=tok.bos_id,
                       eos_token_id=tok.eos_id, **shape)


def answer_ids(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Each narration as the target should answer it: its tokens, then EOS."""
    return [tok.encode(t, bos=False) + [tok.eos_id] for t in texts]


# --- models as trained -------------------------------------------------------------------------------------------

class PromptedLM(nn.Module):
    """``LlamaForCausalLM`` on [prompt before the placeholder | sensor features | prompt after | answer], the layout of
    every family's prompt; returns the logits that predict each answer token: [B, T, V]."""

    def __init__(self, lm: nn.Module, prompt: list[int], features: nn.Module | None = None):
        super().__init__()
        cut = prompt.index(PLACEHOLDER_ID) if features is not None else len(prompt)
        self.lm, self.features = lm, features
        self.register_buffer("before", torch.tensor(prompt[:cut], dtype=torch.long), persistent=False)
        self.register_buffer("after", torch.tensor(prompt[cut + 1:], dtype=torch.long), persistent=False)

    def forward(self, answer: Tensor, sensor: Tensor | None = None) -> Tensor:
        emb, b = self.lm.get_input_embeddings(), len(answer)
        parts = [emb(self.before).expand(b, -1, -1)]
        if self.features is not None:
            parts.append(self.features(sensor))
        parts += [emb(self.after).expand(b, -1, -1), emb(answer)]
        return self.lm(inputs_embeds=torch.cat(parts, 1), logits_to_keep=answer.shape[1] + 1).logits[:, :-1]


def cross_entropy(logits: Tensor, answer: Tensor, lengths: Tensor) -> Tensor:
    """Mean over the batch of each sample's mean token cross-entropy."""
    m = valid(lengths, answer.shape[1])
    ce = F.cross_entropy(logits.float().transpose(1, 2), answer, reduction="none")
    return ((ce * m).sum(1) / lengths).mean()


class MaskedReconstruction(nn.Module):
    """LIMU-BERT's pretraining objective as a forward (DDP synchronises what a forward computes)."""

    def __init__(self, model: LimuBert):
        super().__init__()
        self.model = model
        model.fc.requires_grad_(False)  # in the original checkpoints, unused by its forward

    def forward(self, masked: Tensor, positions: Tensor, truth: Tensor) -> Tensor:
        return F.mse_loss(self.model.reconstruct(masked, positions), truth)


# --- stages --------------------------------------------------------------------------------------------------------

def train_target(cfg: RecipeConfig, data: dict, tok: Tokenizer, out: Path, device) -> list[float]:
    from transformers import CLIPVisionConfig

    from .models.eventgpt import EventEncoder, EventGPT
    from .models.eventgpt import prompt_ids as eventgpt_prompt
    from .world import QUERY

    torch.manual_seed(cfg.seed)
    c = llama_config(cfg.target, tok, cfg)
    encoder = EventEncoder(CLIPVisionConfig(**cfg.tower), c.hidden_size)
    encoder.visual_tower.post_layernorm.requires_grad_(False)  # EventGPT reads the states before it
    model = PromptedLM(hf_llama(c), eventgpt_prompt(tok, QUERY), encoder).to(device)
    ans, lengths = pad(answer_ids(tok, data["texts"]), tok.eos_id, device)
    frames = data["frames"]

    def loss_of(m, idx, epoch):
        a = ans[idx][:, : int(lengths[idx].max())]
        return cross_entropy(m(a, uint8_to_pixels(frames[idx].to(device))), a, lengths[idx])

    losses = fit(model, loss_of, len(ans), cfg.target_stage, cfg.seed, "target")
    if rank() == 0:
        target = EventGPT(decoder_from(model.lm, c), encoder, tok).to(getattr(torch, cfg.save_dtype))
        target.save_pretrained(out / "target")
    barrier()
    return losses


def train_limu_bert(cfg: RecipeConfig, data: dict, out: Path, device) -> list[float]:
    from safetensors.torch import save_file

    torch.manual_seed(cfg.seed)
    lb = LimuBertConfig(seq_len=cfg.imu_points)
    model = MaskedReconstruction(LimuBert(lb)).to(device)
    imu = data["imu"].numpy()
    rng = np.random.default_rng(cfg.seed)
    n_masks = int(math.ceil(cfg.limu_stage.epochs)) + 1
    positions = np.stack([[span_mask(lb.seq_len, rng) for _ in range(len(imu))] for _ in range(n_masks)])  # new masks each epoch

    def loss_of(m, idx, epoch):
        i = idx.numpy()
        pos, x = positions[epoch % n_masks][i], imu[i]
        truth = torch.from_numpy(np.take_along_axis(x, pos[:, :, None], 1)).to(device)
        return m(torch.from_numpy(mask_windows(x, pos)).to(device), torch.from_numpy(pos).to(device), truth)

    losses = fit(model, loss_of, len(imu), cfg.limu_stage, cfg.seed, "LIMU-BERT")
    if rank() == 0:
        (out / "limu_bert").mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.model.state_dict().items()}, str(out / "limu_bert" / "model.safetensors"))
        (out / "limu_bert" / "config.json").write_text(json.dumps(asdict(lb)))
    barrier()
    return losses


@torch.no_grad()
def teacher_outputs(cfg: RecipeConfig, data: dict, tok: Tokenizer, out: Path, device) -> float:
    """The saved target's greedy answers and its next-token distributions along them (what the drafts imitate), to
    ``out/teacher.safetensors``; returns the fraction of answers that are the sample's own narration."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    from .models.eventgpt import EventGPT
    from .speculative import GenerationConfig, generate
    from .world import QUERY

    target = EventGPT.from_pretrained(out / "target", device=device)
    dec, eos = target.decoder, target.tokenizer.eos_id
    gcfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, eos_token_ids=(eos,))
    rows, idx = [], range(len(data["texts"]))[rank()::world()]
    for i in tqdm(idx, desc="teacher", disable=rank() != 0, unit="sample"):
        prompt = target.prompt_embeds(QUERY, uint8_to_pixels(data["frames"][i]))
        if dec.max_len < len(prompt) + cfg.max_new_tokens + 1:  # every prompt has the same length: once
            dec.setup_cache(len(prompt) + cfg.max_new_tokens + 1)
        tokens = generate(dec, prompt, gcfg).tokens
        dec.rollback(0)
        x = torch.cat([prompt, dec.embed(torch.tensor(tokens[:-1], device=device))])
        p = torch.softmax(dec(embeds=x[None])[0, len(prompt) - 1:], -1)
        rows.append((tokens, p.half().cpu()))
    rows = unshard(gather(rows), len(data["texts"]))
    if rank() == 0:
        tokens, lengths = pad([r[0] for r in rows], eos, "cpu")
        probs = torch.zeros(*tokens.shape, dec.config.vocab_size, dtype=torch.float16)
        for i, (_, p) in enumerate(rows):
            probs[i, : len(p)] = p
        save_file({"tokens": tokens, "lengths": lengths, "probs": probs}, str(out / "teacher.safetensors"))
    barrier()
    agree = [r[0] == a for r, a in zip(rows, answer_ids(tok, data["texts"]))]
    return sum(agree) / len(agree)


def train_draft(cfg: RecipeConfig, data: dict, tok: Tokenizer, out: Path, device, imu: bool) -> list[float]:
    from safetensors.torch import load_file

    from .models.llasa import LLaSA, build_projector
    from .models.llasa import prompt_ids as llasa_prompt
    from .world import QUERY

    torch.manual_seed(cfg.seed + 1)
    c = llama_config(cfg.draft, tok, cfg)
    teacher = load_file(str(out / "teacher.safetensors"))
    ans, lengths, probs = teacher["tokens"].to(device), teacher["lengths"].to(device), teacher["probs"]
    n = len(ans)
    if imu:
        lb = LimuBertConfig(**json.loads((out / "limu_bert" / "config.json").read_text()))
        encoder = LimuBert.from_pretrained(out / "limu_bert" / "model.safetensors", lb).transformer.requires_grad_(False)
        projector = build_projector("mlp2x_gelu", lb.hidden, c.hidden_size)
        model = PromptedLM(hf_llama(c), llasa_prompt(tok, QUERY), nn.Sequential(encoder, projector)).to(device)
        sensor = data["imu"]
    else:
        model = PromptedLM(hf_llama(c), tok.encode(get_template("vicuna_v1").prompt(QUERY))).to(device)
        sensor = None

    def loss_of(m, idx, epoch):
        t = int(lengths[idx].max())
        logits = m(ans[idx][:, :t], None if sensor is None else sensor[idx].to(device))
        return distillation(logits, probs[idx][:, :t].to(device), lengths[idx], cfg.loss)

    name = "imu_draft" if imu else "text_draft"
    losses = fit(model, loss_of, n, cfg.draft_stage, cfg.seed + 1, name.replace("_", " "))
    if rank() == 0:
        dtype = getattr(torch, cfg.save_dtype)
        decoder = decoder_from(model.lm, c).to(dtype)
        if imu:
            LLaSA(decoder, projector.to(dtype), encoder.to(dtype), tok).save_pretrained(out / name, "mlp2x_gelu")
        else:
            save_decoder(decoder, out / name, tok)
    barrier()
    return losses


def recipe(cfg: RecipeConfig, out: Path, stages: list[str], data_path: Path | None = None) -> dict:
    """Run ``stages`` (in recipe order) into ``out``; returns wall times and loss curves, also in ``out/recipe.json``."""
    data_path = data_path or out / "data.safetensors"
    check_inputs(stages, out, data_path)
    device = init_distributed()
    out.mkdir(parents=True, exist_ok=True)
    report = {"config": asdict(cfg), "world_size": world(), "device": str(device), "seconds": {}, "losses": {}}
    if (out / "recipe.json").exists():
        report = {**json.loads((out / "recipe.json").read_text()), "world_size": world(), "device": str(device)}
    t_all = time.perf_counter()

    def timed(name, fn):
        t = time.perf_counter()
        r = fn()
        report["seconds"][name] = time.perf_counter() - t
        if isinstance(r, list):
            report["losses"][name] = r
        return r

    if "data" in stages:
        timed("data", lambda: make_data(cfg, data_path))
        if rank() == 0:
            build_tokenizer(data_path.parent / "tokenizer")
        barrier()
    if stages == ["data"]:
        return finish(report, out, t_all)
    data = load_data(data_path)
    tok = Tokenizer(data_path.parent / "tokenizer")  # made with the data, beside it
    if "target" in stages:
        timed("target", lambda: train_target(cfg, data, tok, out, device))
    if "limu-bert" in stages:
        timed("limu-bert", lambda: train_limu_bert(cfg, data, out, device))
    if "teacher" in stages:
        report["target_exact_narrations"] = timed("teacher", lambda: teacher_outputs(cfg, data, tok, out, device))
    if "draft" in stages:
        timed("imu-draft", lambda: train_draft(cfg, data, tok, out, device, imu=True))
    if "text-draft" in stages:
        timed("text-draft", lambda: train_draft(cfg, data, tok, out, device, imu=False))
    return finish(report, out, t_all)


NEEDS = {"target": ["data"], "limu-bert": ["data"], "teacher": ["data", "target"], "draft": ["data", "limu-bert", "teacher"],
         "text-draft": ["data", "teacher"]}  # stage: the stages whose outputs it reads


def check_inputs(stages: list[str], out: Path, data_path: Path) -> None:
    """Every stage's inputs exist or come from an earlier stage of this run; else say which stage to run first."""
    made = {"data": data_path, "target": out / "target" / "config.json",
            "limu-bert": out / "limu_bert" / "model.safetensors", "teacher": out / "teacher.safetensors"}
    for stage in stages:
        for need in NEEDS.get(stage, []):
            if need not in stages and not made[need].exists():
                raise ValueError(f"train {stage}: {made[need]} is missing; stage '{need}' writes it: run "
                                 f"'imuspec train {need} --out {out}' first (or 'imuspec train recipe --out {out}')")


def finish(report: dict, out: Path, t_start: float) -> dict:
    report["seconds"]["total"] = report["seconds"].get("total", 0.0) + time.perf_counter() - t_start
    if rank() == 0:
        (out / "recipe.json").write_text(json.dumps(report, indent=1))
    return report


def ship(out: Path, dest: Path) -> None:
    """Copy the three trained models and the recipe report (not the data cache) to ``dest``."""
    for name in ("target", "imu_draft", "text_draft"):
        shutil.rmtree(dest / name, ignore_errors=True)
        shutil.copytree(out / name, dest / name)
    shutil.copy(out / "recipe.json", dest / "recipe.json")


STAGES = ["data", "target", "limu-bert", "teacher", "draft", "text-draft"]


def add_train_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("stages", nargs="+", choices=STAGES + ["recipe"],
                   help="stages to run, in the recipe's order (each needs the ones before it); 'recipe' runs them all")
    p.add_argument("--out", required=True, help="folder for the data cache, checkpoints and recipe.json")
    p.add_argument("--data", help="data cache to read or write (default OUT/data.safetensors; its tokenizer/ beside it)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="full",
                   help="model sizes and schedules: 'full' made the shipped pair, 'tiny' runs in seconds (tests)")
    p.add_argument("--n-samples", type=positive, help="world samples in the data cache "
                   f"(default: the preset's, {PRESETS['full'].n_samples} for full)")
    p.add_argument("--loss", choices=["tvd", "fkl"], help="draft distillation loss: tvd = total variation distance, "
                   f"fkl = forward KL (default: the preset's, {PRESETS['full'].loss} for full)")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every stage's epochs (quick runs)")
    p.add_argument("--ship", help="copy the trained models here afterwards (the package ships src/imuspec/weights)")
    p.add_argument("--threads", type=positive, metavar="N", help="CPU threads per process (default: OMP_NUM_THREADS when "
                   "set, else from the model and batch sizes, at most the cores this process has)")
    p.set_defaults(func=cmd_train)


def cmd_train(a: argparse.Namespace) -> int:
    cfg = PRESETS[a.preset]
    cfg = replace(cfg, n_samples=a.n_samples or cfg.n_samples, loss=a.loss or cfg.loss,
                  **{s: replace(getattr(cfg, s), epochs=getattr(cfg, s).epochs * a.epochs_scale)
                     for s in ("target_stage", "limu_stage", "draft_stage")})
    stages = STAGES if "recipe" in a.stages else [s for s in STAGES if s in a.stages]
    h, layers = cfg.target["hidden_size"], cfg.target["num_hidden_layers"]
    set_threads(a.threads, 12 * h * h * layers, cfg.target_stage.batch * cfg.max_positions)  # ~ the target's step
    report = recipe(cfg, Path(a.out), stages, Path(a.data) if a.data else None)
    if rank() == 0:
        print(json.dumps({"seconds": report["seconds"], "world_size": report["world_size"],
                          "final_loss": {k: v[-1] for k, v in report["losses"].items()}}))
        if a.ship:
            ship(Path(a.out), Path(a.ship))
    close()
    return 0
