"""ManiSkill 3 on the CPU: closed-loop stepping and episode import, two ways each. Prints JSON.

    closed loop   ours: `ManiSkillEnv` steps in obs_mode "none" and renders only the frames the
                  policy looks at (the last n_obs = 2 of every execute = 8 steps), as
                  `maniflow.evaluate.closed_loop` does; the usual way: a gym env in obs_mode
                  "rgb", rendering every step. Both replay the same expert plans (PickCube,
                  cluttered) to the end, so they do the same physics.
    import        frames/s of `import_trajectory` (replay every recorded state, render, JPEG,
                  write RoboTwin episodes), one process.

    .venv/bin/python benchmarks/bench_maniskill.py [--episodes 4] [--camera 128]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import gymnasium as gym

from maniflow.maniskill import DISTRACTORS, TASKS
from maniflow.maniskill.env import ManiSkillEnv, read_trajectories
from maniflow.maniskill.envs import render_backend
from maniflow.maniskill.importer import import_trajectory
from maniflow.maniskill.planner import plan_demos

TASK, N_OBS, EXECUTE = "pick_cube", 2, 8


def ours(envs: list[ManiSkillEnv]) -> int:
    steps = 0
    for env in envs:
        script = env.expert_vectors()
        env.reset()
        for t in range(len(script) - 1):
            env.step(script[t + 1])
            if t % EXECUTE >= EXECUTE - N_OBS:
                env.observe()
            steps += 1
    return steps


def render_every_step(trajs, camera: int) -> int:
    env = gym.make(TASKS[TASK].env_id, obs_mode="rgb", control_mode="pd_joint_pos", sim_backend="cpu",
                   render_backend=render_backend(), num_distractors=DISTRACTORS["cluttered"],
                   sensor_configs={"width": camera, "height": camera})
    steps = 0
    for traj in trajs:
        env.reset(seed=traj.seed)
        env.unwrapped.set_state_dict(traj.state(0))
        for action in traj.actions:  # the expert's pd_joint_pos commands, as ours sends them
            env.step(action)
            steps += 1
    env.close()
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--camera", type=int, default=128)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plan = Path(tmp) / "plan"
        plan_demos(plan, TASK, DISTRACTORS["cluttered"], args.episodes, 1000)
        env_info, trajs = read_trajectories(plan / "trajectory.h5")
        kwargs = {**env_info["env_kwargs"], "sensor_configs": {"width": args.camera, "height": args.camera}}
        envs = [ManiSkillEnv(TASK, kwargs, t) for t in trajs]  # also warms the renderer up
        render_every_step(trajs[:1], args.camera)  # warm-up of the other path

        start = time.perf_counter()
        ours_steps = ours(envs)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        every_steps = render_every_step(trajs, args.camera)
        every_s = time.perf_counter() - start

        start = time.perf_counter()
        records = import_trajectory(plan / "trajectory.h5", Path(tmp) / "root", TASK, "cluttered",
                                    camera_size=args.camera)
        import_s = time.perf_counter() - start
    frames = sum(r["frames"] for r in records)
    print(json.dumps({
        "benchmark": "maniskill", "task": TASK, "episodes": args.episodes, "camera": args.camera,
        "closed_loop_steps_per_s": {"ours_render_observed": round(ours_steps / ours_s, 1),
                                    "render_every_step": round(every_steps / every_s, 1),
                                    "speedup": round((ours_steps / ours_s) / (every_steps / every_s), 2)},
        "import": {"frames": frames, "seconds": round(import_s, 2), "frames_per_s": round(frames / import_s, 1)},
    }, indent=1), flush=True)


if __name__ == "__main__":
    main()
