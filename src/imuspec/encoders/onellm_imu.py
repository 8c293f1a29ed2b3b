"""OneLLM's IMU path (csuhan/OneLLM ``model/LLM/onellm.py``, ``encode_image(x, modal='imu')``).

A 2 s, 200 Hz, 6-channel window in raw units → Conv1d(6→D, k=10, no bias) = 391 tokens → class token + learned
positional embedding (392×D) → the frozen CLIP ViT-L/14 visual blocks (``ln_pre``, 24 pre-LN blocks with QuickGELU,
as open_clip 2.23 builds OpenAI weights; ``ln_post`` on every token) → ``clip_proj1`` → 30 learned resample tokens
prepended → a router (sigmoid, normalised) mixing 3 experts of 8 LLaMA-style blocks (RMSNorm, SwiGLU, no RoPE,
bidirectional) → the first 30 tokens → ``clip_proj2`` → between the IMU start and end tags: 32 LLM embeddings.

Parameter names are the checkpoint's without ``llma.`` and the ``.imu`` modality level (:func:`checkpoint_name`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import CheckpointError, load_into
from ..imu.preprocess import ONELLM_WINDOW as WINDOW
from ..model import RMSNorm


@dataclass(frozen=True)
class OneLLMIMUConfig:
    width: int = 1024  # CLIP ViT-L/14
    clip_layers: int = 24
    clip_heads: int = 16
    clip_eps: float = 1e-5
    kernel: int = 10
    window: int = WINDOW
    n_resample: int = 30
    n_experts: int = 3
    expert_layers: int = 8
    expert_heads: int = 16
    multiple_of: int = 256  # LLaMA's SwiGLU hidden size rounding (config/llama2/7B.json)
    norm_eps: float = 1e-5
    out_dim: int = 4096  # the LLM's hidden size

    @property
    def n_tokens(self) -> int:
        """Conv tokens + class token (392 for the real sizes)."""
        return self.window - self.kernel + 1 + 1

    @property
    def expert_ffn(self) -> int:
        """OneLLM's FeedForward(hidden_dim=4·width) after its 2/3 and multiple_of rounding (2816 for width 1024)."""
        h = int(2 * 4 * self.width / 3)
        return self.multiple_of * ((h + self.multiple_of - 1) // self.multiple_of)


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class CLIPBlock(nn.Module):
    """open_clip's ResidualAttentionBlock (names ln_1, attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc/c_proj)."""

    def __init__(self, c: OneLLMIMUConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.width, eps=c.clip_eps)
        self.attn = nn.MultiheadAttention(c.width, c.clip_heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(c.width, eps=c.clip_eps)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(c.width, 4 * c.width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * c.width, c.width))

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class ExpertAttention(nn.Module):
    def __init__(self, c: OneLLMIMUConfig):
        super().__init__()
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(c.width, c.width, bias=False) for _ in range(4))
        self.n_heads = c.expert_heads

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = (w(x).view(b, t, self.n_heads, -1).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        return self.wo(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))


class ExpertFeedForward(nn.Module):
    def __init__(self, c: OneLLMIMUConfig):
        super().__init__()
        self.w1 = nn.Linear(c.width, c.expert_ffn, bias=False)
        self.w2 = nn.Linear(c.expert_ffn, c.width, bias=False)
        self.w3 = nn.Linear(c.width, c.expert_ffn, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ExpertBlock(nn.Module):
    """OneLLM's LLaMA TransformerBlock as used in ``resample_layers``: no RoPE, no mask (every token sees all)."""

    def __init__(self, c: OneLLMIMUConfig):
        super().__init__()
        self.attention = ExpertAttention(c)
        self.feed_forward = ExpertFeedForward(c)
        self.attention_norm = RMSNorm(c.width, c.norm_eps)
        self.ffn_norm = RMSNorm(c.width, c.norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))


class Router(nn.Module):
    def __init__(self, c: OneLLMIMUConfig):
        super().__init__()
        self.fc1 = nn.Linear(c.width, 4 * c.width)
        self.fc2 = nn.Linear(4 * c.width, c.n_experts)

    def forward(self, x: Tensor) -> Tensor:
        w = self.fc2(F.gelu(self.fc1(x))).sigmoid()
        return w / w.sum(-1, keepdim=True)


class CLIPVisual(nn.Module):
    """The parts of open_clip's VisionTransformer that OneLLM runs for every modality."""

    def __init__(self, c: OneLLMIMUConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(c.width))
        self.ln_pre = nn.LayerNorm(c.width, eps=c.clip_eps)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(CLIPBlock(c) for _ in range(c.clip_layers))
        self.ln_post = nn.LayerNorm(c.width, eps=c.clip_eps)


class OneLLMIMUEncoder(nn.Module):
    """(B, 6, window) raw IMU → (B, n_resample + 2, out_dim): start tag, IMU tokens, end tag.

    Submodules mirror the checkpoint (``clip.visual.*``, ``resample_layers.E.N.*``, ``routers``, ...), so
    :func:`checkpoint_name` is the whole key map.
    """

    def __init__(self, c: OneLLMIMUConfig):
        super().__init__()
        self.config = c
        self.conv1 = nn.Conv1d(6, c.width, kernel_size=c.kernel, bias=False)
        self.positional_embedding = nn.Parameter(torch.zeros(c.n_tokens, c.width))
        self.clip = nn.Module()
        self.clip.visual = CLIPVisual(c)
        self.clip_proj1 = nn.Sequential(nn.Linear(c.width, c.width), nn.LayerNorm(c.width))
        self.resample_tokens = nn.Parameter(torch.zeros(1, c.n_resample, c.width))
        self.routers = Router(c)
        self.resample_layers = nn.ModuleList(
            nn.ModuleList(ExpertBlock(c) for _ in range(c.expert_layers)) for _ in range(c.n_experts)
        )
        self.clip_proj2 = nn.Sequential(nn.Linear(c.width, c.out_dim), nn.LayerNorm(c.out_dim))
        self.start_tag = nn.Parameter(torch.zeros(1, 1, c.out_dim))
        self.end_tag = nn.Parameter(torch.zeros(1, 1, c.out_dim))

    def forward(self, imu: Tensor) -> Tensor:
        return self.project(self.resampled(imu))

    def resampled(self, imu: Tensor) -> Tensor:
        """(B, 6, window) → the router's mix of the experts' first n_resample tokens (B, n_resample, width): the
        part of the path whose sizes are its own (the rest, :meth:`project`, has the LLM's width)."""
        c, visual = self.config, self.clip.visual
        if imu.ndim != 3 or imu.shape[1:] != (6, c.window):
            raise ValueError(f"OneLLM IMU input: expected shape (B, 6, {c.window}), got {tuple(imu.shape)}")
        if not torch.isfinite(imu).all():
            raise ValueError("OneLLM IMU input contains NaN or inf")
        b = imu.shape[0]
        x = self.conv1(imu.to(self.conv1.weight.dtype)).transpose(1, 2)  # (B, 391, D)
        x = torch.cat([visual.class_embedding.expand(b, 1, -1), x], 1) + self.positional_embedding
        x = visual.ln_pre(x)
        for block in visual.transformer.resblocks:
            x = block(x)
        x = self.clip_proj1(visual.ln_post(x))
        x = torch.cat([self.resample_tokens.expand(b, -1, -1), x], 1)
        weights = self.routers(x)[:, : c.n_resample]  # (B, 30, n_experts)
        out = 0
        for e, expert in enumerate(self.resample_layers):
            h = x
            for block in expert:
                h = block(h)
            out = out + h[:, : c.n_resample] * weights[..., e, None]
        return out

    def project(self, x: Tensor) -> Tensor:
        """(B, n_resample, width) → (B, n_resample + 2, out_dim): ``clip_proj2`` between the start and end tags."""
        b = x.shape[0]
        return torch.cat([self.start_tag.expand(b, -1, -1), self.clip_proj2(x), self.end_tag.expand(b, -1, -1)], 1)

    def fresh_llm_width(self, out_dim: int) -> OneLLMIMUEncoder:
        """This path for an LLM of width ``out_dim``: :data:`LLM_WIDTH` made anew as OneLLM initialises them
        (``nn.Linear``'s default, LayerNorm 1/0, tags uniform in [0, 1)); the rest kept. In place; returns self."""
        self.config = replace(self.config, out_dim=out_dim)
        self.clip_proj2 = nn.Sequential(nn.Linear(self.config.width, out_dim), nn.LayerNorm(out_dim))
        self.start_tag = nn.Parameter(torch.rand(1, 1, out_dim))
        self.end_tag = nn.Parameter(torch.rand(1, 1, out_dim))
        return self


# the parts whose size is the LLM's: what a draft on another LLM trains (the rest stays frozen)
LLM_WIDTH = ("clip_proj2", "start_tag", "end_tag")

# top-level names that OneLLM keeps per modality (``llma.<name>.imu``); the others are shared by all modalities
_PER_MODALITY = {"conv1", "positional_embedding", "clip_proj1", "resample_tokens", "routers", "clip_proj2", "start_tag",
                 "end_tag"}


def checkpoint_name(name: str) -> str:
    """The ``consolidated.*.pth`` key of one of this module's parameters: ``routers.fc1.weight`` →
    ``llma.routers.imu.fc1.weight``, ``clip.visual.ln_pre.bias`` → ``llma.clip.visual.ln_pre.bias``."""
    head, dot, rest = name.partition(".")
    return "llma." + head + (".imu" if head in _PER_MODALITY else "") + dot + rest


def load_imu_encoder(
    sd: dict[str, Tensor], c: OneLLMIMUConfig, source: str, dtype: torch.dtype = torch.float32
) -> OneLLMIMUEncoder:
    """The IMU path of a OneLLM state dict (``llma.*`` keys; other modalities' keys are ignored)."""
    with torch.device("meta"):
        enc = OneLLMIMUEncoder(c)
    enc = enc.to_empty(device="cpu")
    names = {k: checkpoint_name(k) for k in enc.state_dict()}
    missing = [v for v in names.values() if v not in sd]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{source}: missing key {missing[0]!r} of OneLLM's IMU path{more}")
    load_into(enc, {k: sd[v] for k, v in names.items()}, source)
    return enc.to(dtype).eval()
