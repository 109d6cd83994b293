"""Prefect flows against a real Prefect server (started here), with Dask workers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

PREFECT = str(Path(sys.executable).with_name("prefect"))


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """`prefect server start` on a free loopback port; PREFECT_API_URL points every process at it."""
    home = tmp_path_factory.mktemp("prefect_home")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (home / "server.log").read_text()
        time.sleep(0.5)
    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")}
    os.environ.update(PREFECT_API_URL=url, PREFECT_HOME=str(home))
    yield url
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # send the last logs before the server goes
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    proc.terminate()
    proc.wait(30)
    log.close()


@pytest.fixture(scope="module")
def dask_address(prefect_server):
    """One Dask cluster for the module (an existing cluster, as MANIFLOW_DASK_ADDRESS gives);
    its workers inherit PREFECT_API_URL."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def _task_states(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.state.name for r in runs}


def test_prepare_data_caches_and_isolates_failed_episodes(dask_address, small_root, tmp_path, path_server):
    from prefect_dask import DaskTaskRunner

    from flows.prepare_data import PrepareParams
    from flows.prepare_data import prepare_data as flow

    prepare_data = flow.with_options(task_runner=DaskTaskRunner(address=dask_address))

    work = tmp_path / "work"
    base = dict(root=str(small_root), work=str(work), envs=["clean"], tasks=["click_bell"], resolution=48)

    # 1. Oracle paths: everything runs once, then everything is cached.
    first = prepare_data(PrepareParams(**base, provider="oracle"), return_state=True)
    assert first.is_completed()
    stores = first.result()["clean/click_bell"]["stores"]
    assert all(Path(p).exists() for p in stores.values())
    summary = json.loads((work / "paths/oracle/clean/click_bell/summary.json").read_text())
    assert len(summary["episodes"]) == 3 and summary["total"]["ok"] == summary["total"]["frames"] > 0
    again = prepare_data(PrepareParams(**base, provider="oracle"), return_state=True)
    states = _task_states(again.state_details.flow_run_id)
    assert {v for k, v in states.items() if not k.startswith("assemble")} == {"Cached"}
    assert again.result()["clean/click_bell"]["assembled"] is False  # nothing rewritten

    # 2. HAMSTER paths with the server down: the labelling tasks fail, extraction stays cached.
    hamster = dict(base, provider="hamster", endpoints=["http://127.0.0.1:9"], give_up_after_s=1.0,
                   label_retries=0)
    failed = prepare_data(PrepareParams(**hamster), return_state=True)
    assert failed.is_failed()
    states = _task_states(failed.state_details.flow_run_id)
    assert states["extract clean/click_bell"] == "Cached"
    assert {v for k, v in states.items() if k.startswith("paths")} == {"Failed"}
    assert not any(k.startswith("render") and v == "Completed" for k, v in states.items())

    # 3. The server is back: a new run labels and renders, and reuses the extraction.
    server = path_server(work, 2)
    done = prepare_data(PrepareParams(**dict(hamster, endpoints=list(server.urls))), return_state=True)
    assert done.is_completed()
    states = _task_states(done.state_details.flow_run_id)
    assert states["extract clean/click_bell"] == "Cached"
    assert {v for k, v in states.items() if k.startswith(("paths", "render"))} == {"Completed"}
    assert Path(done.result()["clean/click_bell"]["stores"]["overlay"]).name == "clean_overlay_click_bell.zarr"


def test_train_run_names_itself_reports_progress_and_resumes(prefect_server, small_root, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.train_run import CellParams, train_run
    from maniflow.datasets import DatasetConfig, render_task
    from maniflow.frames import extract_task
    from maniflow.paths.label import ProviderConfig, label_paths

    work = tmp_path / "work"
    extract_task(small_root, work, "clean", "demo_clean", "click_bell")
    label_paths(work, "clean", "click_bell", ProviderConfig(kind="oracle", label="hamster"))
    render_task(work, "clean", "click_bell", config=DatasetConfig(resolution=48))

    params = CellParams(work=str(work), env="clean", condition="overlay_current", task="click_bell", seed=3,
                        preset="demo", epochs=1, device="cpu")
    state = train_run(params, return_state=True)
    assert state.is_completed()
    result = state.result()
    assert result["epochs"] == 1 and Path(result["best"]).exists()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        assert run.name == "train clean/overlay_current/click_bell seed 3"
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["train-clean-overlay-current-click-bell-seed3",
                                        "train-clean-overlay-current-click-bell-seed3-loss"])))
    kinds = {a.key: a.type for a in artifacts}
    assert kinds == {"train-clean-overlay-current-click-bell-seed3": "progress",
                     "train-clean-overlay-current-click-bell-seed3-loss": "markdown"}
    # Running the cell again resumes: it is finished, so nothing is trained twice.
    mtime = (Path(result["run"]) / "checkpoints" / "latest.ckpt").stat().st_mtime_ns
    again = train_run(params, return_state=True).result()
    assert again["steps"] == result["steps"]
    assert (Path(result["run"]) / "checkpoints" / "latest.ckpt").stat().st_mtime_ns == mtime


def test_deploy_from_prefect_yaml_and_run_on_a_process_worker(prefect_server, small_root, tmp_path):
    """`prefect --no-prompt deploy --all` from the project root, a process worker polling the
    pool, and a deployment run: the way the user runs the pipeline."""
    from prefect.client.orchestration import get_client

    project = Path(__file__).resolve().parents[1]
    env = {**os.environ, "MANIFLOW_DATA": str(small_root), "MANIFLOW_WORK": str(tmp_path / "work")}

    def prefect(*args, timeout=180):
        result = subprocess.run([PREFECT, "--no-prompt", *args], cwd=project, env=env, capture_output=True,
                                text=True, timeout=timeout)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    prefect("work-pool", "create", "maniflow", "--type", "process", "--overwrite")
    out = prefect("deploy", "--all")
    for name in ("prepare-data/all", "prepare-data/demo", "train-run/cell", "train-run/demo"):
        assert f"Deployment '{name}' successfully created" in out
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "maniflow", "--limit", "1"], cwd=tmp_path,
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        params = json.dumps({"provider": "oracle", "envs": ["clean"], "tasks": ["click_bell"], "resolution": 48,
                             "root": str(small_root), "work": str(tmp_path / "work")})
        out = prefect("deployment", "run", "prepare-data/demo", "--param", f"params={params}")
        run_id = out.split("UUID: ")[1].split()[0]
        deadline = time.monotonic() + 300
        with get_client(sync_client=True) as client:
            while True:  # poll the state (`prefect flow-run watch` can drop its stream)
                state = client.read_flow_run(run_id).state
                if state.is_final():
                    break
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
                time.sleep(2)
        assert state.is_completed(), (tmp_path / "worker.log").read_text()[-3000:]
        assert (tmp_path / "work/datasets/clean_overlay-oracle_click_bell.zarr").exists()
    finally:
        worker.terminate()
        worker.wait(30)
        log.close()
