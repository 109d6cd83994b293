"""Human-readable summaries of anything the project reads or writes (`maniflow inspect`)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import zarr

from maniflow.exporters import PROVENANCE
from maniflow.frames import FORMAT as FRAMES_FORMAT
from maniflow.paths.label import LOW_PARSE_SHARE
from maniflow.robotwin import (
    ARMS,
    EpisodeError,
    discover_episodes,
    open_episode,
    read_instructions,
    ref_for_file,
    scene_info_arm,
    scene_info_number,
)


def describe(path) -> str:
    """Summary of an episode file, a RoboTwin data root, a frames store, a path store, a run, an
    export or any Zarr store."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    if path.suffix in (".hdf5", ".h5"):
        return describe_episode(path)
    if path.is_dir() and (path / "provider.json").exists():
        return describe_paths(path)
    if path.is_dir() and (path / "checkpoints").is_dir() and (path / "config.json").exists():
        return describe_run(path)
    if path.is_dir() and (path / PROVENANCE).exists():
        return describe_export(path)
    if path.is_dir() and ((path / ".zgroup").exists() or (path / "zarr.json").exists()):
        return describe_zarr(path)
    if path.is_dir():
        return describe_root(path)
    raise ValueError(f"don't know how to inspect {path}")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _gripper_events(g: np.ndarray) -> str:
    closed = g < 0.5
    changes = np.flatnonzero(closed[1:] != closed[:-1]) + 1
    if not len(changes):
        return "closed throughout" if closed[0] else "open throughout"
    return ", ".join(f"{'close' if closed[i] else 'open'}@{i}" for i in changes)


def describe_paths(path: Path) -> str:
    """A path store: provider, outcome counts per episode, the commonest repairs and failures."""
    provider = json.loads((path / "provider.json").read_text())["identity"]
    lines = [f"path store {path}", "  provider " + ", ".join(f"{k} {v}" for k, v in provider.items())]
    summary_file = path / "summary.json"
    if not summary_file.exists():
        return "\n".join(lines + ["  no summary yet (labelling has not finished once)"])
    summary = json.loads(summary_file.read_text())
    t = summary["total"]
    lines.append(f"  {len(summary['episodes'])} episodes, {t['frames']} frames: ok {t['ok']}, repaired "
                 f"{t['repaired']}, failed {t['failed']}, no answer {t['error']}"
                 + (f", not asked {t['skipped']} (every Nth frame)" if t.get("skipped") else "") + "; parsed "
                 f"{100 * t['parsed_share']:.1f}%; fallback used {t['fallback_used']}, "
                 f"without path {t['without_path']} (fallback {summary.get('fallback')})")
    for number, s in sorted(summary["episodes"].items(), key=lambda kv: int(kv[0])):
        flag = "" if s["parsed_share"] >= LOW_PARSE_SHARE else "   <- check"
        lines.append(f"    episode {number}: {s['frames']} frames, parsed {100 * s['parsed_share']:.1f}%"
                     f" (failed {s['failed']}, no answer {s['error']}){flag}")
    if t.get("points"):
        lines.append(f"  answer points outside the image under the declared coordinates: {t['points_out_of_range']} "
                     f"of {t['points']}")
    for title, counts in (("repairs", t["repairs"]), ("failures", t["reasons"])):
        for name, n in Counter(counts).most_common(5):
            lines.append(f"  {title[:-1]}: {n} x {name}")
    return "\n".join(lines)


def describe_run(path: Path) -> str:
    """A training run: what it trains on, how far it got, its best checkpoints."""
    config = json.loads((path / "config.json").read_text())
    t = config["train"]
    p = t["policy"]
    lines = [f"training run {path} (model version {config.get('model_version', 1)})",
             f"  {config['condition']} on {config['store']}",
             f"  encoder {p['encoder']} at {p['image_size']} px, DiTX {p['depth']} x {p['heads']} x {p['dim']}, "
             f"batch {t['batch_size']}, {t['epochs']} epochs, lr {t['lr']}, seed {t['seed']}"]
    metrics = path / "metrics.jsonl"
    history = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    if history:
        last = history[-1]
        val = [h["val_loss"] for h in history if h["val_loss"] is not None]
        lines.append(f"  {last['epoch'] + 1}/{t['epochs']} epochs, {last['step']} steps; loss "
                     f"{history[0]['loss']:.4f} -> {last['loss']:.4f}"
                     + (f"; best validation {min(val):.6f}" if val else "")
                     + f"; {last['samples_per_s']} samples/s")
    for ckpt in sorted((path / "checkpoints").glob("*.ckpt")):
        lines.append(f"    {ckpt.name} ({_fmt_bytes(ckpt.stat().st_size)})")
    return "\n".join(lines)


LAYOUT_NAMES = {"robotwin2": "RoboTwin 2.0 (stable) layout", "xpolicylab": "RoboTwin current (XPolicyLab) layout"}


def describe_episode(path: Path) -> str:
    with open_episode(path) as ep:
        lines = [f"{LAYOUT_NAMES[ep.layout]} episode {path}"]
        attrs = ep.attrs
        if attrs.get("synthetic"):
            lines.append(f"  SYNTHETIC ({attrs.get('generator')}, seed {attrs.get('seed')})")
        prov = ep.provenance(ep.cameras[0] if ep.cameras else "head")
        lines.append(f"  data format {prov['data_format_version'] or '-'}, {prov['fps']:.2f} frames/s "
                     f"({prov['fps_from']}), actions {prov['action_alignment']}")
        for camera in ep.cameras:
            try:
                t = ep.recorded_frames(camera)
                frame = ep.rgb(camera, 0, 1)[0]
                k = ep.camera_matrices(camera).intrinsic_cv[0]
                fovy = 2 * np.degrees(np.arctan(frame.shape[0] / 2 / k[1, 1]))
                lines.append(f"  camera {camera}: {t} frames stored {frame.shape[1]}x{frame.shape[0]}, "
                             f"fx {k[0, 0]:.1f} fy {k[1, 1]:.1f} cx {k[0, 2]:.1f} cy {k[1, 2]:.1f} "
                             f"(fovy {fovy:.1f} deg)")
            except EpisodeError as e:
                lines.append(f"  camera {camera}: BAD: {e}")
        try:
            arrays = ep.validate(ep.cameras[0] if "head" not in ep.cameras else "head")
            offset, offset_from = ep.tcp_offset()
            lines.append(f"  valid: {arrays.num_frames} (state, action) pairs, all arrays consistent and finite")
            lines.append(f"  end poses lie {offset} m behind the fingertips ({offset_from})")
            for arm in ARMS:
                pos = arrays.endpose[arm][:, :3]
                travel = np.linalg.norm(np.diff(pos, axis=0), axis=1).sum()
                lines.append(f"  {arm} arm: end-effector travel {travel:.3f} m, gripper "
                             f"{_gripper_events(arrays.gripper[arm])}")
            v = arrays.state
            lines.append(f"  state (n, {v.shape[1]}): min {np.round(v.min(0), 2).tolist()}")
            lines.append(f"                max {np.round(v.max(0), 2).tolist()}")
        except EpisodeError as e:
            lines.append(f"  INVALID: {e}")
        ref = ref_for_file(path)
        if ref:
            instructions = read_instructions(ref, ep)
            arm, arm_note = scene_info_arm(ref, scene_info_number(ref, ep))
            lines.append(f"  task {ref.task}, config {ref.config} (from {ref.config_from})"
                         + (f", embodiment {ref.embodiment}" if ref.embodiment else "") + f", episode {ref.index}")
            lines.append(f"  {len(instructions.seen)} seen / {len(instructions.unseen)} unseen instructions "
                         f"(from {instructions.source}); working arm: {arm or 'not recorded'} ({arm_note})")
            if instructions.default:
                lines.append(f"  instruction: \"{instructions.default}\"")
    return "\n".join(lines)


def describe_root(root: Path) -> str:
    refs = discover_episodes(root)
    if not refs:
        return (f"{root}: no RoboTwin episodes found (neither {{task}}/{{config}}/data/episode{{N}}.hdf5 nor "
                f"{{config}}/{{task}}/{{embodiment}}/data/episode_{{N:07d}}.hdf5)")
    groups = Counter((r.layout, r.config, r.task, r.embodiment) for r in refs)
    size = sum(r.path.stat().st_size for r in refs)
    layouts = Counter(r.layout for r in refs)
    lines = [f"RoboTwin data root {root}: {len(refs)} episodes, {_fmt_bytes(size)}; "
             + ", ".join(f"{LAYOUT_NAMES[lay]}: {n}" for lay, n in sorted(layouts.items()))]
    for (layout, config, task, embodiment), n in sorted(groups.items()):
        ref = next(r for r in refs if (r.layout, r.config, r.task, r.embodiment) == (layout, config, task, embodiment))
        info = ref.scene_info_path
        synthetic = ""
        if info.exists():
            first = next(iter(json.loads(info.read_text()).values()), {})
            synthetic = " (synthetic)" if isinstance(first, dict) and first.get("synthetic") else ""
        where = ref.dir.relative_to(root)
        lines.append(f"  [{layout}] config {config}, task {task}" + (f", embodiment {embodiment}" if embodiment else "")
                     + f": {n} episodes{synthetic}  ({where}" + ("" if ref.config_from == "folder name" else
                                                                f"; config from {ref.config_from}") + ")")
    return "\n".join(lines)


def disk_bytes(path: Path) -> int:
    """Bytes of every file under `path`."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def describe_export(path: Path) -> str:
    """An export (maniflow.exporters): format, what it was made from, its size."""
    record = json.loads((path / PROVENANCE).read_text())
    source, written = record.get("source") or {}, record.get("written") or {}
    frames, disk = written.get("frames") or 0, disk_bytes(path)
    lines = [f"{record['format']} export {path} ({_fmt_bytes(disk)} on disk"
             + (f", {_fmt_bytes(disk / frames)} per frame)" if frames else ")")]
    if not record.get("complete"):
        lines.append("  INCOMPLETE: the export did not finish; rerun maniflow export")
        return "\n".join(lines)
    lines.append(f"  {written.get('episodes')} episodes, {frames} frames at {source.get('resolution')} px, "
                 f"fps {source.get('fps')}; env {source.get('env')}, task {source.get('task')}, "
                 f"path label {source.get('label')}")
    for view, name in (written.get("names") or {v: "data/head_camera" for v in source.get("views", [])}).items():
        lines.append(f"  {view:10s} -> {name}")
    for kind, store in (source.get("stores") or {}).items():
        lines.append(f"  from {kind}: {store}")
    code = record.get("code_version") or {}
    lines.append(f"  written by maniflow {code.get('maniflow')} (git {code.get('git')})")
    return "\n".join(lines)


def describe_zarr(path: Path) -> str:
    root = zarr.open_group(path, mode="r")
    attrs = root.attrs.asdict()
    disk = disk_bytes(path)
    kind = attrs.get("format", "zarr store")
    lines = [f"{kind} {path} ({_fmt_bytes(disk)} on disk)"]
    if attrs.get("format") == FRAMES_FORMAT:
        lines.append(f"  task {attrs.get('task')}, env {attrs.get('env')} (config {attrs.get('config')}), "
                     f"camera {attrs.get('camera')}, source {attrs.get('source_root')}")
        if not attrs.get("complete"):
            lines.append("  INCOMPLETE: extraction did not finish; readers refuse this store")
        if attrs.get("synthetic"):
            lines.append("  SYNTHETIC episodes (maniflow generator), not recorded in RoboTwin")
        for name, counts in (attrs.get("provenance") or {}).items():
            lines.append(f"  {name.replace('_', ' ')}: " + "; ".join(f"{k} ({n})" for k, n in counts.items()))
        code = attrs.get("code_version", {})
        lines.append(f"  written by maniflow {code.get('maniflow')} (git {code.get('git')})")
    for name, arr in sorted(_arrays(root)):
        extra = ""
        if arr.ndim >= 1 and arr.shape[0] and arr.dtype.kind in "fiu" and np.prod(arr.shape) <= 2_000_000:
            values = arr[:]
            extra = f"  range [{values.min():.4g}, {values.max():.4g}]"
        comp = ",".join(type(c).__name__ if not hasattr(c, "cname") else f"{c.cname}-{c.clevel}"
                        for c in (arr.compressors or ()))
        lines.append(f"  {name:24s} {str(arr.shape):22s} {str(arr.dtype):8s} chunks {arr.chunks} "
                     f"{comp or 'raw'}{extra}")
    if "meta/episode_ends" in root:
        ends = root["meta/episode_ends"][:]
        lengths = np.diff(np.concatenate([[0], ends]))
        if len(lengths):
            frames = int(ends[-1])
            lines.append(f"  {len(ends)} episodes, {frames} frames (length min {lengths.min()}, "
                         f"mean {lengths.mean():.1f}, max {lengths.max()}); "
                         f"{_fmt_bytes(disk / max(frames, 1))} per frame on disk")
        else:
            lines.append("  0 episodes")
    for q in attrs.get("quarantine", []):
        where = (q.get("key") or "") + ("" if q.get("frame") is None else f" frame {q['frame']}")
        lines.append(f"  QUARANTINED episode{q['episode']}: {q.get('kind')} {where}: {q.get('message')}")
    return "\n".join(lines)


def _arrays(group, prefix=""):
    for name, arr in group.arrays():
        yield prefix + name, arr
    for name, sub in group.groups():
        yield from _arrays(sub, prefix + name + "/")
