"""Drafts with another vocabulary, lossless (Timor et al., ICML 2025: Universal Assisted Generation and its
intersection sampler).

Both vocabularies are read as bytes: every token's bytes (sentencepiece ``▁`` is a space, ``<0xNN>`` a byte;
byte-level BPE through GPT-2's byte↔character table). The continuation is the one thing both sides share:

* greedy (*re-tokenised*): the draft proposes in its own tokens; their text is re-encoded in the target's vocabulary
  after a look-behind window of committed text, and only target tokens whose text is fully determined are kept (the
  last one could still merge with what the draft would say next, unless the draft ended with EOS);
* sampling (*intersection*): the draft samples only tokens whose bytes are one target token too, renormalised, so
  each draft token is exactly one target token with a known probability q; the target's usual rejection rule
  (:func:`~imuspec.tree.sample_accept` on the chain) then keeps the output exactly the target's distribution. The cost:
  the target's mass outside the intersection can never be drafted, so α ≤ Σ_{t∈∩} min(p, q) ≤ p(∩) — a small
  intersection caps acceptance at the target's mass on it (the output stays exact; only speed is lost).

In both modes the committed target tokens are re-encoded into the draft's vocabulary and the draft's cache is rolled
back to the longest common prefix with what it holds, so the draft always sees the canonical encoding of the text.

A draft whose vocabulary *extends* the target's (the same pieces for the target's ids, its own tokens appended after
them, as SensorLLM appends its tags) needs none of this: :func:`restricted` keeps its LM head's rows for the
target's ids, so it drafts target ids directly, never its own extra tokens (which the target cannot emit), and its
q is its distribution renormalised over them; the usual verification rule keeps the output the target's.

The hook into the decode loop (:func:`imuspec.speculative.generate_batch`) is :meth:`MappedDraft.propose`: given the
committed target tokens it returns target-vocabulary proposals (and their q when sampling); the loop verifies them as
a chain (:func:`imuspec.tree.chain`) like a same-vocabulary draft's, and needs no rollback of its own for this draft.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
from torch import Tensor, nn

from .model import Decoder
from .sampling import Sampling, probs, sample

LOOK_BEHIND = 4  # committed target tokens whose text precedes a proposal when it is re-encoded
ANCHORS = ("", "\n")  # contexts tried after the look-behind: no context, then a newline (a stable split point)


@lru_cache(1)
def _byte_level_table() -> dict[str, int]:
    """GPT-2's printable character → byte map (inverse of ``bytes_to_unicode``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Vocab:
    """One tokenizer seen as bytes: ``pieces[i]`` the bytes of token i (None: special), text → ids and back."""

    def __init__(self, hf_tokenizer, eos_ids: tuple[int, ...], size: int | None = None):
        self.backend = hf_tokenizer.backend_tokenizer  # a `tokenizers.Tokenizer`: fast, no special tokens added
        spec = json.loads(self.backend.to_str())
        byte_level = "ByteLevel" in json.dumps(spec.get("decoder"))
        special = {a["id"] for a in spec.get("added_tokens", []) if a.get("special")}
        table = _byte_level_table()
        self.pieces: list[bytes | None] = []
        for i in range(self.backend.get_vocab_size(with_added_tokens=True)):
            tok = self.backend.id_to_token(i)
            if tok is None or i in special:
                self.pieces.append(None)
            elif byte_level:
                self.pieces.append(bytes(table[c] for c in tok) if all(c in table for c in tok) else tok.encode())
            elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
                self.pieces.append(bytes([int(tok[3:5], 16)]))
            else:
                self.pieces.append(tok.replace("▁", " ").encode())
        self.pieces += [None] * ((size or 0) - len(self.pieces))  # a model's vocabulary may be padded past the tokenizer's
        self.size, self.eos_ids = len(self.pieces), tuple(eos_ids)
        # one id per byte string, preferring a normal piece to a byte-fallback one (the tokenizer's own choice)
        self.by_bytes: dict[bytes, int] = {}
        for i, b in enumerate(self.pieces):
            if b is not None and (b not in self.by_bytes or self.backend.id_to_token(self.by_bytes[b]).startswith("<0x")):
                self.by_bytes[b] = i

    def text(self, ids: list[int]) -> bytes:
        return b"".join(self.pieces[i] or b"" for i in ids)

    def _encode_after(self, context: str, text: str) -> list[int] | None:
        """The ids of ``text`` as the tokenizer splits ``context + text``; None if a token straddles the two."""
        ids = self.backend.encode(context + text, add_special_tokens=False).ids
        full, cut = (context + text).encode(), len(context.encode())
        got = self.text(ids)
        off = len(got) - len(full)  # 1 where a sentencepiece tokenizer put its dummy-prefix space in front
        if off not in (0, 1) or got[off:] != full or got[:off] not in (b"", b" "):
            return None
        pos = 0
        for i, t in enumerate(ids):
            if pos == off + cut:
                return ids[i:]
            pos += len(self.pieces[t] or b"")
        return [] if pos == off + cut else None

    def encode(self, data: bytes, look_behind: bytes = b"") -> list[int]:
        """Ids whose bytes are exactly ``data``: valid UTF-8 runs through the tokenizer (after ``look_behind``, else
        an anchor), other bytes as single-byte tokens where the vocabulary has them (else dropped)."""
        out, context = [], _valid_tail(look_behind)
        while data:
            try:
                run, bad = data.decode(), b""
            except UnicodeDecodeError as e:
                run, bad = data[:e.start].decode(), data[e.start:e.end]
            if run:
                for ctx in (context, *ANCHORS):
                    ids = self._encode_after(ctx, run)
                    if ids is not None:
                        out += ids
                        break
            out += [self.by_bytes[bytes([b])] for b in bad if bytes([b]) in self.by_bytes]
            data, context = data[len(run.encode()) + len(bad):], ""
        return out


def _valid_tail(data: bytes) -> str:
    """The longest suffix of ``data`` that is valid UTF-8 text (look-behind context)."""
    for start in range(min(len(data), 4) + 1):
        try:
            return data[start:].decode()
        except UnicodeDecodeError:
            continue
    return ""


def _incomplete_tail(data: bytes) -> int:
    """How many bytes at the end of ``data`` begin a UTF-8 character that is not finished yet."""
    for n in range(1, min(len(data), 3) + 1):
        lead = data[-n]
        if lead & 0xC0 == 0xC0:  # a lead byte: how long its character is
            need = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
            return n if need > n else 0
        if lead & 0xC0 != 0x80:
            return 0
    return 0


@dataclass
class VocabPair:
    """The map between a draft's and a target's vocabulary: the intersection as id tensors, and the note to print."""

    draft: Vocab
    target: Vocab
    shared_draft: Tensor  # [S] draft ids of the tokens both have as the same bytes (EOS paired with EOS)
    shared_target: Tensor  # [S] the same tokens' target ids

    @classmethod
    def build(cls, draft: Vocab, target: Vocab) -> VocabPair:
        pairs = {d: t for b, t in target.by_bytes.items() if (d := draft.by_bytes.get(b)) is not None}
        if draft.eos_ids and target.eos_ids:
            pairs |= {e: target.eos_ids[0] for e in draft.eos_ids}
        pairs = {d: t for t, d in {t: d for d, t in sorted(pairs.items())}.items()}  # one draft id per target id
        d, t = zip(*sorted(pairs.items())) if pairs else ((), ())
        return cls(draft, target, torch.tensor(d, dtype=torch.long), torch.tensor(t, dtype=torch.long))

    @property
    def same(self) -> bool:
        return self.draft.pieces == self.target.pieces and set(self.draft.eos_ids) <= set(self.target.eos_ids)

    @property
    def prefix(self) -> bool:
        """The target's vocabulary is the draft's first ids, the draft's extra tokens appended after them."""
        n = self.target.size
        return (self.draft.size > n and self.draft.pieces[:n] == self.target.pieces
                and set(self.draft.eos_ids) <= set(self.target.eos_ids))

    def note(self, greedy: bool) -> str:
        if self.prefix:
            return (f"draft vocabulary: the target's and {self.draft.size - self.target.size:,} more (draft "
                    f"{self.draft.size:,} tokens, target {self.target.size:,}): drafting the target's ids only")
        mode = "same vocabulary" if self.same else "re-tokenised greedy" if greedy else "intersection sampling"
        return (f"draft vocabulary: {mode} (draft {self.draft.size:,} tokens, target {self.target.size:,}, "
                f"intersection {len(self.shared_draft):,})")

    def draft_probs(self, logits: Tensor, s: Sampling) -> Tensor:
        """The draft's distribution over the intersection, renormalised, in target ids [..., V_target]."""
        shared = logits[..., self.shared_draft.to(logits.device)]
        q = logits.new_zeros(*logits.shape[:-1], self.target.size)
        q[..., self.shared_target.to(logits.device)] = probs(shared, s)
        return q


class MappedDraft:
    """A draft decoder with its own vocabulary, proposing target-vocabulary tokens to the decode loop.

    It keeps the draft ids it has fed after its prompt (``fed``); each :meth:`propose` re-encodes the committed text,
    rolls its cache back to the common prefix and feeds the rest, then drafts.
    """

    def __init__(self, decoder: Decoder, pair: VocabPair):
        self.decoder, self.pair = decoder, pair
        self.t2d = torch.full((pair.target.size,), -1, dtype=torch.long)
        self.t2d[pair.shared_target] = pair.shared_draft
        self.prompt_len, self.fed, self.prompt_logits, self.logits = 0, [], None, None

    def start(self, prompt: Tensor) -> None:
        """Prefill the draft's own prompt (token ids [T] or embeddings [T, H])."""
        self.decoder.rollback(0)
        x = dict(embeds=prompt[None]) if prompt.is_floating_point() else dict(ids=prompt[None])
        self.prompt_logits = self.decoder(**x)[0, -1]
        self.prompt_len, self.fed = len(prompt), []

    def _feed(self, ids: list[int]) -> bool:
        """Append ids to the draft's cache; False (and nothing fed) when the cache has no room."""
        if self.decoder.length.max() + len(ids) > self.decoder.max_len:
            return False
        self.logits = self.decoder.step(torch.tensor([ids], device=self.decoder.device))[0, -1]
        self.fed += ids
        return True

    def _sync(self, committed: list[int]) -> bool:
        """Make the draft hold the canonical encoding of the committed text, reusing the common prefix."""
        want = self.pair.draft.encode(self.pair.target.text(committed))
        common = 0
        while common < min(len(want), len(self.fed)) and want[common] == self.fed[common]:
            common += 1
        common = min(common, len(want) - 1)  # re-feed at least one token to get its logits
        if common < 0:  # no text yet: draft after the prompt
            self.decoder.rollback(self.prompt_len)
            self.fed, self.logits = [], self.prompt_logits
            return True
        self.decoder.rollback(self.prompt_len + common)
        self.fed = self.fed[:common]
        return self._feed(want[common:])

    def propose(self, committed: list[int], gamma: int, s: Sampling, gen: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """Up to ``gamma`` target ids continuing ``committed`` and, when sampling, their q [k, V_target]."""
        dev = self.decoder.device
        if not self._sync(committed):
            return torch.empty(0, dtype=torch.long, device=dev), (None if s.greedy else self.logits.new_zeros(0, self.pair.target.size))
        return self._greedy(committed, gamma) if s.greedy else self._sampled(gamma, s, gen)

    def _sampled(self, gamma: int, s: Sampling, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        out, qs = [], []
        for i in range(gamma):
            q = self.pair.draft_probs(self.logits, s)
            t = int(sample(q, gen))
            out.append(t)
            qs.append(q)
            if t in self.pair.target.eos_ids or i == gamma - 1 or not self._feed([int(self.t2d[t])]):
                break
        return torch.tensor(out, device=self.decoder.device), torch.stack(qs)

    def _greedy(self, committed: list[int], gamma: int) -> tuple[Tensor, None]:
        """Draft up to 2γ own tokens, stopping once γ target tokens are fully determined."""
        behind = self.pair.target.text(committed[-LOOK_BEHIND:])
        drafted, proposal = [], []
        for _ in range(2 * gamma):
            x = int(self.logits.argmax())
            eos = x in self.pair.draft.eos_ids
            if not eos:
                drafted.append(x)
            text = self.pair.draft.text(drafted)
            text = text[:len(text) - _incomplete_tail(text)]
            ids = self.pair.target.encode(text, behind) if text else []
            proposal = ids + list(self.pair.target.eos_ids[:1]) if eos else ids[:-1]  # the last may still merge
            if eos or len(proposal) >= gamma or not self._feed([x]):
                break
        return torch.tensor(proposal[:gamma], dtype=torch.long, device=self.decoder.device), None


def _eos(decoder: Decoder, tokenizer) -> tuple[int, ...]:
    ids = decoder.config.eos_ids or [tokenizer.eos_token_id]
    return tuple(i for i in ids if i is not None)


def restricted(decoder: Decoder, n: int) -> Decoder:
    """``decoder`` with its logits cut to ids [0, n): its LM head keeps its first ``n`` rows (a view, no copy), its
    embeddings every row (its prompt may hold its own tokens); ``config.vocab_size`` is then ``n``, what it emits."""
    if not isinstance(decoder.lm_head, nn.Linear):
        raise ValueError("a draft restricted to the target's ids needs a float LM head; restrict it before quantizing")
    if decoder.lm_head.out_features > n:
        head = nn.Linear(decoder.config.hidden_size, n, bias=False, device="meta")
        head.weight = nn.Parameter(decoder.lm_head.weight[:n], requires_grad=False)
        decoder.lm_head = head
        decoder.config = replace(decoder.config, vocab_size=n)
    return decoder


def drafter(draft: Decoder, draft_tokenizer, target: Decoder, target_tokenizer) -> tuple[Decoder | MappedDraft, VocabPair]:
    """What the decode loop drafts with: the draft itself when both vocabularies are the same, the draft
    :func:`restricted` to the target's ids when its vocabulary extends the target's, else a MappedDraft.

    Tokenizers are Hugging Face fast tokenizers or :class:`~imuspec.templates.Tokenizer`; EOS comes from each model's
    config (else its tokenizer), the draft's EOS standing for the target's.
    """
    dt, tt = getattr(draft_tokenizer, "hf", draft_tokenizer), getattr(target_tokenizer, "hf", target_tokenizer)
    pair = VocabPair.build(Vocab(dt, _eos(draft, dt), draft.config.vocab_size),
                           Vocab(tt, _eos(target, tt), target.config.vocab_size))
    if pair.prefix:
        return restricted(draft, pair.target.size), pair
    return (draft if pair.same else MappedDraft(draft, pair)), pair
