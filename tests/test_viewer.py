"""`maniflow view` in headless Chromium (Debian's, driven by Playwright): the page loads, an episode
opens and scrubs, the images are the stored pixels, quarantined episodes show their reasons,
runs show their curves; the server is read-only and serves nothing outside the work directory."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from conftest import free_port, wait_until_up

from maniflow.frames import FramesStore, extract_task
from maniflow.overlay import render_views
from maniflow.paths.label import ProviderConfig, label_paths
from maniflow.paths.quality import episode_errors
from maniflow.paths.store import PathStore
from maniflow.workspace import Cell, Workspace

pytestmark = pytest.mark.slow  # a server and a browser
MANIFLOW = str(Path(sys.executable).with_name("maniflow"))
ENV, TASK = "cluttered", "click_bell"


@pytest.fixture
def viewed(task_copy, tmp_path):
    """A work directory with one quarantined episode and oracle paths, served by `maniflow view`."""
    root = task_copy("click_bell", "demo_randomized")
    (root / "click_bell/demo_randomized/data/episode2.hdf5").write_bytes(b"not an HDF5 file")
    work = tmp_path / "work"
    extract_task(root, work, ENV, "demo_randomized", TASK)
    label_paths(work, ENV, TASK, ProviderConfig(kind="oracle", label="hamster", every=2))  # odd frames not asked
    # A run as training leaves it (config, per-epoch metrics, curve) and as the train task records it.
    cell = Cell(env=ENV, condition="overlay_current", task=TASK, seed=3, preset="demo")
    run = Workspace(work).run(cell)
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"cell": dataclasses.asdict(cell)}))
    (run / "metrics.jsonl").write_text('{"epoch": 0, "val_loss": 0.5}\n{"epoch": 1, "val_loss": 0.25}\n')
    cv2.imwrite(str(run / "loss.png"), np.full((60, 80, 3), 200, np.uint8))
    (run / "prefect.json").write_text(json.dumps({"flow_run_id": "abc", "flow_run_name": f"train {cell}",
                                                  "ui_url": "http://127.0.0.1:4200/runs/flow-run/abc"}))
    port = free_port()
    server = subprocess.Popen([MANIFLOW, "view", "--work", str(work), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(f"{url}/api/tasks", server, timeout=60)
    yield work, url
    server.terminate()
    server.wait(10)


@pytest.fixture
def page(browser):
    page = browser.new_page()
    yield page
    page.close()


def _shown(page) -> np.ndarray:
    """The pixels of the frame the page shows, fetched as the browser fetched them."""
    page.wait_for_function("document.getElementById('frame').complete && "
                           "document.getElementById('frame').naturalWidth > 0")
    body = page.request.get(page.evaluate("document.getElementById('frame').src")).body()  # absolute URL
    return cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]


def test_scrub_an_episode_and_see_the_stored_pixels(viewed, page):
    work, url = viewed
    frames = FramesStore(Workspace(work).frames(ENV, TASK))
    number = int(frames.episode_index[1])
    rows = frames.episode_slice(1)
    page.goto(url)
    page.get_by_text("quarantined episode 2").wait_for(timeout=10_000)  # with its reason
    assert "unreadable" in page.inner_text("nav") or "not an HDF5" in page.inner_text("nav")
    page.click(f"#ep-{ENV}-{TASK}-{number}")
    page.get_by_role("heading", name=f"{ENV}/{TASK} episode {number}").wait_for()
    assert np.array_equal(_shown(page), frames.root["data/rgb"][rows.start])  # frame 0, original
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    assert page.inner_text("#frame-index") == "3"
    assert np.array_equal(_shown(page), frames.root["data/rgb"][rows.start + 3])
    page.select_option("#view", "overlay")
    paths = PathStore(Workspace(work).paths("hamster", ENV, TASK)).read(number)
    overlay, path_only, _ = render_views(frames.root["data/rgb"][rows.start + 3], paths.paths[3])
    assert np.array_equal(_shown(page), overlay)  # drawn as the datasets draw it
    page.select_option("#view", "path")
    assert np.array_equal(_shown(page), path_only)
    info = page.inner_text("#frame-info")
    record = paths.record["frames"][3]
    assert f"outcome: {record['status']}" in info and f"path from frame: {record['from']}" in info
    assert record["status"] == "skipped" and "(not asked: the nearest asked frame's)" in info
    # A frame not asked while the arm moves draws a neighbour's path: measurably off the oracle.
    errors = episode_errors(frames, 1, paths)
    t, error = next((t, e) for t, e in enumerate(errors) if t % 2 and (e.get("start_px") or 0) > 0.5)
    page.fill("#slider", str(t))
    info = page.inner_text("#frame-info")
    js = {k: f"{v:g}" for k, v in error.items()}  # numbers as JavaScript prints them
    assert (f"error against the oracle: start {js['start_px']} px, end {js['end_px']} px, "
            f"Fréchet {js['frechet_px']} px, gripper agrees {round(100 * error['gripper'])}%") in info
    page.fill("#slider", "0")  # the slider scrubs too
    assert page.inner_text("#frame-index") == "0"
    run = page.locator("#run-cluttered_overlay_current_click_bell_demo_seed3")
    assert "2 epochs, best validation loss 0.25" in run.inner_text()
    assert run.locator("img").evaluate("i => i.complete && i.naturalWidth") == 80  # the curve
    assert run.locator("a.flow-run").get_attribute("href") == "http://127.0.0.1:4200/runs/flow-run/abc"


def test_read_only_and_inside_the_work_directory(viewed):
    work, url = viewed
    assert httpx.post(f"{url}/api/tasks").status_code == 405
    cv2.imwrite(str(work.parent / "outside.png"), np.zeros((4, 4, 3), np.uint8))
    assert httpx.get(f"{url}/file/..%2Foutside.png").status_code == 404  # exists, but outside
    assert httpx.get(f"{url}/file/runs/cluttered_overlay_current_click_bell_demo_seed3/loss.png").status_code == 200
    assert httpx.get(f"{url}/file/frames/{ENV}/{TASK}.zarr/.zattrs").status_code == 404  # figures and reports only
    missing = httpx.get(f"{url}/frame/{ENV}/{TASK}/0/999.png")
    assert missing.status_code == 404 and "has no frame 999" in missing.text
    assert httpx.get(f"{url}/frame/{ENV}/{TASK}/0/0.png?view=overlay&label=peek").status_code == 404


def test_what_is_missing_or_unfinished_is_said_not_fatal(viewed, page):
    work, url = viewed
    frames = FramesStore(Workspace(work).frames(ENV, TASK))
    number = int(frames.episode_index[0])
    PathStore(Workspace(work).paths("hamster", ENV, TASK)).episode_file(number).unlink()  # not labelled
    unfinished = Workspace(work).frames("clean", TASK)
    unfinished.mkdir(parents=True)
    (unfinished / ".zgroup").write_text('{"zarr_format": 2}')  # an extraction that never finished
    (unfinished / ".zattrs").write_text('{"format": "maniflow.frames"}')
    tasks = httpx.get(f"{url}/api/tasks").json()["tasks"]
    assert [t.get("error", "")[-40:] for t in tasks if t["env"] == "clean"] == \
        ["store was not finished; rerun extraction"]
    page.goto(url)
    page.click(f"#ep-{ENV}-{TASK}-{number}")
    page.get_by_text(f"no finished paths of episode {number}").wait_for(timeout=10_000)
    assert np.array_equal(_shown(page), frames.root["data/rgb"][frames.episode_slice(0).start])  # frames still show
