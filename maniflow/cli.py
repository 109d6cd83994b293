"""`maniflow`: run each pipeline stage without Prefect, for one episode, one task or all.

    maniflow generate      write the embedded synthetic RoboTwin 2.0 episodes
    maniflow maniskill-generate  ManiSkill 3 expert demonstrations, as RoboTwin 2.0 episodes
    maniflow maniskill-import    a ManiSkill trajectory (.h5 + .json) as RoboTwin 2.0 episodes
    maniflow extract       episodes of (env, task) -> frames store (decoded once, Zarr)
    maniflow paths         label every frame with a path (VLM server or oracle), resumably
    maniflow serve-paths   loopback VLM server speaking the HAMSTER / PEEK / OpenAI protocol
    maniflow path-quality  how far a label's paths are from the ground truth, per frame, task and env
    maniflow import-paths  bring existing HAMSTER output directories into the path store
    maniflow render        frames + paths -> original / overlay / concat training datasets (Zarr)
    maniflow export        a rendered dataset as LeRobot v2.1 / v3.0, or as RoboTwin's policies' zarr
    maniflow train         one ManiFlow policy (condition x dataset), resumable, with checkpoints
    maniflow view          a read-only viewer of a work directory in the browser
    maniflow inspect       summary of an episode file, a data root or any store the project writes
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

from maniflow.config import add_options, csv, from_args
from maniflow.robotwin import CAMERAS, ENVS, LAYOUTS, SINGLE_ARM_TASKS, SourceOptions, discover_episodes
from maniflow.workspace import DEFAULT_LABEL, Cell, Workspace, default_root, default_work

DEFAULT_DATA = default_root()
DEFAULT_WORK = default_work()


def _config_names(args) -> dict[str, str]:
    return from_args(SourceOptions, args).config_names


def _add_config_names(p: argparse.ArgumentParser) -> None:
    add_options(p, SourceOptions, skip=("embodiment", "layout", "tcp_offset"))


def cmd_generate(args) -> int:
    from maniflow.synthetic import GeneratorConfig, generate_dataset

    cfg = GeneratorConfig(tasks=args.tasks, envs=args.envs, config_names=_config_names(args),
                          episodes=args.episodes, seed=args.seed, cameras=args.cameras,
                          step_m=args.step, occlusion_prob=args.occlusion,
                          frame_storage=args.frame_storage, layout=args.layout)
    start = time.perf_counter()
    print(f"writing synthetic RoboTwin episodes ({cfg.layout} layout) to {args.out} "
          f"({len(cfg.tasks)} tasks x {len(cfg.envs)} envs x {cfg.episodes} episodes, seed {cfg.seed})")
    generate_dataset(args.out, cfg, workers=args.workers)
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def _generate_options(p: argparse.ArgumentParser) -> None:
    p.description = ("Render scripted tabletop episodes for the six single-arm tasks "
                     "and write them as RoboTwin's collector does: stable 2.0's layout "
                     "{out}/{task}/{config}/data/episode{N}.hdf5 with instructions/, or the current one "
                     "{out}/{config}/{task}/maniflow_synthetic/data/episode_{N:07d}.hdf5 with instruction/; "
                     "scene_info.json in both. Deterministic per seed; an existing identical set is left "
                     "alone. The files say they are synthetic.")
    p.add_argument("--out", default=DEFAULT_DATA, help="data root to write (default %(default)s)")
    p.add_argument("--tasks", type=csv, default=SINGLE_ARM_TASKS, help="comma-separated task names "
                   "(default: the six single-arm tasks)")
    p.add_argument("--envs", type=csv, default=ENVS, help="comma-separated: clean,cluttered (default both)")
    p.add_argument("--episodes", type=int, default=10, help="episodes per task and env (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default %(default)s)")
    p.add_argument("--cameras", type=csv, default=("head",),
                   help="cameras to record: head, front (default head)")
    p.add_argument("--step", type=float, default=0.015,
                   help="mean end-effector travel per frame in metres; smaller = longer episodes "
                   "(default %(default)s, about 40-90 frames per episode)")
    p.add_argument("--occlusion", type=float, default=0.5,
                   help="share of episodes in which the idle arm hides the task object for a while "
                   "(default %(default)s)")
    p.add_argument("--frame-storage", choices=("fixed", "vlen"), default="fixed",
                   help="JPEG bytes as fixed-length strings (RoboTwin) or variable-length uint8 (stable 2.0 only)")
    p.add_argument("--layout", choices=tuple(LAYOUTS), default="robotwin2",
                   help="robotwin2: RoboTwin 2.0's stable layout; xpolicylab: RoboTwin's current one "
                   "(default %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="processes (default %(default)s)")
    _add_config_names(p)
    p.set_defaults(func=cmd_generate)


def cmd_maniskill_generate(args) -> int:
    from maniflow.maniskill import TASKS
    from maniflow.maniskill.importer import generate_task

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    unknown = set(args.tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown ManiSkill task(s) {sorted(unknown)}; known: {', '.join(TASKS)}")
    start = time.perf_counter()
    for task in args.tasks:
        for env in args.envs:
            r = generate_task(args.out, task, env, args.episodes, args.seed, args.camera_size, args.workers,
                              _config_names(args))
            print(f"{task}/{env}: " + (f"up to date ({r['skipped']} episodes)" if not r["written"] else
                  f"wrote {r['written']} episodes, {r['frames']} frames ({r['failed_plans']} seeds the "
                  "expert failed were skipped)"), flush=True)
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def _maniskill_generate_options(p: argparse.ArgumentParser) -> None:
    p.description = ("Plan demonstrations with ManiSkill's motion-planning experts (in the "
                     "planner environment, `make maniskill`) in the clean scene and the cluttered scene "
                     "(distractor primitives on the table), replay them on the CPU renderer and write "
                     "{out}/{task}/{config}/data/episode{N}.hdf5 in RoboTwin 2.0's layout. Seeds the expert "
                     "fails are skipped; an identical existing set is left alone.")
    p.add_argument("--out", default="data/maniskill", help="data root to write (default %(default)s)")
    p.add_argument("--tasks", type=csv, default=("pick_cube",),
                   help="comma-separated: pick_cube, push_cube, pull_cube, stack_cube (default pick_cube)")
    p.add_argument("--envs", type=csv, default=ENVS, help="comma-separated: clean,cluttered (default both)")
    p.add_argument("--episodes", type=int, default=20, help="episodes per task and env (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="first seed tried (default %(default)s)")
    p.add_argument("--camera-size", type=int, default=128, help="camera width and height (default %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="rendering processes (default %(default)s)")
    _add_config_names(p)
    p.set_defaults(func=cmd_maniskill_generate)


def cmd_maniskill_import(args) -> int:
    from maniflow.maniskill.importer import import_trajectory

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    records = import_trajectory(args.trajectory, args.out, args.task, args.env, _config_names(args),
                                args.first_index, camera_size=args.camera_size, instruction=args.instruction)
    print(f"{args.trajectory}: wrote {len(records)} episodes ({sum(r['frames'] for r in records)} frames) to "
          f"{args.out}/{args.task}/{_config_names(args)[args.env]}")
    return 0


def _maniskill_import_options(p: argparse.ArgumentParser) -> None:
    p.description = ("Replay every episode of a ManiSkill trajectory file (RecordEpisode or "
                     "replay_trajectory output: needs env_states) and write it as RoboTwin 2.0 episodes.")
    p.add_argument("--trajectory", type=Path, required=True, help="the .h5 (its .json next to it)")
    p.add_argument("--out", default="data/maniskill", help="data root (default %(default)s)")
    p.add_argument("--task", required=True, help="task name to file the episodes under")
    p.add_argument("--env", choices=ENVS, required=True, help="which environment the episodes belong to")
    p.add_argument("--first-index", type=int, default=0, help="number of the first episode written")
    p.add_argument("--camera-size", type=int, default=None, help="re-render at this size (default: as recorded)")
    p.add_argument("--instruction", default=None, help="instruction (needed for tasks maniflow does not know)")
    _add_config_names(p)
    p.set_defaults(func=cmd_maniskill_import)


def cmd_extract(args) -> int:
    from maniflow.frames import extract_task, worker_pool

    source = from_args(SourceOptions, args)
    names = source.config_names
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
                                          retry_quarantined=args.retry_quarantined, executor=pool, source=source)
                except (FileNotFoundError, ValueError) as e:
                    print(f"{env}/{task}: {e}", file=sys.stderr)
                    status = 1
                    continue
                print(report.summary())
                if report.quarantined:
                    status = max(status, 3)
    print(f"done in {time.perf_counter() - start:.1f} s")
    return status


def _extract_options(p: argparse.ArgumentParser) -> None:
    p.description = ("For each (env, task): decode every episode once into "
                     "{work}/frames/{env}/{task}.zarr, from either RoboTwin layout under --root, found "
                     "without flags: {task}/{config}/data/episode{N}.hdf5 (stable 2.0) or "
                     "{config}/{task}/{embodiment}/data/episode_{N:07d}.hdf5 (current). A rerun skips "
                     "unchanged episodes; bad episodes (including cameras that cannot be right) are "
                     "quarantined with the reason (file, key, frame) and the rest complete. Exit status 3 "
                     "if any episode was quarantined.")
    p.add_argument("--root", default=DEFAULT_DATA, help="RoboTwin data root (default %(default)s)")
    p.add_argument("--work", default=DEFAULT_WORK, help="output root (default %(default)s)")
    p.add_argument("--envs", type=csv, default=None,
                   help="comma-separated: clean,cluttered (default: those found under --root)")
    p.add_argument("--tasks", type=csv, default=None, help="comma-separated task names (default: all found)")
    p.add_argument("--camera", default="head", choices=CAMERAS, help="camera to extract (default head)")
    p.add_argument("--workers", type=int, default=1, help="processes (default %(default)s)")
    p.add_argument("--retry-quarantined", action="store_true",
                   help="try quarantined episodes again even if their files did not change")
    add_options(p, SourceOptions)
    p.set_defaults(func=cmd_extract)


def _parse_ports(text: str) -> list[int]:
    ports = []
    for item in csv(text):
        lo, _, hi = item.partition("-")
        ports += list(range(int(lo), int(hi or lo) + 1))
    return ports


class _Progress:
    """One self-updating line on stderr (a plain line per call when stderr is not a terminal)."""

    def __init__(self, label: str):
        self.label, self.start, self.last = label, time.perf_counter(), 0.0
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int, note: str = "") -> None:
        now = time.perf_counter()
        if done < total and now - self.last < (0.2 if self.tty else 10.0):
            return
        self.last = now
        width = 30
        filled = int(width * done / total) if total else width
        rate = done / (now - self.start) if now > self.start else 0.0
        line = f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate:.1f}/s {note}"
        print(("\r" + line) if self.tty else line, end="\n" if (done >= total or not self.tty) else "",
              file=sys.stderr, flush=True)


def _found_options(p: argparse.ArgumentParser) -> None:
    """--envs and --tasks of a command that runs on the (env, task) pairs found in the work directory."""
    p.add_argument("--envs", type=csv, default=None, help="comma-separated: clean,cluttered (default: all found)")
    p.add_argument("--tasks", type=csv, default=None, help="comma-separated task names (default: all found)")


def _frames_stores(work, envs, tasks, camera: str) -> list[tuple[str, str]]:
    """The (env, task) pairs with a frames store under `work`; FileNotFoundError if none."""
    found = Workspace(work).frames_stores(envs, tasks, camera)
    if not found:
        raise FileNotFoundError(f"no frames stores under {Path(work) / 'frames'} for these envs/tasks; "
                                "run maniflow extract")
    return found


def cmd_paths(args) -> int:
    from maniflow.paths.client import ClientConfig, NoEndpointAvailable
    from maniflow.paths.label import ProviderConfig, label_paths

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    provider = from_args(ProviderConfig, args)
    client = from_args(ClientConfig, args) if provider.provider.needs_client else None
    pairs = _frames_stores(args.work, args.envs, args.tasks, args.camera)
    status = 0
    for env, task in pairs:
        try:
            report = label_paths(args.work, env, task, provider, client, camera=args.camera,
                                 episodes=args.episodes,
                                 progress=_Progress(f"{env}/{task}"))
        except NoEndpointAvailable as e:
            print(f"maniflow paths: {e}", file=sys.stderr)
            return 4
        print(report.summary())
        if report.faults:
            status = 3
    return status


def _paths_options(p: argparse.ArgumentParser) -> None:
    from maniflow.paths.client import ClientConfig
    from maniflow.paths.label import ProviderConfig

    p.description = ("For each (env, task) frames store under --work: ask the provider for a "
                     "path on every frame not answered yet and write {work}/paths/{label}/{env}/{task}/. "
                     "VLM providers spread the frames over all endpoints (each with --in-flight "
                     "requests at a time), retry failures elsewhere and take failing endpoints out of "
                     "rotation. Exit status 3 if frames failed to parse or got no answer (they have a "
                     "fallback path and are listed in summary.json), 4 if no endpoint answered.")
    p.add_argument("--work", default=DEFAULT_WORK, help="work root with frames/ (default %(default)s)")
    _found_options(p)
    p.add_argument("--episodes", type=lambda t: [int(x) for x in csv(t)], default=None,
                   help="comma-separated episode numbers (default all)")
    p.add_argument("--camera", default="head", choices=CAMERAS, help="camera (default head)")
    add_options(p, ProviderConfig)
    add_options(p, ClientConfig)
    p.set_defaults(func=cmd_paths)


def cmd_serve_paths(args) -> int:
    from maniflow.paths.server import Faults, serve_paths

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    faults = Faults(latency_s=args.latency, jitter_s=args.jitter, error_rate=args.error_rate,
                    timeout_rate=args.timeout_rate, hang_s=args.hang, malformed_rate=args.malformed_rate,
                    outage_after=args.outage_after, shift=args.shift, flip_gripper=args.flip_gripper, seed=args.seed)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ValueError(f"API key variable {args.api_key_env} is not set")
    serve_paths(args.work, _parse_ports(args.ports), args.host, faults, args.models, args.ready_file, api_key,
                args.batch, args.json_coords)
    return 0


def _pair(text: str) -> tuple[float, float]:
    x, y = (float(v) for v in text.split(","))
    return x, y


def _serve_paths_options(p: argparse.ArgumentParser) -> None:
    p.description = ("Serve POST /chat/completions (HAMSTER: list content) and "
                     "/v1/chat/completions (OpenAI: string content) on each port, one request at a "
                     "time per port (--batch: more), answering with the oracle path of the frame the image shows "
                     "(found among the frames stores under --work) in the format the prompt asks for (HAMSTER, "
                     "PEEK or Qwen-VL JSON points). Faults and known perturbations can be injected.")
    p.add_argument("--work", default=DEFAULT_WORK, help="work root with frames/ (default %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument("--ports", default="8000", help="ports, e.g. 8000-8003 or 8000,8001; 0 = any free "
                   "port (default %(default)s)")
    p.add_argument("--latency", type=float, default=0.0, help="seconds per request (default %(default)s)")
    p.add_argument("--jitter", type=float, default=0.0, help="extra uniform random latency, seconds")
    p.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered HTTP 500")
    p.add_argument("--timeout-rate", type=float, default=0.0, help="share of requests that hang --hang seconds")
    p.add_argument("--hang", type=float, default=30.0, help="seconds a hanging request waits (default %(default)s)")
    p.add_argument("--malformed-rate", type=float, default=0.0, help="share of answers broken like real ones")
    p.add_argument("--outage-after", type=int, default=None,
                   help="answer this many requests per port, then 503 for every request (a server gone down)")
    p.add_argument("--shift", type=_pair, default=(0.0, 0.0), metavar="DX,DY",
                   help="move every answer point by this fraction of the image (a known path error)")
    p.add_argument("--flip-gripper", action="store_true", help="invert every gripper state in the answers")
    p.add_argument("--batch", type=int, default=1,
                   help="requests answered at once per port, like a batching vLLM / SGLang server (default 1: HAMSTER)")
    p.add_argument("--json-coords", choices=("thousand", "pixel", "smart_resize"), default="thousand",
                   help="coordinates of Qwen-VL JSON answers: thousand (Qwen3-VL, default), pixel of the image sent, "
                   "smart_resize pixels of the image as Qwen2.5-VL's processor resizes it")
    p.add_argument("--models", type=csv, default=(), help="accepted model names (default: any)")
    p.add_argument("--seed", type=int, default=0, help="fault injection seed (default %(default)s)")
    p.add_argument("--ready-file", type=Path, default=None, help="write {\"urls\": [...]} here once listening")
    p.add_argument("--api-key-env", default=None,
                   help="require Authorization: Bearer $VAR, like vLLM's --api-key (VAR names the variable)")
    p.set_defaults(func=cmd_serve_paths)


def cmd_path_quality(args) -> int:
    from maniflow.paths.quality import markdown, path_quality

    _frames_stores(args.work, args.envs, args.tasks, args.camera)
    report = path_quality(args.work, args.label, args.envs, args.tasks, args.camera, args.out)
    print("\n".join(markdown(report.data)))
    measured = bool(report.data["tasks"])
    print(f"-> {report.out}/quality.json, quality.md" + (", quality.png" if measured else "")
          + ("" if report.written else " (unchanged since measured)"))
    return 0 if measured else 2


def _path_quality_options(p: argparse.ArgumentParser) -> None:
    p.description = ("Measure a path label's paths against the ground truth (the oracle, computed from the "
                     "frames store) on every frame: start- and end-point error and Fréchet distance in pixels, "
                     "gripper agreement, and each frame's parse outcome; distributions per episode, (env, task) "
                     "and env. Writes {work}/quality/{label}/quality.json, quality.md and quality.png. Exit "
                     "status 2 when no (env, task) has paths of the label.")
    p.add_argument("--work", default=DEFAULT_WORK, help="work root (default %(default)s)")
    p.add_argument("--label", default=DEFAULT_LABEL, help="path label to measure (default %(default)s)")
    _found_options(p)
    p.add_argument("--camera", default="head", choices=CAMERAS, help="camera (default head)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default {work}/quality/{label})")
    p.set_defaults(func=cmd_path_quality)


def cmd_import_paths(args) -> int:
    from maniflow.paths.label import ProviderConfig
    from maniflow.paths.legacy import import_hamster_dir

    provider = from_args(ProviderConfig, args, kind="hamster")
    tasks = args.tasks or sorted(p.name for p in Path(args.src).iterdir() if p.is_dir())
    for task in tasks:
        counts = import_hamster_dir(args.src, args.work, args.env, task, provider, camera=args.camera)
        raw = sum(c["raw"] for c in counts.values())
        pkl = sum(c["pickle"] for c in counts.values())
        print(f"{args.env}/{task}: {len(counts)} episodes, {raw} raw answers and {pkl} pickled paths imported "
              f"into label {provider.name}")
    return 0


def _import_paths_options(p: argparse.ArgumentParser) -> None:
    from maniflow.paths.label import ProviderConfig

    p.description = ("Read {src}/{task}/episode_NN/raw_outputs/*.txt (parsed again by our "
                     "parser) and paths/*.pkl (through a loader that accepts only lists, tuples, "
                     "numbers and None and executes nothing) into {work}/paths/{label}/{env}/{task}/. "
                     "The frames store of (env, task) must exist. A later `maniflow paths` with the "
                     "same label asks only for the frames still missing.")
    p.add_argument("src", type=Path, help="directory holding {task}/episode_NN/")
    p.add_argument("--env", required=True, choices=ENVS, help="environment the episodes belong to")
    p.add_argument("--tasks", type=csv, default=None, help="comma-separated tasks (default: all under src)")
    p.add_argument("--work", default=DEFAULT_WORK, help="work root with frames/ (default %(default)s)")
    p.add_argument("--camera", default="head", choices=CAMERAS, help="camera (default head)")
    add_options(p, ProviderConfig, skip=("kind", "coords", "max_tokens", "jpeg_quality", "oracle_points"))
    p.set_defaults(func=cmd_import_paths)


def cmd_render(args) -> int:
    from maniflow.datasets import render_task
    from maniflow.exporters import VIEWS
    from maniflow.frames import worker_pool
    from maniflow.previews import contact_sheet, episode_video
    from maniflow.settings import DatasetConfig, ExportConfig

    config = from_args(DatasetConfig, args)
    workspace = Workspace(args.work)
    pairs = _frames_stores(args.work, args.envs, args.tasks, "head")
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(worker_pool(args.workers)) if args.workers > 1 else None
        for env, task in pairs:
            report = render_task(args.work, env, task, args.label, config, executor=pool)
            print(report.summary())
            if not args.no_preview:
                sheet = contact_sheet(args.work, env, task, args.label, workspace.preview(env, task, args.label))
                print(f"  preview {sheet}")
            if args.video is not None:
                out = workspace.preview(env, task, args.label, episode=args.video)
                print(f"  video {episode_video(args.work, env, task, args.label, args.video, out)}")
            if args.layout == "robotwin":
                _export(args.work, env, task, args.label, ExportConfig(formats=("robotwin",), views=tuple(VIEWS)))
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def _render_options(p: argparse.ArgumentParser) -> None:
    from maniflow.settings import DatasetConfig

    p.description = ("For each (env, task): draw every frame's path (HAMSTER style) at native "
                     "resolution, resize original, overlay and path-only images alike to the training "
                     "resolution and write {work}/datasets/{env}_{original,overlay,concat}_{task}.zarr "
                     "(paths of another --label than hamster: {env}_overlay-{label}_{task}.zarr). "
                     "Per-episode parts are reused while their inputs are unchanged; stores are "
                     "replaced atomically. Also writes a contact sheet PNG per (env, task).")
    p.add_argument("--work", default=DEFAULT_WORK, help="work root with frames/ and paths/ (default %(default)s)")
    p.add_argument("--label", default=DEFAULT_LABEL, help="path store to draw (default %(default)s)")
    _found_options(p)
    add_options(p, DatasetConfig)
    p.add_argument("--workers", type=int, default=1, help="processes (default %(default)s)")
    p.add_argument("--no-preview", action="store_true", help="skip the contact sheets")
    p.add_argument("--video", type=int, default=None, metavar="EPISODE",
                   help="also write an MP4 of this episode (original | overlay)")
    p.add_argument("--layout", choices=("maniflow", "robotwin"), default="maniflow",
                   help="robotwin: also write each view as the zarr RoboTwin's DP and ManiFlow read (data/head_camera,"
                        " ...) under {work}/exports/robotwin/, as `export --formats robotwin` does (default maniflow)")
    p.set_defaults(func=cmd_render)


def _export(work, env: str, task: str, label: str, config) -> None:
    from maniflow.exporters import export_dataset

    for fmt in config.formats:
        for report in export_dataset(work, env, task, label, fmt, config):
            print("  " + report.summary())


def cmd_export(args) -> int:
    from maniflow.exporters import NotRendered, feature_names
    from maniflow.settings import ExportConfig

    config = from_args(ExportConfig, args)
    if not config.formats:
        raise ValueError("no --formats given")
    feature_names(config.views, config.renames)  # a bad rename stops here, not at the first (env, task)
    start, missing = time.perf_counter(), []
    for env, task in _frames_stores(args.work, args.envs, args.tasks, "head"):
        print(f"{env}/{task} [{args.label}]")
        try:
            _export(args.work, env, task, args.label, config)
        except NotRendered as e:  # for this label: the other pairs still go out
            print(f"  skipped: {e}")
            missing.append(f"{env}/{task}")
    print(f"done in {time.perf_counter() - start:.1f} s" + (f"; not exported: {', '.join(missing)}" if missing else ""))
    return 2 if missing else 0


def _export_options(p: argparse.ArgumentParser) -> None:
    from maniflow.settings import ExportConfig

    p.description = ("Write the datasets `maniflow render` made for (env, task) in formats other trainers read, "
                     "under {work}/exports/{format}/: LeRobot v2.1 (OpenPI), LeRobot v3.0, and the zarr of "
                     "RoboTwin's own policies. Resumable, atomic; provenance in maniflow-export.json "
                     "(docs/export.md). Exit status 2 if an (env, task) has no rendered datasets of the label "
                     "(the others are exported).")
    p.add_argument("--work", default=DEFAULT_WORK, help="work root with datasets/ (default %(default)s)")
    p.add_argument("--label", default=DEFAULT_LABEL, help="path label of the datasets (default %(default)s)")
    _found_options(p)
    add_options(p, ExportConfig)
    p.set_defaults(func=cmd_export)


def cmd_train(args) -> int:
    from maniflow.settings import TrainOptions
    from maniflow.train import TrainingDiverged, train_cell

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cell = from_args(Cell, args)
    workspace = Workspace(args.work)
    store, run = workspace.cell_dataset(cell), workspace.run(cell)
    bar = _Progress(f"train {run.name}")
    print(f"training {cell} on {store} -> {run}")
    try:
        result = train_cell(workspace, cell, from_args(TrainOptions, args),
                            progress=lambda i: bar(i["step"], i["total_steps"],
                                                   f"epoch {i['epoch'] + 1}/{i['epochs']} loss {i['loss']:.4f}"))
    except TrainingDiverged as e:
        print(f"maniflow train: {e}", file=sys.stderr)
        return 3
    last = result.history[-1] if result.history else {}
    print(f"done: {result.epochs} epochs, {result.steps} steps; last loss {last.get('loss', float('nan')):.4f}, "
          f"validation {last.get('val_loss')}; best checkpoint {result.best}")
    return 0


def _train_options(p: argparse.ArgumentParser) -> None:
    from maniflow.settings import TrainOptions

    p.description = ("Train the ManiFlow image policy for one condition on the dataset of "
                     "(env, task) made by `maniflow render`, into {work}/runs/<name>/ (checkpoints/latest.ckpt, "
                     "top-k EMA checkpoints by validation loss, metrics.jsonl, loss.png). Running it again "
                     "resumes from latest.ckpt to the same result as an uninterrupted run. On CUDA: bf16 "
                     "autocast, channels_last encoders, fused AdamW.")
    p.add_argument("--work", default=DEFAULT_WORK, help="work root with datasets/ (default %(default)s)")
    add_options(p, Cell, required=("env", "task", "condition"))
    add_options(p, TrainOptions)
    p.set_defaults(func=cmd_train)


def cmd_evaluate(args) -> int:
    from maniflow.evaluate import evaluate_cells
    from maniflow.report import build_report
    from maniflow.settings import EvalConfig
    from maniflow.train import cell_finished

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    workspace = Workspace(args.work)
    cells = [_cell_of_run(workspace, r) for r in args.runs] if args.runs else workspace.cells(args.preset)
    for c in [c for c in cells if not cell_finished(workspace, c)]:
        print(f"skipping {c}: training not finished", file=sys.stderr)
    cells = [c for c in cells if cell_finished(workspace, c)]
    if not cells:
        raise FileNotFoundError(f"no finished runs to evaluate under {workspace.root / 'runs'}")
    records, baselines = evaluate_cells(workspace, cells, from_args(EvalConfig, args))
    report = build_report(records, baselines, args.out or workspace.report(args.preset),
                          quality={c.label: workspace.quality(c.label) for c in cells})
    print(f"report: {report}")
    return 0


def _cell_of_run(workspace: Workspace, run: Path):
    """The cell a run directory under `workspace` trains (evaluation records live in the run)."""
    from maniflow.workspace import read_cell

    cell = read_cell(run)
    if workspace.run(cell).resolve() != Path(run).resolve():
        raise ValueError(f"{run} trains {cell}, whose run directory under --work {workspace.root} is "
                         f"{workspace.run(cell)}; give the --work it belongs to")
    return cell


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    from maniflow.settings import EvalConfig

    p.description = ("Evaluate every finished run under {work}/runs (or --runs): offline action error "
                     "on the held-out cluttered episodes, closed-loop success in the task's simulator "
                     "(maniflow.simulators) on the same layouts for every cell, do-nothing and expert "
                     "baselines; then write the report "
                     "(markdown, tables, charts, roll-out strips). Results are cached per checkpoint.")
    p.add_argument("--work", default=DEFAULT_WORK, help="work root (default %(default)s)")
    p.add_argument("--runs", type=Path, nargs="*", default=None, help="run directories (default: all of --preset)")
    p.add_argument("--preset", default="paper", help="which runs by default (default %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="report directory (default {work}/reports/<preset>)")
    add_options(p, EvalConfig)
    p.set_defaults(func=cmd_evaluate)


def cmd_layouts(args) -> int:
    from maniflow.simulators import synthetic
    from maniflow.synthetic.tasks import TASKS

    tasks = args.tasks or sorted(TASKS)
    if args.write:
        synthetic.publish(args.seed, args.episodes, tasks, args.envs)
        print(f"wrote {synthetic.PUBLISHED}")
    for task in tasks:
        for env in args.envs:
            found = synthetic.evaluation_layouts(task, env, args.seed, args.episodes)
            print(f"{task}/{env}: {found.describe()}\n  layouts {list(found.numbers)}\n  skipped {list(found.skipped)}")
    return 0


def _layouts_options(p: argparse.ArgumentParser) -> None:
    from maniflow.settings import EVAL_SEED

    p.description = ("The synthetic environment's evaluation layouts (RoboTwin's protocol: from the seed upwards, "
                     "the layouts the scripted expert solves; those it fails are skipped and counted), as "
                     "published in maniflow/simulators/layouts/synthetic.json or solved here; --write solves "
                     "and publishes them.")
    p.add_argument("--tasks", type=csv, default=None, help="comma-separated tasks (default: all six)")
    p.add_argument("--envs", type=csv, default=list(ENVS), help="comma-separated envs (default both)")
    p.add_argument("--seed", type=int, default=EVAL_SEED, help="evaluation seed (default %(default)s)")
    p.add_argument("--episodes", type=int, default=100, help="layouts per task and env (default %(default)s)")
    p.add_argument("--write", action="store_true", help="solve and write the published list")
    p.set_defaults(func=cmd_layouts)


def cmd_view(args) -> int:
    from maniflow.viewer import serve

    print(f"maniflow view: http://{args.host}:{args.port}/ (read-only; Ctrl-C stops)", flush=True)
    serve(args.work, args.host, args.port)
    return 0


def _view_options(p: argparse.ArgumentParser) -> None:
    p.description = ("Serve a read-only viewer of a work directory: envs, tasks and episodes (quarantined ones "
                     "with their reasons); scrub an episode's frames as original, overlay or path only, with "
                     "each frame's parse outcome, repairs, fallback source and raw answer; training runs with "
                     "their curves and evaluation strips; the reports. Frames are read from the stores on demand.")
    p.add_argument("--work", default=DEFAULT_WORK, help="work directory (default %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default %(default)s)")
    p.set_defaults(func=cmd_view)


def cmd_inspect(args) -> int:
    from maniflow.inspect import describe

    for path in args.paths:
        print(describe(path))
    return 0


def _inspect_options(p: argparse.ArgumentParser) -> None:
    p.description = ("Print a human summary of a RoboTwin episode (.hdf5), a RoboTwin "
                     "data root, a frames store or any Zarr store (arrays, shapes, chunks, "
                     "compression, bytes per frame, quarantined episodes).")
    p.add_argument("paths", nargs="+", type=Path, help="files or directories")
    p.set_defaults(func=cmd_inspect)


# name: (one-line help, adds the command's options).
COMMANDS = {
    "generate": ("write synthetic RoboTwin episodes (the embedded default data)", _generate_options),
    "maniskill-generate": ("ManiSkill 3 expert demonstrations as RoboTwin episodes", _maniskill_generate_options),
    "maniskill-import": ("a ManiSkill trajectory .h5 + .json as RoboTwin episodes", _maniskill_import_options),
    "extract": ("decode episodes into frames stores (Zarr), resumably", _extract_options),
    "paths": ("label every frame with a path, resumably", _paths_options),
    "serve-paths": ("loopback path server (HAMSTER/PEEK/OpenAI protocol, oracle answers)", _serve_paths_options),
    "path-quality": ("a path label's error against the ground truth", _path_quality_options),
    "import-paths": ("import HAMSTER output directories (pickle-free)", _import_paths_options),
    "render": ("frames + paths -> training datasets (original, overlay, concat)", _render_options),
    "export": ("rendered datasets -> LeRobot v2.1 / v3.0, or RoboTwin's policies' zarr", _export_options),
    "train": ("train one ManiFlow policy on one dataset (resumable)", _train_options),
    "evaluate": ("evaluate finished runs (offline + closed loop) and write the report", _evaluate_options),
    "layouts": ("the published evaluation layouts of the synthetic tasks", _layouts_options),
    "view": ("a read-only viewer of a work directory in the browser", _view_options),
    "inspect": ("summarise an episode file, data root or store", _inspect_options),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maniflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_options_of) in COMMANDS.items():
        add_options_of(sub.add_parser(name, help=help_text))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    unknown_envs = set(getattr(args, "envs", None) or ()) - set(ENVS)
    if unknown_envs:
        print(f"unknown env(s) {sorted(unknown_envs)}; use clean and/or cluttered", file=sys.stderr)
        return 2
    from maniflow.frames import IncompleteStoreError
    from maniflow.maniskill.planner import PlannerError

    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, IncompleteStoreError, PlannerError) as e:
        print(f"maniflow {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
