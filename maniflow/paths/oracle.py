"""Ground-truth ("oracle") paths: the episode's own future fingertip motion, projected.

For frame t the path is the working arm's fingertip-centre positions from frame t to the end
of the recording, resampled to `num_points` points evenly spaced in 3D arc length, projected
into the camera with frame t's stored matrices, and given the recorded gripper state. A VLM
draws where the fingertips go, so the oracle follows them too: RoboTwin's stored end pose lies
0.12 m behind them (`geometry.tcp_positions`). It is the label a path-conditioned policy can
be trained on without a VLM, and the upper bound for any VLM.
"""

from __future__ import annotations

import numpy as np

from maniflow.geometry import Point, project_points
from maniflow.paths.store import ONE_PIXEL, in_one_pixel

MIN_DEPTH = 1e-3  # metres in front of the camera; nearer points are behind it or degenerate
# Why an oracle path is no path. At rest: the arm stays in one pixel for the rest of the
# episode (a hold at the end); expected, not a fault, but still no path to draw.
AT_REST = "degenerate: the arm is at rest for the rest of the episode"
BEHIND = "degenerate: every point behind the camera"
OUTSIDE = "degenerate: every point outside the image"
REST_M = 0.02  # less remaining motion (metres) in one pixel is a hold or a slow finish, not a broken camera


def resample_future(positions: np.ndarray, num_points: int) -> np.ndarray:
    """For every frame t, indices (T, n) and fractions into `positions` of `num_points` points
    evenly spaced in arc length along positions[t:]. Returns (index, frac) arrays; the point is
    positions[index] + frac * (positions[index + 1] - positions[index])."""
    t_len = len(positions)
    seg = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])  # arc length at each frame, non-decreasing
    k = np.linspace(0.0, 1.0, num_points)
    targets = s[:, None] + k[None, :] * (s[-1] - s[:, None])  # (T, n)
    # side="right" - 1: the last frame at or before the target, so a pause (several frames at
    # one arc length) resolves to its end, where the gripper has finished moving.
    index = np.clip(np.searchsorted(s, targets, side="right") - 1, 0, max(t_len - 2, 0))
    index[:, 0] = np.arange(t_len)  # the path starts where the arm is now, in its current state
    if t_len < 2:
        return index, np.zeros_like(targets)
    span = s[np.minimum(index + 1, t_len - 1)] - s[index]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(span > 0, (targets - s[index]) / span, 0.0)
    frac[:, 0] = 0.0
    return index, np.clip(frac, 0.0, 1.0)


def oracle_paths(positions: np.ndarray, gripper: np.ndarray, intrinsic_cv: np.ndarray,
                 extrinsic_cv: np.ndarray, width: int, height: int,
                 num_points: int = 10) -> tuple[list[list[Point]], np.ndarray, list[str | None]]:
    """Paths for the first n observed frames of a recorded track.

    positions (T, 3) world fingertip positions and gripper (T,) 1 open, 0 closed, over every
    recorded frame (T >= n); intrinsic_cv (n, 3, 3) and extrinsic_cv (n, 3, 4) per observed
    frame. Returns (paths, dropped, degenerate): one path per frame (x, y in [0, 1] of the
    frame, clipped at the border), the number of points per frame dropped for lying behind
    the camera, and per frame why its path is no path (None when it is one).
    """
    positions = np.asarray(positions, np.float64)
    n = len(intrinsic_cv)
    index, frac = resample_future(positions, num_points)
    index, frac = index[:n], frac[:n]
    nxt = np.minimum(index + 1, len(positions) - 1)
    points = positions[index] + frac[..., None] * (positions[nxt] - positions[index])  # (n, k, 3)
    states = (np.asarray(gripper)[np.where(frac >= 1.0, nxt, index)] > 0.5).astype(int)
    uv, depth = project_points(points, intrinsic_cv[:, None], extrinsic_cv[:, None])
    xy = uv / np.array([width, height], np.float64)
    visible = depth > MIN_DEPTH
    inside = visible & np.all((xy >= 0.0) & (xy <= 1.0), axis=-1)
    xy = np.where(visible[..., None], np.clip(xy, 0.0, 1.0), 0.0)  # behind the camera: no position
    one_pixel = in_one_pixel(xy, width, height, visible)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(positions, axis=0), axis=1))])
    remaining = arc[-1] - arc[:n]
    degenerate = [BEHIND if not visible[t].any() else OUTSIDE if not inside[t].any() else
                  (AT_REST if remaining[t] < REST_M else ONE_PIXEL) if one_pixel[t] else None for t in range(n)]
    paths = [[(float(x), float(y), int(g)) for (x, y), g in zip(xy[t][visible[t]], states[t][visible[t]])]
             for t in range(n)]
    return paths, (~visible).sum(axis=1), degenerate


def live_oracle_path(position: np.ndarray, gripper: float, track: np.ndarray, track_gripper: np.ndarray,
                     progress: int, intrinsic_cv: np.ndarray, extrinsic_cv: np.ndarray, width: int, height: int,
                     num_points: int = 10) -> tuple[list[Point], int]:
    """The oracle path of an arm in closed loop: from its position along the rest of an expert's
    track (T, 3) / gripper (T,). Returns (path, new progress index into the track).

    Progress walks forward while the next track frame is no further from the arm (position, and
    gripper opening at 5 cm per unit) than the current one, so it never skips a segment the arm
    has not done (going down to press and back up passes the same point twice)."""
    cost = np.linalg.norm(track[progress:] - position, axis=1) + 0.05 * np.abs(track_gripper[progress:] - gripper)
    rising = np.flatnonzero(np.diff(cost) > 1e-9)
    progress += int(rising[0]) if len(rising) else len(cost) - 1
    positions = np.concatenate([np.asarray(position, np.float64)[None], track[progress + 1:]])
    grip = np.concatenate([[gripper], track_gripper[progress + 1:]])
    k = np.asarray(intrinsic_cv, np.float64)[None]
    e = np.asarray(extrinsic_cv, np.float64)[None]
    paths, _, _ = oracle_paths(positions, grip, k, e, width, height, num_points)
    return paths[0], progress
