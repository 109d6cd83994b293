"""Rotations and pinhole cameras in RoboTwin 2.0's conventions.

- Quaternions are [w, x, y, z] (w first), as in RoboTwin's `endpose` arrays.
- `extrinsic_cv` is the (3, 4) world-to-camera matrix with OpenCV camera axes
  (x right, y down, z forward); `cam2world_gl` is the (4, 4) camera-to-world
  matrix with OpenGL camera axes (x right, y up, z backward).

Every function accepts leading batch dimensions so a whole episode is one call.
"""

from __future__ import annotations

import numpy as np

# A path point: (x, y, gripper_state), x = column and y = row in [0, 1] of the full frame;
# gripper_state 1 open, 0 closed, None when the provider gives none (PEEK).
Point = tuple[float, float, int | None]

# OpenGL camera axes expressed in OpenCV camera axes (and back: it is its own inverse).
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def euler_to_matrix(rpy: np.ndarray) -> np.ndarray:
    """Rotation R = Rz(yaw) @ Ry(pitch) @ Rx(roll) for rpy (..., 3) in radians."""
    rpy = np.asarray(rpy, dtype=np.float64)
    cr, cp, cy = np.cos(rpy[..., 0]), np.cos(rpy[..., 1]), np.cos(rpy[..., 2])
    sr, sp, sy = np.sin(rpy[..., 0]), np.sin(rpy[..., 1]), np.sin(rpy[..., 2])
    rows = [
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def matrix_to_euler(matrix: np.ndarray) -> np.ndarray:
    """Inverse of `euler_to_matrix` for |pitch| < 90 degrees; returns (..., 3)."""
    m = np.asarray(matrix, dtype=np.float64)
    roll = np.arctan2(m[..., 2, 1], m[..., 2, 2])
    pitch = np.arcsin(np.clip(-m[..., 2, 0], -1.0, 1.0))
    yaw = np.arctan2(m[..., 1, 0], m[..., 0, 0])
    return np.stack([roll, pitch, yaw], axis=-1)


def matrix_to_quat_wxyz(matrix: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) to unit quaternions (..., 4) [w, x, y, z], w >= 0."""
    m = np.asarray(matrix, dtype=np.float64)
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # Row k holds 4*q_k*q_j for j = w, x, y, z; its diagonal is 4*q_k^2. Dividing the row with
    # the largest diagonal by 2*|q_k| is the numerically stable choice (Shepperd's method).
    four_sq = [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22]
    rows = np.stack(
        [
            np.stack([four_sq[0], m21 - m12, m02 - m20, m10 - m01], axis=-1),
            np.stack([m21 - m12, four_sq[1], m01 + m10, m02 + m20], axis=-1),
            np.stack([m02 - m20, m01 + m10, four_sq[2], m12 + m21], axis=-1),
            np.stack([m10 - m01, m02 + m20, m12 + m21, four_sq[3]], axis=-1),
        ],
        axis=-2,
    )
    best = np.argmax(np.stack(four_sq, axis=-1), axis=-1)[..., None, None]
    row = np.take_along_axis(rows, best, axis=-2)[..., 0, :]
    quat = row / np.linalg.norm(row, axis=-1, keepdims=True)
    return np.where(quat[..., :1] < 0, -quat, quat)


def quat_wxyz_to_matrix(quat: np.ndarray) -> np.ndarray:
    """Quaternions (..., 4) [w, x, y, z] to rotation matrices (..., 3, 3)."""
    q = np.asarray(quat, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def intrinsics_from_fovy(width: int, height: int, fovy_deg: float) -> np.ndarray:
    """OpenCV K for square pixels and the principal point at the image centre."""
    fy = (height / 2.0) / np.tan(np.radians(fovy_deg) / 2.0)
    return np.array([[fy, 0.0, width / 2.0], [0.0, fy, height / 2.0], [0.0, 0.0, 1.0]])


def look_at_extrinsic_cv(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """World-to-camera (3, 4) matrix, OpenCV axes, for a camera at `eye` looking at `target`."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    cam_to_world = np.stack([right, down, forward], axis=1)  # columns are the camera axes
    rotation = cam_to_world.T
    return np.concatenate([rotation, (-rotation @ eye)[:, None]], axis=1)


def cam2world_gl_from_extrinsic_cv(extrinsic_cv: np.ndarray) -> np.ndarray:
    """(..., 3, 4) world-to-camera (OpenCV axes) to (..., 4, 4) camera-to-world (OpenGL axes)."""
    e = np.asarray(extrinsic_cv, dtype=np.float64)
    rotation, translation = e[..., :3, :3], e[..., :3, 3]
    out = np.zeros(e.shape[:-2] + (4, 4))
    out[..., :3, :3] = np.swapaxes(rotation, -1, -2)
    out[..., :3, 3] = -np.einsum("...ji,...j->...i", rotation, translation)
    out[..., 3, 3] = 1.0
    return out @ GL_TO_CV


def extrinsic_cv_from_cam2world_gl(cam2world_gl: np.ndarray) -> np.ndarray:
    """(..., 4, 4) camera-to-world (OpenGL axes) to (..., 3, 4) world-to-camera (OpenCV axes)."""
    m = np.asarray(cam2world_gl, dtype=np.float64) @ GL_TO_CV  # camera to world, OpenCV axes
    rotation = np.swapaxes(m[..., :3, :3], -1, -2)
    translation = -np.einsum("...ij,...j->...i", rotation, m[..., :3, 3])
    return np.concatenate([rotation, translation[..., None]], axis=-1)


def frame_pixels(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """Int pixel coordinates (column, row) of points (..., 2) given in [0, 1] of a frame,
    truncated as int(x * W), int(y * H): the pixels a drawn path's points land on."""
    return (np.asarray(xy, np.float64) * (width, height)).astype(np.int64)


def tcp_positions(endpose: np.ndarray, offset: float) -> np.ndarray:
    """Fingertip-centre positions (..., 3) of end poses (..., 7) [x, y, z, qw, qx, qy, qz]
    stored `offset` metres behind it along the pose's x axis (RoboTwin: 0.12)."""
    endpose = np.asarray(endpose, dtype=np.float64)
    if offset == 0:
        return endpose[..., :3].copy()
    return endpose[..., :3] + offset * quat_wxyz_to_matrix(endpose[..., 3:7])[..., :, 0]


def camera_position(extrinsic_cv: np.ndarray) -> np.ndarray:
    """World position (..., 3) of the camera centre."""
    e = np.asarray(extrinsic_cv, dtype=np.float64)
    return -np.einsum("...ji,...j->...i", e[..., :3, :3], e[..., :3, 3])


def project_points(points: np.ndarray, intrinsic_cv: np.ndarray, extrinsic_cv: np.ndarray):
    """Project world points (..., 3) to pixels.

    Returns (uv, depth): uv (..., 2) in pixels (u = column, v = row), depth (...,) along the
    optical axis. Points with depth <= 0 are behind the camera; their uv is meaningless.
    """
    p = np.asarray(points, dtype=np.float64)
    e = np.asarray(extrinsic_cv, dtype=np.float64)
    k = np.asarray(intrinsic_cv, dtype=np.float64)
    pc = np.einsum("...ij,...j->...i", e[..., :3, :3], p) + e[..., :3, 3]
    depth = pc[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x, y = pc[..., 0] / depth, pc[..., 1] / depth
    u = k[..., 0, 0] * x + k[..., 0, 1] * y + k[..., 0, 2]
    v = k[..., 1, 1] * y + k[..., 1, 2]
    return np.stack([u, v], axis=-1), depth
