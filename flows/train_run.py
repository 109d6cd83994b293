"""`train-run`: one cell of the matrix to a finished checkpoint.

Runs the `train-cell` task in the flow's process (on a GPU worker: one cell per GPU). Running it
again (or retrying it) resumes from the cell's latest checkpoint; a finished cell returns at once.
"""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel, Field

from maniflow.settings import TrainOptions
from maniflow.workspace import Cell, default_work
from tasks.train import train


class CellParams(BaseModel):
    work: str = Field(default_factory=default_work)
    cell: Cell = Field(default_factory=Cell, description="env, condition, task, seed, preset, path label")
    train: TrainOptions = Field(default_factory=TrainOptions, description="overrides of the preset")


@flow(name="train-run", flow_run_name="train {params.cell}", log_prints=True)
def train_run(params: CellParams = CellParams()) -> dict:
    return train(params.work, params.cell, params.train)


if __name__ == "__main__":  # python -m flows.train_run (set PREFECT_API_URL to use a server)
    train_run()
