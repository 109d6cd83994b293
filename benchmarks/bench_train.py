"""Training speed and the data path's speed and memory. Prints JSON.

    python benchmarks/bench_train.py [--steps 10] [--skip-memory]

1. train: samples/s of full training steps on this CPU, demo preset, and a paper-shaped model
   (ResNet-18, DiTX 8 x 8 x 512) at reduced resolution (96 px); share of step time on data.
2. data: batches/s of our data path (one gather of the observation images on the device +
   augmentation) against the user's way: per-sample __getitem__ over float32 images copying
   all horizon frames, batched by DataLoader(num_workers=0).
3. memory: peak resident memory of loading a dataset shaped like the user's (17,255 frames,
   3x224x224) into the data path, in a fresh process, against the user's float32 approach
   (13.5 GB measured by the user; 10.4 GB of images).
"""

from __future__ import annotations

import argparse
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
import zarr

from maniflow.policy import ManiFlowPolicy, PolicyConfig
from maniflow.replay import ReplayData
from maniflow.train import PRESETS, ema_update

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
    windows = data.windows(list(range(data.num_episodes)), cfg.horizon, cfg.n_obs_steps, cfg.n_action_steps)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for i in range(n):
        windows.batch(torch.randint(0, len(windows), (batch,), generator=gen))
    gather = n * batch / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(n):
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


def train_speed(data: ReplayData, pcfg: PolicyConfig, batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    policy = ManiFlowPolicy(replace(pcfg, channels=data.channels))
    policy.action_norm.fit(data.action)
    policy.state_norm.fit(data.state)
    ema = ManiFlowPolicy(replace(pcfg, channels=data.channels)).eval().requires_grad_(False)
    ema.load_state_dict(policy.state_dict())
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    windows = data.windows(list(range(data.num_episodes)), pcfg.horizon, pcfg.n_obs_steps, pcfg.n_action_steps)
    gen = torch.Generator().manual_seed(0)
    data_s = total_s = 0.0
    for step in range(steps + 1):
        t0 = time.perf_counter()
        b = windows.batch(torch.randint(0, len(windows), (batch,), generator=gen))
        t1 = time.perf_counter()
        loss, _ = policy.compute_loss(b, ema, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_update(ema, policy, 0.99)
        t2 = time.perf_counter()
        if step:  # the first step warms up
            data_s += t1 - t0
            total_s += t2 - t0
    params = sum(p.numel() for p in policy.parameters()) / 1e6
    return {"samples_per_s": round(steps * batch / total_s, 1), "s_per_step": round(total_s / steps, 3),
            "batch": batch, "image_size": pcfg.image_size, "params_m": round(params, 1),
            "data_share_of_step": round(data_s / total_s, 4),
            "note": "data = gather on the device; augmentation runs inside the loss"}


def _peak_rss_gb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6
    return float("nan")


def memory_child(store: str) -> None:
    before = _peak_rss_gb()
    data = ReplayData(Path(store), "overlay_current")
    windows = data.windows(list(range(data.num_episodes)), 16, 2, 16)
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
    torch.set_num_threads(2)
    out = {"cpus": 2, "device": "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp) / "small.zarr", 2000)
        data = ReplayData(store, "overlay_current")
        demo = PRESETS["demo"]
        out["train_demo"] = train_speed(data, demo.policy, demo.batch_size, args.steps)
        paper_shaped = replace(PRESETS["paper"].policy, image_size=96)
        out["train_paper_shaped_96px"] = train_speed(data, paper_shaped, 16, max(3, args.steps // 3))
        out["data"] = data_speed(data, ManiFlowPolicy(replace(PRESETS["paper"].policy, encoder="test_resnet",
                                                                dim=32, depth=1, heads=2)), 64, 20)
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
