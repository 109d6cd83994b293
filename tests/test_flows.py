"""Prefect flows against a real Prefect server (started here), with Dask workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port, wait_until_up

from maniflow.artifacts import BUDGET

pytestmark = pytest.mark.slow  # servers, workers or simulators: `make test-fast` skips them

PREFECT = str(Path(sys.executable).with_name("prefect"))


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """`prefect server start` on a free loopback port; PREFECT_API_URL points every process at it."""
    home = tmp_path_factory.mktemp("prefect_home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"}  # the UI's API (default: port 4200)
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/api"
    wait_until_up(f"{url}/health", proc, log=home / "server.log")
    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")}
    os.environ.update(PREFECT_API_URL=url, PREFECT_HOME=str(home))  # for the processes it starts
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    # This process too, even when another test module imported Prefect before (its settings are
    # read at import).
    with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_HOME: str(home)}):
        yield url
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # send the last logs before the server goes
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    proc.terminate()
    proc.wait(30)
    log.close()


def _render_artifact(browser, api_url: str, artifact) -> dict:
    """Open the artifact's page in the Prefect UI; wait until what it shows is there: a markdown
    artifact's first heading and every image loaded, a table's cells, a progress value."""
    page = browser.new_page()
    start = time.monotonic()
    try:
        page.goto(f"{api_url[:-len('/api')]}/artifacts/artifact/{artifact.id}")
        if artifact.type == "markdown":
            heading = next(line.lstrip("#").strip() for line in artifact.data.splitlines() if line.startswith("#"))
            page.get_by_role("heading", name=heading).first.wait_for(timeout=15_000)
            images = artifact.data.count("](data:image/")
            page.wait_for_function(f"[...document.images].filter(i => i.complete && i.naturalWidth > 0).length "
                                   f">= {images}", timeout=15_000)
            shown = page.evaluate("[...document.images].filter(i => i.naturalWidth > 0).length")
            assert shown == images, f"{artifact.key}: {shown} of {images} images shown"
        elif artifact.type == "table":
            first = json.loads(artifact.data)[0]
            page.get_by_text(str(next(iter(first.values())))).first.wait_for(timeout=15_000)
        else:
            page.get_by_text(f"Progress: {float(artifact.data):.0f}%").first.wait_for(timeout=15_000)
        return {"key": artifact.key, "type": artifact.type, "bytes": len(str(artifact.data)),
                "seconds": time.monotonic() - start}
    except Exception as e:
        raise AssertionError(f"{artifact.type} artifact {artifact.key} ({str(artifact.data)[:200]!r}) not shown: "
                             f"{e}\npage: {page.inner_text('body')[:600]!r}") from e
    finally:
        page.close()


def _artifacts(ids: list[str] | None = None) -> list:
    """The artifacts the project published (not Prefect's own result records, which have no
    type), or those of `ids`; every one, past the API's default page size."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

    where = ArtifactFilter(id=ArtifactFilterId(any_=ids)) if ids else None
    found, page = [], 200
    with get_client(sync_client=True) as client:
        while batch := client.read_artifacts(artifact_filter=where, limit=page, offset=len(found)):
            found += batch
            if len(batch) < page:
                break
    return [a for a in found if a.type in ("markdown", "table", "progress")]


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


def test_train_run_names_itself_reports_progress_and_resumes(prefect_server, small_root, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.train_run import CellParams, train_run
    from maniflow.datasets import render_task
    from maniflow.frames import extract_task
    from maniflow.paths.label import ProviderConfig, label_paths
    from maniflow.settings import DatasetConfig, TrainOptions
    from maniflow.workspace import Cell

    work = tmp_path / "work"
    extract_task(small_root, work, "clean", "demo_clean", "click_bell")
    label_paths(work, "clean", "click_bell", ProviderConfig(kind="oracle", label="hamster"))
    render_task(work, "clean", "click_bell", config=DatasetConfig(resolution=48))

    params = CellParams(work=str(work), cell=Cell(env="clean", condition="overlay_current", task="click_bell", seed=3,
                                                  preset="demo"), train=TrainOptions(epochs=1, device="cpu"))
    state = train_run(params, return_state=True)
    assert state.is_completed()
    result = state.result()
    # demo holds out 2 of the 3 episodes for evaluation: one to train on, none to validate
    assert result["epochs"] == 1 and result["val_loss"] is None
    assert (Path(result["run"]) / "checkpoints" / "latest.ckpt").exists()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        assert run.name == "train clean/overlay_current/click_bell seed 3"
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["train-clean-overlay-current-click-bell-demo-seed3",
                                        "train-clean-overlay-current-click-bell-demo-seed3-loss"])))
    kinds = {a.key: a.type for a in artifacts}
    assert kinds == {"train-clean-overlay-current-click-bell-demo-seed3": "progress",
                     "train-clean-overlay-current-click-bell-demo-seed3-loss": "markdown"}
    # Running the cell again resumes: it is finished, so nothing is trained twice.
    mtime = (Path(result["run"]) / "checkpoints" / "latest.ckpt").stat().st_mtime_ns
    again = train_run(params, return_state=True).result()
    assert again["steps"] == result["steps"]
    assert (Path(result["run"]) / "checkpoints" / "latest.ckpt").stat().st_mtime_ns == mtime


def _flow_runs(flow_name: str, tag: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))
    return [r for r in runs if tag in r.tags]


def _wait(run_id, seconds=600, log=None):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + seconds
    with get_client(sync_client=True) as client:
        while True:  # poll the state (`prefect flow-run watch` can drop its stream)
            state = client.read_flow_run(run_id).state
            if state.is_final():
                return state
            assert time.monotonic() < deadline, log.read_text()[-4000:] if log else "timed out"
            time.sleep(2)


def _subflow_task_states(parent_id, flow_name: str, run_name: str | None = None) -> dict[str, str]:
    """Task-run states of the `flow_name` subflow run (named `run_name`) of a parent flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])))
        flows = {f.id: f.name for f in client.read_flows()}
    latest = max((c for c in children if flows[c.flow_id] == flow_name and run_name in (None, c.name)),
                 key=lambda c: c.created)
    return _task_states(latest.id)  # a retried parent has one child per attempt


def test_train_matrix_on_workers_outage_retry_and_nothing_twice(dask_address, small_root, tmp_path, path_server,
                                                                browser, prefect_server):
    """The user's loop against a real server and process workers, deployed from prefect.yaml,
    data prepared on an existing Dask cluster (`dask_address`): a tiny train-matrix whose path
    server goes down mid-labelling fails exactly the episodes it did not answer; `prefect
    flow-run retry` after the server is back labels only those, trains the cells (each its own
    train-run flow run; the overlay also on oracle paths, the path label as an axis) and writes
    the report; running the matrix again computes nothing."""
    from maniflow.frames import extract_task

    project = Path(__file__).resolve().parents[1]
    work = tmp_path / "work"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def prefect(*args, timeout=180):
        result = subprocess.run([PREFECT, "--no-prompt", *args], cwd=project, env=env, capture_output=True,
                                text=True, timeout=timeout)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    for pool in ("maniflow", "maniflow-control"):
        prefect("work-pool", "create", pool, "--type", "process", "--overwrite")
    out = prefect("deploy", "--all")
    for name in ("train-matrix/all", "train-matrix/demo", "prepare-data/all", "train-run/cell", "evaluate/all"):
        assert f"Deployment '{name}' successfully created" in out

    # The path server indexes the frames it will be asked about; the flow's extraction reuses them.
    for e, config in (("clean", "demo_clean"), ("cluttered", "demo_randomized")):
        extract_task(small_root, work, e, config, "click_bell")
    from maniflow.frames import FramesStore
    from maniflow.workspace import Workspace

    lengths = {e: [r["frames"] for r in FramesStore(Workspace.of(work).frames(e, "click_bell")).episodes]
               for e in ("clean", "cluttered")}
    port = free_port()
    # The server goes down after half the frames are answered: the first episode to finish is
    # complete (two label at a time), the last is not.
    total = sum(lengths["clean"]) + sum(lengths["cluttered"])
    server = path_server(work, [port], "--outage-after", total // 2)

    logs = [open(tmp_path / f"worker-{p}.log", "w") for p in ("control", "train")]
    workers = [subprocess.Popen([PREFECT, "worker", "start", "--pool", pool, "--limit", limit], cwd=tmp_path, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
               for (pool, limit), log in zip((("maniflow-control", "2"), ("maniflow", "1")), logs)]
    try:
        params = {"work": str(work), "root": str(small_root), "envs": ["clean"], "tasks": ["click_bell"],
                  "conditions": ["original", "overlay_current"], "preset": "demo",
                  "path_sources": [{"provider": {"kind": "oracle"}}],
                  "train": {"epochs": 1, "device": "cpu"}, "poll_s": 1, "report": "tiny", "dask_address": dask_address,
                  "data": {"provider": {"kind": "hamster"}, "dataset": {"resolution": 48},
                           "export": {"formats": ["lerobot-v3.0"], "views": ["overlay"]},
                           "client": {"endpoints": [f"http://127.0.0.1:{port}"], "give_up_after_s": 2},
                           "label_retries": 0},
                  "evaluation": {"episodes": 2, "execute_steps": 8}}
        out = prefect("deployment", "run", "train-matrix/all", "--param", f"params={json.dumps(params)}")
        matrix_id = out.split("UUID: ")[1].split()[0]
        assert _wait(matrix_id, log=tmp_path / "worker-control.log").is_failed()
        states = _subflow_task_states(matrix_id, "prepare-data", "prepare [hamster]")
        labels = {k: v for k, v in states.items() if k.startswith("paths")}
        done = {k for k, v in labels.items() if v == "Completed"}
        failed = {k for k, v in labels.items() if v == "Failed"}
        assert done and failed and done | failed == set(labels) and len(labels) == 6  # 3 episodes x 2 envs

        # The server is back (same address); the user retries the failed matrix run.
        server.stop()
        path_server(work, [port])
        prefect("flow-run", "retry", matrix_id)
        state = _wait(matrix_id, log=tmp_path / "worker-control.log")
        assert state.is_completed(), (tmp_path / "worker-control.log").read_text()[-4000:]
        states = _subflow_task_states(matrix_id, "prepare-data", "prepare [hamster]")
        labels = {k: v for k, v in states.items() if k.startswith("paths")}
        assert {k for k, v in labels.items() if v == "Cached"} == done  # answered episodes: not asked again
        assert {k for k, v in labels.items() if v == "Completed"} == failed

        cells = _flow_runs("train-run", "matrix")
        assert sorted(r.name for r in cells) == ["train clean/original/click_bell seed 0",
                                                 "train clean/overlay_current/click_bell seed 0",
                                                 "train clean/overlay_current/click_bell seed 0 [oracle]"]
        assert all(r.state.is_completed() for r in cells)
        # Named from the moment they were scheduled: the server's Scheduled events carry the name.
        scheduled = httpx.post(f"{prefect_server}/events/filter", timeout=30, json={"limit": 50, "filter": {
            "event": {"name": ["prefect.flow-run.Scheduled"]},
            "resource": {"id": [f"prefect.flow-run.{r.id}" for r in cells]}}}).json()["events"]
        assert sorted(e["resource"]["prefect.resource.name"] for e in scheduled) == sorted(r.name for r in cells)
        for c in ("original", "overlay_current", "overlay_current-oracle"):
            assert (work / f"runs/clean_{c}_click_bell_demo_seed0/checkpoints/latest.ckpt").exists()
            assert (work / f"datasets/cluttered_{'overlay' if 'overlay' in c else 'original'}_click_bell.zarr").exists()
        for e in ("clean", "cluttered"):  # prepare-data's optional export step
            info = json.loads((work / f"exports/lerobot-v3.0/{e}_overlay_click_bell/meta/info.json").read_text())
            assert info["total_frames"] == sum(lengths[e]) and info["total_episodes"] == 3
        report = (work / "reports/tiny/report.md").read_text()
        assert "| click_bell |" in report and "do nothing" in report
        # The path label is an axis: the report compares the overlay on hamster and on oracle
        # paths, and says how far each label's paths are from the ground truth.
        assert "**How much of the overlay's effect is lost to VLM path error?**" in report
        assert "- overlay_current on hamster paths (clean)" in report
        assert "## Path quality" in report and "| clean/click_bell |" in report
        assert (work / "reports/tiny/quality-hamster.png").exists()
        results = json.loads((work / "reports/tiny/results.json").read_text())
        assert len(results["cells"]) == 3 and results["baselines"]["click_bell"]["expert"]["success"] == [True, True]

        # A second run of the matrix computes nothing: no new cell runs, every stage cached, no
        # store or export rewritten (the stamps hold the exports' info.json and maniflow-export.json).
        stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*")
                  if p.suffix in (".ckpt", ".json", ".jsonl", ".zarray") and "reports" not in p.parts}
        out = prefect("deployment", "run", "train-matrix/all", "--param", f"params={json.dumps(params)}")
        again = out.split("UUID: ")[1].split()[0]
        assert _wait(again, log=tmp_path / "worker-control.log").is_completed()
        assert len(_flow_runs("train-run", "matrix")) == 3
        for label in ("hamster", "oracle"):  # assemble, export and path quality: no-ops (the stamps below)
            states = _subflow_task_states(again, "prepare-data", f"prepare [{label}]")
            assert {v for k, v in states.items() if not k.startswith(("assemble", "export", "path quality"))} \
                == {"Cached"}
            assert (work / f"quality/{label}/quality.json") in stamps
        # Evaluation has one cache, the records under each run's eval/: the stamps below hold them.
        assert {v for k, v in _subflow_task_states(again, "evaluate").items() if k.startswith("evaluate")} \
            == {"Completed"}
        changed = [p for p, t in stamps.items() if p.exists() and p.stat().st_mtime_ns != t]
        assert changed == []

        # Every artifact the runs published renders in the UI, in a real browser, within seconds.
        rendered = [_render_artifact(browser, prefect_server, a) for a in _artifacts()]
        assert {r["type"] for r in rendered} == {"markdown", "table", "progress"}
        keys = {r["key"] for r in rendered}
        assert {"experiment-report", "train-matrix-demo", "paths-clean-click-bell-hamster", "path-quality-hamster",
                "path-quality-hamster-table", "path-quality-oracle"} <= keys
        # The latest report: the first, failed attempt already reported the cells it finished.
        report = max((a for a in _artifacts() if a.key == "experiment-report"), key=lambda a: a.created).data
        for cell in cells:  # the report links the flow runs that trained its cells, and the viewer
            assert f"[{cell.name}]({prefect_server[:-len('/api')]}/runs/flow-run/{cell.id})" in report, report[-600:]
        assert f"maniflow view --work {work}" in report
        assert max(r["seconds"] for r in rendered) < 15 and max(r["bytes"] for r in rendered) <= BUDGET
    finally:
        for w in workers:
            w.terminate()
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
        for log in logs:
            log.close()


def test_a_report_with_large_figures_renders_in_the_ui(prefect_server, browser, tmp_path):
    """The report artifact stays under the size budget however large its figures: thumbnails
    inline, the full-size files named; the page shows it within seconds."""
    import contextvars
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    import cv2
    import numpy as np

    from tasks.evaluate import publish_report

    docs = Path(__file__).resolve().parents[1] / "docs/demo"
    report = tmp_path / "report"
    shutil.copytree(docs, report)
    (report / "strips").mkdir()
    rng = np.random.default_rng(0)
    with open(report / "report.md", "a") as md:
        for i in range(12):  # evaluation strips at full size: 8.6 MB of PNG each
            cv2.imwrite(str(report / f"strips/cell{i}.png"), rng.integers(0, 256, (1200, 2400, 3), np.uint8))
            md.write(f"\n![cell {i}](strips/cell{i}.png)\n")
    # Another thread: Playwright's sync API runs an event loop in this one, and Prefect's calls
    # would then return coroutines. It runs in this context, which holds the server's settings.
    with ThreadPoolExecutor(1) as thread:
        artifact_id = thread.submit(contextvars.copy_context().run, publish_report, report / "report.md").result()
    (artifact,) = _artifacts([artifact_id])
    assert len(artifact.data) <= BUDGET and "*full size: `" in artifact.data
    assert "(not shown here: the artifact's size budget)" in artifact.data  # 15 figures do not all fit
    shown = _render_artifact(browser, prefect_server, artifact)
    assert shown["seconds"] < 15
