"""The `maniflow` console script, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import pytest

MANIFLOW = str(Path(sys.executable).with_name("maniflow"))


def run(*args, check=True):
    result = subprocess.run([MANIFLOW, *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def test_help_for_every_subcommand():
    top = run("--help").stdout
    for command in ("generate", "extract", "inspect", "paths", "serve-paths", "import-paths", "render", "train"):
        assert command in top
        text = run(command, "--help").stdout
        assert "usage: maniflow " + command in text and "--" in text


@pytest.mark.slow
def test_generate_extract_inspect_round_trip(tmp_path):
    data, work = tmp_path / "data", tmp_path / "work"
    out = run("generate", "--out", data, "--tasks", "turn_switch", "--envs", "cluttered", "--episodes", "3").stdout
    assert "turn_switch/cluttered: wrote 3 episodes" in out
    assert "up to date" in run("generate", "--out", data, "--tasks", "turn_switch", "--envs", "cluttered",
                               "--episodes", "3").stdout

    episode = data / "turn_switch" / "demo_randomized" / "data" / "episode1.hdf5"
    text = run("inspect", episode).stdout
    assert "SYNTHETIC" in text and "320x240" in text and "fovy 37.0 deg" in text and "instruction:" in text

    out = run("extract", "--root", data, "--work", work).stdout
    assert "cluttered/turn_switch: 3 episodes (3 extracted" in out
    store = work / "frames" / "cluttered" / "turn_switch.zarr"
    text = run("inspect", store).stdout
    assert "maniflow.frames" in text and "3 episodes" in text and "data/rgb" in text and "per frame on disk" in text

    # One broken file: exit status 3, the reason printed, the other episodes still there.
    with h5py.File(episode, "r+") as f:
        del f["joint_action/vector"]
    result = run("extract", "--root", data, "--work", work, check=False)
    assert result.returncode == 3
    assert "quarantined episode1: missing_key joint_action/vector" in result.stdout
    assert "(0 extracted, 2 reused, 1 quarantined)" in result.stdout
    text = run("inspect", store).stdout
    assert "2 episodes" in text and "QUARANTINED episode1: missing_key" in text


@pytest.mark.slow
def test_errors_are_messages_not_tracebacks(tmp_path):
    result = run("inspect", tmp_path / "missing.hdf5", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "missing.hdf5" in result.stderr
    result = run("extract", "--root", tmp_path / "nowhere", "--work", tmp_path, check=False)
    assert result.returncode == 2 and "not found" in result.stderr
    result = run("generate", "--out", tmp_path, "--tasks", "fold_laundry", check=False)
    assert result.returncode == 2 and "fold_laundry" in result.stderr
