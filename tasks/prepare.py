"""Data-preparation tasks: extract, label paths per episode, render per episode, assemble.

Each task wraps one library function. Cache keys are built from what the result depends on
(source file fingerprints, frames-store episode fingerprints, path files, provider identity,
parameters, stage versions), results are persisted as JSON (never pickle), so a new flow run
recomputes nothing unchanged and a retried run recomputes only what failed. Large data stays
in the stores; tasks pass paths and small manifests.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict

from prefect import task
from prefect.artifacts import create_markdown_artifact

from maniflow import __version__
from maniflow.datasets import DatasetConfig, assemble_datasets, dataset_path, render_episode, render_inputs
from maniflow.frames import FramesStore, extract_task, frames_store_path
from maniflow.paths.client import ClientConfig, NoEndpointAvailable
from maniflow.paths.label import ProviderConfig, label_paths
from maniflow.paths.store import PathStore, path_store_dir
from maniflow.previews import contact_sheet
from maniflow.robotwin import SourceOptions, select_episodes


def cache_key(*parts) -> str:
    """A stable key from JSON-able parts (and the package version)."""
    text = json.dumps([__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class PathsIncomplete(RuntimeError):
    """Some frames got no answer (endpoints failing); asking again later may complete them."""


def _transient(task_, run, state) -> bool:
    """Retry endpoint trouble, never deterministic failures (bad input, bad configuration)."""
    try:
        state.result()
    except (NoEndpointAvailable, PathsIncomplete):
        return True
    except Exception:  # noqa: BLE001 - anything else is not worth a blind retry
        return False
    return False


# --- extract ----------------------------------------------------------------------------------

def _extract_key(ctx, p) -> str:
    refs = select_episodes(p["root"], p["task_name"], p["config"], p["source"].embodiment, p["source"].layout)
    return cache_key("extract", str(p["root"]), str(p["work"]), p["env"], p["config"], p["task_name"],
                     p["camera"], asdict(p["source"]),
                     [[r.index, r.fingerprint()] for r in refs], _stats({r.scene_info_path for r in refs}))


def _stats(paths) -> list:
    """(path, size, mtime) of each file that exists: a change reruns the task, which reuses every
    episode whose own inputs and working arm are unchanged."""
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(paths) if p.exists()]


@task(name="extract", cache_key_fn=_extract_key, persist_result=True, result_serializer="json",
      task_run_name="extract {env}/{task_name}")
def extract(root: str, work: str, env: str, config: str, task_name: str, source: SourceOptions = SourceOptions(),
            camera: str = "head") -> dict:
    """Decode the episodes of (env, task) into its frames store; bad episodes are quarantined
    (recorded, not retried)."""
    report = extract_task(root, work, env, config, task_name, camera, source=source)
    frames = FramesStore(report.store)
    return {"store": str(report.store), "frames": report.frames,
            "episodes": [int(n) for n in frames.episode_index],
            "quarantined": [q["episode"] for q in frames.quarantine]}


# --- paths ------------------------------------------------------------------------------------

def _episode_record(work, env, task_name, number: int, camera: str = "head") -> dict:
    frames = FramesStore(frames_store_path(work, env, task_name, camera))
    return frames.episodes[[int(n) for n in frames.episode_index].index(number)]


def _label_key(ctx, p) -> str:
    provider: ProviderConfig = p["provider"]
    record = _episode_record(p["work"], p["env"], p["task_name"], p["number"])
    return cache_key("paths", str(p["work"]), p["env"], p["task_name"], p["number"],
                     provider.source_fingerprint(record), record["frames"],
                     provider.name, provider.identity(), provider.coords, p["fallback"])


@task(name="label-paths", cache_key_fn=_label_key, persist_result=True, result_serializer="json",
      retries=2, retry_delay_seconds=[30, 120], retry_condition_fn=_transient,
      task_run_name="paths {env}/{task_name} episode {number}")
def label_episode(work: str, env: str, task_name: str, number: int, provider: ProviderConfig,
                  client: ClientConfig | None, fallback: str = "nearest") -> dict:
    """Label one episode; fails (and is retried) while frames still have no answer."""
    # The task's summary.json is written once, by `assemble`, not by every episode.
    report = label_paths(work, env, task_name, provider, client, fallback=fallback, episodes=[number],
                         summary=False)
    stats = report.total
    if stats["error"]:
        raise PathsIncomplete(f"{env}/{task_name} episode {number}: {stats['error']} frames got no answer "
                              f"({stats['reasons']}); the answered ones are kept")
    return {"episode": number, "stats": stats}


def publish_preview(work: str, env: str, task_name: str, label: str, summary: dict) -> None:
    """Markdown artifact: the task's path-parse statistics and an overlay contact sheet."""
    sheet = contact_sheet(work, env, task_name, label, dataset_path(work, env, "overlay", task_name, label).parent
                          / "previews" / f"{env}_{task_name}-{label}.png")
    parsed = 100 * summary["total"]["parsed_share"]
    rows = "\n".join(f"| {n} | {s['frames']} | {s['ok']} | {s['repaired']} | {s['failed']} | {s['error']} |"
                     for n, s in summary["episodes"].items())
    image = base64.b64encode(sheet.read_bytes()).decode()
    key = "".join(c if c.isalnum() else "-" for c in f"paths-{env}-{task_name}-{label}".lower())
    create_markdown_artifact(
        f"### Paths {env}/{task_name} [{label}]: {parsed:.1f}% parsed\n\n"
        f"| episode | frames | ok | repaired | failed | no answer |\n|---|---|---|---|---|---|\n{rows}\n\n"
        f"![overlay preview](data:image/png;base64,{image})", key=key,
        description=f"path statistics and overlay preview of {env}/{task_name}")


# --- datasets -----------------------------------------------------------------------------------

def _render_key(ctx, p) -> str:
    frames = FramesStore(frames_store_path(p["work"], p["env"], p["task_name"]))
    index = [int(n) for n in frames.episode_index].index(p["number"])
    return cache_key("render", str(p["work"]), p["env"], p["task_name"], p["label"], p["number"],
                     render_inputs(p["work"], p["env"], p["task_name"], p["label"], index, p["config"], frames))


@task(name="render", cache_key_fn=_render_key, persist_result=True, result_serializer="json",
      task_run_name="render {env}/{task_name} episode {number}")
def render(work: str, env: str, task_name: str, label: str, number: int, config: DatasetConfig,
           labelled: dict | None = None) -> dict:
    """Draw one episode's dataset parts. `labelled` only orders it after its paths."""
    frames = FramesStore(frames_store_path(work, env, task_name))
    index = [int(n) for n in frames.episode_index].index(number)
    return render_episode(work, env, task_name, label, index, config)


@task(name="assemble", persist_result=False, task_run_name="assemble {env}/{task_name}")
def assemble(work: str, env: str, task_name: str, label: str, numbers: list[int], config: DatasetConfig,
             rendered: list[dict] | None = None) -> dict:
    """Write the task's path summary and the original, overlay and concat stores (a no-op when
    they are up to date)."""
    summary = PathStore(path_store_dir(work, label, env, task_name)).write_summary(
        {"env": env, "task": task_name, "camera": "head"})
    stores, assembled = assemble_datasets(work, env, task_name, label, numbers, config)
    if assembled:
        publish_preview(work, env, task_name, label, summary)
    return {"stores": {k: str(v) for k, v in stores.items()}, "assembled": assembled,
            "paths": str(path_store_dir(work, label, env, task_name))}
