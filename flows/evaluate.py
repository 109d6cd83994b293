"""`evaluate`: offline + closed-loop evaluation of trained cells, and the report.

Each cell is one task (its record is stored once per checkpoint and settings, so evaluating a
finished cell again is free); the baselines are one task per task name; the report is written
under `{work}/reports/{name}/` and published as a markdown artifact with its figures, plus a
table artifact of every cell's result.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_table_artifact
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from maniflow.settings import EvalConfig, PathSource
from maniflow.workspace import Cell, Workspace, default_work
from tasks.evaluate import baselines, report
from tasks.evaluate import evaluate as evaluate_task
from tasks.train import finished_cells


class EvaluateParams(BaseModel):
    work: str = Field(default_factory=default_work)
    cells: list[Cell] = Field([], description="cells to evaluate; empty: every finished cell of the preset")
    preset: str = "paper"
    evaluation: EvalConfig = Field(default_factory=EvalConfig, description="the same for every cell")
    path_sources: list[PathSource] = Field([], description="the matrix's further path sources: a cell trained on "
                                           "one's label gets that source's paths in closed loop")
    report: str = Field("", description="report name under {work}/reports (default: the preset)")
    title: str = "ManiFlow path-guidance matrix"


def result_row(record: dict) -> dict:
    """One cell's line of the result tables."""
    return {"cell": str(Cell(**record["cell"])), "best val loss": (record.get("train") or {}).get("best_val_loss"),
            "success %": round(100 * record["closed_loop"]["success_rate"], 1),
            "action MAE": round(record["offline"]["action_mae"], 5) if record["offline"] else None}


@flow(name="evaluate", flow_run_name="evaluate {params.preset}", task_runner=ThreadPoolTaskRunner(max_workers=2),
      log_prints=True)
def evaluate(params: EvaluateParams = EvaluateParams()) -> dict:
    logger = get_run_logger()
    workspace = Workspace(Path(params.work).resolve())
    work = str(workspace.root)
    cells = params.cells or finished_cells(work, params.preset)
    if not cells:
        raise FileNotFoundError(f"no finished runs of preset {params.preset!r} under {work}/runs")
    cfg = params.evaluation
    futures = evaluate_task.map(unmapped(work), cells, [cfg.for_label(c.label, params.path_sources) for c in cells])
    base = baselines.map(unmapped(work), sorted({c.task for c in cells}), unmapped(cfg))
    wait(list(futures) + list(base))
    done = [c for c, f in zip(cells, futures) if f.state.is_completed()]
    failed = [str(c) for c, f in zip(cells, futures) if not f.state.is_completed()]
    if not done:
        raise RuntimeError(f"every evaluation failed: {failed}")
    out = workspace.report(params.report or params.preset)
    md = report.submit(work, done, cfg, str(out), params.title, params.path_sources).result()
    records = [f.result() for f in futures if f.state.is_completed()]
    create_table_artifact([result_row(r) for r in records], key="evaluation",
                          description=f"closed-loop success on {cfg.episodes} {cfg.env} layouts per cell")
    logger.info("report: %s", md)
    if failed:
        raise RuntimeError(f"evaluation failed for {failed}; the report covers the other {len(done)} cells")
    return {"report": md, "cells": [result_row(r) for r in records]}


if __name__ == "__main__":  # python -m flows.evaluate
    evaluate()
