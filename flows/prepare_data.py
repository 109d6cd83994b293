"""`prepare-data`: for each (env, task), extract -> label paths per episode -> render per episode
-> assemble the original / overlay / concat datasets [-> export them (`data.export.formats`)];
then the label's path quality against the ground truth over every (env, task) it could.

Episodes are mapped on a DaskTaskRunner (a local cluster sized to the machine, or the cluster
at `dask_address` / $MANIFLOW_DASK_ADDRESS). An episode whose labelling fails fails only its
own tasks (and that (env, task)'s assembly); `prefect flow-run retry <id>` then recomputes just
those, everything else being cached.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, unmapped
from prefect.futures import wait
from prefect_dask import DaskTaskRunner
from pydantic import BaseModel, Field

from maniflow.robotwin import ENVS, SINGLE_ARM_TASKS
from maniflow.settings import PrepareConfig, PrepareJob
from maniflow.workspace import default_root, default_work
from tasks.prepare import assemble, export, extract, label_episode, quality, render


class PrepareParams(BaseModel):
    """What to prepare (root, work, envs, tasks) and how (`data`: source, provider, client,
    datasets; the CLI's extract, paths and render take the same classes). Defaults: the user's
    six single-arm tasks in both envs, HAMSTER paths."""

    root: str = Field(default_factory=default_root, description="RoboTwin data root")
    work: str = Field(default_factory=default_work, description="where stores are written")
    envs: list[str] = Field(list(ENVS))
    tasks: list[str] = Field(list(SINGLE_ARM_TASKS))
    data: PrepareConfig = Field(default_factory=PrepareConfig, description="source, provider, client, dataset")


def dask_runner(address: str | None = None) -> DaskTaskRunner:
    """The cluster at `address` (or $MANIFLOW_DASK_ADDRESS), else a local one sized to the machine."""
    address = address or os.environ.get("MANIFLOW_DASK_ADDRESS")
    if address:
        return DaskTaskRunner(address=address)
    workers = max(1, min(4, os.cpu_count() or 1))
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})


@flow(name="prepare-data", task_runner=dask_runner(), log_prints=True)
def prepare_data(params: PrepareParams = PrepareParams()) -> dict:
    root, work = str(Path(params.root).resolve()), str(Path(params.work).resolve())
    label = label_episode.with_options(retries=params.data.label_retries,
                                       retry_delay_seconds=params.data.label_retry_delay_s)
    results = {}
    for env in params.envs:
        for task_name in params.tasks:
            job = PrepareJob(root=root, work=work, env=env, task=task_name, cfg=params.data)
            numbers = extract.submit(job).result()["episodes"]
            labelled = label.map(unmapped(job), numbers)
            rendered = render.map(unmapped(job), numbers, labelled)
            results[str(job)] = assemble.submit(job, numbers, rendered)
            if params.data.export.formats:
                results[f"export {job}"] = export.submit(job, results[str(job)])
    wait(list(results.values()))
    # After everything else, so it measures whatever got labelled, also when some episodes failed.
    results["path quality"] = quality.submit(work, params.data.provider.name, params.envs, params.tasks)
    wait([results["path quality"]])
    failed = [key for key, future in results.items() if not future.state.is_completed()]
    if failed:  # the flow run fails; `prefect flow-run retry` redoes only what did not finish
        raise RuntimeError(f"not prepared: {failed}; see the failed tasks, fix the cause and retry the run")
    return {key: future.result() for key, future in results.items()}


if __name__ == "__main__":  # python -m flows.prepare_data (set PREFECT_API_URL to use a server)
    prepare_data()
