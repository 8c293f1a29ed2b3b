"""A compact LLaMA-family decoder with a static, preallocated KV cache.

Module and parameter names follow Hugging Face's ``LlamaForCausalLM`` so that checkpoints load by name, without a
key map. The cache is written at explicit slots and read through a mask, so a forward of T tokens after L cached ones
attends to [0, L+T), rollback is setting the length back, and a token tree can be verified by passing its positions
and its own T×T mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels


@dataclass
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "linear"|"llama3", "factor": ..., ...}
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    extra: dict = field(default_factory=dict, repr=False)  # keys of config.json we do not use

    def __post_init__(self):
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            if kind not in ("default", "linear", "llama3"):
                raise ValueError(f"rope_scaling type {kind!r} is not supported (known: default, linear, llama3)")

    @classmethod
    def from_hf(cls, d: dict, source: str = "config.json") -> LlamaConfig:
        """Read a Hugging Face ``config.json`` dict, old (rope_theta/rope_scaling) or new (rope_parameters) style.

        The shape fields are required (no LLaMA-7B defaults filled in silently); ``source`` names the file in errors.
        """
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise ValueError(f"{source}: field {missing[0]!r} missing (required: {', '.join(REQUIRED)})")
        d = dict(d)
        rope = d.pop("rope_parameters", None)
        if rope:
            rope = dict(rope)
            d["rope_theta"] = rope.pop("rope_theta", d.get("rope_theta", 10000.0))
            if rope.get("rope_type", rope.get("type", "default")) != "default":
                d["rope_scaling"] = rope
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act={d['hidden_act']!r} is not supported (LLaMA uses 'silu')")
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        return cls(**known, extra={k: v for k, v in d.items() if k not in names})

    def to_hf(self) -> dict:
        """A transformers ``config.json`` dict (RoPE in ``rope_parameters``, transformers 5's key)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "rope_theta", "rope_scaling")}
        rope = {"rope_type": "default", **(self.rope_scaling or {}), "rope_theta": self.rope_theta}
        return {**self.extra, **d, "rope_parameters": rope, "model_type": "llama", "hidden_act": "silu"}

    @property
    def eos_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else [e] if isinstance(e, int) else list(e)


REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def rope_inv_freq(cfg: LlamaConfig) -> Tensor:
    """Inverse RoPE frequencies with HF's default, ``linear`` and ``llama3`` scaling rules."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    s = cfg.rope_scaling or {}
    kind = s.get("rope_type", s.get("type", "default"))
    if kind == "linear":
        return inv_freq / s["factor"]
    if kind == "llama3":
        factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old_len = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / lo, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def few_query_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Attention of a few queries q [B, H, T, D] over the whole cache k, v [B, H_kv, S, D] as two batched GEMVs and
    a float32 softmax, the query heads of each KV group stacked so the cache is read once.

    Why not SDPA: for decode and verify steps cuDNN's flash kernel tiles 16 or 64 queries, so one query over 900 cached
    tokens took 0.35 ms and nine 0.82 ms on an H200 (Vicuna-7B), where reading the KV bytes needs about 0.1 ms.
    """
    b, h, t, d = q.shape
    kv, s = k.shape[1], k.shape[2]
    scores = (q.reshape(b, kv, h // kv * t, d) @ k.transpose(-1, -2)).float() * d**-0.5
    scores = scores.view(b, kv, h // kv, t, s).masked_fill(~mask[:, :, None], float("-inf"))  # one mask for the group
    return (scores.softmax(-1).to(v.dtype).view(b, kv, -1, s) @ v).reshape(b, h, t, d)


class KVCache(nn.Module):
    """Preallocated keys and values [B, H_kv, S, D]; ``length[b]`` is how many slots of row b are valid."""

    def __init__(self, batch: int, n_kv: int, max_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, n_kv, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def write(self, slots: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v [B, H, T, D] at ``slots`` [B, T] and return the whole cache."""
        rows = torch.arange(k.shape[0], device=k.device)[:, None]
        self.k[rows, :, slots] = k.transpose(1, 2).to(self.k.dtype)
        self.v[rows, :, slots] = v.transpose(1, 2).to(self.v.dtype)
        return self.k, self.v

    def move(self, src: Tensor, dst: Tensor) -> None:
        """Copy slots ``src`` [B, n] to ``dst`` [B, n] (the right side is read before anything is written)."""
        rows = torch.arange(src.shape[0], device=src.device)[:, None]
        self.k[rows, :, dst] = self.k[rows, :, src]
        self.v[rows, :, dst] = self.v[rows, :, src]


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        h, d, kv = cfg.num_attention_heads, cfg.head_dim, cfg.num_key_value_heads
        self.q_proj = nn.Linear(cfg.hidden_size, h * d, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, kv * d, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, kv * d, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(h * d, cfg.hidden_size, bias=cfg.attention_bias)
        self.n_head, self.n_kv, self.head_dim = h, kv, d
        self.kv_cache: KVCache | None = None
        self.few_queries = 16  # up to this many new tokens (decode, verify) use few_query_attention
        self.kernel_sms = 0  # > 0: decode_attention (Triton split-K) for few-query steps, set by compile_steps

    def fuse(self) -> None:
        """Replace q, k, v by one projection: one GEMV instead of three per decode step."""
        if hasattr(self, "qkv_proj"):
            return
        qkv = nn.Linear(self.q_proj.in_features, (self.n_head + 2 * self.n_kv) * self.head_dim,
                        bias=self.q_proj.bias is not None, device=self.q_proj.weight.device, dtype=self.q_proj.weight.dtype)
        with torch.no_grad():
            qkv.weight.copy_(torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]))
            if qkv.bias is not None:
                qkv.bias.copy_(torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]))
        self.qkv_proj = qkv
        del self.q_proj, self.k_proj, self.v_proj

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, slots: Tensor, mask: Tensor) -> Tensor:
        b, t, _ = x.shape
        if hasattr(self, "qkv_proj"):
            q, k, v = self.qkv_proj(x).split([self.n_head * self.head_dim, self.n_kv * self.head_dim,
                                              self.n_kv * self.head_dim], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = self.kv_cache.write(slots, k, v)
        if self.kernel_sms and t * self.n_head // self.n_kv <= kernels.MAX_ROWS:
            y = kernels.decode_attention(q, k, v, mask[:, 0], slots[:, -1] + 1, self.kernel_sms)
        elif t <= self.few_queries:
            y = few_query_attention(q, k, v, mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_kv != self.n_head)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def fuse(self) -> None:
        """Replace gate and up by one projection (one GEMV instead of two)."""
        if hasattr(self, "gate_up_proj"):
            return
        gu = nn.Linear(self.gate_proj.in_features, 2 * self.gate_proj.out_features, bias=self.gate_proj.bias is not None,
                       device=self.gate_proj.weight.device, dtype=self.gate_proj.weight.dtype)
        with torch.no_grad():
            gu.weight.copy_(torch.cat([self.gate_proj.weight, self.up_proj.weight]))
            if gu.bias is not None:
                gu.bias.copy_(torch.cat([self.gate_proj.bias, self.up_proj.bias]))
        self.gate_up_proj = gu
        del self.gate_proj, self.up_proj

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "gate_up_proj"):
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, slots: Tensor, mask: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, slots, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


@torch.compiler.nested_compile_region
def layer_region(layer: DecoderLayer, x: Tensor, cos: Tensor, sin: Tensor, slots: Tensor, mask: Tensor) -> Tensor:
    """One layer, marked for torch.compile as a region it compiles once and stamps out for every layer: a 7B step
    compiled in 61–77 s on an H200 as one 32-layer graph (``Decoder.compile_steps(regional=False)``)."""
    return layer(x, cos, sin, slots, mask)


class LlamaBody(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Decoder(nn.Module):
    """LLaMA decoder + LM head; parameters named as in ``LlamaForCausalLM`` (``model.*``, ``lm_head.weight``).

    Call :meth:`setup_cache` once, then :meth:`forward` with token ids [B, T] or embeddings [B, T, H]. Each forward
    appends at ``length`` and advances it; :meth:`rollback` moves it back.
    """

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.model = LlamaBody(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        self.register_buffer("length", torch.zeros(1, dtype=torch.long), persistent=False)
        self.max_len = 0
        self._compiled: dict | None = None  # step length -> compiled forward, after compile_steps()
        self.regional = False  # compile one layer and reuse it (set by compile_steps)

    def _apply(self, fn, recurse=True):
        """``.to(dtype)`` must not round the RoPE frequencies: keep them float32 (as transformers computes them)."""
        super()._apply(fn, recurse)
        self.inv_freq = rope_inv_freq(self.config).to(self.inv_freq.device)
        return self

    @property
    def device(self) -> torch.device:
        return self.model.norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype (the norms keep it when projections are quantized, :mod:`imuspec.quant`)."""
        return self.model.norm.weight.dtype

    def setup_cache(self, max_len: int, batch: int = 1, align: int = 8) -> None:
        """Allocate the KV cache for ``batch`` rows of at least ``max_len`` tokens, rounded up to a multiple of
        ``align`` slots; lengths start at 0. Attention runs over every slot, and with 16-byte rows of scores cuBLAS
        takes its aligned kernels: a 9-token verify on an H200 took 6.59 ms over 963 slots, 4.79 ms over 968."""
        c = self.config
        max_len = -(-max_len // align) * align
        for layer in self.model.layers:
            layer.self_attn.kv_cache = KVCache(batch, c.num_key_value_heads, max_len, c.head_dim, self.dtype, self.device)
        self.length = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.max_len = max_len

    def rollback(self, length: int | Tensor) -> None:
        """Forget every cached slot from ``length`` on (per row if a tensor). O(1): nothing is copied."""
        self.length.fill_(length) if isinstance(length, int) else self.length.copy_(length)

    @property
    def batch(self) -> int:
        """Rows the cache holds."""
        return self.length.shape[0]

    def keep(self, src: Tensor, start: int | Tensor) -> None:
        """Move the K/V of slots ``src`` [B, n] to [start, start + n) (``start`` per row if a tensor [B]) and set
        the length to start + n.

        After a tree verify, this makes the accepted path contiguous, so the cache equals a prefill of the kept
        sequence; O(n) copies, never the whole cache. Rows that keep fewer pass any valid slots beyond their count
        and roll back after: those land beyond their length.
        """
        start = torch.as_tensor(start, device=src.device)
        dst = start.view(-1, 1) + torch.arange(src.shape[1], device=src.device).expand_as(src)
        for layer in self.model.layers:
            layer.self_attn.kv_cache.move(src, dst)
        self.rollback(start + src.shape[1])

    def keep_rows(self, rows: Tensor) -> None:
        """Keep only cache rows ``rows`` [B'] (in that order): finished rows of a batch stop costing work."""
        for layer in self.model.layers:
            c = layer.self_attn.kv_cache
            c.k, c.v = c.k[rows], c.v[rows]
        self.length = self.length[rows]

    def compile_steps(self, fuse: bool = True, kernel: bool = False, regional: bool = True) -> None:
        """Make :meth:`step` fast on a GPU: fused projections, and torch.compile's reduce-overhead mode, which fuses
        the small kernels and replays each step as a CUDA graph over the static cache.

        Each step length (1 for decode, γ+1 for verify, 1 or 2 for the draft) is compiled once with static shapes,
        on first use: a dynamic-length graph made the verify step cost 1.22 decode steps on an H200, a static one 1.08.
        Prefill stays eager (it is compute-bound and happens once). ``kernel``: few-query attention through the
        Triton split-K kernel (:mod:`imuspec.kernels`), which reads only the valid cache slots (CUDA only).
        ``regional``: each step shape compiles one layer (:func:`layer_region`) instead of all of them, cutting its
        compile time by about the layer count; the whole-model graph can fuse across layer boundaries.
        """
        if kernel and not kernels.available(self.device):
            raise ValueError(f"kernel=True needs Triton and a CUDA device (model on {self.device})")
        sms = kernels.multiprocessors(self.device) if kernel else 0
        for layer in self.model.layers:
            layer.self_attn.kernel_sms = sms
        self.regional = regional
        if fuse:
            for layer in self.model.layers:
                layer.self_attn.fuse()
                layer.mlp.fuse()
        # torch.compile keys its cache on the code of forward, shared by every Decoder and step length.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 256)
        self._compiled = {}

    def warm_steps(self, lengths: list[int]) -> None:
        """Compile and capture the step of each length now, so that no compilation lands inside a timed decode
        (a two-token draft step is otherwise first needed when a whole draft block is accepted)."""
        for t in lengths:
            for _ in range(3):  # CUDA graph trees warm up, record, then replay
                self.rollback(0)
                self.step(torch.zeros(1, t, dtype=torch.long, device=self.device))
        self.rollback(0)

    def step(self, ids: Tensor, positions: Tensor | None = None, tree_mask: Tensor | None = None) -> Tensor:
        """A decode, draft or verify forward of ids [B, T] (a tree's with its positions and mask, as :meth:`forward`);
        compiled after :meth:`compile_steps`, one graph per shape.

        The logits it returns are only valid until the next step (they live in the CUDA graph's memory).
        """
        if self._compiled is None:
            return self(ids=ids, positions=positions, tree_mask=tree_mask)
        key = (ids.shape, None if tree_mask is None else tree_mask.shape)
        if key not in self._compiled:
            self._compiled[key] = torch.compile(self.forward, mode="reduce-overhead", fullgraph=True, dynamic=False)
        torch.compiler.cudagraph_mark_step_begin()
        return self._compiled[key](ids=ids, positions=positions, tree_mask=tree_mask)

    @property
    def compiled(self) -> bool:
        """Whether :meth:`step` runs compiled graphs (after :meth:`compile_steps`): each new batch size then costs a
        compilation, so a batch keeps its finished rows, parked (:func:`imuspec.speculative.generate_batch`)."""
        return self._compiled is not None

    @property
    def compiled_steps(self) -> int:
        """How many step shapes have been compiled (a step that adds one spent its time compiling)."""
        return len(self._compiled or ())

    def embed(self, ids: Tensor) -> Tensor:
        return self.model.embed_tokens(ids)

    def forward(
        self,
        ids: Tensor | None = None,
        embeds: Tensor | None = None,
        positions: Tensor | None = None,
        tree_mask: Tensor | None = None,
    ) -> Tensor:
        """Run T new tokens at cache slots [L, L+T) and return logits [B, T, V] (float32).

        ``positions`` [B, T] are the RoPE positions (default: the slots); ``tree_mask`` [B, T, W], W >= T, says which
        of the last W slots (the new block and W − T cached ones before it, e.g. a draft tree's earlier levels) each
        new token sees (default: causal). Every new token sees all cached slots before those W.
        """
        x = self.embed(ids) if embeds is None else embeds.to(self.dtype)
        b, t, _ = x.shape
        if self.max_len == 0:
            raise RuntimeError("call setup_cache(max_len) before forward")
        start = self.length[:, None]  # [B, 1]
        slots = start + torch.arange(t, device=x.device)
        if positions is None:
            positions = slots
        key = torch.arange(self.max_len, device=x.device)
        if tree_mask is None:
            mask = key <= slots[:, :, None]  # [B, T, S]: the cached prefix and the causal part of the new block
        else:
            w = tree_mask.shape[-1]
            rel = key - (start + t - w)  # [B, S], offset of each slot within the masked window
            inside = (rel >= 0) & (rel < w)
            mask = (rel < 0)[:, None, :] | (
                inside[:, None, :] & tree_mask.gather(-1, rel.clamp(0, w - 1)[:, None, :].expand(b, t, -1))
            )
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype)[:, None], emb.sin().to(x.dtype)[:, None]
        mask = mask[:, None]
        for layer in self.model.layers:
            x = layer_region(layer, x, cos, sin, slots, mask) if self.regional else layer(x, cos, sin, slots, mask)
        self.length += t
        return self.lm_head(self.model.norm(x)).float()


def first_layers(decoder: Decoder, k: int) -> Decoder:
    """``decoder`` cut to its first ``k`` layers (embeddings, final norm and LM head kept): a draft from a model."""
    n = decoder.config.num_hidden_layers
    if not 1 <= k <= n:
        raise ValueError(f"K={k}, but the decoder has {n} layers; expected 1 <= K <= {n}")
    decoder.model.layers = decoder.model.layers[:k]
    decoder.config = replace(decoder.config, num_hidden_layers=k)
    return decoder
