"""Data-preparation tasks: extract, label paths per episode, render per episode, assemble, path
quality against the ground truth, and (when formats are asked for) export.

Each task wraps one library function. Cache keys are built from what the result depends on
(source file fingerprints, frames-store episode fingerprints, path files, provider identity,
parameters, stage versions), results are persisted as JSON (never pickle), so a new flow run
recomputes nothing unchanged and a retried run recomputes only what failed. Large data stays
in the stores; tasks pass paths and small manifests.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from maniflow import __version__
from maniflow.artifacts import inline_figures
from maniflow.datasets import assemble_datasets, render_episode, render_inputs
from maniflow.exporters import export_dataset
from maniflow.frames import FramesStore, extract_task
from maniflow.paths.client import NoEndpointAvailable, RequestsRejected
from maniflow.paths.label import label_paths
from maniflow.paths.quality import markdown, path_quality, table_rows
from maniflow.paths.store import PathStore
from maniflow.previews import contact_sheet
from maniflow.robotwin import select_episodes
from maniflow.settings import CAMERA, PrepareJob
from maniflow.storage import file_stats
from maniflow.workspace import Workspace


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
    except RequestsRejected:  # wrong model name, URL or key: the same answer every time
        return False
    except (NoEndpointAvailable, PathsIncomplete):
        return True
    except Exception:  # noqa: BLE001 - anything else is not worth a blind retry
        return False
    return False


def _frames(job: PrepareJob) -> FramesStore:
    return FramesStore(Workspace(job.work).frames(job.env, job.task, CAMERA))


# --- extract ----------------------------------------------------------------------------------

def _extract_key(ctx, p) -> str:
    job: PrepareJob = p["job"]
    source = job.cfg.source
    refs = select_episodes(job.root, job.task, job.config_name, source.embodiment, source.layout)
    return cache_key("extract", job.root, job.work, job.env, job.config_name, job.task, CAMERA, asdict(source),
                     [[r.index, r.fingerprint()] for r in refs],
                     # a change reruns the task, which reuses every episode whose inputs and arm are unchanged
                     file_stats({r.scene_info_path for r in refs}))


@task(name="extract", cache_key_fn=_extract_key, persist_result=True, result_serializer="json",
      task_run_name="extract {job}")
def extract(job: PrepareJob) -> dict:
    """Decode the episodes of (env, task) into its frames store; bad episodes are quarantined
    (recorded, not retried)."""
    report = extract_task(job.root, job.work, job.env, job.config_name, job.task, CAMERA, source=job.cfg.source)
    frames = FramesStore(report.store)
    return {"store": str(report.store), "frames": report.frames,
            "episodes": [int(n) for n in frames.episode_index],
            "quarantined": [q["episode"] for q in frames.quarantine]}


# --- paths ------------------------------------------------------------------------------------

def _label_key(ctx, p) -> str:
    job: PrepareJob = p["job"]
    provider = job.cfg.provider
    frames = _frames(job)
    record = frames.episodes[frames.row(p["number"])]
    return cache_key("paths", job.work, job.env, job.task, p["number"], provider.source_fingerprint(record),
                     record["frames"], provider.name, provider.identity(), provider.coords, provider.fallback,
                     provider.every)


# Retries (how many, how long apart) are the flow's settings: `prepare_data` sets them.
@task(name="label-paths", cache_key_fn=_label_key, persist_result=True, result_serializer="json",
      retry_condition_fn=_transient, task_run_name="paths {job} episode {number}")
def label_episode(job: PrepareJob, number: int) -> dict:
    """Label one episode; fails (and is retried) while frames still have no answer."""
    # The task's summary.json is written once, by `assemble`, not by every episode.
    report = label_paths(job.work, job.env, job.task, job.cfg.provider, job.cfg.client_for(job.work),
                         camera=CAMERA, episodes=[number], summary=False)
    stats = report.total
    for warning in report.warnings():
        print(f"WARNING {job} episode {number}: {warning}")
    if stats["error"]:
        raise PathsIncomplete(f"{job} episode {number}: {stats['error']} frames got no answer "
                              f"({stats['reasons']}); the answered ones are kept")
    return {"episode": number, "stats": stats}


def publish_preview(job: PrepareJob, summary: dict) -> None:
    """Markdown artifact: the task's path-parse statistics and an overlay contact sheet."""
    label = job.cfg.provider.name
    sheet = contact_sheet(job.work, job.env, job.task, label, Workspace(job.work).preview(job.env, job.task, label))
    parsed = 100 * summary["total"]["parsed_share"]
    rows = "\n".join(f"| {n} | {s['frames']} | {s['ok']} | {s['repaired']} | {s['failed']} | {s['error']} |"
                     for n, s in summary["episodes"].items())
    key = "".join(c if c.isalnum() else "-" for c in f"paths-{job.env}-{job.task}-{label}".lower())
    create_markdown_artifact(inline_figures(
        f"### Paths {job} [{label}]: {parsed:.1f}% parsed\n\n"
        f"| episode | frames | ok | repaired | failed | no answer |\n|---|---|---|---|---|---|\n{rows}\n\n"
        f"![overlay preview]({sheet.name})", sheet.parent), key=key,
        description=f"path statistics and overlay preview of {job}")


# --- datasets -----------------------------------------------------------------------------------

def _render_key(ctx, p) -> str:
    job: PrepareJob = p["job"]
    frames = _frames(job)
    label = job.cfg.provider.name
    return cache_key("render", job.work, job.env, job.task, label, p["number"],
                     render_inputs(job.work, job.env, job.task, label, frames.row(p["number"]), job.cfg.dataset,
                                   frames))


@task(name="render", cache_key_fn=_render_key, persist_result=True, result_serializer="json",
      task_run_name="render {job} episode {number}")
def render(job: PrepareJob, number: int, labelled: dict | None = None) -> dict:
    """Draw one episode's dataset parts. `labelled` only orders it after its paths."""
    return render_episode(job.work, job.env, job.task, job.cfg.provider.name, _frames(job).row(number),
                          job.cfg.dataset)


@task(name="assemble", persist_result=False, task_run_name="assemble {job}")
def assemble(job: PrepareJob, numbers: list[int], rendered: list[dict] | None = None) -> dict:
    """Write the task's path summary and the original, overlay and concat stores (a no-op when
    they are up to date)."""
    label = job.cfg.provider.name
    paths = Workspace(job.work).paths(label, job.env, job.task)
    summary = PathStore(paths).write_summary({"env": job.env, "task": job.task, "camera": CAMERA})
    stores, assembled = assemble_datasets(job.work, job.env, job.task, label, numbers, job.cfg.dataset)
    if assembled:
        publish_preview(job, summary)
    return {"stores": {k: str(v) for k, v in stores.items()}, "assembled": assembled, "paths": str(paths)}


@task(name="path-quality", persist_result=False, task_run_name="path quality [{label}]")
def quality(work: str, label: str, envs: list[str], tasks: list[str]) -> dict:
    """The label's paths against the ground truth (maniflow path-quality; a no-op when its inputs
    are unchanged), published as a table and a markdown artifact with the error distributions."""
    report = path_quality(work, label, envs, tasks, CAMERA)
    data = report.data
    key = "".join(c if c.isalnum() else "-" for c in f"path-quality-{label}".lower())
    if report.written:
        create_table_artifact(table_rows(data), key=f"{key}-table",
                              description=f"paths {label} vs the oracle: pixel errors, median and 90th percentile")
    if report.written and data["tasks"]:
        create_markdown_artifact(inline_figures(f"### Path quality [{label}]\n\n"
                                                + "\n".join(markdown(data, "quality.png")), report.out), key=key,
                                 description=f"paths {label} against the ground truth")
    return {"out": str(report.out), "written": report.written, "measured": [f"{t['env']}/{t['task']}"
                                                                            for t in data["tasks"]]}


@task(name="export", persist_result=False, task_run_name="export {job}")
def export(job: PrepareJob, assembled: dict | None = None) -> dict:
    """Write the task's datasets in the asked formats (a no-op for exports that are up to date).
    `assembled` only orders it after the stores."""
    label, cfg = job.cfg.provider.name, job.cfg.export
    reports = [r for fmt in cfg.formats for r in export_dataset(job.work, job.env, job.task, label, fmt, cfg)]
    for r in reports:
        print(r.summary())
    return {r.format + ":" + r.path.name: {"path": str(r.path), "written": r.written} for r in reports}
