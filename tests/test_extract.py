"""Frame extraction: contents, bad input quarantined, resume, atomicity under a real kill."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from maniflow.frames import FramesStore, IncompleteStoreError, assemble_frames_store, extract_task, part_path, parts_dir
from maniflow.robotwin import KEYS, RoboTwinEpisode, discover_episodes
from maniflow.storage import temp_sibling
from maniflow.synthetic import GeneratorConfig, generate_dataset
from maniflow.workspace import Workspace


def _extract(root, work, task="click_bell", env="clean", config="demo_clean", **kw):
    return extract_task(root, work, env, config, task, **kw)


def test_store_holds_every_pair_exactly(small_root, tmp_path):
    report = _extract(small_root, tmp_path, task="open_microwave", env="cluttered", config="demo_randomized")
    assert report.count("extracted") == 3 and not report.quarantined
    store = FramesStore(report.store)
    assert report.store == Workspace.of(tmp_path).frames("cluttered", "open_microwave")
    refs = discover_episodes(small_root, ["open_microwave"], ["demo_randomized"])
    assert list(store.episode_index) == [r.index for r in refs]
    assert store.attrs["synthetic"] is True and store.attrs["complete"] is True
    assert store.root["data/rgb"].chunks == (1, 240, 320, 3)
    for i, ref in enumerate(refs):
        with RoboTwinEpisode(ref.path) as ep:
            arrays, vector, cams = ep.validate(), ep.joint_vector(), ep.camera_matrices()
            # Every row is a policy pair, RoboTwin's: state = vector[t], action = vector[t+1];
            # the last recorded frame has no action and no row.
            assert np.array_equal(store.rgb(i), ep.rgb("head")[:-1])
            assert np.array_equal(store.array("state", i), vector[:-1])
            assert np.array_equal(store.array("action", i), vector[1:])
            assert np.array_equal(store.array("extrinsic_cv", i), cams.extrinsic_cv[:-1])
            assert np.array_equal(store.array("cam2world_gl", i), cams.cam2world_gl[:-1])
            for arm in ("left", "right"):  # end poses of every recorded frame, the last included
                poses, grip = store.arm_track(arm, i)
                assert np.array_equal(poses, arrays.endpose[arm]) and np.array_equal(grip, arrays.gripper[arm])
        record = store.episodes[i]
        assert record["instructions"]["seen"] and record["file"] == str(ref.path)
        assert (record["layout"], record["arm_from"], record["tcp_offset"]) == ("robotwin2", "scene_info.json", 0.12)
        assert record["instructions"]["from"] == "instructions/episode*.json"
    assert store.num_frames == sum(r["frames"] for r in store.episodes)


def test_other_camera_gets_its_own_store(small_root, tmp_path):
    report = _extract(small_root, tmp_path, camera="front")
    assert report.store.name == "click_bell@front.zarr"
    with RoboTwinEpisode(discover_episodes(small_root, ["click_bell"], ["demo_clean"])[0].path) as ep:
        assert np.array_equal(FramesStore(report.store).rgb(0), ep.rgb("front")[:-1])


def _corrupt(path: Path, how: str) -> None:
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return
    with h5py.File(path, "r+") as f:
        if how == "missing_key":
            del f[KEYS.endpose("left")]
        elif how == "bad_frame":
            raw = f[KEYS.rgb("head")][:]
            raw[7] = b"\xff\xd8 this is not a jpeg"
            del f[KEYS.rgb("head")]
            f[KEYS.rgb("head")] = raw
        elif how == "length_mismatch":
            v = f[KEYS.vector][:]
            del f[KEYS.vector]
            f[KEYS.vector] = v[:-3]
        elif how == "non_finite":
            v = f[KEYS.vector][:]
            v[5, 3] = np.nan
            f[KEYS.vector][...] = v


BAD = {  # episode number -> (corruption, expected kind, key, frame)
    1: ("missing_key", "missing_key", "endpose/left_endpose", None),
    2: ("truncated", "unreadable", None, None),
    3: ("bad_frame", "bad_frame", "observation/head_camera/rgb", 7),
    4: ("length_mismatch", "length_mismatch", "joint_action/vector", None),
    5: ("non_finite", "non_finite", "joint_action/vector", 5),
}


@pytest.fixture
def bad_root(tmp_path):
    """Seven episodes of click_bell/demo_clean; episodes 1-5 broken in different ways."""
    root = tmp_path / "root"
    generate_dataset(root, GeneratorConfig(tasks=("click_bell",), envs=("clean",), episodes=7, seed=11),
                     progress=lambda _: None)
    for index, (how, *_rest) in BAD.items():
        _corrupt(root / "click_bell" / "demo_clean" / "data" / f"episode{index}.hdf5", how)
    return root


def test_each_bad_input_gets_its_own_error_and_the_rest_complete(bad_root, tmp_path):
    report = _extract(bad_root, tmp_path / "work")
    assert report.count("extracted") == 2  # episodes 0 and 6
    errors = {q["episode"]: q["error"] for q in report.quarantined}
    assert set(errors) == set(BAD)
    for index, (_how, kind, key, frame) in BAD.items():
        e = errors[index]
        assert e["kind"] == kind, (index, e)
        assert e["file"].endswith(f"episode{index}.hdf5")
        if key:
            assert e["key"] == key
        if frame is not None:
            assert e["frame"] == frame
    assert "entries but observation/head_camera/rgb has" in errors[4]["message"]
    store = FramesStore(report.store)
    assert list(store.episode_index) == [0, 6]
    assert {q["episode"] for q in store.quarantine} == set(BAD)
    summary = report.summary()
    assert "episode3: bad_frame observation/head_camera/rgb frame 7" in summary
    assert "episode5: non_finite joint_action/vector frame 5" in summary


def test_quarantine_is_remembered_until_the_file_changes(bad_root, tmp_path):
    _extract(bad_root, tmp_path / "work")
    again = _extract(bad_root, tmp_path / "work")
    assert again.count("quarantined") == 5 and again.count("reused") == 2 and not again.assembled
    # Replace the broken episode 3 by a good one: only it is extracted, the store gains it.
    good = bad_root / "click_bell" / "demo_clean" / "data" / "episode0.hdf5"
    shutil.copy(good, good.with_name("episode3.hdf5"))
    fixed = _extract(bad_root, tmp_path / "work")
    assert fixed.count("extracted") == 1 and fixed.count("reused") == 2 and fixed.assembled
    assert list(FramesStore(fixed.store).episode_index) == [0, 3, 6]


def test_rerun_reuses_unchanged_and_redoes_changed_episodes(small_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(small_root / "click_bell", root / "click_bell")
    first = _extract(root, tmp_path / "work")
    assert first.count("extracted") == 3
    second = _extract(root, tmp_path / "work")
    assert second.count("reused") == 3 and not second.assembled
    episode1 = root / "click_bell" / "demo_clean" / "data" / "episode1.hdf5"
    os.utime(episode1, ns=(time.time_ns(), time.time_ns() + 10**9))  # rewritten
    third = _extract(root, tmp_path / "work")
    assert third.count("extracted") == 1 and third.count("reused") == 2 and third.assembled


def test_unfinished_store_is_never_trusted(small_root, tmp_path):
    work = tmp_path / "work"
    store_path = Workspace.of(work).frames("clean", "click_bell")
    store_path.parent.mkdir(parents=True)
    # What a kill leaves behind: a store without the completion mark, and a half-written part.
    zarr.open_group(store_path, mode="w", zarr_format=2).attrs.update({"format": "maniflow.frames"})
    stale = temp_sibling(part_path(store_path, 0))
    stale.mkdir(parents=True)
    (stale / "junk").write_text("half written")
    os.rename(stale, stale.with_name(stale.name.replace(f"-{os.getpid()}-", "-999999999-")))
    with pytest.raises(IncompleteStoreError, match="not finished"):
        FramesStore(store_path)
    report = _extract(small_root, work)
    assert report.count("extracted") == 3 and report.assembled
    assert FramesStore(store_path).num_frames == report.frames
    assert not [p for p in parts_dir(store_path).iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
def test_extraction_killed_midway_resumes_without_redoing_finished_episodes(tmp_path):
    """A real SIGKILL during `maniflow extract`; the rerun trusts only finished episodes."""
    root = tmp_path / "root"
    generate_dataset(root, GeneratorConfig(tasks=("place_object_stand",), envs=("clean",), episodes=8,
                                           seed=5, step_m=0.006), progress=lambda _: None)
    work = tmp_path / "work"
    store_path = Workspace.of(work).frames("clean", "place_object_stand")
    proc = subprocess.Popen([sys.executable, "-m", "maniflow.cli", "extract", "--root", str(root),
                             "--work", str(work), "--envs", "clean", "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if parts_dir(store_path).exists() and any(p.suffix == ".part" for p in parts_dir(store_path).iterdir()):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "extraction finished before it could be interrupted"
    with pytest.raises(IncompleteStoreError):
        FramesStore(store_path)
    finished = {p.name for p in parts_dir(store_path).iterdir() if p.suffix == ".part"}
    assert 1 <= len(finished) < 8

    report = _extract(root, work, task="place_object_stand")
    assert report.count("reused") == len(finished)
    assert report.count("extracted") == 8 - len(finished)
    fresh = FramesStore(_extract(root, tmp_path / "fresh", task="place_object_stand").store)
    resumed = FramesStore(store_path)
    for name in ("rgb", "state", "action", "left_endpose", "extrinsic_cv"):
        assert np.array_equal(resumed.array(name), fresh.array(name)), name
    assert np.array_equal(resumed.episode_ends, fresh.episode_ends)


def test_assembly_links_frame_chunks_instead_of_copying(small_root, tmp_path):
    report = _extract(small_root, tmp_path / "work")
    chunk = report.store / "data" / "rgb" / "0.0.0.0"
    part_chunk = part_path(report.store, 0) / "rgb" / "0.0.0.0"
    assert os.stat(chunk).st_ino == os.stat(part_chunk).st_ino
    refs = discover_episodes(small_root, ["click_bell"], ["demo_clean"])
    copied = tmp_path / "copied.zarr"
    shutil.copytree(parts_dir(report.store), copied.with_suffix(".parts"))
    assemble_frames_store(copied, refs, "clean", "demo_clean", link=False)
    assert os.stat(copied / "data" / "rgb" / "0.0.0.0").st_ino != os.stat(part_chunk).st_ino
    assert np.array_equal(FramesStore(copied).array("rgb"), FramesStore(report.store).array("rgb"))


def test_parallel_extraction_matches_serial(small_root, tmp_path):
    serial = _extract(small_root, tmp_path / "a", task="open_microwave")
    parallel = _extract(small_root, tmp_path / "b", task="open_microwave", workers=2)
    assert parallel.count("extracted") == 3
    assert np.array_equal(FramesStore(serial.store).array("rgb"), FramesStore(parallel.store).array("rgb"))


def test_no_episodes_is_a_clear_error(tmp_path):
    (tmp_path / "click_bell" / "demo_clean" / "data").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no episodes of task .click_bell., config .demo_clean."):
        _extract(tmp_path, tmp_path / "work")
