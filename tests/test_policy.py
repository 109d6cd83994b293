"""The policy against upstream ManiFlow (docs/maniflow-fidelity.md): parameter counts, the DiTX's
structure and initialisation, the loss against the formulas written out, the teacher's
conditioning, normalisation, augmentation and the EMA."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from maniflow.model import DiTX, sinusoidal
from maniflow.policy import ManiFlowPolicy, Normalizer, PolicyConfig, _blend, _gray, _shift_hue
from maniflow.train import EMA, PRESETS

SMALL = PolicyConfig(image_size=32, encoder="test_resnet", dim=32, depth=2, heads=2, dropout=0.0, horizon=8,
                     n_action_steps=8, action_dim=5)

# Upstream's counts for the user's configuration (DiTX 8 x 8 x 512, initial + current image keys,
# each encoded at both observation steps): DiTX 55,577,102 of which 524,288 are the context
# position embedding (visual_cond_len 512 x n_obs_steps 2 rows x 512); two ResNet-18 22,353,024.
UPSTREAM_DITX, UPSTREAM_CONTEXT_POSITIONS, UPSTREAM_ENCODERS = 55_577_102, 524_288, 22_353_024
UPSTREAM_DITX_CURRENT = 55_052_814  # the same with the current image key only


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_preset_parameters_match_upstream_but_for_the_documented_differences():
    cfg = replace(PRESETS["paper"].policy, initial=True)
    policy = ManiFlowPolicy(cfg)
    # The initial image is encoded once, not once per observation step: 512 fewer inputs to the
    # conditioning projection. No context position embedding: with one token it is a bias.
    # One more action position: 17 actions, all 16 executed ones real.
    initial_once = 512 * cfg.dim
    extra_position = cfg.dim
    assert _count(policy.net) == UPSTREAM_DITX - UPSTREAM_CONTEXT_POSITIONS - initial_once + extra_position
    assert _count(policy.encoders) == UPSTREAM_ENCODERS
    current_only = ManiFlowPolicy(replace(cfg, initial=False))  # upstream: one image key, cond_dim 1,052
    assert _count(current_only.net) == UPSTREAM_DITX_CURRENT - UPSTREAM_CONTEXT_POSITIONS + extra_position


def _dropout_free_outputs_match(net: DiTX) -> bool:
    x, t, cond = torch.randn(3, 8, 5), torch.rand(3), torch.randn(3, 1, 12)
    with torch.no_grad():
        return torch.equal(net.train()(x, t, t, cond), net.eval()(x, t, t, cond))


def test_dropout_lives_only_in_self_attention():
    torch.manual_seed(0)
    net = DiTX(5, 8, 12, dim=32, depth=2, heads=2, dropout=0.5)
    for p in net.parameters():  # leave the zero initialisation so every path carries signal
        torch.nn.init.normal_(p, std=0.1)
    assert not _dropout_free_outputs_match(net)
    for block in net.blocks:
        block.self_attn.dropout = 0.0
    assert _dropout_free_outputs_match(net)  # nothing else drops out
    assert not any(isinstance(m, torch.nn.Dropout) for m in net.modules())


def test_ditx_is_initialised_as_upstream():
    torch.manual_seed(0)
    net = DiTX(14, 17, 1564, dim=512, depth=2, heads=8)
    for block in net.blocks:
        assert not block.ada[1].weight.any() and not block.ada[1].bias.any()  # every block the identity
        bound = math.sqrt(6 / (512 + 3 * 512))  # Xavier over the fused (3D, D) input projection
        assert block.self_attn.qkv.weight.abs().max() <= bound and block.self_attn.qkv.weight.std() > bound / 2
        assert not block.mlp[0].bias.any()
    assert not net.head[2].weight.any() and not net.head[2].bias.any()  # velocity 0 at the start
    for weight in (net.x_in.weight, net.cond_in.weight, net.c_proj.weight, net.t_mlp[0].weight, net.pos):
        assert weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert isinstance(net.t_mlp[1], torch.nn.Mish) and net.t_mlp[0].out_features == 4 * 128


def test_time_embedding_is_upstreams_unscaled_sinusoid():
    emb = sinusoidal(torch.tensor([1.0, 0.25]), 128)
    freqs = torch.exp(-math.log(10000) / 63 * torch.arange(64))
    assert torch.allclose(emb[0, :64], torch.sin(freqs)) and torch.allclose(emb[1, 64:], torch.cos(0.25 * freqs))
    assert freqs[0] == 1 and freqs[-1] == pytest.approx(1e-4)


def _batch(b: int, cfg: PolicyConfig, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    obs = {"current": torch.randint(0, 256, (b, 2, 3, 32, 32), dtype=torch.uint8, generator=g),
           "agent_pos": torch.randn(b, 2, cfg.action_dim, generator=g)}
    return {"obs": obs, "action": torch.randn(b, cfg.model_horizon, cfg.action_dim, generator=g)}


def _trained_looking(cfg: PolicyConfig, seed: int) -> ManiFlowPolicy:
    torch.manual_seed(seed)
    policy = ManiFlowPolicy(cfg)
    for p in policy.net.parameters():  # away from the zero initialisation, so velocities differ
        torch.nn.init.normal_(p, std=0.05)
    policy.action_norm.fit(torch.randn(100, cfg.action_dim))
    return policy


def test_loss_is_the_flow_and_consistency_formulas_in_one_student_call():
    """Reference: REFERENCE section 5 written out half by half, with the policy's own draws."""
    student, teacher = _trained_looking(SMALL, 0), _trained_looking(SMALL, 1).eval()
    batch = _batch(8, SMALL)
    loss, metrics = student.compute_loss(batch, teacher, torch.Generator().manual_seed(3), train=False)

    g = torch.Generator().manual_seed(3)
    x1 = student.action_norm(batch["action"])
    cond = student.encode_obs(batch["obs"], train=False)
    x0 = torch.randn(x1.shape, generator=g)
    n = 6  # 75% of 8
    t = 0.999 * (1 - (1 - torch.rand(n, generator=g)) ** (1 / 1.5))  # Beta(1, 1.5) by its inverse CDF
    xt = (1 - t)[:, None, None] * x0[:n] + t[:, None, None] * x1[:n]
    flow = F.mse_loss(student.velocity(xt, t, torch.zeros(n), cond[:n]), x1[:n] - x0[:n])
    tc = torch.randint(0, 10, (2,), generator=g).float() / 10
    d = torch.rand(2, generator=g)
    t2 = (tc + d).clamp(max=1)
    xtc = (1 - tc)[:, None, None] * x0[n:] + tc[:, None, None] * x1[n:]
    xt2 = (1 - t2)[:, None, None] * x0[n:] + t2[:, None, None] * x1[n:]
    x1_hat = xt2 + (1 - t2)[:, None, None] * teacher.velocity(xt2, t2, d, cond[n:])
    consistency = F.mse_loss(student.velocity(xtc, tc, d, cond[n:]), (x1_hat - xtc) / (1 - tc)[:, None, None])
    assert metrics["flow"].item() == pytest.approx(flow.item(), rel=1e-5)
    assert metrics["consistency"].item() == pytest.approx(consistency.item(), rel=1e-5)
    assert loss.item() == pytest.approx(flow.item() + consistency.item(), rel=1e-5)


def test_the_teacher_sees_the_students_conditioning_not_its_own_encoders():
    student = _trained_looking(SMALL, 0)
    teacher = copy.deepcopy(student).eval()
    batch = _batch(8, SMALL)
    before, _ = student.compute_loss(batch, teacher, torch.Generator().manual_seed(1))
    for p in teacher.encoders.parameters():
        torch.nn.init.normal_(p, std=1.0)  # a teacher encoder that would change any feature
    after, _ = student.compute_loss(batch, teacher, torch.Generator().manual_seed(1))
    assert after.item() == before.item()
    for p in teacher.net.parameters():  # while its DiTX is what makes the target
        p.data.mul_(1.5)
    changed, _ = student.compute_loss(batch, teacher, torch.Generator().manual_seed(1))
    assert changed.item() != before.item()


def test_windows_must_hold_the_models_horizon_of_actions():
    policy = _trained_looking(SMALL, 0)
    batch = _batch(4, SMALL)
    batch["action"] = batch["action"][:, :SMALL.horizon]  # 8 actions, the model predicts 9
    with pytest.raises(ValueError, match="action windows of 8 steps; the model predicts 9"):
        policy.compute_loss(batch, policy)


def test_agent_pos_goes_in_raw_and_near_constant_actions_are_only_centred():
    policy = _trained_looking(SMALL, 0).eval()
    batch = _batch(2, SMALL)
    nudged = {**batch["obs"], "agent_pos": batch["obs"]["agent_pos"] + 1e-5}  # joint jitter at rest
    diff = policy.encode_obs(nudged) - policy.encode_obs(batch["obs"])
    assert diff.abs().max().item() == pytest.approx(1e-5, rel=0.05)  # not scaled by 1 / range
    limits = ManiFlowPolicy(replace(SMALL, state_norm="limits"))  # the demo preset's option
    assert isinstance(limits.state_norm, Normalizer) and PRESETS["demo"].policy.state_norm == "limits"
    assert PRESETS["paper"].policy.state_norm == "identity"
    with pytest.raises(ValueError, match="state_norm 'z'"):
        ManiFlowPolicy(replace(SMALL, state_norm="z"))
    actions = torch.zeros(50, 3)
    actions[:, 0] = torch.linspace(0.2, 0.20005, 50)  # range 5e-5, under upstream's 1e-4
    actions[:, 1] = torch.linspace(-1, 3, 50)
    norm = Normalizer(3).fit(actions)
    assert norm.scale.tolist() == pytest.approx([1.0, 0.5, 1.0])
    assert norm(actions)[:, 1].min() == -1 and norm(actions)[:, 1].max() == 1
    assert norm(actions)[0, 0].item() == pytest.approx(0.0)


def test_colour_jitter_matches_torchvisions_functions():
    """The jitter's operations against torchvision's, the ones upstream's ColorJitter applies."""
    import torchvision.transforms.functional as TF

    rgb = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for factor in (0.6, 1.4):
        f = torch.full((4, 1, 1, 1), factor)
        assert torch.allclose(_blend(rgb, 0.0, f), TF.adjust_brightness(rgb, factor), atol=1e-6)
        assert torch.allclose(_blend(rgb, _gray(rgb).mean(dim=(1, 2, 3), keepdim=True), f),
                              TF.adjust_contrast(rgb, factor), atol=1e-6)
        assert torch.allclose(_blend(rgb, _gray(rgb), f), TF.adjust_saturation(rgb, factor), atol=1e-6)
    for turn in (-0.08, 0.03, 1 / 3):
        assert torch.allclose(_shift_hue(rgb, torch.full((4, 1, 1), turn)), TF.adjust_hue(rgb, turn), atol=1e-5)
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    assert torch.allclose(_shift_hue(red, torch.full((1, 1, 1), 1 / 3))[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.0]))
    gray = torch.full((1, 3, 2, 2), 0.4)  # no saturation: no hue to turn
    assert torch.allclose(_shift_hue(gray, torch.full((1, 1, 1), 0.3)), gray)


def test_ema_averages_trainable_weights_and_copies_batchnorm_and_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(3.0)
    old = ema[0].weight.clone()
    EMA(ema, model).update(0.75)
    assert torch.allclose(ema[0].weight, 0.75 * old + 0.25 * model[0].weight)
    assert torch.equal(ema[1].weight, model[1].weight) and torch.equal(ema[1].running_mean, model[1].running_mean)
