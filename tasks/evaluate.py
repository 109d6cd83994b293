"""Evaluation tasks: one cell, the baselines of one task, the report.

No Prefect cache here: the library keeps each cell's record in `{run}/eval/` (keyed by its
checkpoint and the settings) and the baselines in `{work}/eval/baselines/`, so a finished cell
is evaluated once whoever asks (these tasks, `maniflow evaluate`).
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from maniflow.artifacts import BUDGET, inline_figures
from maniflow.evaluate import evaluate_baselines, evaluate_cell
from maniflow.report import build_report
from maniflow.settings import EvalConfig, PathSource
from maniflow.workspace import Cell, Workspace


@task(name="evaluate-cell", cache_policy=NO_CACHE, task_run_name="evaluate {cell}")
def evaluate(work: str, cell: Cell, cfg: EvalConfig) -> dict:
    record = evaluate_cell(work, cell, cfg)
    record["train"].pop("history", None)  # the history stays in the run's eval file, not in Prefect's results
    return record


@task(name="baselines", cache_policy=NO_CACHE, task_run_name="baselines {task_name}")
def baselines(work: str, task_name: str, cfg: EvalConfig) -> dict:
    return evaluate_baselines(work, task_name, cfg)


@task(name="report", cache_policy=NO_CACHE, task_run_name="report {out}")
def report(work: str, cells: list[Cell], cfg: EvalConfig, out: str, title: str,
           path_sources: list[PathSource] = ()) -> str:
    """Build the report from the cells' stored evaluation records and publish it as an artifact."""
    # stored: reads {run}/eval/*.json
    records = [evaluate_cell(work, cell, cfg.for_label(cell.label, path_sources)) for cell in cells]
    baselines = {t: evaluate_baselines(work, t, cfg) for t in sorted({c.task for c in cells})}
    md_path = build_report(records, baselines, out, title,
                           quality={c.label: Workspace(work).quality(c.label) for c in cells})
    publish_report(md_path, [Workspace(work).run(c) for c in cells])
    return str(md_path)


def publish_report(md_path: Path, runs: list[Path] = ()) -> str:
    """The report as a markdown artifact: its figures inline as thumbnails within the size
    budget (the UI cannot reach local files), the full-size files named; at its end the flow runs
    that trained its cells and the viewer of its work directory. Returns the artifact's id."""
    trained = [json.loads((run / "prefect.json").read_text()) for run in runs if (run / "prefect.json").exists()]
    footer = ("\n\n**Training flow runs**: " + ", ".join(f"[{t['flow_run_name']}]({t['ui_url']})" for t in trained)
              if trained else "")
    if runs:  # the report of a work directory: {work}/reports/{name}/report.md
        footer += (f"\n\n---\nEpisodes, paths, runs and full-size figures: `maniflow view --work "
                   f"{md_path.resolve().parents[2]}`, then http://127.0.0.1:8765/ (a read-only viewer).\n")
    text = inline_figures(md_path.read_text(), md_path.parent, budget=BUDGET - len(footer.encode())) + footer
    return str(create_markdown_artifact(text, key="experiment-report", description=f"report: {md_path}"))
