"""An independent, functional LIMU-BERT forward written from the paper's equations, to check the module against."""

import math

import torch


def _ln(x, sd, name):
    u = x.mean(-1, keepdim=True)
    s = ((x - u) ** 2).mean(-1, keepdim=True)
    return sd[name + ".gamma"] * (x - u) / torch.sqrt(s + 1e-12) + sd[name + ".beta"]


def _lin(x, sd, name):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def limu_hidden(sd: dict, x: torch.Tensor, n_layers: int = 4, n_heads: int = 4, prefix: str = "transformer.") -> torch.Tensor:
    """Hidden states [B, S, H] of x [B, S, F] from a state dict with LIMU-BERT key names."""
    sd = {k[len(prefix):]: v.float() for k, v in sd.items() if k.startswith(prefix)}
    b, s, _ = x.shape
    e = _ln(_lin(x, sd, "embed.lin"), sd, "embed.norm")
    h = _ln(e + sd["embed.pos_embed.weight"][:s], sd, "embed.norm")
    for _ in range(n_layers):
        q, k, v = (_lin(h, sd, f"attn.proj_{n}").view(b, s, n_heads, -1).permute(0, 2, 1, 3) for n in "qkv")
        w = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(q.shape[-1]), -1)
        a = (w @ v).permute(0, 2, 1, 3).reshape(b, s, -1)
        h = _ln(a + _lin(a, sd, "proj"), sd, "norm1")
        ff = _lin(h, sd, "pwff.fc1")
        ff = _lin(0.5 * ff * (1 + torch.erf(ff / math.sqrt(2))), sd, "pwff.fc2")
        h = _ln(h + ff, sd, "norm2")
    return h


def limu_reconstruct(sd: dict, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The pretraining head at positions pos [B, M]."""
    h = limu_hidden(sd, x)
    h = torch.stack([h[i, pos[i]] for i in range(len(h))])
    h = _lin(h, sd, "linear")
    h = _ln(0.5 * h * (1 + torch.erf(h / math.sqrt(2))), sd, "norm")
    return _lin(h, sd, "decoder")
