"""Networks of the ManiFlow image policy: image encoder and DiTX, as upstream builds them
(geyan21/ManiFlow_Policy `model/diffusion/ditx.py`, `ditx_block.py`, `vision_2d/timm_obs_encoder.py`;
element by element in docs/maniflow-fidelity.md).

    encoder  a timm CNN (ResNet-18 by default), global average pooled. Randomly initialised it
             uses GroupNorm (batch statistics and EMA do not mix); with local pretrained weights
             (ImageNet or R3M state dicts) it keeps their BatchNorm, statistics included
    DiTX     action tokens + learned positions; sinusoidal embeddings of t and dt, each through
             Linear-Mish-Linear, concatenated and projected; per block adaLN (shift, scale, gate)
             around self-attention (the only dropout), cross-attention to the conditioning tokens
             (q/k LayerNorm) and the MLP; final RMSNorm + MLP head, zero-initialised
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
    """timm CNN -> (B, features). `weights`: a local state dict (torchvision or timm ImageNet
    ResNet-18, or R3M's with `convnet.` keys); never downloaded. As upstream (`use_group_norm and
    not pretrained`): GroupNorm for a random initialisation, the weights' own BatchNorm otherwise,
    so pretrained statistics are kept."""
    model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
    if weights is None:
        log.info("image encoder %s: random initialisation (no local weights file given)", name)
        return replace_bn_with_gn(model)
    load_encoder_weights(model, Path(weights), in_chans)
    return model


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
    """(B,) flow times in [0, 1], unscaled -> (B, dim): frequencies 1 .. 1e-4 (upstream SinusoidalPosEmb)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) / (half - 1) * torch.arange(half, device=x.device, dtype=torch.float32))
    args = x.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps).to(x.dtype) * self.weight


class SelfAttention(nn.Module):
    """Multi-head self-attention with one (3D, D) input projection, like nn.MultiheadAttention
    (upstream), and dropout on the attention weights in training."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class CrossAttention(nn.Module):
    """Attention from the action tokens to the conditioning tokens, queries and keys LayerNorm-ed
    per head (upstream qk_norm); no dropout."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(dim // heads)
        self.k_norm = nn.LayerNorm(dim // heads)

    def forward(self, x, context):
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


def _modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


def _gelu_mlp(dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, out))


class DiTXBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.self_attn = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.cross_attn = CrossAttention(dim, heads)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = _gelu_mlp(dim, int(dim * mlp_ratio), dim)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 9 * dim))

    def forward(self, x, c, context):
        s1, sc1, g1, s2, sc2, g2, s3, sc3, g3 = self.ada(c).chunk(9, dim=-1)
        x = x + g1[:, None] * self.self_attn(_modulate(self.norm1(x), s1, sc1))
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
        self.t_mlp = nn.Sequential(nn.Linear(time_dim, 4 * time_dim), nn.Mish(), nn.Linear(4 * time_dim, dim))
        self.dt_mlp = nn.Sequential(nn.Linear(time_dim, 4 * time_dim), nn.Mish(), nn.Linear(4 * time_dim, dim))
        self.c_proj = nn.Linear(2 * dim, dim)
        self.cond_in = nn.Linear(cond_dim, dim)
        self.blocks = nn.ModuleList(DiTXBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = RMSNorm(dim)
        self.head = _gelu_mlp(dim, dim, action_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """Upstream's DiTX.initialize_weights: Xavier for every linear layer, N(0, 0.02) for the
        embeddings, zeros for the adaLN projections (each block starts as the identity) and the
        output layer (training starts from velocity 0)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for layer in (self.x_in, self.c_proj, self.cond_in, *self.t_mlp[::2], *self.dt_mlp[::2]):
            nn.init.normal_(layer.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.ada[1].weight)
            nn.init.zeros_(block.ada[1].bias)
        nn.init.zeros_(self.head[2].weight)
        nn.init.zeros_(self.head[2].bias)

    def forward(self, x, t, dt, cond):
        """x (B, H, A); t, dt (B,); cond (B, tokens, cond_dim)."""
        c = self.c_proj(torch.cat([self.t_mlp(sinusoidal(t, self.time_dim)),
                                   self.dt_mlp(sinusoidal(dt, self.time_dim))], dim=-1))
        h = self.x_in(x) + self.pos[:, :x.shape[1]]
        with torch.autocast(cond.device.type, enabled=False):  # raw joint angles: keep fp32 precision
            context = self.cond_in(cond.float())
        for block in self.blocks:
            h = block(h, c, context)
        return self.head(self.norm(h))
