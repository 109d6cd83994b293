"""Path quality against the ground truth: the metrics on paths of known error, and on stores."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from maniflow.paths.label import ProviderConfig, label_paths
from maniflow.paths.quality import compare_paths, distribution, frechet, path_quality, resample, task_quality
from maniflow.paths.store import PathStore

MANIFLOW = str(Path(sys.executable).with_name("maniflow"))


def brute_frechet(p, q) -> float:
    """The textbook recursion (Eiter and Mannila), for checking the vectorised table."""
    d = np.linalg.norm(p[:, None] - q[None], axis=-1)

    @lru_cache(None)
    def c(i, j):
        if i == 0 and j == 0:
            return d[0, 0]
        if i == 0:
            return max(c(0, j - 1), d[0, j])
        if j == 0:
            return max(c(i - 1, 0), d[i, 0])
        return max(min(c(i - 1, j), c(i - 1, j - 1), c(i, j - 1)), d[i, j])

    return c(len(p) - 1, len(q) - 1)


def test_frechet_matches_the_recursion():
    rng = np.random.default_rng(0)
    p, q = rng.uniform(0, 100, (5, 7, 2)), rng.uniform(0, 100, (5, 4, 2))
    assert frechet(p, q) == pytest.approx([brute_frechet(a, b) for a, b in zip(p, q)])


def test_a_shifted_path_measures_the_shift_and_flipped_states_disagree():
    path = [(0.2, 0.3, 1), (0.4, 0.5, 1), (0.6, 0.4, 0), (0.7, 0.7, 0)]
    shifted = [(x + 0.05, y - 0.02, 1 - g) for x, y, g in path]
    m = compare_paths([shifted], [path], 320, 240)
    shift_px = np.hypot(0.05 * 320, 0.02 * 240)
    for key in ("start_px", "end_px", "frechet_px"):
        assert m[key][0] == pytest.approx(shift_px)
    assert m["gripper"][0] == 0.0
    same = compare_paths([path], [path], 320, 240)
    assert same["frechet_px"][0] == 0 and same["gripper"][0] == 1.0
    # No states in the answer (PEEK, JSON points): agreement is not measured, not counted as wrong.
    assert np.isnan(compare_paths([[(x, y, None) for x, y, _ in path]], [path], 320, 240)["gripper"][0])


def test_the_shape_distance_ignores_how_many_points_describe_a_path():
    coarse = [(0.1, 0.1, 0), (0.9, 0.1, 0), (0.9, 0.9, 0)]
    dense = [(0.1 + 0.08 * i, 0.1, 0) for i in range(11)] + [(0.9, 0.1 + 0.2 * i, 0) for i in range(1, 5)]
    m = compare_paths([dense], [coarse], 320, 240)
    assert m["frechet_px"][0] < 0.5 and m["start_px"][0] == 0 and m["end_px"][0] == pytest.approx(0, abs=1e-9)
    # An L against the straight line between its ends: the corner's distance to the line, to
    # within the spacing of the resampled points (the corner falls between two of them).
    straight = [(0.1, 0.1, 0), (0.9, 0.9, 0)]
    w, h = 0.8 * 320, 0.8 * 240
    corner_to_line = w * h / np.hypot(w, h)
    spacing = (w + h) / 31
    assert abs(compare_paths([coarse], [straight], 320, 240)["frechet_px"][0] - corner_to_line) < spacing
    # Resampling is even in arc length, a zero-length path stays put.
    xy, g = resample(np.array([[[0, 0], [10, 0], [10, 10]]], float), np.zeros((1, 3)), 5)
    assert xy[0].tolist() == [[0, 0], [5, 0], [10, 0], [10, 5], [10, 10]]
    xy, _ = resample(np.array([[[3, 4], [3, 4]]], float), np.zeros((1, 2)), 4)
    assert (xy == [3, 4]).all()


def test_distributions_say_their_percentiles_and_count():
    d = distribution([1.0, 2.0, 3.0, 4.0, np.nan, 100.0])
    assert d["n"] == 5 and d["p50"] == 3.0 and d["mean"] == 22.0 and d["p90"] == pytest.approx(61.6)
    assert distribution([])["p50"] is None


def test_every_nth_asking_adds_error_only_on_frames_not_asked(work_copy):
    """The oracle measured against itself is exact; asked every 4th frame, the frames between
    draw a neighbour's path and only they carry error."""
    label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="oracle", label="truth"))
    exact = task_quality(work_copy, "truth", "clean", "click_bell")
    # Answers carry 4 decimals: 1e-4 of 320 px.
    assert exact.measured.sum() > 50 and np.abs(exact.metrics["frechet_px"]).max() < 0.05
    assert set(exact.unmeasured) == {"no reference: degenerate: the arm is at rest for the rest of the episode"}

    report = label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="oracle", label="sparse", every=4))
    assert report.asked == sum(-(-n // 4) for n in (len(PathStore(report.store).read(e).paths)
                                                     for e in PathStore(report.store).episodes()))
    q = task_quality(work_copy, "sparse", "clean", "click_bell")
    skipped = np.array([s == "skipped" for s in q.status])
    assert (q.frame[skipped] % 4 != 0).all() and (q.frame[~skipped] % 4 == 0).all()
    error = np.zeros(len(q.status))
    error[q.measured] = q.metrics["start_px"]
    assert error[~skipped & q.measured].max() < 0.05 and error[skipped & q.measured].max() > 1.0
    assert q.filled[skipped].all()


def test_path_quality_writes_distributions_per_episode_task_and_env(work_copy):
    label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="oracle", label="sparse", every=3))
    report = path_quality(work_copy, "sparse")
    data = json.loads((report.out / "quality.json").read_text())
    (task,) = data["tasks"]
    assert (task["env"], task["task"]) == ("clean", "click_bell")
    assert set(task["metrics"]["start_px"]) == {"n", "mean", "p10", "p25", "p50", "p75", "p90"}
    assert sorted(task["episodes"]) == ["0", "1", "2"]
    assert task["metrics"]["start_px"]["n"] == task["measured"] == data["envs"]["clean"]["start_px"]["n"]
    assert task["outcomes"]["skipped"] > 0
    assert set(data["skipped"]) == {"clean/open_microwave", "cluttered/click_bell", "cluttered/open_microwave"}
    md = (report.out / "quality.md").read_text()
    assert "| clean/click_bell |" in md and "![path error distributions](quality.png)" in md
    assert (report.out / "quality.png").stat().st_size > 10_000
    # Unchanged paths and frames: nothing measured or written again; other paths: measured again.
    stamps = {p: p.stat().st_mtime_ns for p in report.out.iterdir()}
    again = path_quality(work_copy, "sparse")
    assert not again.written and again.data == data
    assert {p: p.stat().st_mtime_ns for p in report.out.iterdir()} == stamps
    label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="oracle", label="sparse", every=5))
    assert path_quality(work_copy, "sparse").written
    # A measurement of other pairs is another measurement, not the stored one.
    assert path_quality(work_copy, "sparse", envs=["clean"], tasks=["click_bell"]).written


def test_the_command_prints_the_table_and_says_when_nothing_is_labelled(work_copy):
    label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="oracle", label="sparse", every=2))
    done = subprocess.run([MANIFLOW, "path-quality", "--work", str(work_copy), "--label", "sparse"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("| clean/click_bell |"))
    data = json.loads((work_copy / "quality/sparse/quality.json").read_text())
    assert f"| {data['tasks'][0]['metrics']['start_px']['n']} |" in row
    missing = subprocess.run([MANIFLOW, "path-quality", "--work", str(work_copy), "--label", "nobody"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no paths labelled 'nobody'" in missing.stdout


def test_paths_of_an_episode_extracted_again_since_are_not_measured(work_copy):
    from maniflow.frames import FramesStore
    from maniflow.paths.quality import stale, stored_provider
    from maniflow.workspace import Workspace

    report = label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="oracle", label="truth"))
    store, frames = PathStore(report.store), FramesStore(Workspace(work_copy).frames("clean", "click_bell"))
    ep = store.read(int(frames.episode_index[0]))
    provider = stored_provider(store)
    assert provider.kind == "oracle" and stale(frames, 0, ep, provider) is None
    ep.record["source_fingerprint"] = {**ep.record["source_fingerprint"], "source": "an older recording"}
    assert stale(frames, 0, ep, provider) == "stale: the episode changed since it was labelled (label again)"
    ep.paths.pop()
    assert stale(frames, 0, ep, None).startswith(f"stale: {ep.num_frames} frames labelled")
