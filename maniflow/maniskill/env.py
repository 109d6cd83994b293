"""ManiSkill in the loop: trajectory files, replay, and the closed-loop environment.

`ManiSkillEnv` has the synthetic `TabletopEnv`'s interface (reset / observe / step / done /
success / oracle_path / expert_vectors / state), so the evaluation drives either unchanged.

Joint vector (what the policy sees as state and predicts as action), Panda: 7 joint targets and
the gripper (1 open, 0 closed). For pd_joint_pos trajectories, vector[t] is the command in force
at frame t (vector[0]: the measured joints), so the data's action at t, vector[t + 1], is exactly
the command the expert sent; `step` sends the policy's vector back as that command, the gripper
thresholded at 0.5 (the expert's commands are fully open or closed). Trajectories recorded in
other control modes get the measured joints instead.

Rendering is explicit (`capture`): the simulation steps in obs_mode "none", and only frames that
are looked at are rendered, which is most of the cost on the CPU (about 0.05 s per 128x128 frame
against 4 ms per physics step).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import torch

from maniflow.maniskill import ARM_JOINTS, CAMERA, TASKS
from maniflow.maniskill.envs import render_backend  # (importing it registers the variants)
from maniflow.paths.oracle import live_oracle_path
from maniflow.synthetic.env import Observation

FINGER_OPEN_M = 0.04  # Panda finger joint travel: qpos 0.04 per finger is fully open


# -- trajectory files --------------------------------------------------------------------------

@dataclass
class Trajectory:
    """One episode of a ManiSkill trajectory file (RecordEpisode / replay_trajectory format)."""

    file: Path
    episode: dict  # its entry in the .json: episode_id, reset_kwargs (seed), control_mode, ...
    actions: np.ndarray  # (T, A)
    states: dict  # nested env states, arrays (T + 1, ...)

    @property
    def seed(self):
        return (self.episode.get("reset_kwargs") or {}).get("seed", self.episode.get("episode_seed"))

    @property
    def control_mode(self) -> str:
        return self.episode.get("control_mode", "pd_joint_pos")

    def state(self, t: int) -> dict:
        """Env state at frame t, batched (one scene) as set_state_dict takes it."""
        def pick(x):
            return {k: pick(v) for k, v in x.items()} if isinstance(x, dict) else torch.from_numpy(x[t][None])
        return pick(self.states)


class TrajectoryError(ValueError):
    """A trajectory file that cannot be replayed; names the file and the episode."""


def _read_group(group) -> dict:
    return {k: _read_group(v) if isinstance(v, h5py.Group) else np.asarray(v) for k, v in group.items()}


def read_trajectories(h5_path) -> tuple[dict, list[Trajectory]]:
    """(env_info, episodes) of `x.h5` and its `x.json`, as ManiSkill writes them."""
    h5_path = Path(h5_path)
    meta_path = h5_path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        env_info, entries = meta["env_info"], meta["episodes"]
    except (OSError, ValueError, KeyError) as e:
        raise TrajectoryError(f"{meta_path}: not a ManiSkill trajectory description ({e})") from e
    out = []
    try:
        with h5py.File(h5_path, "r") as f:
            for entry in entries:
                key = f"traj_{entry['episode_id']}"
                if key not in f or "env_states" not in f[key] or "actions" not in f[key]:
                    raise TrajectoryError(f"{h5_path} [{key}]: needs actions and env_states (record with "
                                          "ManiSkill's RecordEpisode, or replay_trajectory --save-traj)")
                traj = Trajectory(h5_path, entry, np.asarray(f[key]["actions"]), _read_group(f[key]["env_states"]))
                lengths = {len(a) for a in _leaves(traj.states)}
                if lengths != {len(traj.actions) + 1}:
                    raise TrajectoryError(f"{h5_path} [{key}]: {len(traj.actions)} actions but env states of "
                                          f"length(s) {sorted(lengths)}; expected {len(traj.actions) + 1}")
                out.append(traj)
    except OSError as e:
        raise TrajectoryError(f"{h5_path}: cannot read HDF5 ({e})") from e
    return env_info, out


def _leaves(x):
    for v in x.values():
        yield from (_leaves(v) if isinstance(v, dict) else [v])


# -- simulation helpers ------------------------------------------------------------------------

# Recording settings of a trajectory's env_kwargs that replay sets itself.
RECORDING_ONLY = ("obs_mode", "sim_backend", "render_backend", "render_mode", "num_envs",
                  "human_render_camera_configs", "viewer_camera_configs")


def make_env(env_id: str, **kwargs) -> gym.Env:
    """A CPU-simulated env that renders only when `capture` asks."""
    kwargs = {k: v for k, v in kwargs.items() if k not in RECORDING_ONLY}
    kwargs.setdefault("control_mode", "pd_joint_pos")
    return gym.make(env_id, obs_mode="none", sim_backend="cpu", render_backend=render_backend(), **kwargs)


@dataclass
class Frame:
    rgb: np.ndarray  # (H, W, 3) uint8
    intrinsic_cv: np.ndarray  # (3, 3)
    extrinsic_cv: np.ndarray  # (3, 4)
    cam2world_gl: np.ndarray  # (4, 4)


def capture(u, camera: str = CAMERA) -> Frame:
    """Render the sensor camera of the unwrapped env `u` now."""
    u.scene.update_render()
    cam = u._sensors[camera]
    cam.capture()
    rgb = cam.get_obs(rgb=True, depth=False, segmentation=False, position=False)["rgb"][0]
    params = {k: v[0].cpu().numpy().astype(np.float64) for k, v in cam.get_params().items()}
    return Frame(rgb.cpu().numpy().astype(np.uint8), params["intrinsic_cv"], params["extrinsic_cv"],
                 params["cam2world_gl"])


def tcp_pose(u) -> np.ndarray:
    """(7,) end-effector (TCP) pose [x, y, z, qw, qx, qy, qz] in the world frame."""
    return u.agent.tcp.pose.raw_pose[0].cpu().numpy().astype(np.float64)


def measured_vector(qpos: np.ndarray) -> np.ndarray:
    """(..., 8) joints and gripper opening (1 open, 0 closed) from Panda qpos (..., 9)."""
    qpos = np.asarray(qpos, np.float64)
    opening = np.clip(qpos[..., ARM_JOINTS:].sum(-1) / (2 * FINGER_OPEN_M), 0.0, 1.0)
    return np.concatenate([qpos[..., :ARM_JOINTS], opening[..., None]], axis=-1)


def joint_vectors(actions: np.ndarray, qpos: np.ndarray, control_mode: str) -> np.ndarray:
    """(T + 1, 8) joint vectors of an episode (see the module docstring)."""
    vector = measured_vector(qpos)
    if control_mode == "pd_joint_pos":
        vector[1:, :ARM_JOINTS] = actions[:, :ARM_JOINTS]
        vector[1:, ARM_JOINTS] = (np.asarray(actions[:, ARM_JOINTS]) + 1) / 2
    return vector


@dataclass
class Replay:
    tcp: np.ndarray  # (T + 1, 7)
    vector: np.ndarray  # (T + 1, 8)
    frames: list[Frame] | None


def replay(u, traj: Trajectory, render: bool) -> Replay:
    """Set every recorded state in turn: end-effector poses, joint vectors and (if `render`) frames."""
    tcp, qpos, frames = [], [], [] if render else None
    for t in range(len(traj.actions) + 1):
        u.set_state_dict(traj.state(t))
        tcp.append(tcp_pose(u))
        qpos.append(u.agent.robot.get_qpos()[0].cpu().numpy())
        if render:
            frames.append(capture(u))
    return Replay(np.stack(tcp), joint_vectors(traj.actions, np.stack(qpos), traj.control_mode), frames)


def command(vector: np.ndarray) -> np.ndarray:
    """A joint vector as the pd_joint_pos action: joint targets, gripper -1 closed / 1 open."""
    return np.concatenate([vector[:ARM_JOINTS], [1.0 if vector[ARM_JOINTS] > 0.5 else -1.0]]).astype(np.float32)


# -- the closed-loop environment ---------------------------------------------------------------

@dataclass(frozen=True)
class ManiSkillEnvConfig:
    max_steps_factor: float = 1.5  # episode limit: this many times the expert's length
    oracle_points: int = 10


class ManiSkillEnv:
    """One evaluation episode: the layout of an expert trajectory (its seed, its first state)."""

    def __init__(self, task: str, env_kwargs: dict, traj: Trajectory, cfg: ManiSkillEnvConfig = ManiSkillEnvConfig()):
        self.task, self.traj, self.cfg = task, traj, cfg
        self.gym = make_env(TASKS[task].env_id, **env_kwargs)
        self.u = self.gym.unwrapped
        self.gym.reset(seed=traj.seed)
        expert = replay(self.u, traj, render=False)
        self.expert_tcp, self.expert_vector = expert.tcp[:, :3], expert.vector
        self.max_steps = int(np.ceil(len(traj.actions) * cfg.max_steps_factor))
        self.reset()

    def expert_vectors(self) -> np.ndarray:
        """(T + 1, 8) the expert's joint vectors; vector[t + 1] is the data's action at t."""
        return self.expert_vector

    def reset(self) -> Observation:
        self.gym.reset(seed=self.traj.seed)
        self.u.set_state_dict(self.traj.state(0))  # exactly the expert's start
        self.t, self.success, self.progress = 0, False, 0
        self.vector = self.expert_vector[0].copy()
        self.camera = capture(self.u)
        return Observation(self.camera.rgb, self.vector.copy(), 0)

    @property
    def done(self) -> bool:
        return self.success or self.t >= self.max_steps

    def state(self) -> np.ndarray:
        return self.vector.copy()

    def observe(self) -> Observation:
        if self.camera is None:
            self.camera = capture(self.u)
        return Observation(self.camera.rgb, self.state(), self.t)

    def step(self, action: np.ndarray) -> None:
        if self.done:
            return
        cmd = command(np.asarray(action, np.float64))
        _, _, _, _, info = self.gym.step(cmd)
        self.vector = np.concatenate([cmd[:ARM_JOINTS], [(cmd[ARM_JOINTS] + 1) / 2]]).astype(np.float64)
        self.t += 1
        self.camera = None  # rendered when observed
        self.success = bool(info["success"][0]) if "success" in info else False

    def oracle_path(self) -> list:
        """The expert's remaining end-effector path from where the arm is now, projected."""
        if self.camera is None:
            self.camera = capture(self.u)
        height, width = self.camera.rgb.shape[:2]
        path, self.progress = live_oracle_path(tcp_pose(self.u)[:3], float(self.vector[ARM_JOINTS]), self.expert_tcp,
                                               self.expert_vector[:, ARM_JOINTS], self.progress,
                                               self.camera.intrinsic_cv, self.camera.extrinsic_cv, width, height,
                                               self.cfg.oracle_points)
        return path

    @property
    def instruction(self) -> str:
        return TASKS[self.task].seen[0]

    def close(self) -> None:
        self.gym.close()
