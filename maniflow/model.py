"""Networks of the ManiFlow image policy (REFERENCE section 5): image encoder and DiTX.

    encoder  a timm CNN (ResNet-18 by default) with BatchNorm replaced by GroupNorm, global
             average pooled; optional local pretrained weights (ImageNet or R3M state dicts)
    DiTX     action tokens + learned positions; sinusoidal embeddings of t and dt, each through
             an MLP, concatenated and projected; per block adaLN (shift, scale, gate) around
             self-attention, cross-attention to the conditioning tokens (q/k norm) and the MLP;
             final RMSNorm + MLP head, zero-initialised so training starts from 0
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import timm
import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger("maniflow.model")


# --- image encoder --------------------------------------------------------------------------

def replace_bn_with_gn(module: nn.Module, channels_per_group: int = 16) -> nn.Module:
    """BatchNorm -> GroupNorm everywhere (as upstream): batch statistics and EMA do not mix."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            c = child.num_features
            setattr(module, name, nn.GroupNorm(max(1, c // channels_per_group), c))
        else:
            replace_bn_with_gn(child, channels_per_group)
    return module


def make_encoder(name: str = "resnet18", in_chans: int = 3, weights: Path | None = None) -> nn.Module:
    """timm CNN -> (B, features) with GroupNorm. `weights`: a local state dict (torchvision or
    timm ImageNet ResNet-18, or R3M's with `convnet.` keys); never downloaded."""
    model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
    if weights is None:
        log.info("image encoder %s: random initialisation (no local weights file given)", name)
    else:
        load_encoder_weights(model, Path(weights), in_chans)
    return replace_bn_with_gn(model)


def load_encoder_weights(model: nn.Module, path: Path, in_chans: int) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k.removeprefix("module.").removeprefix("convnet."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    conv = state.get("conv1.weight")
    if conv is not None and conv.shape[1] != in_chans:  # e.g. 6-channel concat input: tile RGB
        reps = math.ceil(in_chans / conv.shape[1])
        state["conv1.weight"] = conv.repeat(1, reps, 1, 1)[:, :in_chans] * (conv.shape[1] / in_chans)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ValueError(f"{path}: does not fit the encoder: {str(e).splitlines()[-1].strip()}") from None
    if missing:
        raise ValueError(f"{path}: encoder weights lack {len(missing)} tensors, e.g. {missing[:3]}")
    log.info("image encoder: loaded %s (%d tensors ignored)", path, len(unexpected))


# --- DiTX -------------------------------------------------------------------------------------

def sinusoidal(x: torch.Tensor, dim: int = 128) -> torch.Tensor:
    """(B,) values in [0, 1] -> (B, dim) sinusoidal features."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = 1000.0 * x.float()[:, None] * freqs[None]  # scaled: t lives in [0, 1]
    return torch.cat([args.sin(), args.cos()], dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps).to(x.dtype) * self.weight


class Attention(nn.Module):
    """Multi-head attention; `qk_norm` normalises queries and keys per head (cross-attention)."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.q_norm = RMSNorm(dim // heads) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(dim // heads) if qk_norm else nn.Identity()
        self.dropout = dropout

    def forward(self, x, context):
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


def _modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTXBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.self_attn = Attention(dim, heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.cross_attn = Attention(dim, heads, qk_norm=True, dropout=dropout)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 9 * dim))
        nn.init.zeros_(self.ada[1].weight)  # adaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x, c, context):
        s1, sc1, g1, s2, sc2, g2, s3, sc3, g3 = self.ada(c).chunk(9, dim=-1)
        h = _modulate(self.norm1(x), s1, sc1)
        x = x + g1[:, None] * self.self_attn(h, h)
        x = x + g2[:, None] * self.cross_attn(_modulate(self.norm2(x), s2, sc2), context)
        return x + g3[:, None] * self.mlp(_modulate(self.norm3(x), s3, sc3))


class DiTX(nn.Module):
    """f(x_t, t, dt, cond) -> velocity, for action chunks x_t (B, horizon, action_dim)."""

    def __init__(self, action_dim: int, horizon: int, cond_dim: int, dim: int = 512, depth: int = 8,
                 heads: int = 8, mlp_ratio: float = 4.0, dropout: float = 0.0, time_dim: int = 128):
        super().__init__()
        self.time_dim = time_dim
        self.x_in = nn.Linear(action_dim, dim)
        self.pos = nn.Parameter(torch.zeros(1, horizon, dim))
        nn.init.normal_(self.pos, std=0.02)
        self.t_mlp = nn.Sequential(nn.Linear(time_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.dt_mlp = nn.Sequential(nn.Linear(time_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.c_proj = nn.Linear(2 * dim, dim)
        self.cond_in = nn.Linear(cond_dim, dim)
        self.blocks = nn.ModuleList(DiTXBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = RMSNorm(dim)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, action_dim))
        nn.init.zeros_(self.head[2].weight)
        nn.init.zeros_(self.head[2].bias)

    def forward(self, x, t, dt, cond):
        """x (B, H, A); t, dt (B,); cond (B, tokens, cond_dim)."""
        c = self.c_proj(torch.cat([self.t_mlp(sinusoidal(t, self.time_dim)),
                                   self.dt_mlp(sinusoidal(dt, self.time_dim))], dim=-1))
        h = self.x_in(x) + self.pos[:, :x.shape[1]]
        context = self.cond_in(cond)
        for block in self.blocks:
            h = block(h, c, context)
        return self.head(self.norm(h))
