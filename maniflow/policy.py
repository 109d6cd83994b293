"""ManiFlow image policy with consistency flow matching (REFERENCE section 5).

    obs -> per image input a CNN (512 features per obs step; the initial image once per sample)
           + the raw agent_pos -> ONE conditioning token
    x_t = (1 - t) x0 + t x1, x0 ~ N(0, I), x1 the normalised action chunk
    flow loss         (first 75% of the batch): t = 0.999 Beta(1, 1.5), target x1 - x0, dt = 0
    consistency loss  (the rest): t in {0, .1, ..., .9}, d ~ U[0, 1), t2 = min(t + d, 1);
                      EMA teacher vbar = f_ema(x_t2, t2, d); x1_hat = x_t2 + (1 - t2) vbar;
                      target (x1_hat - x_t) / (1 - t)
    sampling          Euler from noise, N steps: x <- x + f(x, k/N, 1/N) / N

Fixed against upstream (see REFERENCE): augmentation only in training, drawn independently per
sample; the EMA teacher always in eval mode; all n_action_steps actions returned (the horizon
is extended to n_obs_steps - 1 + n_action_steps when shorter); only observation-step images
are ever moved or encoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from maniflow.model import DiTX, make_encoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PolicyConfig:
    channels: int = 3  # per image input: 3 (RGB or overlay) or 6 (concat)
    initial: bool = False  # the episode's first frame as a second image input
    image_size: int = 224
    encoder: str = "resnet18"
    share_encoder: bool = False
    encoder_weights: str | None = None
    action_dim: int = 14  # the joint vector's width; training sets it from the data
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 16
    dim: int = 512
    depth: int = 8
    heads: int = 8
    dropout: float = 0.1
    inference_steps: int = 10
    flow_share: float = 0.75
    crop: float = 0.95
    rotate_deg: float = 5.0
    brightness: float = 0.3
    contrast: float = 0.4
    saturation: float = 0.5

    @property
    def model_horizon(self) -> int:
        """Long enough that every one of the n_action_steps actions exists (upstream: 15 of 16)."""
        return max(self.horizon, self.n_obs_steps - 1 + self.n_action_steps)


class Normalizer(nn.Module):
    """Per-dimension min/max to [-1, 1] ("limits"); constant dimensions are only centred."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("offset", torch.zeros(dim))

    def fit(self, x: torch.Tensor) -> "Normalizer":
        lo, hi = x.min(dim=0).values, x.max(dim=0).values
        span = hi - lo
        constant = span < 1e-6
        self.scale.copy_(torch.where(constant, torch.ones_like(span), 2.0 / span.clamp_min(1e-6)))
        self.offset.copy_(torch.where(constant, -lo, -1.0 - lo * self.scale))
        return self

    def forward(self, x):
        return x * self.scale + self.offset

    def unnormalize(self, y):
        return (y - self.offset) / self.scale


class ImageAugment:
    """Per-sample random crop (crop share) + rotation, then colour jitter, on the device; at
    evaluation the centred crop only. Input uint8 (B, T, C, H, W); output float normalised."""

    def __init__(self, cfg: PolicyConfig):
        self.cfg = cfg

    def __call__(self, images: torch.Tensor, train: bool, generator: torch.Generator | None) -> torch.Tensor:
        cfg = self.cfg
        b, t, c, h, w = images.shape
        x = images.reshape(b * t, c, h, w).float().div_(255.0)
        if (h, w) != (cfg.image_size, cfg.image_size):
            x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        dev = x.device

        def rand(*shape):  # one draw per sample, shared by its time steps
            return torch.rand(b, *shape, generator=generator, device=dev).repeat_interleave(t, dim=0)

        s = cfg.crop
        if train:
            angle = (rand() * 2 - 1) * math.radians(cfg.rotate_deg)
            shift = (rand(2) * 2 - 1) * (1 - s)
        else:
            angle = torch.zeros(b * t, device=dev)
            shift = torch.zeros(b * t, 2, device=dev)
        cos, sin = angle.cos() * s, angle.sin() * s
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if train:
            rgb = x[:, :3]
            rgb = rgb * (1 + (rand(1, 1, 1) * 2 - 1) * cfg.brightness)
            mean = rgb.mean(dim=(1, 2, 3), keepdim=True)
            rgb = (rgb - mean) * (1 + (rand(1, 1, 1) * 2 - 1) * cfg.contrast) + mean
            gray = (0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3])
            rgb = (rgb - gray) * (1 + (rand(1, 1, 1) * 2 - 1) * cfg.saturation) + gray
            x = torch.cat([rgb.clamp(0, 1), x[:, 3:]], dim=1)
        mean = torch.tensor(IMAGENET_MEAN * (c // 3), device=dev).view(1, c, 1, 1)
        std = torch.tensor(IMAGENET_STD * (c // 3), device=dev).view(1, c, 1, 1)
        return ((x - mean) / std).reshape(b, t, c, cfg.image_size, cfg.image_size)


class ManiFlowPolicy(nn.Module):
    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        self.encoders = nn.ModuleDict({"current": make_encoder(cfg.encoder, cfg.channels, cfg.encoder_weights)})
        if cfg.initial and not cfg.share_encoder:
            self.encoders["initial"] = make_encoder(cfg.encoder, cfg.channels, cfg.encoder_weights)
        features = self.encoders["current"].num_features
        cond_dim = cfg.n_obs_steps * (features + cfg.action_dim) + (features if cfg.initial else 0)
        self.net = DiTX(cfg.action_dim, cfg.model_horizon, cond_dim, cfg.dim, cfg.depth, cfg.heads,
                        dropout=cfg.dropout)
        self.action_norm = Normalizer(cfg.action_dim)
        self.state_norm = Normalizer(cfg.action_dim)
        self.augment = ImageAugment(cfg)

    # --- observation -> conditioning ---------------------------------------------------------
    def encode_obs(self, obs: dict, train: bool = False, generator: torch.Generator | None = None):
        """obs: current (B, n_obs, C, H, W) uint8, agent_pos (B, n_obs, A), optionally initial
        (B, C, H, W) uint8 -> (B, 1, cond_dim): one conditioning token."""
        cur = obs["current"][:, :self.cfg.n_obs_steps]
        b, t = cur.shape[:2]
        images = self.augment(cur, train, generator)
        feats = self.encoders["current"](images.flatten(0, 1)).view(b, t, -1)
        parts = [feats, self.state_norm(obs["agent_pos"][:, :t])]
        cond = torch.cat(parts, dim=-1).flatten(1)
        if self.cfg.initial:
            first = self.augment(obs["initial"][:, None], train, generator)[:, 0]
            encoder = self.encoders["initial" if "initial" in self.encoders else "current"]
            cond = torch.cat([cond, encoder(first)], dim=-1)  # once per sample, not per step
        return cond[:, None]

    def velocity(self, x, t, dt, cond):
        return self.net(x, t, dt, cond)

    # --- training ------------------------------------------------------------------------------
    def compute_loss(self, batch: dict, teacher: "ManiFlowPolicy", generator: torch.Generator | None = None,
                     train: bool = True) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        x1 = self.action_norm(batch["action"])
        x1 = self._fit_horizon(x1)
        b, dev = x1.shape[0], x1.device
        cond = self.encode_obs(batch["obs"], train=train, generator=generator)
        x0 = torch.randn(x1.shape, generator=generator, device=dev)
        n_flow = max(1, min(b - 1, int(round(b * cfg.flow_share)))) if b > 1 else 1

        # Flow matching on the first share of the batch.
        t = 0.999 * _beta_icdf_1_15(torch.rand(n_flow, generator=generator, device=dev))
        xt = (1 - t)[:, None, None] * x0[:n_flow] + t[:, None, None] * x1[:n_flow]
        pred = self.velocity(xt, t, torch.zeros_like(t), cond[:n_flow])
        flow = F.mse_loss(pred, x1[:n_flow] - x0[:n_flow])

        # Consistency on the rest, against the EMA teacher.
        consistency = torch.zeros((), device=dev)
        if n_flow < b:
            k = b - n_flow
            x0c, x1c, cc = x0[n_flow:], x1[n_flow:], cond[n_flow:]
            t = torch.randint(0, 10, (k,), generator=generator, device=dev).float() / 10
            d = torch.rand(k, generator=generator, device=dev)
            t2 = (t + d).clamp(max=1.0)
            xt = (1 - t)[:, None, None] * x0c + t[:, None, None] * x1c
            xt2 = (1 - t2)[:, None, None] * x0c + t2[:, None, None] * x1c
            with torch.no_grad():
                tcond = teacher.encode_obs({key: v[n_flow:] for key, v in batch["obs"].items()},
                                           train=False) if teacher is not self else cc.detach()
                vbar = teacher.velocity(xt2, t2, d, tcond)
                x1_hat = xt2 + (1 - t2)[:, None, None] * vbar
                target = (x1_hat - xt) / (1 - t)[:, None, None]
            consistency = F.mse_loss(self.velocity(xt, t, d, cc), target)
        loss = flow + consistency
        return loss, {"loss": loss.detach(), "flow": flow.detach(), "consistency": consistency.detach()}

    def _fit_horizon(self, action: torch.Tensor) -> torch.Tensor:
        """Pad (repeating the last action) windows shorter than the model's horizon."""
        h = self.cfg.model_horizon
        if action.shape[1] >= h:
            return action[:, :h]
        return torch.cat([action, action[:, -1:].expand(-1, h - action.shape[1], -1)], dim=1)

    # --- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, obs: dict, steps: int | None = None, generator: torch.Generator | None = None):
        """Normalised-space Euler integration from noise -> action chunk (B, model_horizon, A)."""
        cfg = self.cfg
        steps = steps or cfg.inference_steps
        cond = self.encode_obs(obs, train=False)
        b = cond.shape[0]
        x = torch.randn((b, cfg.model_horizon, cfg.action_dim), generator=generator, device=cond.device)
        dt = torch.full((b,), 1.0 / steps, device=cond.device)
        for k in range(steps):
            t = torch.full((b,), k / steps, device=cond.device)
            x = x + self.velocity(x, t, dt, cond) / steps
        return self.action_norm.unnormalize(x)

    @torch.no_grad()
    def predict_action(self, obs: dict, steps: int | None = None, generator: torch.Generator | None = None):
        """All n_action_steps actions from the current step on: (B, n_action_steps, A)."""
        start = self.cfg.n_obs_steps - 1
        return self.sample(obs, steps, generator)[:, start:start + self.cfg.n_action_steps]


def _beta_icdf_1_15(u: torch.Tensor) -> torch.Tensor:
    """Inverse CDF of Beta(1, 1.5): F(x) = 1 - (1 - x)^1.5, so draws follow the generator."""
    return 1 - (1 - u).pow(1 / 1.5)
