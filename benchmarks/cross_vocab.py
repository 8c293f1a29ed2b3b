"""Cross-vocabulary drafting (imuspec.vocab) against a same-vocabulary draft of the same size and weights.

(a) the controlled-agreement pair (imuspec.synthetic) in LLaMA-2's vocabulary; the cross draft is the same draft with
    its vocabulary re-mapped: ids shuffled and ``--split`` tokens taken out (their merge removed, so each is spelled
    as its two halves), its embedding and head rows moved with the ids.
(b) the shipped pair (imuspec.weights: target, imu_draft) on held-out world moments; the cross draft is imu_draft
    with a GPT-2-style byte-level BPE trained on the same corpus as the shipped tokenizer; only its embeddings and
    head are retrained (initialised from the old pieces, then ``--steps`` of cross-entropy on training-seed
    narrations), blocks, IMU encoder and projector untouched.

Per mode: α (kept / drafted), τ (tokens per target forward), tokens/s and speed-up over the target alone (median of
``--repeats`` timed runs, min in the JSON), greedy and sampling. Greedy outputs are checked against the target's.

    OMP_NUM_THREADS=1 python3 benchmarks/cross_vocab.py --part a
    OMP_NUM_THREADS=1 python3 benchmarks/cross_vocab.py --part b
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from imuspec.sampling import Sampling
from imuspec.speculative import GenerationConfig, generate
from imuspec.vocab import Vocab, drafter

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("The person walks along the corridor, turns left at the second door and stops in front of a poster. "
        "It shows 3 mountains,\na lake and the words: naïve café.")


def timed(target, tp, cfg, draft=None, dp=None, repeats=3) -> dict:
    generate(target, tp, cfg, draft, dp)  # warm-up
    runs = [generate(target, tp, cfg, draft, dp) for _ in range(repeats)]
    walls = [r.stats.wall_s for r in runs]
    return {"tokens": runs[0].tokens, "alpha": runs[0].stats.alpha, "tau": runs[0].stats.tau,
            "wall_s_median": statistics.median(walls), "wall_s_min": min(walls), "n_tokens": runs[0].stats.n_tokens}


def compare(cases: list[tuple], modes: dict, repeats: int) -> dict:
    """cases: (target, target prompt, {name: (draft, draft prompt)}); mean α, τ, speed-up per (name, mode)."""
    rows = {}
    for mode, s in modes.items():
        for target, tp, drafts, cfg in (cases[:1] if s.greedy and cases[0][-1].seed != cases[-1][-1].seed else cases):
            cfg = GenerationConfig(**{**cfg.__dict__, "sampling": s})
            alone = timed(target, tp, cfg, repeats=repeats)
            for name, (d, dp) in drafts.items():
                r = timed(target, tp, cfg, d, dp, repeats)
                row = rows.setdefault(f"{name} {mode}", {"alpha": [], "tau": [], "speedup": [], "speedup_min": [],
                                                          "wall_s": [], "alone_wall_s": [], "identical": []})
                row["alpha"].append(r["alpha"])
                row["tau"].append(r["tau"])
                row["speedup"].append(alone["wall_s_median"] / r["wall_s_median"])
                row["speedup_min"].append(alone["wall_s_min"] / r["wall_s_min"])
                row["wall_s"].append(r["wall_s_median"])
                row["alone_wall_s"].append(alone["wall_s_median"])
                row["identical"].append(r["tokens"] == alone["tokens"] if s.greedy else None)
    out = {}
    for k, r in rows.items():
        out[k] = {m: statistics.mean(v) for m, v in r.items() if m != "identical"}
        out[k]["greedy_identical"] = all(r["identical"]) if r["identical"][0] is not None else None
        out[k]["n"] = len(r["alpha"])
    return out


def table(res: dict) -> str:
    lines = [f"{'draft / mode':34}{'alpha':>8}{'tau':>8}{'speed-up':>10}{'identical':>11}"]
    for k, r in res.items():
        ident = "-" if r["greedy_identical"] is None else str(r["greedy_identical"])
        lines.append(f"{k:34}{r['alpha']:8.3f}{r['tau']:8.2f}{r['speedup']:10.2f}{ident:>11}")
    return "\n".join(lines)


# --- (a) -----------------------------------------------------------------------------------------------------------

def remapped_tokenizer(tok, n_split: int, seed: int):
    """``tok`` (a BPE tokenizer) with ``n_split`` leaf tokens removed with their merge, and every id shuffled."""
    from tokenizers import Tokenizer as RawTokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tok.backend_tokenizer.to_str())
    merges = [m if isinstance(m, list) else m.split(" ") for m in spec["model"]["merges"]]
    parts = {p for m in merges for p in m}
    g = torch.Generator().manual_seed(seed)
    leaves = [i for i, (a, b) in enumerate(merges) if a + b not in parts and len(a + b) > 2]
    drop = {leaves[i] for i in torch.randperm(len(leaves), generator=g)[:n_split].tolist()}
    gone = {"".join(merges[i]) for i in drop}
    spec["model"]["merges"] = [m for m in merges if "".join(m) not in gone]
    pieces = [p for p in spec["model"]["vocab"] if p not in gone]
    perm = torch.randperm(len(pieces), generator=g).tolist()
    spec["model"]["vocab"] = {p: perm[i] for i, p in enumerate(pieces)}
    for a in spec["added_tokens"]:
        a["id"] = spec["model"]["vocab"][a["content"]]
    spec["post_processor"] = None
    return PreTrainedTokenizerFast(tokenizer_object=RawTokenizer.from_str(json.dumps(spec)), eos_token=tok.eos_token,
                                   bos_token=tok.bos_token), pieces


def moved_rows(draft, old_tok, new_tok):
    """The draft in the new vocabulary: embedding and head rows follow their piece to its new id."""
    from dataclasses import replace

    from imuspec.checkpoint import empty_decoder

    old_ids = old_tok.get_vocab()
    order = sorted(new_tok.get_vocab().items(), key=lambda kv: kv[1])
    src = torch.tensor([old_ids[p] for p, _ in order])
    new = empty_decoder(replace(draft.config, vocab_size=len(order), eos_token_id=new_tok.eos_token_id), "cpu")
    sd = draft.state_dict()
    sd["model.embed_tokens.weight"], sd["lm_head.weight"] = sd["model.embed_tokens.weight"][src], sd["lm_head.weight"][src]
    new.load_state_dict(sd, strict=False)
    return new.eval()


def part_a(a) -> dict:
    from imuspec.synthetic import calibrate, controlled_pair, parse_shape
    from imuspec.templates import Tokenizer

    llama = Tokenizer(ROOT / ".." / "shared" / "fixtures" / "llama2_tokenizer").hf
    target, draft = controlled_pair(parse_shape(a.target_shape), parse_shape(a.draft_shape), 0.05, a.seed)
    tp = torch.tensor([llama.bos_token_id] + llama(TEXT, add_special_tokens=False).input_ids)
    need = max(256, len(tp) + 2 * (a.new_tokens + a.gamma))
    for m in (target, draft):
        m.setup_cache(need)
    eps = calibrate(target, draft, 0.05, a.alpha, torch.randint(3, 32000, (256,), generator=torch.Generator().manual_seed(1)))
    new_tok, _ = remapped_tokenizer(llama, a.split, a.seed)
    cross = moved_rows(draft, llama, new_tok)
    cross.setup_cache(need)
    dp = torch.tensor([new_tok.bos_token_id] + Vocab(new_tok, ()).encode(TEXT.encode()))
    mapped, pair = drafter(cross, new_tok, target, llama)
    drafts = {"same vocabulary": (draft, tp), "cross vocabulary": (mapped, dp)}
    cases = [(target, tp, drafts, GenerationConfig(max_new_tokens=a.new_tokens, gamma=a.gamma, seed=seed,
                                                   eos_token_ids=()))  # fixed length
             for seed in range(a.seed, a.seed + a.seeds)]  # greedy runs the first; sampling every seed
    res = compare(cases, {"greedy": Sampling(), f"T={a.temperature}": Sampling(temperature=a.temperature)}, a.repeats)
    return {"results": res, "eps": eps, "note": pair.note(True), "split": a.split, "transformers": peer(a, target,
            draft, cross, tp, llama, new_tok, res), "shapes": [a.target_shape, a.draft_shape], "calibrated_alpha": a.alpha}


def peer(a, target, draft, cross, tp, llama, new_tok, res) -> dict:
    """transformers in the same run, greedy: assisted generation (same vocabulary) and Universal Assisted Generation
    (the remapped draft, `tokenizer=` / `assistant_tokenizer=`); wall-time ratios of ours over theirs."""
    from transformers.utils import logging

    from imuspec.bench import hf_generate, to_hf

    logging.set_verbosity_error()
    hf_t, hf_d, hf_c = to_hf(target), to_hf(draft), to_hf(cross)
    n = a.new_tokens
    ours, _ = hf_generate(hf_t, tp, n)
    same_tokens, same_s = hf_generate(hf_t, tp, n, hf_d, a.gamma)
    hf_c.generation_config.num_assistant_tokens = a.gamma
    hf_c.generation_config.num_assistant_tokens_schedule = "constant"
    hf_c.generation_config.assistant_confidence_threshold = 0.0
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0, assistant_model=hf_c,
              tokenizer=llama, assistant_tokenizer=new_tok)
    with torch.inference_mode():
        hf_t.generate(tp[None], **kw)  # warm-up: builds and caches its vocabulary translator
        hf_c_s = time.perf_counter()
        out = hf_t.generate(tp[None], **kw)
        hf_c_s = time.perf_counter() - hf_c_s
    return {"assisted_s": same_s, "uag_s": hf_c_s, "assisted_identical": same_tokens == ours,
            "uag_identical": out[0, len(tp):].tolist() == ours}


# --- (b) -----------------------------------------------------------------------------------------------------------

def byte_bpe(folder: Path):
    """A byte-level BPE over the shipped tokenizer's corpus (train.build_tokenizer's), same trainer size."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from imuspec.templates import Tokenizer, get_template
    from imuspec.train import SPECIAL
    from imuspec.world import QUERY, narration_corpus

    corpus = narration_corpus() + [get_template("eventgpt_v1").prompt(f"<ev_start><event><ev_end>\n{QUERY}"),
                                   get_template("llava_v1").prompt(f"<image>\n{QUERY}"), get_template("vicuna_v1").prompt(QUERY)]
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=1024, special_tokens=SPECIAL, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(folder)
    return Tokenizer(folder)


def cheap_samples(seeds):
    """Training-seed IMU windows and narrations, without rendering events (the draft reads only the IMU)."""
    from imuspec.paired import PairedSample
    from imuspec.world import WorldConfig, imu, narrate, plan

    c = WorldConfig()
    out = []
    for s in seeds:
        p = plan(s, c)
        out.append(PairedSample(imu(p, c), None, c.t0_us, c.t0_us + c.window_us, f"synthetic:{s}",
                                narrate(p.activity, p.pace, p.direction, p.scene, p.sentence)))
    return out


def retokenised_draft(a, old, target_tok, tmp: Path):
    """imu_draft with the byte-level BPE: new embedding/head rows, initialised from the old pieces, then trained."""
    from dataclasses import replace

    from torch import nn

    from imuspec.models.llasa import prompt_ids as llasa_prompt
    from imuspec.train import PromptedLM, cross_entropy, decoder_from, hf_llama, pad
    from imuspec.world import QUERY

    new_tok = byte_bpe(tmp / "tokenizer")
    vo, vn, vt = Vocab(old.tokenizer.hf, ()), Vocab(new_tok.hf, ()), Vocab(target_tok.hf, ())
    dec = old.decoder
    c = replace(dec.config, vocab_size=-(-new_tok.vocab_size // 64) * 64, bos_token_id=new_tok.bos_id,
                eos_token_id=new_tok.eos_id)
    lm = hf_llama(c)
    sd = {k: v.float() for k, v in dec.state_dict().items() if k in lm.state_dict()}
    emb, head = sd["model.embed_tokens.weight"], sd["lm_head.weight"]
    new_emb, new_head = torch.randn(c.vocab_size, c.hidden_size) * emb.std(), torch.zeros(c.vocab_size, c.hidden_size)
    new_head -= 10 * emb.std()  # unused rows stay improbable
    for j, piece in enumerate(vn.pieces):
        ids = vo.encode(piece) if piece else []
        if piece is None and j < len(new_tok.hf):  # specials: the old special of the same name
            ids = [old.tokenizer.hf.convert_tokens_to_ids(new_tok.hf.convert_ids_to_tokens(j))]
        if ids:
            new_emb[j], new_head[j] = emb[ids].mean(0), head[ids[0]]
    sd["model.embed_tokens.weight"], sd["lm_head.weight"] = new_emb, new_head
    lm.load_state_dict(sd, strict=False)
    lm.requires_grad_(False)
    lm.get_input_embeddings().weight.requires_grad_(True)
    lm.lm_head.weight.requires_grad_(True)
    features = nn.Sequential(old.imu_encoder, old.projector).requires_grad_(False)
    model = PromptedLM(lm, llasa_prompt(new_tok, QUERY), features)
    train = cheap_samples(range(a.train_samples))
    n_imu = old.imu_encoder.config.seq_len if hasattr(old.imu_encoder, "config") else 40
    sensor = torch.stack([torch.from_numpy(s.imu_input(n_imu)).float() for s in train])
    # the continuation as the target spells it (its bytes), in the new vocabulary, then EOS
    answers = [vn.encode(vt.text(target_tok.encode(s.text, bos=False))) + [new_tok.eos_id] for s in train]
    ans, lengths = pad(answers, new_tok.eos_id, "cpu")
    opt = torch.optim.Adam([lm.get_input_embeddings().weight, lm.lm_head.weight], lr=a.lr)
    g, losses, t0 = torch.Generator().manual_seed(a.seed), [], time.perf_counter()
    for _ in range(a.steps):
        idx = torch.randint(len(train), (a.batch,), generator=g)
        t = int(lengths[idx].max())
        loss = cross_entropy(model(ans[idx][:, :t], sensor[idx]), ans[idx][:, :t], lengths[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    train_s = time.perf_counter() - t0
    old.decoder, old.tokenizer = decoder_from(lm, c).eval(), new_tok
    return old, {"loss_first": losses[0], "loss_last": statistics.mean(losses[-20:]), "train_s": train_s,
                 "steps": a.steps, "batch": a.batch, "train_samples": a.train_samples, "lr": a.lr,
                 "vocab": new_tok.vocab_size}


def part_b(a) -> dict:
    import tempfile

    from imuspec.demo import WEIGHTS
    from imuspec.families import open_draft, open_target
    from imuspec.world import QUERY, WorldConfig, make_samples

    target = open_target(WEIGHTS / "target")
    same = open_draft(WEIGHTS / "imu_draft", None, target.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        from imuspec.models.llasa import LLaSA

        m = LLaSA.from_pretrained(WEIGHTS / "imu_draft")
        m, training = retokenised_draft(a, m, target.tokenizer, Path(tmp))
    n_imu = m.imu_encoder.config.seq_len if hasattr(m.imu_encoder, "config") else 40
    mapped, pair = drafter(m.decoder, m.tokenizer, target.decoder, target.tokenizer)
    cases = []
    eos = tuple(target.decoder.config.eos_ids)
    cfg = GenerationConfig(max_new_tokens=a.new_tokens, gamma=a.gamma, seed=a.seed, eos_token_ids=eos)
    for s in make_samples(range(1_000_000, 1_000_000 + a.samples), WorldConfig(), progress=False):
        tp, dp_same = target.embed(QUERY, s.events), same.embed(QUERY, s)
        dp_cross = m.prompt_embeds(QUERY, s.imu_input(n_imu))
        target.decoder.setup_cache(len(tp) + a.new_tokens + a.gamma)
        same.decoder.setup_cache(len(dp_same) + a.new_tokens + a.gamma)
        m.decoder.setup_cache(len(dp_cross) + 2 * (a.new_tokens + a.gamma))
        cases.append((target.decoder, tp, {"same vocabulary (imu_draft)": (same.decoder, dp_same),
                                          "cross vocabulary (byte BPE)": (mapped, dp_cross)}, cfg))
    res = compare(cases, {"greedy": Sampling(), f"T={a.temperature}": Sampling(temperature=a.temperature)}, a.repeats)
    return {"results": res, "note": pair.note(True), "retraining": training, "samples": a.samples}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("a", "b"), required=True)
    p.add_argument("--target-shape", default="cpu-100m")
    p.add_argument("--draft-shape", default="cpu-5m")
    p.add_argument("--alpha", type=float, default=0.8, help="(a) greedy agreement to calibrate the pair to")
    p.add_argument("--split", type=int, default=2000, help="(a) tokens the cross draft spells as two")
    p.add_argument("--samples", type=int, default=6, help="(b) held-out world moments")
    p.add_argument("--seeds", type=int, default=4, help="(a) sampling seeds")
    p.add_argument("--train-samples", type=int, default=2000)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    r = part_a(a) if a.part == "a" else part_b(a)
    r |= {"part": a.part, "args": vars(a), "machine": f"{platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch thread", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(r["note"])
    print(table(r["results"]))
    if "transformers" in r:
        t, ours = r["transformers"], r["results"]
        print(f"transformers, greedy: assisted {t['assisted_s']:.2f} s (ours same-vocabulary "
              f"{t['assisted_s'] / ours['same vocabulary greedy']['wall_s']:.2f}x faster), UAG {t['uag_s']:.2f} s (ours "
              f"cross-vocabulary {t['uag_s'] / ours['cross vocabulary greedy']['wall_s']:.2f}x faster); identical to "
              f"the target: {t['assisted_identical']}, {t['uag_identical']}")
    out = ROOT / "benchmarks" / "results" / f"cross_vocab_{a.part}.json"
    out.write_text(json.dumps(r, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
