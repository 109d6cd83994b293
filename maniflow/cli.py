"""`maniflow`: run each pipeline stage without Prefect, for one episode, one task or all.

    maniflow generate   write the embedded synthetic RoboTwin 2.0 episodes
    maniflow extract    episodes of (env, task) -> frames store (decoded once, Zarr)
    maniflow inspect    summary of an episode file, a data root or any store the project writes
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from maniflow.robotwin import CAMERAS, DEFAULT_CONFIG_NAMES, ENVS, SINGLE_ARM_TASKS, discover_episodes

DEFAULT_DATA = os.environ.get("MANIFLOW_DATA", "data/robotwin")
DEFAULT_WORK = os.environ.get("MANIFLOW_WORK", "work")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _config_names(args) -> dict[str, str]:
    return {"clean": args.clean_config, "cluttered": args.cluttered_config}


def _add_config_names(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clean-config", default=DEFAULT_CONFIG_NAMES["clean"],
                   help="RoboTwin config directory of the clean environment (default %(default)s)")
    p.add_argument("--cluttered-config", default=DEFAULT_CONFIG_NAMES["cluttered"],
                   help="RoboTwin config directory of the cluttered environment (default %(default)s)")


def cmd_generate(args) -> int:
    from maniflow.synthetic import GeneratorConfig, generate_dataset

    cfg = GeneratorConfig(tasks=args.tasks, envs=args.envs, config_names=_config_names(args),
                          episodes=args.episodes, seed=args.seed, cameras=args.cameras,
                          step_m=args.step, occlusion_prob=args.occlusion,
                          frame_storage=args.frame_storage)
    start = time.perf_counter()
    print(f"writing synthetic RoboTwin 2.0 episodes to {args.out} "
          f"({len(cfg.tasks)} tasks x {len(cfg.envs)} envs x {cfg.episodes} episodes, seed {cfg.seed})")
    generate_dataset(args.out, cfg, workers=args.workers)
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_extract(args) -> int:
    from maniflow.frames import extract_task, worker_pool

    names = _config_names(args)
    found = {env: sorted({r.task for r in discover_episodes(args.root, configs=[names[env]])}) for env in ENVS}
    envs = args.envs or tuple(env for env in ENVS if found[env])
    if not envs:
        print(f"no episodes under {args.root} for configs {sorted(names.values())}", file=sys.stderr)
        return 1
    status = 0
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(worker_pool(args.workers)) if args.workers > 1 else None
        for env in envs:
            tasks = args.tasks or found[env]
            if not tasks:
                print(f"no episodes for env {env} (config {names[env]}) under {args.root}", file=sys.stderr)
                status = 1
            for task in tasks:
                try:
                    report = extract_task(args.root, args.work, env, names[env], task, args.camera,
                                          retry_quarantined=args.retry_quarantined, executor=pool)
                except FileNotFoundError as e:
                    print(f"{env}/{task}: {e}", file=sys.stderr)
                    status = 1
                    continue
                print(report.summary())
                if report.quarantined:
                    status = max(status, 3)
    print(f"done in {time.perf_counter() - start:.1f} s")
    return status


def cmd_inspect(args) -> int:
    from maniflow.inspect import describe

    for path in args.paths:
        print(describe(path))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maniflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("generate", help="write synthetic RoboTwin 2.0 episodes (the embedded default data)",
                       description="Render scripted tabletop episodes for the six single-arm tasks "
                       "and write them in RoboTwin 2.0's layout: {out}/{task}/{config}/data/episode{N}.hdf5, "
                       "instructions/ and scene_info.json. Deterministic per seed; an existing identical "
                       "set is left alone. The files say they are synthetic.")
    p.add_argument("--out", default=DEFAULT_DATA, help="data root to write (default %(default)s)")
    p.add_argument("--tasks", type=_csv, default=SINGLE_ARM_TASKS, help="comma-separated task names "
                   "(default: the six single-arm tasks)")
    p.add_argument("--envs", type=_csv, default=ENVS, help="comma-separated: clean,cluttered (default both)")
    p.add_argument("--episodes", type=int, default=10, help="episodes per task and env (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default %(default)s)")
    p.add_argument("--cameras", type=_csv, default=("head",),
                   help="cameras to record: head, front (default head)")
    p.add_argument("--step", type=float, default=0.015,
                   help="mean end-effector travel per frame in metres; smaller = longer episodes "
                   "(default %(default)s, about 40-90 frames per episode)")
    p.add_argument("--occlusion", type=float, default=0.5,
                   help="share of episodes in which the idle arm hides the task object for a while "
                   "(default %(default)s)")
    p.add_argument("--frame-storage", choices=("fixed", "vlen"), default="fixed",
                   help="JPEG bytes as fixed-length strings (RoboTwin) or variable-length uint8")
    p.add_argument("--workers", type=int, default=1, help="processes (default %(default)s)")
    _add_config_names(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("extract", help="decode episodes into frames stores (Zarr), resumably",
                       description="For each (env, task): decode every episode of "
                       "{root}/{task}/{config}/data once into {work}/frames/{env}/{task}.zarr. A rerun "
                       "skips unchanged episodes; bad episodes are quarantined with the reason (file, "
                       "key, frame) and the rest complete. Exit status 3 if any episode was quarantined.")
    p.add_argument("--root", default=DEFAULT_DATA, help="RoboTwin data root (default %(default)s)")
    p.add_argument("--work", default=DEFAULT_WORK, help="output root (default %(default)s)")
    p.add_argument("--envs", type=_csv, default=None,
                   help="comma-separated: clean,cluttered (default: those found under --root)")
    p.add_argument("--tasks", type=_csv, default=None, help="comma-separated task names (default: all found)")
    p.add_argument("--camera", default="head", choices=CAMERAS, help="camera to extract (default head)")
    p.add_argument("--workers", type=int, default=1, help="processes (default %(default)s)")
    p.add_argument("--retry-quarantined", action="store_true",
                   help="try quarantined episodes again even if their files did not change")
    _add_config_names(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("inspect", help="summarise an episode file, data root or store",
                       description="Print a human summary of a RoboTwin episode (.hdf5), a RoboTwin "
                       "data root, a frames store or any Zarr store (arrays, shapes, chunks, "
                       "compression, bytes per frame, quarantined episodes).")
    p.add_argument("paths", nargs="+", type=Path, help="files or directories")
    p.set_defaults(func=cmd_inspect)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    unknown_envs = set(getattr(args, "envs", None) or ()) - set(ENVS)
    if unknown_envs:
        print(f"unknown env(s) {sorted(unknown_envs)}; use clean and/or cluttered", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"maniflow {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
