"""Train one ManiFlow policy on one dataset store: resumable, checkpointed, observable.

    run/config.json                       the full configuration
    run/checkpoints/latest.ckpt           after every epoch (atomic; torch.load(weights_only=True))
    run/checkpoints/epoch=EEEE-val_loss=V.ckpt   the top-k by validation loss
    run/metrics.jsonl, run/loss.png       per-epoch losses, learning rate, speed

A checkpoint holds the model, the EMA model and its step counter, the optimizer, the step and
epoch, the random generator states and the top-k list, so a killed run resumes to the same
weights as an uninterrupted one (CPU, fixed seed). The learning rate is a pure function of the
step (cosine with linear warm-up), so there is no scheduler state to lose. A NaN or inf loss
stops the run with `TrainingDiverged`; the last checkpoint stays as it was.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from maniflow.datasets import DEFAULT_LABEL
from maniflow.policy import ManiFlowPolicy, PolicyConfig
from maniflow.replay import CONDITIONS, ReplayData, Windows
from maniflow.storage import temp_sibling

log = logging.getLogger("maniflow.train")


@dataclass(frozen=True)
class TrainConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    batch_size: int = 64
    epochs: int = 501
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 1e-3
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_power: float = 0.75
    ema_max: float = 0.9999
    val_ratio: float = 0.1
    # The store's last episodes are never trained or validated on: the offline evaluation's
    # held-out set (the same positions in every store of a task, so every cell is judged alike).
    holdout_episodes: int = 0
    top_k: int = 3
    seed: int = 0
    device: str = "auto"  # auto: cuda when available


PRESETS = {
    # The user's settings (seed config): 8 layers, 8 heads, width 512, 224x224, horizon 16.
    "paper": TrainConfig(holdout_episodes=5),
    # Same code at toy sizes: about two minutes on 2 CPU cores for a demo cell (30 episodes),
    # and it learns (lr 1e-3: the toy model fits 4x lower loss in the same steps than at 3e-4).
    "demo": TrainConfig(policy=PolicyConfig(image_size=64, encoder="test_resnet", dim=128, depth=2, heads=4,
                                            dropout=0.0, inference_steps=2),
                        batch_size=32, epochs=12, lr=1e-3, warmup_steps=20, top_k=2, holdout_episodes=2),
}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def run_name(env: str, condition: str, task: str, preset: str, seed: int, label: str = DEFAULT_LABEL) -> str:
    """`{env}_{condition}[-label]_{task}_{preset}_seed{seed}`: one cell of the matrix."""
    suffix = "" if label == DEFAULT_LABEL else f"-{label}"
    return f"{env}_{condition}{suffix}_{task}_{preset}_seed{seed}"


def run_finished(run) -> bool:
    """Whether a run directory holds a finished training (all configured epochs done)."""
    run = Path(run)
    try:
        epochs = json.loads((run / "config.json").read_text())["train"]["epochs"]
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return bool(lines) and json.loads(lines[-1])["epoch"] + 1 >= epochs \
            and (run / "checkpoints" / "latest.ckpt").exists()
    except (FileNotFoundError, KeyError, ValueError):
        return False


def finished_runs(work, preset: str) -> list[Path]:
    """The finished runs of a preset under `{work}/runs`."""
    return [p for p in sorted((Path(work) / "runs").glob(f"*_{preset}_seed*")) if run_finished(p)]


def pick_device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                        ("cpu" if name == "auto" else name))


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Cosine schedule with linear warm-up (diffusers' get_cosine_schedule_with_warmup)."""
    if step < cfg.warmup_steps:
        return cfg.lr * step / max(1, cfg.warmup_steps)
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def ema_decay(step: int, cfg: TrainConfig) -> float:
    """diffusion_policy's EMAModel schedule: 1 - (1 + step)^-power, capped."""
    if step <= 0:
        return 0.0
    return min(cfg.ema_max, 1 - (1 + step) ** -cfg.ema_power)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p, 1 - decay)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


def split_episodes(n: int, val_ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """Train / validation split by episode (never by window: neighbouring windows overlap)."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = min(n - 1, max(1, round(n * val_ratio))) if n > 1 and val_ratio > 0 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


def _save(obj: dict, path: Path) -> None:
    tmp = temp_sibling(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


@dataclass
class TrainResult:
    run: Path
    epochs: int
    steps: int
    val_loss: float | None
    best: Path | None
    history: list[dict]


def train(store: Path, condition: str, run: Path, cfg: TrainConfig = PRESETS["paper"],
          progress: Callable[[dict], None] | None = None) -> TrainResult:
    """Train (or resume) the policy for `condition` on the dataset `store` into `run`."""
    run, store = Path(run), Path(store)
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    config_record = {"store": str(store), "condition": condition, "train": _jsonable(cfg)}
    latest = ckpts / "latest.ckpt"
    saved = torch.load(latest, map_location=device, weights_only=True) if latest.exists() else None
    if saved is not None and saved["config"] != config_record:
        raise ValueError(f"{run} holds a run with another configuration; use another run directory")
    (run / "config.json").write_text(json.dumps(config_record, indent=1))
    if saved is not None and saved["epoch"] >= cfg.epochs:  # finished before: nothing to load or do
        return _result(run, saved)

    torch.manual_seed(cfg.seed)
    data = ReplayData(store, condition, device)
    trainable = data.num_episodes - cfg.holdout_episodes
    if trainable < 1:
        raise ValueError(f"{store}: {data.num_episodes} episodes, {cfg.holdout_episodes} held out for evaluation: "
                         "nothing left to train on")
    train_eps, val_eps = split_episodes(trainable, cfg.val_ratio, cfg.seed)
    pcfg = replace(cfg.policy, channels=data.channels, action_dim=int(data.action.shape[1]),
                   initial=CONDITIONS[condition].initial)
    train_w = data.windows(train_eps, pcfg.horizon, pcfg.n_obs_steps, pcfg.n_action_steps)
    val_w = data.windows(val_eps, pcfg.horizon, pcfg.n_obs_steps, pcfg.n_action_steps)
    policy = ManiFlowPolicy(pcfg).to(device)
    rows = torch.unique(train_w.table.flatten())
    policy.action_norm.fit(data.action[rows])
    policy.state_norm.fit(data.state[rows])
    ema = copy.deepcopy(policy).eval().requires_grad_(False)  # the teacher: always in eval mode
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    state = {"epoch": 0, "step": 0, "ema_step": 0, "topk": [], "history": []}
    if saved is not None:
        policy.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"].cpu())
        torch.set_rng_state(saved["torch_rng"].cpu())
        if device.type == "cuda" and saved.get("cuda_rng") is not None:  # dropout draws on the GPU
            torch.cuda.set_rng_state(saved["cuda_rng"].cpu(), device)
        state = {k: saved[k] for k in state}
        _drop_stale_topk(ckpts, state["topk"])
        log.info("resuming %s at epoch %d (step %d)", run, state["epoch"], state["step"])

    steps_per_epoch = math.ceil(len(train_w) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    use_bf16 = device.type == "cuda"
    for epoch in range(state["epoch"], cfg.epochs):
        policy.train()
        start = time.perf_counter()
        sums = {"loss": 0.0, "flow": 0.0, "consistency": 0.0}
        perm = torch.randperm(len(train_w), generator=gen, device=device)
        for i in range(steps_per_epoch):
            ids = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            batch = train_w.batch(ids)
            lr = lr_at(state["step"], total, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss, metrics = policy.compute_loss(batch, ema, gen)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss is {loss.item()} at epoch {epoch}, step {state['step']}; "
                                       f"stopped, the last checkpoint ({latest}) is intact")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            opt.step()
            state["ema_step"] += 1
            ema_update(ema, policy, ema_decay(state["ema_step"], cfg))
            state["step"] += 1
            for k in sums:
                sums[k] += metrics[k].item()
            if progress:
                progress({"epoch": epoch, "epochs": cfg.epochs, "step": state["step"], "total_steps": total,
                          "loss": metrics["loss"].item(), "lr": lr})
        seconds = time.perf_counter() - start
        val = validation_loss(ema, val_w, cfg) if len(val_w) else None
        record = {"epoch": epoch, "step": state["step"], **{k: v / steps_per_epoch for k, v in sums.items()},
                  "val_loss": val, "lr": lr, "seconds": round(seconds, 3),
                  "samples_per_s": round(len(train_w) / seconds, 1)}
        state["history"].append(record)
        state["epoch"] = epoch + 1
        snapshot = lambda: _checkpoint(policy, ema, opt, gen, state, config_record)  # noqa: E731
        _update_topk(ckpts, state, epoch, val, cfg, snapshot)
        _save(snapshot(), latest)
        with open(run / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        plot_losses(state["history"], run / "loss.png")
        log.info("epoch %d: loss %.5f val %s (%.1f samples/s)", epoch, record["loss"], val, record["samples_per_s"])
    return _result(run, state)


def _result(run: Path, state: dict) -> TrainResult:
    history = state["history"]
    best = run / "checkpoints" / state["topk"][0][1] if state["topk"] else None
    return TrainResult(run, state["epoch"], state["step"], history[-1]["val_loss"] if history else None, best,
                       history)


@torch.no_grad()
def validation_loss(model: ManiFlowPolicy, windows: Windows, cfg: TrainConfig) -> float:
    """The training loss of the EMA model on held-out episodes, with fixed noise (comparable
    across epochs), without augmentation."""
    gen = torch.Generator(device=windows.table.device).manual_seed(cfg.seed + 1)
    total, n = 0.0, 0
    for s in range(0, len(windows), cfg.batch_size):
        ids = torch.arange(s, min(s + cfg.batch_size, len(windows)), device=windows.table.device)
        loss, _ = model.compute_loss(windows.batch(ids), model, gen, train=False)
        total += loss.item() * len(ids)
        n += len(ids)
    return total / n


def _checkpoint(policy, ema, opt, gen, state, config_record) -> dict:
    return {"model": policy.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
            "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "config": config_record,
            "cuda_rng": torch.cuda.get_rng_state(gen.device) if gen.device.type == "cuda" else None,
            "policy": asdict(policy.cfg),
            **{k: state[k] for k in ("epoch", "step", "ema_step", "topk", "history")}}


def _update_topk(ckpts: Path, state: dict, epoch: int, val: float | None, cfg: TrainConfig,
                 snapshot: Callable[[], dict]) -> None:
    """Keep the k best checkpoints by validation loss; written before latest.ckpt, which lists them."""
    if val is None or cfg.top_k <= 0:
        return
    topk = state["topk"]
    if len(topk) >= cfg.top_k and val >= topk[-1][0]:
        return
    name = f"epoch={epoch:04d}-val_loss={val:.6f}.ckpt"
    topk.append([val, name])
    topk.sort(key=lambda x: x[0])
    _save(snapshot(), ckpts / name)
    for _, dropped in topk[cfg.top_k:]:
        (ckpts / dropped).unlink(missing_ok=True)
    del topk[cfg.top_k:]


def _drop_stale_topk(ckpts: Path, topk: list) -> None:
    """Top-k files written after the last latest.ckpt (a kill in between) are not in its list."""
    keep = {name for _, name in topk}
    for p in ckpts.glob("epoch=*.ckpt"):
        if p.name not in keep:
            p.unlink()


def load_policy(checkpoint: Path, device: str = "cpu", ema: bool = True) -> ManiFlowPolicy:
    """The (EMA) policy of a checkpoint, ready for predict_action."""
    saved = torch.load(checkpoint, map_location=device, weights_only=True)
    policy = ManiFlowPolicy(PolicyConfig(**saved["policy"]))
    policy.load_state_dict(saved["ema" if ema else "model"])
    return policy.to(device).eval()


def _jsonable(cfg: TrainConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))


def plot_losses(history: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [h["loss"] for h in history], label="train")
    if any(h["val_loss"] is not None for h in history):
        ax.plot(epochs, [h["val_loss"] for h in history], label="validation (EMA)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    tmp = temp_sibling(out).with_suffix(".png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
