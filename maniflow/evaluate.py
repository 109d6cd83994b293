"""Evaluate a trained cell: offline on held-out episodes, closed loop in a simulator.

    offline      the store's held-out episodes (`holdout_episodes`, never trained or validated
                 on) of the evaluation env: action error over the predicted chunk, normalised
                 (MSE in the policy's [-1, 1] space) and in joint units (MAE), per chunk step,
                 and the validation loss; EMA weights, the configured inference steps, fixed noise
    closed loop  `episodes` layouts of the evaluation env from `seed` (the same for every
                 cell): the synthetic tabletop env for RoboTwin tasks, ManiSkill (CPU SAPIEN)
                 for ManiSkill tasks, whose layouts are the first `episodes` seeds from `seed`
                 that ManiSkill's expert solves (planned once into the work directory): the
                 task's simulator (maniflow.simulators); the policy's action chunks run
                 `execute_steps` at a time; overlay conditions get their path from the same
                 provider interface as in training (oracle by default, or a VLM endpoint)
                 and the initial image is frame 0's

Results are one JSON file per (checkpoint, evaluation settings) in `{run}/eval/`, written
atomically, so evaluating again is free: this is the one evaluation cache (the flows' tasks
call these functions). Baselines (do nothing, the scripted expert) are evaluated on the same
layouts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch
import zarr

from maniflow import __version__
from maniflow.conditions import CONDITIONS
from maniflow.datasets import data_provenance, dataset_complete, draw_views, resize_frames
from maniflow.overlay import render_views
from maniflow.policy import MODEL_VERSION, ManiFlowPolicy
from maniflow.replay import ReplayData
from maniflow.settings import EvalConfig
from maniflow.simulators import Layouts, play, simulator_for
from maniflow.storage import code_version, write_json
from maniflow.train import load_policy, pick_device, plateau, read_history, validation_loss
from maniflow.workspace import Cell, Workspace

log = logging.getLogger("maniflow.evaluate")


def best_checkpoint(run: Path) -> Path:
    """A run's best checkpoint by validation loss, else its latest."""
    best = sorted((run / "checkpoints").glob("epoch=*.ckpt"), key=lambda p: float(p.stem.split("val_loss=")[1]))
    latest = run / "checkpoints" / "latest.ckpt"
    if best:
        return best[0]
    if latest.exists():
        return latest
    raise FileNotFoundError(f"{run}: no checkpoint; train the cell first")


def candidate_checkpoints(run: Path, rule: str) -> list[Path]:
    """The checkpoints `rule` evaluates (EvalConfig.checkpoint): best, latest or every kept one."""
    if rule == "best":
        return [best_checkpoint(run)]
    if rule == "latest":
        latest = run / "checkpoints" / "latest.ckpt"
        if not latest.exists():
            raise FileNotFoundError(f"{run}: no latest.ckpt; train the cell first")
        return [latest]
    kept = sorted((run / "checkpoints" / "every").glob("epoch=*.ckpt"))
    if not kept:
        raise FileNotFoundError(f"{run}: no checkpoints kept every k epochs; train the cell anew (another work "
                                "directory, or this run directory removed) with keep_every > 0 to evaluate with "
                                "checkpoint: every")
    return kept


# -- policy inputs -----------------------------------------------------------------------------

def policy_images(frames: np.ndarray, paths: list | None, condition: str, resolution: int) -> np.ndarray:
    """(B, H, W, 3) frames (+ one path each) -> (B, C, R, R) uint8 exactly as the datasets hold them."""
    views, _ = draw_views(frames, paths)
    return np.concatenate([resize_frames(views[k], resolution) for k in CONDITIONS[condition].keys], axis=1)


@torch.no_grad()
def closed_loop(policy: ManiFlowPolicy, condition: str, envs: list, resolution: int, cfg: EvalConfig,
                paths=None) -> dict:
    """Run the policy on the (reset) `envs` at once (one batched policy call per chunk).
    Returns per-episode success and steps, and the frames of the first `cfg.strips` episodes."""
    device = next(policy.parameters()).device
    cond = CONDITIONS[condition]
    uses_paths = cond.dataset != "original"
    paths = paths or (cfg.paths.closed_loop(cfg.client) if uses_paths else None)
    n_obs, execute = policy.cfg.n_obs_steps, min(cfg.execute_steps, policy.cfg.n_action_steps)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    strips: list[list[np.ndarray]] = [[] for _ in range(min(cfg.strips, len(envs)))]

    def observe(indices: list[int]):
        """Images and states of the envs now; frames of strip episodes are kept with their path."""
        obs = [envs[i].observe() for i in indices]
        frames = np.stack([o.rgb for o in obs])
        found = paths([envs[i] for i in indices], list(frames)) if uses_paths else None
        for j, i in enumerate(indices):
            if i < len(strips):
                strips[i].append(render_views(frames[j], found[j])[0] if uses_paths else frames[j])
        return policy_images(frames, found, condition, resolution), np.stack([o.state for o in obs])

    first_images, first_states = observe(list(range(len(envs))))
    history = [[(first_images[i], first_states[i])] * n_obs for i in range(len(envs))]
    initial = torch.from_numpy(first_images).to(device)
    while True:
        active = [i for i, e in enumerate(envs) if not e.done]
        if not active:
            break
        obs = {"current": torch.from_numpy(np.stack([np.stack([h[0] for h in history[i][-n_obs:]])
                                                      for i in active])).to(device),
               "agent_pos": torch.from_numpy(np.stack([np.stack([h[1] for h in history[i][-n_obs:]])
                                                        for i in active])).float().to(device)}
        if cond.initial:
            obs["initial"] = initial[active]
        actions = policy.predict_action(obs, cfg.inference_steps, gen).float().cpu().numpy()
        for k in range(execute):
            stepping = [j for j, i in enumerate(active) if not envs[i].done]
            for j in stepping:
                envs[active[j]].step(actions[j, k])
            # Only the frames the next prediction looks at are rendered (and get a path).
            watch = [active[j] for j in stepping if k >= execute - n_obs and not envs[active[j]].done]
            if watch:
                images, states = observe(watch)
                for j, i in enumerate(watch):
                    history[i].append((images[j], states[j]))
                    history[i] = history[i][-n_obs:]
    return {"success": [bool(e.success) for e in envs], "steps": [int(e.t) for e in envs],
            "max_steps": [int(e.max_steps) for e in envs], "strips": strips}


def baseline(task: str, kind: str, cfg: EvalConfig, work=None, layouts: Layouts | None = None) -> dict:
    """Closed-loop success of a reference policy on the evaluation layouts (`layouts`, else the
    simulator's): `do_nothing` (holds its pose) or `expert` (replays the generator's script /
    ManiSkill's plan)."""
    workspace = None if work is None else Workspace.of(work)
    simulator = simulator_for(task)
    layouts = layouts or simulator.layouts(task, cfg, workspace)
    envs = simulator.make_envs(task, layouts, cfg, workspace)
    success = [play(env, kind) for env in envs]
    return {"policy": kind, "task": task, "success": success, "steps": [int(env.t) for env in envs]}


# -- offline -----------------------------------------------------------------------------------

@torch.no_grad()
def offline_metrics(policy: ManiFlowPolicy, store: Path, condition: str, holdout: int, cfg: EvalConfig) -> dict:
    """Action error and validation loss on the store's last `holdout` episodes."""
    device = next(policy.parameters()).device
    data = ReplayData(store, condition, device)
    if holdout < 1 or holdout > data.num_episodes:
        raise ValueError(f"{store}: {holdout} held-out episodes asked, {data.num_episodes} in the store "
                         "(train with holdout_episodes >= 1)")
    pc = policy.cfg
    episodes = list(range(data.num_episodes - holdout, data.num_episodes))
    windows = data.windows(episodes, pc.model_horizon, pc.n_obs_steps, pc.n_action_steps)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    start = pc.n_obs_steps - 1
    mse = torch.zeros(pc.n_action_steps, device=device)
    mae = torch.zeros(pc.n_action_steps, device=device)
    for s in range(0, len(windows), cfg.batch_size):
        ids = torch.arange(s, min(s + cfg.batch_size, len(windows)), device=device)
        batch = windows.batch(ids)
        pred = policy.predict_action(batch["obs"], cfg.inference_steps, gen)
        truth = batch["action"][:, start:start + pc.n_action_steps]
        mse += ((policy.action_norm(pred) - policy.action_norm(truth)) ** 2).mean(-1).sum(0)
        mae += (pred - truth).abs().mean(-1).sum(0)
    n = len(windows)
    return {"episodes": [int(data.attrs["source"]["episodes"][e]["episode"]) for e in episodes]
            if "source" in data.attrs else episodes,
            "windows": n, "store": str(store),
            "action_mse_normalised": (mse.sum() / (n * pc.n_action_steps)).item(),
            "action_mae": (mae.sum() / (n * pc.n_action_steps)).item(),
            "mae_per_step": (mae / n).tolist(), "val_loss": validation_loss(policy, windows)}


# -- one cell ----------------------------------------------------------------------------------

def eval_key(checkpoints: list[Path], cfg: EvalConfig, layouts: Layouts) -> str:
    """The evaluation's identity: the checkpoints' files, the settings, the layouts (a republished
    list is another evaluation) and the code."""
    stats = [(c.name, c.stat().st_size, c.stat().st_mtime_ns) for c in checkpoints]
    text = json.dumps([stats, cfg.identity(), layouts.numbers, __version__, MODEL_VERSION], sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def evaluate_cell(work, cell: Cell, cfg: EvalConfig = EvalConfig()) -> dict:
    """Evaluate one trained cell (cached per checkpoints and settings). Returns the result record."""
    workspace = Workspace.of(work)
    run = workspace.run(cell)
    candidates = candidate_checkpoints(run, cfg.checkpoint)
    simulator = simulator_for(cell.task)
    layouts = simulator.layouts(cell.task, cfg, workspace)
    out = workspace.eval_record(run, eval_key(candidates, cfg, layouts))
    if out.exists():
        return json.loads(out.read_text())
    device = pick_device(cfg.device)
    eval_store = workspace.cell_dataset(cell, cfg.env)
    resolution = int(_store_attrs(eval_store)["resolution"])
    log.info("evaluating %s (%s) on %s", cell, ", ".join(c.name for c in candidates), layouts.describe())
    loops, policies = {}, {}
    for checkpoint in candidates:
        policies[checkpoint] = load_policy(checkpoint, device)
        with simulator.running(cell.task):
            envs = simulator.make_envs(cell.task, layouts, cfg, workspace)
            loops[checkpoint] = closed_loop(policies[checkpoint], cell.condition, envs, resolution, cfg)
    # `every`: the best closed-loop checkpoint, chosen on the evaluation layouts themselves.
    checkpoint = max(candidates, key=lambda c: (np.mean(loops[c]["success"]), c.name))
    loop, policy = loops[checkpoint], policies[checkpoint]
    strip = out.with_name(f"{out.stem}-strip.png")
    if loop["strips"]:
        write_strip(loop["strips"], loop["success"], strip, cfg.strip_frames)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    history = read_history(run)  # the whole run's (a top-k checkpoint holds it up to its epoch)
    vals = [h["val_loss"] for h in history if h["val_loss"] is not None]
    holdout = saved["config"]["train"].get("holdout_episodes", 0)  # the store's last, never trained on
    record = {
        "cell": asdict(cell), "run": str(run), "checkpoint": checkpoint.name,
        "eval": {**asdict(cfg), "paths": cfg.identity()["paths"]},  # a prompt file by its content
        "checkpoint_choice": {"rule": cfg.checkpoint, "epoch": int(saved["epoch"]) - 1,
                              "optimistic": cfg.checkpoint == "every",
                              # `best` without validation episodes: no top-k, the last epoch
                              "fallback_to_latest": cfg.checkpoint == "best" and checkpoint.name == "latest.ckpt",
                              "candidates": {c.name: float(np.mean(loops[c]["success"])) for c in candidates}},
        "layouts": asdict(layouts), "simulator": simulator.title, "code_version": code_version(),
        "model_version": saved["config"].get("model_version", 1),
        "train": {"epochs": saved["config"]["train"]["epochs"], "steps": saved["step"],
                  "best_val_loss": min(vals) if vals else None, "plateau": plateau(history),
                  "history": [{k: h[k] for k in ("epoch", "loss", "val_loss")} for h in history]},
        "offline": offline_metrics(policy, eval_store, cell.condition, holdout, cfg)
        if cfg.offline and holdout else None,
        "closed_loop": {k: loop[k] for k in ("success", "steps", "max_steps")}
        | {"success_rate": float(np.mean(loop["success"]))},
        "strip": str(strip) if loop["strips"] else None,
        "data": data_provenance(workspace.cell_dataset(cell)),
        # What made the training paths (the provider's identity; None for a condition without
        # paths): the report tells the ground truth from a VLM by it.
        "train_paths": train_paths(_store_attrs(workspace.cell_dataset(cell))),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, record)
    return json.loads(out.read_text())  # the same values a cached call returns


def train_paths(attrs: dict) -> dict | None:
    """The provider identity of a dataset's paths and how many of its frames were not asked
    (every-Nth labelling); None for a dataset without paths."""
    paths = attrs.get("paths")
    if not paths:
        return None
    return {**(paths.get("provider") or {}), "frames_skipped": (paths.get("stats") or {}).get("skipped", 0)}


def _store_attrs(store: Path) -> dict:
    if not dataset_complete(store):
        raise FileNotFoundError(f"{store}: no finished dataset store to evaluate on; prepare the data first")
    return zarr.open_group(store, mode="r").attrs.asdict()


def write_strip(strips: list[list[np.ndarray]], success: list[bool], out: Path, frames: int) -> None:
    """One row per episode: `frames` evenly spaced observed frames, a green or red bar for the outcome."""
    rows = []
    for i, episode in enumerate(strips):
        pick = np.linspace(0, len(episode) - 1, min(frames, len(episode))).round().astype(int)
        row = np.concatenate([episode[k] for k in pick], axis=1)
        bar = np.zeros((8, row.shape[1], 3), np.uint8)
        bar[:] = (40, 180, 60) if success[i] else (210, 50, 40)
        rows.append(np.concatenate([bar, row], axis=0))
    width = max(r.shape[1] for r in rows)
    image = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(buf.tobytes())
    tmp.replace(out)


def evaluate_baselines(work, task: str, cfg: EvalConfig = EvalConfig()) -> dict:
    """Do-nothing and expert success on the evaluation layouts of `task` (cached)."""
    simulator, workspace = simulator_for(task), Workspace.of(work)
    layouts = simulator.layouts(task, cfg, workspace)
    key = hashlib.sha256(json.dumps([task, cfg.env, cfg.seed, layouts.numbers, __version__],
                                    sort_keys=True).encode()).hexdigest()[:16]
    out = workspace.baselines(task, key)
    if out.exists():
        return json.loads(out.read_text())
    with simulator.running(task):
        record = {kind: baseline(task, kind, cfg, work, layouts) for kind in ("do_nothing", "expert")}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, record)
    return record


def evaluate_cells(work, cells: list[Cell], cfg: EvalConfig = EvalConfig(), progress=print
                   ) -> tuple[list[dict], dict]:
    """Evaluate trained cells and the baselines of their tasks: (records, {task: baselines})."""
    records = []
    for cell in cells:
        records.append(evaluate_cell(work, cell, cfg))
        r = records[-1]
        progress(f"{cell}: success {100 * r['closed_loop']['success_rate']:.0f}%"
                 + (f", offline action MAE {r['offline']['action_mae']:.4f}" if r["offline"] else ""))
    baselines = {task: evaluate_baselines(work, task, cfg) for task in sorted({c.task for c in cells})}
    return records, baselines
