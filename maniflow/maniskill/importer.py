"""ManiSkill trajectories -> RoboTwin 2.0 episode files, and local demonstration generation.

    maniflow maniskill-generate --out data/maniskill --tasks pick_cube --episodes 50
    maniflow maniskill-import --trajectory PickCube-v1/motionplanning/trajectory.h5 \\
        --out data/maniskill --task pick_cube --env clean

Each episode of a trajectory file (`x.h5` + `x.json`, as ManiSkill's RecordEpisode and
replay_trajectory write them) is replayed state by state in the CPU simulation and written as
`{out}/{task}/{config}/data/episode{N}.hdf5` with its instructions:

    observation/head_camera/rgb             the sensor camera (base_camera), JPEG as RoboTwin
    observation/head_camera/{intrinsic_cv, extrinsic_cv, cam2world_gl}   per frame
    joint_action/vector (T, 8)              Panda joints + gripper (see maniskill/env.py)
    joint_action/right_arm, right_gripper   the same, split
    endpose/right_endpose (T, 7), right_gripper   the TCP pose [x y z qw qx qy qz], 1 open; the
                                            file attribute tcp_offset_m = 0 says it is the
                                            fingertip centre itself (RoboTwin's lies 0.12 m behind)
    endpose/left_*                          a parked, constant pose (RoboTwin's layout has two
                                            arms; a still arm is never the active one)

so the frames store, paths (the oracle included), overlays, datasets, training and the flows
read ManiSkill episodes exactly as RoboTwin ones. Frames are T + 1: the start state and the
state after every action.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from maniflow import __version__
from maniflow.maniskill import ARM, ARM_JOINTS, DISTRACTORS, TASKS
from maniflow.maniskill.env import TrajectoryError, make_env, read_trajectories, replay
from maniflow.maniskill.planner import plan_demos
from maniflow.robotwin import (
    ARMS,
    DEFAULT_CONFIG_NAMES,
    TCP_OFFSET_ATTR,
    CameraMatrices,
    EpisodeContents,
    write_robotwin_episode,
)
from maniflow.storage import write_json

log = logging.getLogger("maniflow.maniskill")
PARKED_POSE = np.array([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
IMPORTER = f"maniflow.maniskill {__version__}"


def task_for_env_id(env_id: str) -> str | None:
    return next((name for name, t in TASKS.items() if env_id in (t.env_id, t.base_id)), None)


def import_trajectory(h5_path, out, task: str, env: str, config_names: dict = DEFAULT_CONFIG_NAMES,
                      first_index: int = 0, only: list[int] | None = None, camera_size: int | None = None,
                      instruction: str | None = None, jpeg_quality: int = 95) -> list[dict]:
    """Write the episodes of one trajectory file (or the ones at positions `only`) as RoboTwin
    episodes numbered from `first_index` (+ position). Returns one record per episode written."""
    env_info, trajs = read_trajectories(h5_path)
    known = task_for_env_id(env_info.get("env_id", ""))
    if instruction is None and known is None:
        raise TrajectoryError(f"{h5_path}: {env_info.get('env_id')} is not one of the known tasks "
                              f"({', '.join(t.base_id for t in TASKS.values())}); give its instruction")
    seen = [instruction] if instruction else list(TASKS[known].seen)
    unseen = [] if instruction else list(TASKS[known].unseen)
    kwargs = dict(env_info.get("env_kwargs") or {})
    if camera_size:
        kwargs["sensor_configs"] = {**(kwargs.get("sensor_configs") or {}), "width": camera_size, "height": camera_size}
    gym_env = make_env(env_info["env_id"], **kwargs)
    u = gym_env.unwrapped
    config_dir = Path(out) / task / config_names[env]
    records = []
    for pos in (only if only is not None else range(len(trajs))):
        traj = trajs[pos]
        gym_env.reset(seed=traj.seed)
        r = replay(u, traj, render=True)
        if r.vector.shape[1] != ARM_JOINTS + 1:
            raise TrajectoryError(f"{h5_path} [traj_{traj.episode['episode_id']}]: robot with "
                                  f"{r.vector.shape[1] - 1} joints; only the Panda (7) is supported")
        t = len(r.frames)
        frames = {"head": np.stack([f.rgb for f in r.frames])}
        camera = {"head": CameraMatrices(*(np.stack([getattr(f, k) for f in r.frames])
                                           for k in ("intrinsic_cv", "extrinsic_cv", "cam2world_gl")))}
        idle = next(a for a in ARMS if a != ARM)
        index = first_index + pos
        write_robotwin_episode(config_dir / "data" / f"episode{index}.hdf5", EpisodeContents(
            rgb=frames, camera=camera, vector=r.vector,
            arm_joints={ARM: r.vector[:, :ARM_JOINTS]}, joint_gripper={ARM: r.vector[:, ARM_JOINTS]},
            endpose={ARM: r.tcp, idle: np.tile(PARKED_POSE, (t, 1))},
            gripper={ARM: r.vector[:, ARM_JOINTS], idle: np.ones(t)},
            attrs={"source": "maniskill", "importer": IMPORTER, "env_id": env_info["env_id"], TCP_OFFSET_ATTR: 0.0,
                   "seed": int(traj.seed) if traj.seed is not None else -1, "task": task, "env": env,
                   "config": config_names[env], "episode": index, "trajectory": str(h5_path),
                   "trajectory_episode": int(traj.episode["episode_id"]), "control_mode": traj.control_mode,
                   "env_kwargs": json.dumps(kwargs, sort_keys=True, default=str)}),
            jpeg_quality)
        (config_dir / "instructions").mkdir(parents=True, exist_ok=True)
        write_json(config_dir / "instructions" / f"episode{index}.json", {"seen": seen, "unseen": unseen})
        records.append({"episode": index, "seed": traj.seed, "frames": t})
        log.info("%s/%s: episode %d (seed %s, %d frames) -> %s", task, env, index, traj.seed, t, config_dir)
    gym_env.close()
    return records


def _chunks(n: int, parts: int) -> list[list[int]]:
    return [c.tolist() for c in np.array_split(np.arange(n), max(1, min(parts, n))) if len(c)]


def generate_task(out, task: str, env: str, episodes: int, seed: int = 0, camera_size: int = 128,
                  workers: int = 1, config_names: dict = DEFAULT_CONFIG_NAMES) -> dict:
    """Plan `episodes` expert demonstrations of `task` in the `env` scene and import them
    (skipped when an identical set is there). Plans are kept in `{out}/.plans/`."""
    config_dir = Path(out) / task / config_names[env]
    manifest_path = config_dir / ".maniflow-maniskill.json"
    manifest = {"task": task, "env": env, "episodes": episodes, "seed": seed, "camera_size": camera_size,
                "distractors": DISTRACTORS[env], "importer": IMPORTER}
    files = [config_dir / "data" / f"episode{i}.hdf5" for i in range(episodes)]
    if manifest_path.exists() and json.loads(manifest_path.read_text()) == manifest and all(p.exists() for p in files):
        return {"task": task, "env": env, "written": 0, "skipped": episodes}
    manifest_path.unlink(missing_ok=True)
    plan_dir = Path(out) / ".plans" / task / config_names[env]
    summary = plan_demos(plan_dir, task, DISTRACTORS[env], episodes, seed)
    log.info("%s/%s: %d expert plans (%d seeds failed) in %s s", task, env, len(summary["seeds"]),
             len(summary["failed_seeds"]), summary["seconds"])
    h5 = plan_dir / "trajectory.h5"
    jobs = _chunks(episodes, workers)
    if len(jobs) == 1:
        records = import_trajectory(h5, out, task, env, config_names, camera_size=camera_size)
    else:
        with ProcessPoolExecutor(len(jobs)) as pool:
            futures = [pool.submit(import_trajectory, h5, out, task, env, config_names, 0, job, camera_size)
                       for job in jobs]
            records = [r for f in futures for r in f.result()]
    write_json(config_dir / "scene_info.json", {f"episode_{r['episode']}": {"seed": r["seed"], "source": "maniskill",
                                                                            "info": {"{a}": ARM}} for r in records})
    write_json(manifest_path, manifest)
    return {"task": task, "env": env, "written": len(records), "skipped": 0,
            "frames": sum(r["frames"] for r in records), "failed_plans": len(summary["failed_seeds"])}
