"""The training data path: a dataset store held in memory as uint8, batches by vectorised indexing.

One class for every model condition (maniflow.conditions).

Sequence windows follow diffusion_policy's sampler: `horizon` consecutive rows starting from
`n_obs_steps - 1` rows before an episode's first frame up to `n_action_steps - 1` rows past
its last, positions outside the episode repeating its first or last row. The windows are one
index table, so a batch is a single gather on the device; only the `n_obs_steps` observation
images (and the one initial image) are materialised, never the whole horizon. No worker
processes, hence no worker hangs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import zarr

from maniflow.conditions import CONDITIONS

SLAB = 256  # rows read from disk at a time while loading


def window_table(episode_ends: np.ndarray, horizon: int, pad_before: int, pad_after: int) -> np.ndarray:
    """(W, horizon) row indices of every window, padding by repeating the episode's first or
    last row (diffusion_policy's SequenceSampler, vectorised)."""
    ends = np.asarray(episode_ends, np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    pad_before = min(max(pad_before, 0), horizon - 1)
    pad_after = min(max(pad_after, 0), horizon - 1)
    rows = []
    for start, end in zip(starts, ends):
        length = end - start
        first = np.arange(-pad_before, length - horizon + pad_after + 1)  # window starts, relative
        offsets = first[:, None] + np.arange(horizon)[None]
        rows.append(start + np.clip(offsets, 0, length - 1))
    return np.concatenate(rows) if rows else np.zeros((0, horizon), np.int64)


class ReplayData:
    """A dataset store in memory (uint8 images, float32 state and action) on `device`."""

    def __init__(self, store: Path, condition: str, device: torch.device | str = "cpu"):
        self.condition = CONDITIONS[condition]
        self.store = Path(store)
        root = zarr.open_group(self.store, mode="r")
        if root.attrs.get("complete") is not True:
            raise ValueError(f"{self.store}: not a finished dataset store")
        self.device = torch.device(device)
        arrays = [root[f"data/{k}"] for k in self.condition.keys]
        n, _, h, w = arrays[0].shape
        channels = sum(a.shape[1] for a in arrays)
        # Preallocated and filled slab by slab: peak memory is the uint8 images plus one slab.
        self.images = torch.empty((n, channels, h, w), dtype=torch.uint8, device=self.device)
        for s in range(0, n, SLAB):
            slab = np.concatenate([a[s:s + SLAB] for a in arrays], axis=1)
            if slab.dtype != np.uint8:  # float32 stores hold values in [0, 1]
                slab = np.round(slab * 255).astype(np.uint8)
            self.images[s:s + len(slab)] = torch.from_numpy(slab).to(self.device)
        self.state = torch.from_numpy(root["data/state"][:].astype(np.float32)).to(self.device)
        self.action = torch.from_numpy(root["data/action"][:].astype(np.float32)).to(self.device)
        self.episode_ends = root["meta/episode_ends"][:].astype(np.int64)
        self.attrs = root.attrs.asdict()

    @property
    def num_episodes(self) -> int:
        return len(self.episode_ends)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def windows(self, episodes: list[int], horizon: int, n_obs_steps: int, n_action_steps: int) -> Windows:
        """The sequence windows of the given episodes (positions in the store)."""
        ends = self.episode_ends
        starts = np.concatenate([[0], ends[:-1]])
        tables, firsts = [], []
        for e in episodes:
            t = window_table(np.array([ends[e] - starts[e]]), horizon, n_obs_steps - 1, n_action_steps - 1)
            tables.append(t + starts[e])
            firsts.append(np.full(len(t), starts[e]))
        table = np.concatenate(tables) if tables else np.zeros((0, horizon), np.int64)
        first = np.concatenate(firsts) if firsts else np.zeros(0, np.int64)
        return Windows(self, torch.from_numpy(table).to(self.device), torch.from_numpy(first).to(self.device),
                       n_obs_steps)


class Windows:
    """Index table of sequence windows over a ReplayData; `batch(ids)` gathers on the device."""

    def __init__(self, data: ReplayData, table: torch.Tensor, first: torch.Tensor, n_obs_steps: int):
        self.data, self.table, self.first, self.n_obs_steps = data, table, first, n_obs_steps

    def __len__(self) -> int:
        return len(self.table)

    def batch(self, ids: torch.Tensor) -> dict:
        """obs: current (B, n_obs, C, H, W) uint8, agent_pos (B, n_obs, D), and initial
        (B, C, H, W) uint8 when the condition uses it; action (B, horizon, D)."""
        rows = self.table[ids]
        obs_rows = rows[:, :self.n_obs_steps]
        d = self.data
        obs = {"current": d.images[obs_rows], "agent_pos": d.state[obs_rows]}
        if d.condition.initial:
            obs["initial"] = d.images[self.first[ids]]
        return {"obs": obs, "action": d.action[rows]}
