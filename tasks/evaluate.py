"""Evaluation tasks: one cell, the baselines of one task, the report.

A cell's evaluation is cached on its checkpoint (name, size, mtime) and the evaluation
settings (`maniflow.evaluate.eval_key`), so a finished cell is evaluated once; the library
keeps the same record in `{run}/eval/`, which `maniflow evaluate` reuses too.
"""

from __future__ import annotations

import base64
from dataclasses import asdict
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from maniflow.evaluate import CellRun, EvalConfig, eval_key, evaluate_baselines, evaluate_run
from maniflow.report import build_report
from tasks.prepare import cache_key


def _cell_key(ctx, p) -> str:
    checkpoint = CellRun.read(p["run"]).checkpoint()
    return cache_key("evaluate", str(Path(p["run"]).resolve()), eval_key(checkpoint, p["cfg"]))


@task(name="evaluate-cell", cache_key_fn=_cell_key, persist_result=True, result_serializer="json",
      task_run_name="evaluate {run}")
def evaluate_cell(run: str, work: str, cfg: EvalConfig) -> dict:
    record = evaluate_run(run, work, cfg)
    record.pop("train", None)  # the history stays in the run's eval file, not in Prefect's results
    return record


@task(name="baselines", cache_key_fn=lambda ctx, p: cache_key("baselines", p["task_name"], asdict(p["cfg"])),
      persist_result=True, result_serializer="json", task_run_name="baselines {task_name}")
def baselines(work: str, task_name: str, cfg: EvalConfig) -> dict:
    return evaluate_baselines(work, task_name, cfg)


@task(name="report", task_run_name="report {out}")
def report(runs: list[str], work: str, cfg: EvalConfig, out: str, title: str) -> str:
    """Build the report from the cells' stored evaluation records and publish it as an artifact."""
    records = [evaluate_run(run, work, cfg) for run in runs]  # cached: reads {run}/eval/*.json
    tasks_ = sorted({r["task"] for r in records})
    md_path = build_report(records, {t: evaluate_baselines(work, t, cfg) for t in tasks_}, out, title)
    publish_report(md_path)
    return str(md_path)


def publish_report(md_path: Path) -> None:
    """The report as a markdown artifact, its figures inlined (the UI cannot reach local files)."""
    text = md_path.read_text()
    for png in sorted(md_path.parent.rglob("*.png")):
        rel = png.relative_to(md_path.parent).as_posix()
        data = base64.b64encode(png.read_bytes()).decode()
        text = text.replace(f"]({rel})", f"](data:image/png;base64,{data})")
    create_markdown_artifact(text, key="experiment-report", description=f"report: {md_path}")
