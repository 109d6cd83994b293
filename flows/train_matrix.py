"""`train-matrix`: datasets -> one `train-run` flow run per cell -> evaluation and report.

    1. `prepare-data` as a subflow, once per path source (every stage cached: unchanged data
       costs nothing);
    2. one `train-run` deployment run per cell not finished yet, started with
       `run_deployment(timeout=0)` so each cell lands on a worker of the pool (one per GPU),
       and is visible, cancellable and retryable on its own;
    3. waits, keeping a matrix table artifact up to date (state, best validation loss);
    4. `evaluate` as a subflow on every finished cell, then the final table with success rates.
A failed cell fails the matrix run after the others are evaluated. `prefect flow-run retry` of
the failed cell's run resumes it from its checkpoint; a retry of the matrix run relaunches only
unfinished cells.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from pydantic import BaseModel, Field, model_validator

from flows.evaluate import EvaluateParams, evaluate
from flows.prepare_data import PrepareParams, dask_runner, prepare_data
from flows.train_run import CellParams
from maniflow.conditions import CONDITIONS, matrix_conditions
from maniflow.paths.label import ProviderConfig
from maniflow.robotwin import ENVS, SINGLE_ARM_TASKS
from maniflow.settings import EvalConfig, PathSource, PrepareConfig, TrainOptions
from maniflow.workspace import Cell, default_root, default_work
from tasks.train import cell_state


class MatrixParams(BaseModel):
    """The experiment: the user's six single-arm tasks x both training envs x three model
    conditions, `paper` preset, evaluated on cluttered scenes."""

    work: str = Field(default_factory=default_work)
    root: str = Field(default_factory=default_root, description="RoboTwin data root")
    envs: list[str] = Field(list(ENVS), description="training data: clean and/or cluttered")
    tasks: list[str] = Field(list(SINGLE_ARM_TASKS))
    conditions: list[str] = Field(default_factory=matrix_conditions, description="model conditions "
                                  "(maniflow.conditions)")
    seeds: list[int] = Field([0], description="training seeds: with 3 or more the intervals cover seeds and layouts; "
                             "with fewer, evaluation layouts only (docs/evaluation.md)")
    preset: str = Field("paper", description="paper or demo")
    train: TrainOptions = Field(default_factory=TrainOptions, description="overrides of the preset")
    prepare: bool = Field(True, description="run prepare-data first (cached)")
    dask_address: str = Field("", description="Dask scheduler for prepare-data (empty: $MANIFLOW_DASK_ADDRESS, "
                              "else a local cluster)")
    data: PrepareConfig = Field(default_factory=PrepareConfig, description="path labelling and rendering")
    path_sources: list[PathSource] = Field([], description="further path sources as a matrix axis: each labels the "
                                           "data under its own label, the conditions that draw paths are trained on it "
                                           "too and evaluated with its paths in closed loop; [{provider: {kind: "
                                           "oracle}}] is the ground truth, the upper bound the report compares the "
                                           "data's paths with")
    evaluation: EvalConfig = Field(default_factory=EvalConfig, description="the same for every cell")
    train_deployment: str = Field("train-run/cell", description="deployment that trains one cell")
    poll_s: float = 10.0
    report: str = Field("", description="report name under {work}/reports (default: the preset)")

    @model_validator(mode="after")
    def _closed_loop_reads_paths_as_labelled(self) -> MatrixParams:
        """The closed-loop path source reads coordinates as the training paths were read."""
        train, closed = self.data.provider, self.evaluation.paths
        if closed.kind == train.kind and closed.coords != train.coords:
            raise ValueError(f"the training paths read {train.kind}'s answers as {train.coords} coordinates, the "
                             f"closed-loop paths as {closed.coords}: set evaluation.paths.coords to {train.coords}")
        return self

    @model_validator(mode="after")
    def _one_provider_per_label(self) -> MatrixParams:
        labels = [p.name for p in self.providers()]
        if len(set(labels)) < len(labels):
            raise ValueError(f"path labels {labels}: each path source needs its own label")
        return self

    def providers(self) -> list[ProviderConfig]:
        """Every path source: the data's, then the further ones."""
        return [self.data.provider, *(s.provider for s in self.path_sources)]

    def cells(self) -> list[Cell]:
        """Tasks x envs x conditions x seeds, and x path labels for the conditions that draw paths
        (a condition that draws none trains once, on the data's label)."""
        labels = [p.name for p in self.providers()]
        return [Cell(env=env, condition=condition, task=task, seed=seed, preset=self.preset, label=label)
                for task in self.tasks for env in self.envs for condition in self.conditions
                for label in (labels if CONDITIONS[condition].dataset != "original" else labels[:1])
                for seed in self.seeds]


@flow(name="train-matrix", flow_run_name="matrix {params.preset}: {params.tasks}", log_prints=True)
def train_matrix(params: MatrixParams = MatrixParams()) -> dict:
    logger = get_run_logger()
    work = str(Path(params.work).resolve())
    if params.prepare:
        prepare = prepare_data.with_options(task_runner=dask_runner(params.dask_address or None))
        sources = [PathSource(provider=params.data.provider, client=params.data.client), *params.path_sources]
        for source in sources:
            data = PrepareParams(root=str(Path(params.root).resolve()), work=work, tasks=params.tasks,
                                 envs=sorted(set(params.envs) | {params.evaluation.env}),
                                 data=replace(params.data, provider=source.provider,
                                              client=source.client or params.data.client))
            label = source.provider.name
            state = prepare.with_options(flow_run_name=f"prepare [{label}]")(data, return_state=True)
            if not state.is_completed():  # cells whose datasets exist still run
                logger.warning("prepare-data [%s] did not finish everything: %s", label, state.message)

    todo = params.cells()
    rows = {str(c): {"cell": str(c), "state": "", "best val loss": None, "success %": None, "flow run": ""}
            for c in todo}
    launched: dict[str, str] = {}
    # Longest first (cells with the initial frame train a second encoder), so that the workers'
    # slots finish together instead of one long cell running alone at the end.
    for cell in sorted(todo, key=lambda c: not CONDITIONS[c.condition].initial):
        state = cell_state(work, cell, params.train)
        if state == "todo":
            # Named now, as train-run names itself when it starts: the UI shows the cell while it waits.
            run = run_deployment(params.train_deployment, timeout=0, tags=["maniflow", "matrix", params.preset],
                                 flow_run_name=f"train {cell}",
                                 parameters={"params": CellParams(work=work, cell=cell, train=params.train)
                                             .model_dump(mode="json")})
            launched[str(cell)] = str(run.id)
            rows[str(cell)].update(state="Scheduled", **{"flow run": str(run.id)})
        else:
            rows[str(cell)]["state"] = "finished earlier" if state == "finished" else state
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

    finished = [c for c in todo if cell_state(work, c, params.train) == "finished"]
    unfinished = [str(c) for c in todo if c not in finished]
    result = {"cells": len(todo), "finished": len(finished), "unfinished": unfinished, "report": None}
    if finished:
        evaluated = evaluate(EvaluateParams(work=work, cells=finished, preset=params.preset,
                                            evaluation=params.evaluation, path_sources=params.path_sources,
                                            report=params.report))
        result["report"] = evaluated["report"]
        for row in evaluated["cells"]:
            rows[row["cell"]].update({k: row[k] for k in ("best val loss", "success %")})
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
