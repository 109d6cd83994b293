"""How good a path label's paths are: each frame's path against the ground truth of that frame.

The reference is the oracle (`maniflow.paths.oracle`): the episode's own future fingertip motion,
computed from the frames store, so any label can be measured without labelling the oracle
first. The path measured is the one the datasets draw (after the fallback and every-Nth fill),
and each frame also keeps its own outcome (ok / repaired / failed / error / skipped), so the
error of the drawn paths and where it comes from are read off one table.

Per frame, in pixels of the frame:

    start_px    distance between the first points (where the gripper is said to be now)
    end_px      distance between the last points (where it is said to go)
    frechet_px  discrete Fréchet distance after both paths are resampled to RESAMPLE points
                evenly spaced in arc length (their shapes, whatever their point counts)
    gripper     share of those resampled points whose gripper state agrees (NaN where the
                label gives no states, e.g. PEEK or JSON point lists)

Frames without a reference (the arm at rest to the end, every point behind the camera) or
without a drawn path are counted, not measured. Aggregates are distributions: percentiles per
episode, per (env, task) and per env, never only means.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maniflow.frames import FramesStore
from maniflow.paths.label import ProviderConfig
from maniflow.paths.providers.oracle import store_oracle_paths
from maniflow.paths.store import EpisodePaths, PathStore
from maniflow.storage import code_version, file_stats, temp_sibling, write_json
from maniflow.workspace import Workspace

RESAMPLE = 32  # points per path for the shape distance
REFERENCE_POINTS = 10  # oracle points per path before resampling (the oracle provider's default)
PERCENTILES = (10, 25, 50, 75, 90)
METRICS = ("start_px", "end_px", "frechet_px", "gripper")
FORMAT = "maniflow.path-quality"
FORMAT_VERSION = 1


# --- geometry (pure, vectorised over frames) ----------------------------------------------------

def _padded(paths: list[list], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Paths as (F, n, 2) pixel coordinates and (F, n) gripper states (NaN: none), each padded
    with its last point, which adds no arc length. Every path has at least one point."""
    n = max(len(p) for p in paths)
    xy = np.empty((len(paths), n, 2))
    grip = np.full((len(paths), n), np.nan)
    for i, p in enumerate(paths):
        a = np.array([q[:2] for q in p], np.float64) * (width, height)
        xy[i, :len(p)], xy[i, len(p):] = a, a[-1]
        g = np.array([np.nan if q[2] is None else q[2] for q in p], np.float64)
        grip[i, :len(p)], grip[i, len(p):] = g, g[-1]
    return xy, grip


def resample(xy: np.ndarray, grip: np.ndarray, k: int = RESAMPLE) -> tuple[np.ndarray, np.ndarray]:
    """(F, n, 2) polylines -> (F, k, 2) points evenly spaced in arc length, and the gripper state
    (F, k) of the segment each falls on (its start point's). A path of zero length stays put.

    Batched over frames in float64 with states; `overlay.resample` keeps the user's drawing
    arithmetic (float32, int pixels, one path) and `oracle.resample_future` works on 3D suffixes."""
    seg = np.linalg.norm(np.diff(xy, axis=1), axis=-1)  # (F, n-1)
    s = np.concatenate([np.zeros((len(xy), 1)), np.cumsum(seg, axis=1)], axis=1)  # (F, n)
    total = s[:, -1:]
    targets = np.linspace(0.0, 1.0, k)[None] * total  # (F, k)
    # Batched searchsorted: the last vertex at or before each target, never the final one.
    idx = np.clip((s[:, None, :] <= targets[:, :, None] + 1e-9).sum(-1) - 1, 0, max(xy.shape[1] - 2, 0))
    nxt = np.minimum(idx + 1, xy.shape[1] - 1)
    s0 = np.take_along_axis(s, idx, 1)
    span = np.take_along_axis(s, nxt, 1) - s0
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.clip(np.where(span > 0, (targets - s0) / span, 0.0), 0.0, 1.0)
    a = np.take_along_axis(xy, idx[..., None], 1)
    b = np.take_along_axis(xy, nxt[..., None], 1)
    state = np.take_along_axis(grip, np.where(frac >= 1.0, nxt, idx), 1)
    return a + frac[..., None] * (b - a), state


def frechet(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Discrete Fréchet distance of (F, k, 2) and (F, m, 2) point sequences: (F,). One pass over
    the k x m table, each cell vectorised over the frames."""
    d = np.linalg.norm(p[:, :, None] - q[:, None, :], axis=-1)  # (F, k, m)
    ca = np.empty_like(d)
    k, m = d.shape[1:]
    ca[:, 0, 0] = d[:, 0, 0]
    ca[:, 1:, 0] = np.maximum.accumulate(d[:, 1:, 0], axis=1)
    ca[:, 1:, 0] = np.maximum(ca[:, 1:, 0], d[:, :1, 0])
    ca[:, 0, 1:] = np.maximum(np.maximum.accumulate(d[:, 0, 1:], axis=1), d[:, :1, 0])
    for i in range(1, k):
        for j in range(1, m):
            ca[:, i, j] = np.maximum(np.minimum(np.minimum(ca[:, i - 1, j], ca[:, i - 1, j - 1]), ca[:, i, j - 1]),
                                     d[:, i, j])
    return ca[:, -1, -1]


def compare_paths(paths: list[list], reference: list[list], width: int, height: int) -> dict[str, np.ndarray]:
    """Per-frame metrics (METRICS) of paths against reference paths, both non-empty lists of
    (x, y, gripper) in [0, 1] of a width x height frame."""
    if not paths:
        return {m: np.zeros(0) for m in METRICS}
    p_xy, p_grip = _padded(paths, width, height)
    r_xy, r_grip = _padded(reference, width, height)
    last_p = np.array([len(p) - 1 for p in paths])
    last_r = np.array([len(r) - 1 for r in reference])
    rows = np.arange(len(paths))
    p_res, p_state = resample(p_xy, p_grip)
    r_res, r_state = resample(r_xy, r_grip)
    stated = ~np.isnan(p_state).any(axis=1) & ~np.isnan(r_state).any(axis=1)
    return {"start_px": np.linalg.norm(p_xy[:, 0] - r_xy[:, 0], axis=-1),
            "end_px": np.linalg.norm(p_xy[rows, last_p] - r_xy[rows, last_r], axis=-1),
            "frechet_px": frechet(p_res, r_res),
            "gripper": np.where(stated, (p_state == r_state).mean(axis=1), np.nan)}


def distribution(values) -> dict:
    """Count, mean and PERCENTILES of the finite values (None where there are none)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0, "mean": None, **{f"p{q}": None for q in PERCENTILES}}
    return {"n": int(len(v)), "mean": round(float(v.mean()), 3),
            **{f"p{q}": round(float(x), 3) for q, x in zip(PERCENTILES, np.percentile(v, PERCENTILES))}}


# --- one (env, task) ----------------------------------------------------------------------------

@dataclass
class TaskQuality:
    """Per-frame metrics of one (env, task): parallel arrays, one entry per frame."""

    env: str
    task: str
    image_size: tuple[int, int]
    episode: np.ndarray
    frame: np.ndarray
    status: list[str]  # the frame's own outcome in the label's store
    filled: np.ndarray  # its drawn path is another frame's (fallback or every-Nth fill)
    measured: np.ndarray  # has a reference and a drawn path
    metrics: dict[str, np.ndarray] = field(default_factory=dict)  # over measured frames only
    unmeasured: dict[str, int] = field(default_factory=dict)  # why frames were not measured

    def outcome_counts(self) -> dict[str, int]:
        return dict(Counter(self.status))

    def summary(self) -> dict:
        ep = self.episode[self.measured]
        return {"env": self.env, "task": self.task, "image_size": list(self.image_size),
                "frames": len(self.status), "measured": int(self.measured.sum()), "unmeasured": self.unmeasured,
                "outcomes": self.outcome_counts(), "filled": int(self.filled.sum()),
                "metrics": {m: distribution(v) for m, v in self.metrics.items()},
                "episodes": {int(n): {m: distribution(v[ep == n]) for m, v in self.metrics.items()}
                             for n in np.unique(ep)}}


def stored_provider(store: PathStore) -> ProviderConfig | None:
    """The configuration that labelled a store, or None when it cannot be rebuilt (a provider
    not registered here)."""
    try:
        return ProviderConfig(**store.provider()["params"])
    except (TypeError, ValueError, KeyError):
        return None


def stale(frames: FramesStore, index: int, ep: EpisodePaths, provider: ProviderConfig | None) -> str | None:
    """Why the stored paths no longer belong to the index-th episode of `frames` (it was
    extracted again since), or None."""
    record = frames.episodes[index]
    if ep.num_frames != record["frames"]:
        return f"stale: {ep.num_frames} frames labelled, {record['frames']} now (label again)"
    if provider is not None and json.dumps(provider.source_fingerprint(record), sort_keys=True) != \
            json.dumps(ep.record.get("source_fingerprint"), sort_keys=True):
        return "stale: the episode changed since it was labelled (label again)"
    return None


def episode_pairs(frames: FramesStore, index: int, ep: EpisodePaths,
                  provider: ProviderConfig | None = None) -> tuple[list[str | None], list, list]:
    """Per frame why it is not measured (None: it is), and the drawn and reference paths of the
    frames that are, for the index-th episode of `frames` and its stored paths."""
    why = stale(frames, index, ep, provider)
    if why is not None:
        return [why] * frames.episodes[index]["frames"], [], []
    truth, _, _, degenerate = store_oracle_paths(frames, index, REFERENCE_POINTS)
    why, got, want = [], [], []
    for t, (path, ref) in enumerate(zip(ep.paths, truth, strict=True)):
        if degenerate[t] is not None or not ref:
            why.append("no reference: " + (degenerate[t] or "no point in view"))
        elif not path:
            why.append("no path drawn")
        else:
            why.append(None)
            got.append(path)
            want.append(ref)
    return why, got, want


def episode_errors(frames: FramesStore, index: int, ep: EpisodePaths, provider: ProviderConfig | None = None
                   ) -> list[dict]:
    """Each frame's metrics (rounded), or why it is not measured: what the viewer shows."""
    why, got, want = episode_pairs(frames, index, ep, provider)
    height, width = frames.root["data/rgb"].shape[1:3]
    metrics = compare_paths(got, want, width, height)
    out, k = [], 0
    for reason in why:
        if reason is not None:
            out.append({"unmeasured": reason})
            continue
        out.append({m: None if np.isnan(v[k]) else round(float(v[k]), 2) for m, v in metrics.items()})
        k += 1
    return out


def task_quality(work, label: str, env: str, task: str, camera: str = "head") -> TaskQuality:
    """Measure the label's paths of (env, task) against the oracle, frame by frame."""
    workspace = Workspace.of(work)
    frames = FramesStore(workspace.frames(env, task, camera))
    store = PathStore(workspace.paths(label, env, task, camera))
    if not store.dir.is_dir():
        raise FileNotFoundError(f"no paths labelled {label!r} for {env}/{task} ({store.dir}); run maniflow paths")
    height, width = frames.root["data/rgb"].shape[1:3]
    labelled, provider = set(store.episodes()), stored_provider(store)
    episode, frame, status, filled, measured, got, want = [], [], [], [], [], [], []
    unmeasured = Counter()
    for i, number in enumerate(int(n) for n in frames.episode_index):
        if number not in labelled:
            unmeasured["episode not labelled"] += frames.episodes[i]["frames"]
            continue
        ep = store.read(number)
        why, ep_got, ep_want = episode_pairs(frames, i, ep, provider)
        n = len(why)  # the episode's frames now (a stale episode's stored rows are not used)
        episode += [number] * n
        frame += range(n)
        status += ep.status if n == ep.num_frames else ["stale"] * n
        filled += [s is not None and s != t for t, s in enumerate(ep.source)] if n == ep.num_frames else [False] * n
        measured += [w is None for w in why]
        unmeasured.update(w for w in why if w is not None)
        got += ep_got
        want += ep_want
    q = TaskQuality(env, task, (width, height), np.array(episode, np.int64), np.array(frame, np.int64), status,
                    np.array(filled, bool), np.array(measured, bool), unmeasured=dict(unmeasured))
    q.metrics = compare_paths(got, want, width, height)
    return q


# --- a whole label --------------------------------------------------------------------------------

@dataclass
class QualityReport:
    out: Path
    data: dict  # what quality.json holds
    written: bool  # False: the label's paths and the frames are unchanged since it was written


def quality_data(label: str, tasks: list[TaskQuality], skipped: dict[str, str]) -> dict:
    """quality.json: each (env, task)'s summary and each env's distributions over its frames."""
    envs = sorted({t.env for t in tasks})
    return {"format": FORMAT, "version": FORMAT_VERSION, "label": label, "reference": "oracle", "resample": RESAMPLE,
            "percentiles": list(PERCENTILES), "tasks": [t.summary() for t in tasks],
            "envs": {env: {m: distribution(np.concatenate([t.metrics[m] for t in tasks if t.env == env]))
                           for m in METRICS} for env in envs},
            "skipped": skipped, "code_version": code_version()}


def inputs_signature(workspace: Workspace, label: str, pairs: list[tuple[str, str]], camera: str,
                     plot: bool) -> list:
    """What a measurement depends on: the code, the (env, task) pairs, the label's episode files
    and the frames stores' episode records (the reference), and whether it is plotted."""
    files = [f for env, task in pairs for f in workspace.paths(label, env, task, camera).glob("episode*.json")]
    files += [workspace.frames(env, task, camera) / ".zattrs" for env, task in pairs]
    return json.loads(json.dumps([FORMAT_VERSION, code_version(), pairs, file_stats(files), plot]))


def path_quality(work, label: str, envs=None, tasks=None, camera: str = "head", out=None,
                 plot: bool = True) -> QualityReport:
    """Measure every labelled (env, task) of `label`; write quality.json, quality.md and
    quality.png under `out` (default {work}/quality/{label}/). Nothing is measured or written
    when the label's paths and the frames are unchanged since the last measurement of the same
    pairs."""
    workspace = Workspace.of(work)
    out = Path(out) if out else workspace.quality(label)
    pairs = workspace.frames_stores(envs, tasks, camera)
    signature = inputs_signature(workspace, label, pairs, camera, plot)
    previous = json.loads((out / "quality.json").read_text()) if (out / "quality.json").exists() else None
    if previous is not None and previous.get("inputs") == signature and (out / "quality.md").exists():
        return QualityReport(out, previous, written=False)
    measured, skipped = [], {}
    for env, task in pairs:
        try:
            measured.append(task_quality(work, label, env, task, camera))
        except FileNotFoundError as e:
            skipped[f"{env}/{task}"] = str(e)
    out.mkdir(parents=True, exist_ok=True)
    data = {**quality_data(label, measured, skipped), "inputs": signature}
    figure = "quality.png" if plot and measured else None
    if figure:
        plot_cdfs(label, measured, out / figure)
    else:  # an older figure would be shown next to the new table
        (out / "quality.png").unlink(missing_ok=True)
    tmp = temp_sibling(out / "quality.md")
    tmp.write_text("\n".join(markdown(data, figure)) + "\n")
    tmp.replace(out / "quality.md")
    write_json(out / "quality.json", data)  # last: what says the outputs are complete
    return QualityReport(out, data, written=True)


def table_rows(data: dict) -> list[dict]:
    """One row per (env, task) and per env of a quality.json: frames measured, share parsed,
    median and 90th percentile of each pixel error, mean gripper agreement."""
    def row(name: str, metrics: dict, outcomes: Counter) -> dict:
        asked = sum(outcomes.values()) - outcomes.get("skipped", 0) - outcomes.get("stale", 0)
        return {"data": name, "frames measured": metrics["start_px"]["n"],
                "parsed %": round(100 * (outcomes.get("ok", 0) + outcomes.get("repaired", 0)) / max(asked, 1), 1),
                **{f"{m} {q}": metrics[m][q] for m in METRICS[:3] for q in ("p50", "p90")},
                "gripper agree %": None if metrics["gripper"]["mean"] is None
                else round(100 * metrics["gripper"]["mean"], 1)}

    rows = [row(f"{t['env']}/{t['task']}", t["metrics"], Counter(t["outcomes"])) for t in data["tasks"]]
    for env, metrics in data["envs"].items():
        outcomes = sum((Counter(t["outcomes"]) for t in data["tasks"] if t["env"] == env), Counter())
        rows.append(row(f"{env} (all tasks)", metrics, outcomes))
    return rows


def markdown(data: dict, figure: str | None = None) -> list[str]:
    """A quality.json as a markdown table (pixels of the frame; p50 / p90 over frames)."""
    md = [f"Paths `{data['label']}` against the oracle (ground truth), in pixels of the frame: median / 90th "
          f"percentile over frames. Fréchet: after resampling both paths to {data['resample']} points by arc length.",
          "", "| data | frames | parsed | start | end | Fréchet | gripper agrees |", "|---|---|---|---|---|---|---|"]
    for r in table_rows(data):
        md.append(f"| {r['data']} | {r['frames measured']} | {r['parsed %']}% | "
                  + " | ".join(f"{_px(r[f'{m} p50'])} / {_px(r[f'{m} p90'])}" for m in METRICS[:3])
                  + f" | {'-' if r['gripper agree %'] is None else str(r['gripper agree %']) + '%'} |")
    if data["skipped"]:
        md += ["", "Not measured:"] + [f"- {key}: {why}" for key, why in data["skipped"].items()]
    if figure:
        md += ["", f"![path error distributions]({figure})"]
    return md


def _px(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def plot_cdfs(label: str, tasks: list[TaskQuality], path: Path) -> None:
    """Cumulative distributions of start, end and Fréchet errors, one line per (env, task)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    for ax, metric, title in zip(axes, METRICS[:3], ("start point", "end point", "Fréchet (shape)")):
        for t in tasks:
            v = np.sort(t.metrics[metric])
            if len(v):
                ax.plot(v, np.arange(1, len(v) + 1) / len(v), linestyle="-" if t.env == "cluttered" else "--",
                        label=f"{t.env}/{t.task}")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel(f"{title} error (px)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of frames")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"paths {label} vs oracle")
    fig.tight_layout()
    tmp = temp_sibling(path)
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)


def read_quality(work, label: str) -> dict | None:
    """The label's quality.json under `work`, or None when it was not measured."""
    path = Workspace.of(work).quality(label) / "quality.json"
    return json.loads(path.read_text()) if path.exists() else None
