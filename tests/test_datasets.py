"""Training datasets: layout read back with plain zarr, ReplayBuffer semantics, what differs
between the types, provenance, reuse, and a run killed mid-write."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zarr

from maniflow.datasets import render_task, resize_frames
from maniflow.frames import FramesStore
from maniflow.overlay import render_views
from maniflow.paths.label import ProviderConfig, label_paths
from maniflow.paths.oracle import AT_REST
from maniflow.paths.store import PathStore
from maniflow.previews import contact_sheet, episode_video
from maniflow.settings import DatasetConfig
from maniflow.workspace import Workspace

MANIFLOW = str(Path(sys.executable).with_name("maniflow"))
ENV, TASK = "cluttered", "click_bell"


@pytest.fixture
def labelled(work_copy):
    """work_copy with oracle paths stored under the default label (hamster) and as oracle."""
    label_paths(work_copy, ENV, TASK, ProviderConfig(kind="oracle", label="hamster"))
    label_paths(work_copy, ENV, TASK, ProviderConfig(kind="oracle"))
    return work_copy


def test_names_keep_non_default_providers_apart():
    assert Workspace.dataset_name("clean", "overlay", "beat_block_hammer") == "clean_overlay_beat_block_hammer.zarr"
    assert Workspace.dataset_name("clean", "overlay", "click_bell", "oracle") == "clean_overlay-oracle_click_bell.zarr"
    assert Workspace.dataset_name("clean", "original", "click_bell", "oracle") == "clean_original_click_bell.zarr"
    with pytest.raises(ValueError, match="dataset type"):
        Workspace.dataset_name("clean", "depth", "click_bell")


def test_layout_and_replay_buffer_semantics(labelled):
    report = render_task(labelled, ENV, TASK)
    frames = FramesStore(Workspace.of(labelled).frames(ENV, TASK))
    rows = np.arange(frames.num_frames)  # every frames-store row is a (state, action) pair
    assert report.rows == frames.num_frames
    assert {k: p.name for k, p in report.stores.items()} == {
        "original": "cluttered_original_click_bell.zarr", "overlay": "cluttered_overlay_click_bell.zarr",
        "concat": "cluttered_concat_click_bell.zarr"}
    for kind, keys in (("original", ["image"]), ("overlay", ["overlay_image"]), ("concat", ["image", "path_image"])):
        root = zarr.open_group(report.stores[kind], mode="r")
        assert root.metadata.zarr_format == 2 and root.attrs["complete"] is True
        assert sorted(root["data"].keys()) == sorted(keys + ["action", "state"])
        for key in keys:
            arr = root[f"data/{key}"]
            assert arr.shape == (len(rows), 3, 224, 224) and arr.dtype == np.uint8 and arr.chunks == (1, 3, 224, 224)
        ends = root["meta/episode_ends"][:]
        assert ends.dtype == np.int64 and ends[-1] == len(rows)
        assert np.array_equal(ends, frames.episode_ends)
        state, action = root["data/state"][:], root["data/action"][:]
        assert state.shape == action.shape == (len(rows), 14) and state.dtype == np.float32
        assert np.array_equal(state, frames.root["data/state"][:][rows].astype(np.float32))
        # Within an episode the action is the next row's state (RoboTwin: action = vector[t+1]).
        inner = np.setdiff1d(np.arange(len(rows)), ends - 1)
        assert np.array_equal(action[inner], state[inner + 1])


def test_types_differ_only_by_the_path(labelled):
    report = render_task(labelled, ENV, TASK)
    frames = FramesStore(Workspace.of(labelled).frames(ENV, TASK))
    paths = PathStore(Workspace.of(labelled).paths("hamster", ENV, TASK))
    original = zarr.open_group(report.stores["original"], mode="r")
    overlay = zarr.open_group(report.stores["overlay"], mode="r")
    concat = zarr.open_group(report.stores["concat"], mode="r")
    number = int(frames.episode_index[1])
    row = int(original["meta/episode_ends"][0]) + 5  # frame 5 of the second episode
    rgb = frames.rgb(1)[5]
    over, only, _ = render_views(rgb, paths.read(number).paths[5])
    def resize(im):
        return resize_frames(im[None], 224)[0]

    assert np.array_equal(original["data/image"][row], resize(rgb))
    assert np.array_equal(overlay["data/overlay_image"][row], resize(over))
    assert np.array_equal(concat["data/path_image"][row], resize(only))
    assert np.array_equal(concat["data/image"][:], original["data/image"][:])
    changed = (overlay["data/overlay_image"][row] != original["data/image"][row]).any(axis=0)
    assert 0 < changed.mean() < 0.1  # only the path's pixels
    # concat and original share their image chunk files (hard links), no extra disk.
    a = report.stores["original"] / "data/image" / f"{row}.0.0.0"
    b = report.stores["concat"] / "data/image" / f"{row}.0.0.0"
    assert os.stat(a).st_ino == os.stat(b).st_ino


def test_provenance_and_float32_option(labelled):
    report = render_task(labelled, ENV, TASK, "oracle", DatasetConfig(resolution=96, dtype="float32"))
    assert report.stores["overlay"].name == "cluttered_overlay-oracle_click_bell.zarr"
    root = zarr.open_group(report.stores["overlay"], mode="r")
    attrs = root.attrs.asdict()
    assert attrs["type"] == "overlay" and attrs["image_values"] == "0-1" and attrs["resolution"] == 96
    assert attrs["paths"]["label"] == "oracle"
    assert attrs["paths"]["provider"] == ProviderConfig(kind="oracle").identity()
    stats = attrs["paths"]["stats"]
    assert stats["ok"] + stats["reasons"].get(AT_REST, 0) == stats["frames"]
    frames = FramesStore(Workspace.of(labelled).frames(ENV, TASK))
    assert [e["episode"] for e in attrs["source"]["episodes"]] == [int(n) for n in frames.episode_index]
    assert attrs["source"]["synthetic"] is True and attrs["code_version"]["maniflow"]
    image = root["data/overlay_image"][:4]
    assert image.dtype == np.float32 and image.shape[1:] == (3, 96, 96) and 0 <= image.min() and image.max() <= 1
    assert np.allclose(image * 255, np.round(image * 255), atol=1e-3)  # uint8 values / 255


def test_rerun_redoes_only_changed_episodes_and_flags_empty_paths(labelled):
    first = render_task(labelled, ENV, TASK)
    assert {s["status"] for s in first.statuses} == {"rendered"}
    again = render_task(labelled, ENV, TASK)
    assert {s["status"] for s in again.statuses} == {"reused"} and not again.assembled
    # Episode 0's paths change: no path on frame 3 (a failed answer with fallback "none").
    store = PathStore(Workspace.of(labelled).paths("hamster", ENV, TASK))
    frames = FramesStore(Workspace.of(labelled).frames(ENV, TASK))
    number = int(frames.episode_index[0])
    provider = ProviderConfig(kind="oracle", label="hamster")
    answers = store.load_answers(number, provider.source_fingerprint(frames.episodes[0]))
    answers[3]["raw"] = "I do not know."
    from maniflow.paths.label import finish_episode
    finish_episode(store, frames, 0, dataclasses.replace(provider, fallback="none"), answers)
    original_part = Workspace.of(labelled).dataset_part(ENV, TASK, "original", number) / "record.json"
    before = original_part.stat().st_mtime_ns
    third = render_task(labelled, ENV, TASK)
    assert [s["status"] for s in third.statuses] == ["rendered", "reused", "reused"]
    assert original_part.stat().st_mtime_ns == before  # the original part was not redrawn
    at_rest = [f["frame"] for f in store.read(number).record["frames"] if f.get("reason") == AT_REST]
    empty = [3, *at_rest]  # with fallback "none", frames of an arm at rest have no path either
    assert third.statuses[0]["empty_path_frames"] == empty and f"{len(empty)} frames had no path" in third.summary()
    overlay = zarr.open_group(third.stores["overlay"], mode="r")
    original = zarr.open_group(third.stores["original"], mode="r")
    assert np.array_equal(overlay["data/overlay_image"][3], original["data/image"][3])
    assert overlay.attrs["source"]["episodes"][0]["empty_path_frames"] == empty


def test_episodes_without_paths_are_left_out_of_every_type(labelled):
    frames = FramesStore(Workspace.of(labelled).frames(ENV, TASK))
    last = int(frames.episode_index[-1])
    PathStore(Workspace.of(labelled).paths("hamster", ENV, TASK)).episode_file(last).unlink()
    report = render_task(labelled, ENV, TASK)
    assert report.missing_paths == [last]
    for store in report.stores.values():
        root = zarr.open_group(store, mode="r")
        assert last not in root["meta/episode_index"][:].tolist()


@pytest.mark.slow
def test_killed_render_never_leaves_a_store_that_looks_complete(labelled, tmp_path):
    proc = subprocess.Popen([MANIFLOW, "render", "--work", str(labelled), "--envs", ENV, "--tasks", TASK,
                             "--resolution", "448", "--no-preview"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = labelled / "datasets" / "parts" / ENV / TASK / "hamster"
    deadline = time.monotonic() + 120
    while not (parts.exists() and any(p.name.startswith("episode") and ".tmp-" not in p.name
                                      for p in parts.iterdir())):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    time.sleep(0.1)  # let it get into the next episode
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for kind in ("original", "overlay", "concat"):
        store = Workspace.of(labelled).dataset(ENV, kind, TASK)
        if store.exists():
            assert zarr.open_group(store, mode="r").attrs.get("complete") is True
    resumed = render_task(labelled, ENV, TASK, config=DatasetConfig(resolution=448))
    assert {s["status"] for s in resumed.statuses} == {"reused", "rendered"}  # killed midway
    assert not list((labelled / "datasets").rglob("*.tmp-*"))
    fresh = render_task(labelled, ENV, TASK, "oracle", DatasetConfig(resolution=448))
    a = zarr.open_group(resumed.stores["overlay"], mode="r")["data/overlay_image"][:]
    b = zarr.open_group(fresh.stores["overlay"], mode="r")["data/overlay_image"][:]
    assert np.array_equal(a, b)  # same paths (oracle under two labels), same pixels


def test_contact_sheet_and_video(labelled, tmp_path):
    sheet = contact_sheet(labelled, ENV, TASK, "hamster", tmp_path / "sheet.png")
    img = cv2.imread(str(sheet))
    assert img.shape == (4 * (240 + 18), 3 * 320, 3)
    frames = FramesStore(Workspace.of(labelled).frames(ENV, TASK))
    number = int(frames.episode_index[0])
    video = episode_video(labelled, ENV, TASK, "hamster", number, tmp_path / "ep.mp4")
    cap = cv2.VideoCapture(str(video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == frames.episodes[0]["frames"]
    assert int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 640
    cap.release()


def test_resize_is_antialiased():
    flat = np.full((2, 240, 320, 3), 77, np.uint8)
    assert (resize_frames(flat, 224) == 77).all()
    # A one-pixel checkerboard halved: antialiasing averages it to grey instead of aliasing
    # to black or white (plain bilinear or nearest would).
    checker = ((np.indices((240, 320)).sum(axis=0) % 2) * 255).astype(np.uint8)
    out = resize_frames(np.repeat(checker[None, ..., None], 3, axis=3), 120)
    assert out.shape == (1, 3, 120, 120) and np.abs(out[0, :, 2:-2, 2:-2].astype(int) - 127).max() <= 2


@pytest.mark.slow
def test_cli_render_writes_datasets_and_previews(labelled):
    result = subprocess.run([MANIFLOW, "render", "--work", str(labelled), "--envs", ENV, "--tasks", TASK,
                             "--label", "oracle", "--video", "0"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "cluttered_overlay-oracle_click_bell.zarr" in result.stdout
    previews = labelled / "datasets" / "previews"
    assert (previews / "cluttered_click_bell-oracle.png").stat().st_size > 10_000
    assert (previews / "cluttered_click_bell-oracle_episode0.mp4").stat().st_size > 10_000
    text = subprocess.run([MANIFLOW, "inspect", str(labelled / "datasets" / "cluttered_concat-oracle_click_bell.zarr")],
                          capture_output=True, text=True, timeout=60).stdout
    assert "data/path_image" in text and ", 3, 224, 224)" in text
