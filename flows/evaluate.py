"""`evaluate`: offline + closed-loop evaluation of finished training runs, and the report.

Each cell is one cached task (a finished cell is evaluated once per checkpoint and settings);
the baselines are one task per task name; the report is written under
`{work}/reports/{name}/` and published as a markdown artifact with its figures, plus a table
artifact of every cell's result.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_table_artifact
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from maniflow.evaluate import CellRun, EvalConfig
from maniflow.synthetic.env import EVAL_SEED
from maniflow.train import finished_runs
from tasks.evaluate import baselines, evaluate_cell, report


class EvalParams(BaseModel):
    """How cells are evaluated (the same for every cell of a report)."""

    env: str = Field("cluttered", description="evaluation scenes")
    episodes: int = Field(20, description="closed-loop episodes per cell")
    seed: int = Field(EVAL_SEED, description="seed of the evaluation layouts")
    execute_steps: int = Field(8, description="actions executed per predicted chunk")
    provider: str = Field("oracle", description="path source in closed loop: oracle, hamster, peek or openai")
    model: str = "HAMSTER_dev"
    endpoints: list[str] = Field([], description="VLM endpoints when the provider is not the oracle")
    offline: bool = Field(True, description="also the offline action error on held-out episodes")
    device: str = "auto"

    def config(self) -> EvalConfig:
        return EvalConfig(env=self.env, episodes=self.episodes, seed=self.seed, execute_steps=self.execute_steps,
                          provider=self.provider, model=self.model, endpoints=tuple(self.endpoints),
                          offline=self.offline, device=self.device)


class EvaluateParams(BaseModel):
    work: str = Field(os.environ.get("MANIFLOW_WORK", "work"))
    runs: list[str] = Field([], description="run directories; empty: every finished run of the preset")
    preset: str = "paper"
    evaluation: EvalParams = EvalParams()
    report: str = Field("", description="report name under {work}/reports (default: the preset)")
    title: str = "ManiFlow path-guidance matrix"


@flow(name="evaluate", flow_run_name="evaluate {params.preset}", task_runner=ThreadPoolTaskRunner(max_workers=2),
      log_prints=True)
def evaluate(params: EvaluateParams = EvaluateParams()) -> dict:
    logger = get_run_logger()
    work = str(Path(params.work).resolve())
    runs = [str(Path(r).resolve()) for r in params.runs] or [str(r) for r in finished_runs(work, params.preset)]
    if not runs:
        raise FileNotFoundError(f"no finished runs of preset {params.preset!r} under {work}/runs")
    cfg = params.evaluation.config()
    cells = evaluate_cell.map(runs, unmapped(work), unmapped(cfg))
    task_names = sorted({CellRun.read(r).task for r in runs})
    base = baselines.map(unmapped(work), task_names, unmapped(cfg))
    wait(list(cells) + list(base))
    done = [run for run, f in zip(runs, cells) if f.state.is_completed()]
    failed = [run for run, f in zip(runs, cells) if not f.state.is_completed()]
    if not done:
        raise RuntimeError(f"every evaluation failed: {failed}")
    out = Path(work) / "reports" / (params.report or params.preset)
    md = report.submit(done, work, cfg, str(out), params.title).result()
    rows = [f.result() for f in cells if f.state.is_completed()]
    create_table_artifact(
        [{"train env": r["train_env"], "condition": r["condition"], "task": r["task"], "seed": r["seed"],
          "success %": round(100 * r["closed_loop"]["success_rate"], 1),
          "action MAE": round(r["offline"]["action_mae"], 5) if r["offline"] else None} for r in rows],
        key="evaluation", description=f"closed-loop success on {cfg.episodes} {cfg.env} layouts per cell")
    logger.info("report: %s", md)
    if failed:
        raise RuntimeError(f"evaluation failed for {failed}; the report covers the other {len(done)} cells")
    return {"report": md, "cells": len(done)}


if __name__ == "__main__":  # python -m flows.evaluate
    evaluate()
