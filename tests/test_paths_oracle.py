"""Ground-truth paths: projection against known pixels, resampling, gripper states, the camera's back."""

from __future__ import annotations

import numpy as np
import pytest

from maniflow.frames import FramesStore
from maniflow.geometry import intrinsics_from_fovy, look_at_extrinsic_cv, project_points, tcp_positions
from maniflow.paths.label import ProviderConfig, label_paths
from maniflow.paths.oracle import AT_REST, BEHIND, OUTSIDE, oracle_paths
from maniflow.paths.providers.oracle import store_oracle_paths
from maniflow.paths.store import ONE_PIXEL, PathStore
from maniflow.robotwin.episode import busiest_arm
from maniflow.workspace import Workspace

W, H = 320, 240


def camera(frames: int):
    """A camera at (0, -1, 1) looking at the origin, and its matrices repeated per frame."""
    k = intrinsics_from_fovy(W, H, 45.0)
    e = look_at_extrinsic_cv((0.0, -1.0, 1.0), (0.0, 0.0, 0.0))
    return k, e, np.repeat(k[None], frames, 0), np.repeat(e[None], frames, 0)


def test_path_points_land_on_known_pixels():
    k, e, ks, es = camera(5)
    # A straight 40 cm move along x through the look-at point, five frames at even spacing.
    positions = np.array([[-0.2, 0, 0], [-0.1, 0, 0], [0.0, 0, 0], [0.1, 0, 0], [0.2, 0, 0]])
    paths, behind, degenerate = oracle_paths(positions, np.ones(5), ks, es, W, H, num_points=3)
    assert behind.tolist() == [0] * 5 and degenerate == [None] * 4 + [AT_REST]
    # The look-at point is the principal point, the image centre.
    assert paths[2][0][:2] == pytest.approx((0.5, 0.5))
    # Frame 0's path: start, middle and end of the remaining motion.
    expected, _ = project_points(positions[[0, 2, 4]], k, e)
    assert np.array([p[:2] for p in paths[0]]) == pytest.approx(expected / (W, H))
    # Independent check of one pixel: x = +0.2 m at depth sqrt(2) along the axis -> u = cx + fx * 0.2 / sqrt(2).
    fx = k[0, 0]
    assert paths[0][-1][0] * W == pytest.approx(W / 2 + fx * 0.2 / np.sqrt(2), abs=1e-9)
    # The last frame has nothing left to do: every point is where the arm is (at rest: no path).
    assert {p[:2] for p in paths[4]} == {paths[4][0][:2]}
    # A track longer than the observed frames (the final recorded pose has no image) labels
    # only the observed frames, and they see the motion to its end.
    short, _, _ = oracle_paths(positions, np.ones(5), ks[:4], es[:4], W, H, num_points=3)
    assert short == paths[:4]


def test_resampling_is_even_in_arc_length_whatever_the_frame_timing():
    _, _, ks, es = camera(4)
    # Uneven steps: 1 cm, then 29 cm, then nothing: the path is still evenly spaced in space.
    positions = np.array([[-0.15, 0, 0], [-0.14, 0, 0], [0.15, 0, 0], [0.15, 0, 0]])
    paths, _, _ = oracle_paths(positions, np.ones(4), ks, es, W, H, num_points=4)
    xs = np.array([p[0] for p in paths[0]])
    gaps = np.diff(xs)
    assert gaps.min() > 0 and gaps.max() / gaps.min() < 1.15  # perspective makes them differ slightly


def test_gripper_state_follows_the_data_and_starts_at_the_current_frame():
    _, _, ks, es = camera(6)
    positions = np.array([[-0.2, 0, 0], [-0.1, 0, 0], [0.0, 0, 0], [0.0, 0, 0], [0.1, 0, 0], [0.2, 0, 0]])
    gripper = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])  # opens, pauses at x = 0 and closes, moves on
    paths, _, _ = oracle_paths(positions, gripper, ks, es, W, H, num_points=5)
    assert [p[2] for p in paths[0]] == [1, 1, 0, 0, 0]  # the point at the pause is after the grasp
    assert paths[2][0][2] == 1  # frame 2 is still open, though it sits where the grasp happens
    assert [p[2] for p in paths[3]] == [0] * 5


def test_points_behind_the_camera_are_dropped():
    _, _, ks, es = camera(3)
    # The camera is at y = -1 looking towards +y; the motion ends 1 m behind it.
    positions = np.array([[0.0, 0.0, 0.0], [0.0, -1.5, 1.5], [0.0, -2.0, 2.0]])
    paths, behind, degenerate = oracle_paths(positions, np.ones(3), ks, es, W, H, num_points=9)
    assert behind[0] > 0 and len(paths[0]) == 9 - behind[0]
    assert all(0 <= x <= 1 and 0 <= y <= 1 for x, y, _ in paths[0])
    assert paths[2] == [] and behind[2] == 9 and degenerate[2] == BEHIND


def test_degenerate_oracle_paths_say_why():
    k, e, ks, es = camera(3)
    moving = np.array([[-0.2, 0, 0], [0.0, 0, 0], [0.2, 0, 0]])
    # A camera whose intrinsics are all zeros puts every point at (0, 0) although the arm moves.
    _, _, degenerate = oracle_paths(moving, np.ones(3), np.zeros((3, 3, 3)), es, W, H)
    assert degenerate[:2] == [ONE_PIXEL, ONE_PIXEL]
    # Motion far to the side of the camera's view: every point outside the image.
    _, _, degenerate = oracle_paths(moving + [5.0, 0, 0], np.ones(3), ks, es, W, H)
    assert degenerate[:2] == [OUTSIDE, OUTSIDE]


def test_busiest_arm_is_the_one_that_works_its_gripper():
    still = np.zeros((10, 7))
    moving = np.zeros((10, 7))
    moving[:, 0] = np.linspace(0, 1, 10)
    # The idle arm travels further (e.g. moves into view) but never uses its gripper.
    assert busiest_arm({"left": moving * 0.3, "right": moving}, {"left": np.r_[np.ones(5), np.zeros(5)],
                                                                 "right": np.ones(10)}) == "left"
    assert busiest_arm({"left": still, "right": moving}, {"left": np.ones(10), "right": np.ones(10)}) == "right"


def test_oracle_labels_a_frames_store_and_starts_at_the_fingertips(work_copy):
    report = label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="oracle"))
    frames = FramesStore(Workspace.of(work_copy).frames("clean", "click_bell"))
    at_rest = report.total["reasons"].get(AT_REST, 0)
    assert report.frames == frames.num_frames and report.total["ok"] + at_rest == frames.num_frames
    assert report.faults == 0 and "WARNING" not in report.summary()
    store = PathStore(report.store)
    for i, number in enumerate(frames.episode_index):
        stored = store.read(int(number))
        assert stored.num_frames == frames.episodes[i]["frames"]
        paths, arm, _, _ = store_oracle_paths(frames, i, 10)
        assert arm == frames.episodes[i]["arm"] and frames.episodes[i]["arm_from"] == "scene_info.json"
        tips = tcp_positions(frames.array(f"{arm}_endpose", i), 0.12)  # RoboTwin's stored pose + 0.12 m
        uv, _ = project_points(tips, frames.array("intrinsic_cv", i), frames.array("extrinsic_cv", i))
        first = np.array([p[0][:2] for p in stored.paths])
        ok = np.array([s == "ok" for s in stored.status])
        inside = ((uv >= 0) & (uv <= (W, H))).all(axis=1) & ok
        assert np.abs(first[inside] * (W, H) - uv[inside]).max() < 0.05  # answers carry 4 decimals
        # Every frame is ok but those of the arm at rest at the end, which borrow the last path.
        rest = [t for t, f in enumerate(stored.record["frames"]) if f.get("reason") == AT_REST]
        assert rest == list(range(stored.num_frames - len(rest), stored.num_frames))
        assert stored.source[:len(stored.source) - len(rest)] == list(range(stored.num_frames - len(rest)))
    # A second run asks nothing.
    again = label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="oracle"))
    assert again.asked == 0 and again.reused == report.frames
