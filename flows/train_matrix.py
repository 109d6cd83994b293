"""`train-matrix`: datasets -> one `train-run` flow run per cell -> evaluation and report.

    1. `prepare-data` as a subflow (every stage cached: unchanged data costs nothing);
    2. one `train-run` deployment run per (env, condition, task, seed) not finished yet, started
       with `run_deployment(timeout=0)` so each cell lands on a worker of the pool (one per GPU),
       and is visible, cancellable and retryable on its own;
    3. waits, keeping a matrix table artifact up to date (state, best validation loss);
    4. `evaluate` as a subflow on every finished cell, then the final table with success rates.
A failed cell fails the matrix run after the others are evaluated. `prefect flow-run retry` of
the failed cell's run resumes it from its checkpoint; a retry of the matrix run relaunches only
unfinished cells.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from pydantic import BaseModel, Field

from flows.evaluate import EvalParams, EvaluateParams, evaluate
from flows.prepare_data import PrepareParams, dask_runner, prepare_data
from flows.train_run import CellParams, run_dir
from maniflow.datasets import dataset_complete, dataset_path
from maniflow.evaluate import evaluate_run
from maniflow.paths.label import ProviderConfig
from maniflow.replay import CONDITIONS
from maniflow.robotwin import ENVS, SINGLE_ARM_TASKS
from maniflow.train import run_finished

MODEL_CONDITIONS = ["original", "overlay_current", "overlay_initial_current"]


class MatrixParams(BaseModel):
    """The experiment: the user's six single-arm tasks x both training envs x three model
    conditions, `paper` preset, evaluated on cluttered scenes."""

    work: str = Field(os.environ.get("MANIFLOW_WORK", "work"))
    root: str = Field(os.environ.get("MANIFLOW_DATA", "data/robotwin"), description="RoboTwin data root")
    envs: list[str] = Field(list(ENVS), description="training data: clean and/or cluttered")
    tasks: list[str] = Field(list(SINGLE_ARM_TASKS))
    conditions: list[str] = Field(MODEL_CONDITIONS, description=" | ".join(CONDITIONS))
    seeds: list[int] = Field([0], description="training seeds (statistics are over seeds and episodes)")
    preset: str = Field("paper", description="paper or demo")
    epochs: int | None = Field(None, description="override the preset's epochs")
    device: str = "auto"
    prepare: bool = Field(True, description="run prepare-data first (cached)")
    dask_address: str = Field(os.environ.get("MANIFLOW_DASK_ADDRESS", ""),
                              description="Dask scheduler for prepare-data (empty: a local cluster)")
    data: PrepareParams = Field(PrepareParams(), description="path labelling and rendering (envs, tasks, root and "
                                "work come from the matrix)")
    evaluation: EvalParams = EvalParams()
    train_deployment: str = Field("train-run/cell", description="deployment that trains one cell")
    poll_s: float = 10.0
    report: str = Field("", description="report name under {work}/reports (default: the preset)")


def cells(p: MatrixParams, work: str, label: str) -> list[CellParams]:
    return [CellParams(work=work, env=env, condition=condition, task=task, seed=seed, preset=p.preset, label=label,
                       epochs=p.epochs, device=p.device)
            for task in p.tasks for env in p.envs for condition in p.conditions for seed in p.seeds]


def cell_name(c: CellParams) -> str:
    return f"{c.env}/{c.condition}/{c.task} seed {c.seed}"


@flow(name="train-matrix", flow_run_name="matrix {params.preset}: {params.tasks}", log_prints=True)
def train_matrix(params: MatrixParams = MatrixParams()) -> dict:
    logger = get_run_logger()
    work = str(Path(params.work).resolve())
    data = params.data.model_copy(update={"root": str(Path(params.root).resolve()), "work": work,
                                          "envs": sorted(set(params.envs) | {params.evaluation.env}),
                                          "tasks": params.tasks})
    if params.prepare:
        prepare = prepare_data.with_options(task_runner=dask_runner(params.dask_address or None))
        state = prepare(data, return_state=True)
        if not state.is_completed():  # cells whose datasets exist still run
            logger.warning("prepare-data did not finish everything: %s", state.message)
    label = ProviderConfig(kind=data.provider, label=data.label).name

    rows: dict[str, dict] = {}
    launched: dict[str, str] = {}
    todo = cells(params, work, label)
    for cell in todo:
        name = cell_name(cell)
        rows[name] = {"cell": name, "state": "", "best val loss": None, "success %": None, "flow run": ""}
        store = dataset_path(work, cell.env, CONDITIONS[cell.condition].dataset, cell.task, label)
        if run_finished(run_dir(cell)):
            rows[name]["state"] = "finished earlier"
        elif not dataset_complete(store):
            rows[name]["state"] = "no dataset"
        else:
            run = run_deployment(params.train_deployment, parameters={"params": cell.model_dump()}, timeout=0,
                                 tags=["maniflow", "matrix", params.preset])
            launched[name] = str(run.id)
            rows[name].update(state="Scheduled", **{"flow run": str(run.id)})
    logger.info("%d cells: %d launched, %d finished earlier", len(todo), len(launched),
                sum(r["state"] == "finished earlier" for r in rows.values()))
    _publish(rows, params)

    pending = dict(launched)
    with get_client(sync_client=True) as client:
        while pending:
            changed = False
            for name, run_id in list(pending.items()):
                state = client.read_flow_run(run_id).state
                if state.name != rows[name]["state"]:
                    rows[name]["state"], changed = state.name, True
                if state.is_final():
                    del pending[name]
            if changed:
                _publish(rows, params)
            if pending:
                time.sleep(params.poll_s)

    finished = [c for c in todo if run_finished(run_dir(c))]
    unfinished = [cell_name(c) for c in todo if c not in finished]
    result = {"cells": len(todo), "finished": len(finished), "unfinished": unfinished, "report": None}
    if finished:
        result["report"] = evaluate(EvaluateParams(
            work=work, runs=[str(run_dir(c)) for c in finished], preset=params.preset,
            evaluation=params.evaluation, report=params.report))["report"]
        for c in finished:  # cached: reads the records the evaluation just wrote
            record = evaluate_run(run_dir(c), work, params.evaluation.config())
            rows[cell_name(c)].update({"best val loss": record["train"]["best_val_loss"],
                                       "success %": round(100 * record["closed_loop"]["success_rate"], 1)})
        _publish(rows, params)
    if unfinished:
        raise RuntimeError(f"{len(unfinished)} cell(s) did not finish: {unfinished}. Fix the cause, then "
                           "`prefect flow-run retry <id>` each failed train-run (it resumes), or retry this run.")
    return result


def _publish(rows: dict[str, dict], params: MatrixParams) -> None:
    create_table_artifact(list(rows.values()), key=f"train-matrix-{params.preset}",
                          description="cells: state, best validation loss, closed-loop success")


if __name__ == "__main__":  # python -m flows.train_matrix
    train_matrix()
