"""Training speed, FLOPs and checkpoint I/O, and the data path's speed and memory. Prints JSON.

    python benchmarks/bench_train.py [--steps 10] [--skip-memory]

1. train_step: samples/s of the paper preset's training step (initial + current overlay, 2 obs
   steps, ResNet-18 x 2 + DiTX 8 x 8 x 512, batch 64 at 224 px) on the device present, the step
   before model version 2 and the current one side by side, with the step time split into data
   (gather) and model. On a CPU it runs at reduced resolution and batch and says so. Old: fp32,
   AdamW's default kernels, the EMA tensor by tensor, four host syncs per step, two student calls
   and the teacher re-encoding the images. New: `train.train_step` (one student call, fused AdamW,
   foreach EMA, no sync; bf16 autocast + channels_last on CUDA).
2. flops: FLOPs of one paper-preset training sample at 224 px, by component, and what they mean
   for the ceiling on an H100 (989 TFLOP/s dense bf16).
3. checkpoints: bytes and seconds of checkpoint writes per epoch, old (full latest.ckpt every
   epoch plus a full top-k copy) against new (every `checkpoint_every` epochs; top-k EMA weights),
   and the shares of data, model and checkpoint writes in an epoch of the user's size.
4. data: batches/s of our data path (one gather of the observation images on the device +
   augmentation) against the user's way: per-sample __getitem__ over float32 images copying
   all horizon frames, batched by DataLoader(num_workers=0).
5. memory: peak resident memory of loading a dataset shaped like the user's (17,255 frames,
   3x224x224) into the data path, in a fresh process, against the user's float32 approach
   (13.5 GB measured by the user; 10.4 GB of images).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numcodecs
import numpy as np
import torch
import torch.nn.functional as F
import zarr

from maniflow.policy import ManiFlowPolicy
from maniflow.replay import ReplayData
from maniflow.train import (
    EMA,
    PRESETS,
    _checkpoint,
    _weights,
    make_optimizer,
    pick_device,
    prepare_for_device,
    train_step,
)

USER_FRAMES, USER_GB = 17_255, 13.5


def make_store(path: Path, frames: int, episode_len: int = 100, size: int = 224) -> Path:
    """A dataset store of smooth random frames (compressible like real ones)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (16, 3, size // 8, size // 8), dtype=np.uint8)
    tiles = np.repeat(np.repeat(base, 8, axis=2), 8, axis=3)
    root = zarr.open_group(path, mode="w", zarr_format=2)
    arr = root.create_array("data/overlay_image", shape=(frames, 3, size, size), chunks=(1, 3, size, size),
                            dtype=np.uint8, compressors=numcodecs.Blosc(cname="zstd", clevel=1))
    for s in range(0, frames, 256):
        n = min(256, frames - s)
        arr[s:s + n] = tiles[np.arange(s, s + n) % 16]
    state = rng.normal(size=(frames, 14)).astype(np.float32)
    root.create_array("data/state", data=state)
    root.create_array("data/action", data=np.roll(state, -1, axis=0))
    ends = np.arange(episode_len, frames + episode_len, episode_len).clip(max=frames)
    root.create_array("meta/episode_ends", data=np.unique(ends).astype(np.int64))
    root.attrs["complete"] = True
    return path


class UserStyleDataset(torch.utils.data.Dataset):
    """The user's way: float32 images in memory, every horizon frame copied per sample."""

    def __init__(self, images: np.ndarray, state: np.ndarray, action: np.ndarray, table: np.ndarray):
        self.images, self.state, self.action, self.table = images, state, action, table

    def __len__(self):
        return len(self.table)

    def __getitem__(self, i):
        rows = self.table[i]
        return {"obs": {"image": torch.from_numpy(self.images[rows].copy()),
                        "agent_pos": torch.from_numpy(self.state[rows].copy())},
                "action": torch.from_numpy(self.action[rows].copy())}


def data_speed(data: ReplayData, policy: ManiFlowPolicy, batch: int, n: int) -> dict:
    cfg = policy.cfg
    windows = data.windows(list(range(data.num_episodes)), cfg.model_horizon, cfg.n_obs_steps, cfg.n_action_steps)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(n):
        windows.batch(torch.randint(0, len(windows), (batch,), generator=gen))
    gather = n * batch / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(n):
        b = windows.batch(torch.randint(0, len(windows), (batch,), generator=gen))
        policy.augment(b["obs"]["current"], True, gen)
    ours = n * batch / (time.perf_counter() - start)
    images = data.images.numpy().astype(np.float32) / 255.0
    user = UserStyleDataset(images, data.state.numpy(), data.action.numpy(), windows.table.numpy())
    loader = torch.utils.data.DataLoader(user, batch_size=batch, shuffle=True, num_workers=0)
    start = time.perf_counter()
    for i, _ in enumerate(loader):
        if i + 1 == n:
            break
    theirs = n * batch / (time.perf_counter() - start)
    return {"ours_gather_samples_per_s": round(gather, 1), "ours_gather_and_augment_samples_per_s": round(ours, 1),
            "user_style_samples_per_s": round(theirs, 1), "gather_speedup": round(gather / theirs, 1),
            "batch": batch, "image_size": int(data.images.shape[-1]),
            "note": "user style: float32 in memory, all horizon frames copied, no augmentation"}


def _paper_policy(data: ReplayData, image_size: int, device) -> tuple[ManiFlowPolicy, ManiFlowPolicy]:
    torch.manual_seed(0)
    pcfg = replace(PRESETS["paper"].policy, channels=data.channels, initial=True, image_size=image_size)
    policy = ManiFlowPolicy(pcfg).to(device)
    policy.action_norm.fit(data.action)
    return policy, copy.deepcopy(policy).eval().requires_grad_(False)


def old_loss(policy: ManiFlowPolicy, batch: dict, teacher: ManiFlowPolicy, gen) -> tuple:
    """The loss before model version 2, for its cost: both halves through the student apart,
    the teacher re-encoding the un-augmented images of the consistency half."""
    x1 = policy.action_norm(batch["action"])
    cond = policy.encode_obs(batch["obs"], train=True, generator=gen)
    x0 = torch.randn(x1.shape, generator=gen, device=x1.device)
    n = int(round(len(x1) * 0.75))
    t = torch.rand(n, generator=gen, device=x1.device)
    xt = (1 - t)[:, None, None] * x0[:n] + t[:, None, None] * x1[:n]
    flow = F.mse_loss(policy.velocity(xt, t, torch.zeros_like(t), cond[:n]), x1[:n] - x0[:n])
    k = len(x1) - n
    tc, d = torch.rand(k, generator=gen, device=x1.device) * 0.9, torch.rand(k, generator=gen, device=x1.device)
    t2 = (tc + d).clamp(max=1)
    xtc = (1 - tc)[:, None, None] * x0[n:] + tc[:, None, None] * x1[n:]
    xt2 = (1 - t2)[:, None, None] * x0[n:] + t2[:, None, None] * x1[n:]
    with torch.no_grad():
        tcond = teacher.encode_obs({key: v[n:] for key, v in batch["obs"].items()}, train=False)
        target = (xt2 + (1 - t2)[:, None, None] * teacher.velocity(xt2, t2, d, tcond) - xtc) / (1 - tc)[:, None, None]
    consistency = F.mse_loss(policy.velocity(xtc, tc, d, cond[n:]), target)
    return flow + consistency, {"loss": flow + consistency, "flow": flow, "consistency": consistency}


def old_step(policy, ema, opt, batch, gen) -> None:
    loss, metrics = old_loss(policy, batch, ema, gen)
    if not torch.isfinite(loss):  # a host sync per step
        raise RuntimeError("diverged")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), policy.parameters()):
            pe.lerp_(p, 0.01)
        for be, b in zip(ema.buffers(), policy.buffers()):
            be.copy_(b)
    [metrics[key].item() for key in ("loss", "flow", "consistency")]  # three more syncs


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_speed(data: ReplayData, image_size: int, batch: int, steps: int, device) -> dict:
    """samples/s of the old and the new training step, and the share of the step spent on data."""
    out = {}
    for name in ("old", "new"):
        policy, ema = _paper_policy(data, image_size, device)
        cfg = PRESETS["paper"]
        amp = name == "new" and device.type == "cuda"
        if name == "new":
            prepare_for_device(policy, amp, False)
            prepare_for_device(ema, amp, False)
            opt, averager = make_optimizer(policy, cfg), EMA(ema, policy)
        else:
            opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        windows = data.windows(list(range(data.num_episodes)), policy.cfg.model_horizon, 2, 16)
        gen = torch.Generator(device=device).manual_seed(0)
        data_s = 0.0
        for i in range(steps + 1):
            if i == 1:  # the first step warms up
                _sync(device)
                start = time.perf_counter()
            t0 = time.perf_counter()
            b = windows.batch(torch.randint(0, len(windows), (batch,), generator=gen, device=device))
            _sync(device)
            data_s += (time.perf_counter() - t0) if i else 0.0
            if name == "new":
                train_step(policy, ema, averager, opt, b, gen, cfg, 1e-4, 0.99, amp)
            else:
                old_step(policy, ema, opt, b, gen)
        _sync(device)
        seconds = time.perf_counter() - start
        out[f"{name}_samples_per_s"] = round(steps * batch / seconds, 2)
        out[f"{name}_data_share"] = round(data_s / seconds, 4)
    out["speedup"] = round(out["new_samples_per_s"] / out["old_samples_per_s"], 2)
    out.update(batch=batch, image_size=image_size, steps=steps, device=str(device),
               bf16=device.type == "cuda")
    return out


def flops_per_sample(data: ReplayData) -> dict:
    """FLOPs of one paper-preset training sample (forward and backward, 224 px), by component."""
    from torch.utils.flop_counter import FlopCounterMode

    policy, ema = _paper_policy(data, 224, "cpu")
    windows = data.windows([0], policy.cfg.model_horizon, 2, 16)
    b = windows.batch(torch.arange(2))
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = policy.compute_loss(b, ema, torch.Generator().manual_seed(0))
        loss.backward()
    by_module = counter.get_flop_counts()
    total = counter.get_total_flops() / 2
    encoders = sum(by_module["ResNet"].values()) / 2  # every encoder call, by the called module's class
    h100_bf16 = 989e12
    return {"gflops_per_sample": round(total / 1e9, 2), "encoder_share": round(encoders / total, 3),
            "ditx_share": round(1 - encoders / total, 3),
            "h100_ceiling_samples_per_s_at_peak": round(h100_bf16 / total),
            "share_of_h100_peak_for_1000_samples_per_s": round(1000 * total / h100_bf16, 4),
            "note": "training step: student encoders + DiTX forward and backward, EMA DiTX forward (one quarter)"}


def checkpoint_io(data: ReplayData, tmp: Path) -> dict:
    """Bytes and seconds per epoch of checkpoint writes for the paper preset (sizes do not depend
    on the resolution)."""
    policy, ema = _paper_policy(data, 64, "cpu")
    cfg = PRESETS["paper"]
    opt = make_optimizer(policy, cfg)
    loss, _ = policy.compute_loss(data.windows([0], policy.cfg.model_horizon, 2, 16).batch(torch.arange(2)), ema)
    loss.backward()
    opt.step()  # the optimizer state exists
    state = {"epoch": 1, "step": 1, "ema_step": 1, "topk": [], "history": []}
    config = {"train": "paper"}
    gen = torch.Generator().manual_seed(0)
    sizes, seconds = {}, {}
    for name, obj in (("full", _checkpoint(policy, ema, opt, gen, state, config)),
                      ("weights", _weights(ema, state, config))):
        path = tmp / f"{name}.ckpt"
        start = time.perf_counter()
        torch.save(obj, path)
        seconds[name] = time.perf_counter() - start
        sizes[name] = path.stat().st_size
        path.unlink()
    every = cfg.checkpoint_every
    return {"latest_ckpt_mb": round(sizes["full"] / 1e6, 1), "topk_ckpt_mb": round(sizes["weights"] / 1e6, 1),
            "old_mb_per_epoch_at_most": round(2 * sizes["full"] / 1e6, 1),
            "new_mb_per_epoch": round((sizes["full"] + sizes["weights"]) / every / 1e6, 1),
            "old_write_s_per_epoch_at_most": round(2 * seconds["full"], 2),
            "new_write_s_per_epoch": round((seconds["full"] + seconds["weights"]) / every, 2),
            "checkpoint_every": every,
            "note": "old: latest.ckpt each epoch plus a full top-k copy when validation improves (at most "
                    "every epoch); new: latest.ckpt every checkpoint_every epochs, a top-k EMA copy at most "
                    "at each validation (every checkpoint_every epochs in the paper preset)"}


def epoch_shares(step: dict, ckpt: dict) -> dict:
    """Where an epoch of the user's size (17,255 samples) goes, old and new: data, model and
    checkpoint writes, from the measured step speed and checkpoint seconds."""
    out = {}
    for name in ("old", "new"):
        steps_s = USER_FRAMES / step[f"{name}_samples_per_s"]
        write_s = ckpt["old_write_s_per_epoch_at_most" if name == "old" else "new_write_s_per_epoch"]
        data = steps_s * step[f"{name}_data_share"]
        total = steps_s + write_s
        out[name] = {"epoch_s": round(total, 1), "data_share": round(data / total, 4),
                     "model_share": round((steps_s - data) / total, 4),
                     "checkpoint_share": round(write_s / total, 4)}
    out["note"] = "an epoch of 17,255 samples at the measured step speed (reduced resolution on a CPU)"
    return out


def _peak_rss_gb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6
    return float("nan")


def memory_child(store: str) -> None:
    before = _peak_rss_gb()
    data = ReplayData(Path(store), "overlay_current")
    windows = data.windows(list(range(data.num_episodes)), 17, 2, 16)
    print(json.dumps({"frames": len(data.images), "images_gb": round(data.images.numel() / 1e9, 2),
                      "windows": len(windows), "peak_rss_gb": round(_peak_rss_gb(), 2),
                      "rss_before_loading_gb": round(before, 2)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child)
    device = pick_device("auto")
    if device.type == "cpu":
        torch.set_num_threads(2)
    out = {"device": str(device), "cpus": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        cuda = device.type == "cuda"
        size = 224 if cuda else 96
        store = make_store(Path(tmp) / "small.zarr", 2000, size=size)
        data = ReplayData(store, "overlay_initial_current", device)
        out["train_step"] = step_speed(data, size, 64 if cuda else 8, args.steps if cuda else max(3, args.steps // 2),
                                       device)
        if not cuda:
            out["train_step"]["note"] = "CPU: 96 px and batch 8 instead of the paper preset's 224 px and batch 64"
        del data
        full = make_store(Path(tmp) / "full.zarr", 2000) if size != 224 else store
        cpu_data = ReplayData(full, "overlay_initial_current")
        out["flops"] = flops_per_sample(cpu_data)
        out["checkpoints"] = checkpoint_io(cpu_data, Path(tmp))
        out["epoch_shares"] = epoch_shares(out["train_step"], out["checkpoints"])
        out["data"] = data_speed(ReplayData(full, "overlay_current"), ManiFlowPolicy(
            replace(PRESETS["paper"].policy, encoder="test_resnet", dim=32, depth=1, heads=2)), 64, 20)
        if not args.skip_memory:
            big = make_store(Path(tmp) / "user_shaped.zarr", USER_FRAMES)
            child = subprocess.run([sys.executable, __file__, "--memory-child", str(big)], capture_output=True,
                                   text=True, check=True)
            mem = json.loads(child.stdout)
            mem["user_float32_gb"] = USER_GB
            mem["share_of_user"] = round(mem["peak_rss_gb"] / USER_GB, 3)
            out["memory"] = mem
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
