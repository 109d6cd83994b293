"""Motion-planned demonstrations with ManiSkill's experts, recorded as a ManiSkill trajectory.

Runs in the planner environment (mplib 0.1.1 crashes under NumPy 2), as a subprocess of
`maniflow.maniskill.planner`; it imports only ManiSkill and the project's task variants:

    .venv-planner/bin/python -m maniflow.maniskill.plan --task pick_cube --distractors 8 \\
        --count 20 --start-seed 0 --out DIR

Seeds are tried from `start_seed` upwards until `count` succeed (at most `max_seeds` tries);
failed plans are dropped, as ManiSkill's own `--only-count-success` does. DIR receives
`trajectory.h5` + `trajectory.json` (ManiSkill's RecordEpisode format: env states, pd_joint_pos
actions, no observations) and `summary.json`; it is written under a temporary name and renamed
when complete. The last line printed is the summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import gymnasium as gym
from mani_skill.examples.motionplanning.panda.run import MP_SOLUTIONS
from mani_skill.utils.wrappers.record import RecordEpisode

from maniflow.maniskill import TASKS
from maniflow.maniskill.envs import render_backend  # (importing it registers the variants)


def plan(task: str, distractors: int, count: int, start_seed: int, out: Path, max_seeds: int) -> dict:
    spec = TASKS[task]
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    env = gym.make(spec.env_id, obs_mode="none", control_mode="pd_joint_pos", render_mode="rgb_array",
                   sim_backend="cpu", render_backend=render_backend(),
                   num_distractors=distractors)
    env = RecordEpisode(env, output_dir=str(tmp), trajectory_name="trajectory", save_video=False,
                        source_type="motionplanning", source_desc=f"ManiSkill's {spec.base_id} motion-planning "
                        "solution, recorded by maniflow", record_reward=False, save_on_reset=False)
    solve = MP_SOLUTIONS[spec.base_id]
    seeds, failed, lengths, start = [], [], [], time.perf_counter()
    seed = start_seed
    while len(seeds) < count and seed < start_seed + max_seeds:
        try:
            result = solve(env, seed=seed, debug=False, vis=False)
            ok = result != -1 and bool(result[-1]["success"].item())
        except Exception as e:  # the solutions raise on unreachable poses
            print(f"seed {seed}: planning failed ({e})", file=sys.stderr)
            ok = False
        if ok:
            env.flush_trajectory()
            seeds.append(seed)
            lengths.append(int(result[-1]["elapsed_steps"].item()))
        else:
            env.flush_trajectory(save=False)
            failed.append(seed)
        seed += 1
    env.close()
    summary = {"request": {"task": task, "distractors": distractors, "count": count, "start_seed": start_seed},
               "task": task, "env_id": spec.env_id, "distractors": distractors, "seeds": seeds,
               "failed_seeds": failed, "lengths": lengths, "seconds": round(time.perf_counter() - start, 2)}
    (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    if len(seeds) < count:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SystemExit(f"{task}: only {len(seeds)} of {count} plans succeeded in seeds "
                         f"{start_seed}..{seed - 1}: {json.dumps(summary)}")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return summary


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True, choices=sorted(TASKS))
    ap.add_argument("--distractors", type=int, default=0)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--start-seed", type=int, default=0)
    ap.add_argument("--max-seeds", type=int, default=None, help="seeds tried at most (default 3 x count + 10)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    summary = plan(a.task, a.distractors, a.count, a.start_seed, a.out, a.max_seeds or 3 * a.count + 10)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
