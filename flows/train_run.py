"""`train-run`: one cell of the matrix (env, condition, task, seed) to a finished checkpoint.

Runs `maniflow.train.train` in the flow's process (on a GPU worker: one cell per GPU), with a
progress artifact that follows the epochs and a markdown artifact with the loss curve. Running
it again (or retrying it) resumes from the cell's latest checkpoint; a finished cell returns at
once.
"""

from __future__ import annotations

import base64
import os
from dataclasses import replace
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from pydantic import BaseModel, Field

from maniflow.datasets import DEFAULT_LABEL, dataset_path
from maniflow.replay import CONDITIONS
from maniflow.train import PRESETS, run_name, train


class CellParams(BaseModel):
    work: str = Field(os.environ.get("MANIFLOW_WORK", "work"))
    env: str = Field("cluttered", description="training data: clean or cluttered")
    condition: str = Field("overlay_initial_current", description=" | ".join(CONDITIONS))
    task: str = "beat_block_hammer"
    seed: int = 0
    preset: str = Field("paper", description="paper or demo")
    label: str = Field(DEFAULT_LABEL, description="path label of the overlay datasets")
    epochs: int | None = Field(None, description="override the preset")
    device: str = "auto"


def run_dir(p: CellParams) -> Path:
    return Path(p.work) / "runs" / run_name(p.env, p.condition, p.task, p.preset, p.seed, p.label)


def _artifact_key(p: CellParams) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    raw = f"train-{p.env}-{p.condition}-{p.task}-seed{p.seed}".lower()
    return "".join(c if c.isalnum() else "-" for c in raw)


@flow(name="train-run", flow_run_name="train {params.env}/{params.condition}/{params.task} seed {params.seed}",
      log_prints=True)
def train_run(params: CellParams = CellParams()) -> dict:
    logger = get_run_logger()
    cfg = replace(PRESETS[params.preset], seed=params.seed, device=params.device,
                  **({"epochs": params.epochs} if params.epochs else {}))
    store = dataset_path(params.work, params.env, CONDITIONS[params.condition].dataset, params.task, params.label)
    run = run_dir(params)
    progress_id = create_progress_artifact(0.0, key=_artifact_key(params), description=f"training {run.name}")
    last_epoch = {"n": -1}

    def on_step(info: dict) -> None:
        if info["epoch"] != last_epoch["n"]:  # one update per epoch keeps the API quiet
            last_epoch["n"] = info["epoch"]
            update_progress_artifact(progress_id, 100.0 * info["step"] / info["total_steps"],
                                     description=f"epoch {info['epoch'] + 1}/{info['epochs']} loss {info['loss']:.4f}")

    logger.info("training %s on %s -> %s", params.condition, store, run)
    result = train(store, params.condition, run, cfg, progress=on_step)
    update_progress_artifact(progress_id, 100.0, description=f"done: {result.epochs} epochs")
    curve = run / "loss.png"
    if curve.exists():
        image = base64.b64encode(curve.read_bytes()).decode()
        create_markdown_artifact(f"### {run.name}\n\nbest validation loss {result.val_loss}\n\n"
                                 f"![loss](data:image/png;base64,{image})", key=f"{_artifact_key(params)}-loss")
    return {"run": str(run), "epochs": result.epochs, "steps": result.steps, "val_loss": result.val_loss,
            "best": str(result.best) if result.best else None}


if __name__ == "__main__":  # python -m flows.train_run (set PREFECT_API_URL to use a server)
    train_run()
