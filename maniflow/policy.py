"""ManiFlow image policy with consistency flow matching (upstream `policy/maniflow_image_policy.py`;
every element against its upstream file in docs/maniflow-fidelity.md).

    obs -> per image input a CNN (512 features per obs step; the initial image once per sample)
           + agent_pos (raw, as upstream, unless state_norm="limits") -> ONE conditioning token
    x_t = (1 - t) x0 + t x1, x0 ~ N(0, I), x1 the normalised action chunk
    flow loss         (first 75% of the batch): t = 0.999 Beta(1, 1.5), target x1 - x0, dt = 0
    consistency loss  (the rest): t in {0, .1, ..., .9}, d ~ U[0, 1), t2 = min(t + d, 1);
                      EMA DiTX on the student's own conditioning: vbar = f_ema(x_t2, t2, d, c);
                      x1_hat = x_t2 + (1 - t2) vbar; target (x1_hat - x_t) / (1 - t)
    sampling          Euler from noise, N steps: x <- x + f(x, k/N, 1/N) / N

Fixed against upstream: augmentation only in training, drawn independently per sample; the EMA
teacher always in eval mode; all n_action_steps actions returned (the model's horizon is
n_obs_steps - 1 + n_action_steps, trained on that many real actions). Deliberate: only
observation-step images are ever moved or encoded; both halves of the batch go through the
student in one call.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from maniflow.model import DiTX, make_encoder
from maniflow.settings import PolicyConfig

# Bumped by every change that changes what training produces for a seed: runs, evaluation
# caches and reports record it, and runs of another version are never resumed or mixed.
MODEL_VERSION = 2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalizer(nn.Module):
    """Per-dimension min/max to [-1, 1] (upstream LinearNormalizer "limits"); dimensions whose
    range is under RANGE_EPS are only shifted, to x - min (upstream too)."""

    RANGE_EPS = 1e-4  # upstream's range_eps

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("offset", torch.zeros(dim))

    def fit(self, x: torch.Tensor) -> Normalizer:
        lo, hi = x.min(dim=0).values, x.max(dim=0).values
        span = hi - lo
        constant = span < self.RANGE_EPS
        self.scale.copy_(torch.where(constant, torch.ones_like(span), 2.0 / span.clamp_min(self.RANGE_EPS)))
        self.offset.copy_(torch.where(constant, -lo, -1.0 - lo * self.scale))
        return self

    def forward(self, x):
        return x * self.scale + self.offset

    def unnormalize(self, y):
        return (y - self.offset) / self.scale


class ImageAugment:
    """Upstream's transforms (random crop 95% + resize, rotation +-5 degrees, colour jitter with
    hue), drawn per sample instead of once per batch, in one affine resampling on the device; at
    evaluation the centred crop only. Input uint8 (B, T, C, H, W); output float normalised."""

    def __init__(self, cfg: PolicyConfig):
        self.cfg = cfg
        self._imagenet: dict = {}  # (device, channels) -> (mean, std): built once, no copy per call

    def _imagenet_stats(self, device: torch.device, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, c)
        if key not in self._imagenet:
            self._imagenet[key] = tuple(torch.tensor(v * (c // 3), device=device).view(1, c, 1, 1)
                                        for v in (IMAGENET_MEAN, IMAGENET_STD))
        return self._imagenet[key]

    def __call__(self, images: torch.Tensor, train: bool, generator: torch.Generator | None) -> torch.Tensor:
        cfg = self.cfg
        b, t, c, h, w = images.shape
        x = images.reshape(b * t, c, h, w).float().div_(255.0)
        if (h, w) != (cfg.image_size, cfg.image_size):
            x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        dev = x.device

        def rand(*shape):  # one draw per sample, shared by its time steps, in [-1, 1)
            return (torch.rand(b, *shape, generator=generator, device=dev) * 2 - 1).repeat_interleave(t, dim=0)

        s = cfg.crop
        if train:
            angle = rand() * math.radians(cfg.rotate_deg)
            shift = rand(2) * (1 - s)
        else:
            angle = torch.zeros(b * t, device=dev)
            shift = torch.zeros(b * t, 2, device=dev)
        cos, sin = angle.cos() * s, angle.sin() * s
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # Zeros outside, as torchvision's rotation fills its corners with black.
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if train:  # torchvision ColorJitter's operations, clamped after each (path channels untouched)
            rgb = _blend(x[:, :3], 0.0, 1 + rand(1, 1, 1) * cfg.brightness)
            mean = _gray(rgb).mean(dim=(1, 2, 3), keepdim=True)
            rgb = _blend(rgb, mean, 1 + rand(1, 1, 1) * cfg.contrast)
            rgb = _blend(rgb, _gray(rgb), 1 + rand(1, 1, 1) * cfg.saturation)
            if cfg.hue > 0:
                rgb = _shift_hue(rgb, rand(1, 1) * cfg.hue)
            x = torch.cat([rgb, x[:, 3:]], dim=1)
        mean, std = self._imagenet_stats(dev, c)
        return ((x - mean) / std).reshape(b, t, c, cfg.image_size, cfg.image_size)


def _gray(rgb: torch.Tensor) -> torch.Tensor:
    return 0.2989 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]


def _blend(image: torch.Tensor, other: torch.Tensor | float, factor: torch.Tensor) -> torch.Tensor:
    return (factor * image + (1 - factor) * other).clamp(0, 1)


def _shift_hue(rgb: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of (N, 3, H, W) images in [0, 1] by `shift` (N, 1, 1) turns: to hue,
    saturation and value, then back by the closed form v - v s clamp(min(k, 4 - k), 0, 1) with
    k = (n + 6 hue) mod 6 for n = 5, 3, 1 (red, green, blue)."""
    r, g, b = rgb.unbind(1)
    v, _ = rgb.max(1)
    delta = v - rgb.min(1).values
    sat = delta / v.clamp_min(1e-12)
    d = delta.clamp_min(1e-12)
    hue = torch.where(v == r, (g - b) / d, torch.where(v == g, 2 + (b - r) / d, 4 + (r - g) / d))
    sector = ((hue / 6 + shift) % 1.0) * 6
    k = torch.stack([(sector + 5) % 6, (sector + 3) % 6, (sector + 1) % 6], 1)
    return v[:, None] - (v * sat)[:, None] * torch.minimum(k, 4 - k).clamp(0, 1)


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
        if cfg.state_norm not in ("identity", "limits"):
            raise ValueError(f"state_norm {cfg.state_norm!r}: identity or limits")
        self.state_norm = Normalizer(cfg.action_dim) if cfg.state_norm == "limits" else nn.Identity()
        self.augment = ImageAugment(cfg)
        self.channels_last = False  # images in the encoders' memory format (set with their weights')

    # --- observation -> conditioning ---------------------------------------------------------
    def encode_obs(self, obs: dict, train: bool = False, generator: torch.Generator | None = None):
        """obs: current (B, n_obs, C, H, W) uint8, agent_pos (B, n_obs, A), optionally initial
        (B, C, H, W) uint8 -> (B, 1, cond_dim): one conditioning token."""
        cur = obs["current"][:, :self.cfg.n_obs_steps]
        b, t = cur.shape[:2]
        images = self._layout(self.augment(cur, train, generator).flatten(0, 1))
        feats = self.encoders["current"](images).view(b, t, -1)
        state = self.state_norm(obs["agent_pos"][:, :t].float())
        cond = torch.cat([feats.float(), state], dim=-1).flatten(1)
        if self.cfg.initial:
            first = self._layout(self.augment(obs["initial"][:, None], train, generator)[:, 0])
            encoder = self.encoders["initial" if "initial" in self.encoders else "current"]
            cond = torch.cat([cond, encoder(first).float()], dim=-1)  # once per sample, not per step
        return cond[:, None]

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def velocity(self, x, t, dt, cond):
        return self.net(x, t, dt, cond)

    # --- training ------------------------------------------------------------------------------
    def compute_loss(self, batch: dict, teacher: ManiFlowPolicy, generator: torch.Generator | None = None,
                     train: bool = True) -> tuple[torch.Tensor, dict]:
        """Flow matching on the first `flow_share` of the batch, consistency against `teacher`'s
        DiTX on the rest; `batch["action"]` holds model_horizon real actions per window."""
        cfg = self.cfg
        x1 = self.action_norm(batch["action"])
        if x1.shape[1] != cfg.model_horizon:
            raise ValueError(f"action windows of {x1.shape[1]} steps; the model predicts {cfg.model_horizon}")
        b, dev = x1.shape[0], x1.device
        cond = self.encode_obs(batch["obs"], train=train, generator=generator)
        x0 = torch.randn(x1.shape, generator=generator, device=dev)
        n_flow = max(1, min(b - 1, int(round(b * cfg.flow_share)))) if b > 1 else 1
        k = b - n_flow

        # Flow matching: t = 0.999 Beta(1, 1.5), dt = 0, target x1 - x0.
        t_flow = 0.999 * _beta_icdf_1_15(torch.rand(n_flow, generator=generator, device=dev))
        # Consistency: t on the 10-step grid, d ~ U[0, 1), the teacher one step d further on.
        t_cons = torch.randint(0, 10, (k,), generator=generator, device=dev).float() / 10
        d = torch.rand(k, generator=generator, device=dev)
        t = torch.cat([t_flow, t_cons])
        xt = _interpolate(x0, x1, t)
        # One student call for both halves: every sample is independent of the others.
        pred = self.velocity(xt, t, torch.cat([torch.zeros_like(t_flow), d]), cond)
        flow = F.mse_loss(pred[:n_flow], (x1 - x0)[:n_flow])
        consistency = torch.zeros((), device=dev)
        if k:
            with torch.no_grad():
                t2 = (t_cons + d).clamp(max=1.0)
                xt2 = _interpolate(x0[n_flow:], x1[n_flow:], t2)
                # The teacher's DiTX sees the student's conditioning (the same augmented images).
                vbar = teacher.velocity(xt2, t2, d, cond[n_flow:].detach())
                target = (xt2 + (1 - t2)[:, None, None] * vbar - xt[n_flow:]) / (1 - t_cons)[:, None, None]
            consistency = F.mse_loss(pred[n_flow:], target)
        loss = flow + consistency
        return loss, {"loss": loss.detach(), "flow": flow.detach(), "consistency": consistency.detach()}

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


def _interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t x1: noise at t = 0, actions at t = 1."""
    t = t[:, None, None]
    return (1 - t) * x0 + t * x1


def _beta_icdf_1_15(u: torch.Tensor) -> torch.Tensor:
    """Inverse CDF of Beta(1, 1.5): F(x) = 1 - (1 - x)^1.5, so draws follow the generator."""
    return 1 - (1 - u).pow(1 / 1.5)
