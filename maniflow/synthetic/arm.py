"""The synthetic robot: two 6-axis Cartesian arms with parallel grippers.

Joint model (documented so that predicting joints is predicting motion):
each arm has three prismatic joints and three revolute joints,

    joints = [x - bx, y - by, z - bz, roll, pitch, yaw]          (metres, radians)

where (bx, by, bz) is the arm's base, (x, y, z) the end-effector position in the world and
R = Rz(yaw) @ Ry(pitch) @ Rx(roll) @ GRIPPER_DOWN its orientation. The 14-d joint vector is
[left joints 6, left gripper, right joints 6, right gripper] with grippers 1 = open, 0 = closed,
exactly as RoboTwin orders `joint_action/vector`.

The end-effector point is the centre of the gripper's palm block. Gripper frame: z is the
approach direction (palm to fingertips), y the direction the fingers open along. Episode files
store poses in RoboTwin's convention instead (`robotwin_endpose`): x along the approach, the
position 0.12 m behind the fingertip centre, so the pipeline reads them as it reads RoboTwin's.

The drawn arm (base column, two links, wrist, palm, fingers) follows the end effector with
a two-link inverse kinematics used for looks only.
"""

from __future__ import annotations

import numpy as np

from maniflow.geometry import euler_to_matrix, matrix_to_euler, matrix_to_quat_wxyz, quat_wxyz_to_matrix, tcp_positions
from maniflow.robotwin import ROBOTWIN_TCP_OFFSET
from maniflow.synthetic.render import box_mesh

TABLE_Z = 0.74
ARM_BASES = {"left": np.array([-0.35, -0.38, TABLE_Z]), "right": np.array([0.35, -0.38, TABLE_Z])}
HOME = {"left": np.array([-0.26, -0.16, 0.98]), "right": np.array([0.26, -0.16, 0.98])}
# Gripper pointing down: gripper x = world y, gripper y = world x, gripper z = world -z.
GRIPPER_DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])

SHOULDER_HEIGHT = 0.30
LINK_LENGTHS = (0.42, 0.42)
WRIST_OFFSET = 0.10  # wrist joint above the palm, along -approach
PALM_SIZE = (0.034, 0.06, 0.03)  # gripper x, y, z
FINGER_SIZE = (0.016, 0.012, 0.05)
FINGER_MAX_GAP = 0.07  # distance between finger centres when fully open
FINGER_MIN_GAP = 0.018


def orientation(rpy: np.ndarray) -> np.ndarray:
    """Gripper orientation(s) in the world for joint angles rpy (..., 3)."""
    return euler_to_matrix(rpy) @ GRIPPER_DOWN


def joints_from_pose(arm: str, position: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """(..., 6) joints of one arm from end-effector positions (..., 3) and rotations (..., 3, 3)."""
    rpy = matrix_to_euler(rotation @ GRIPPER_DOWN.T)
    return np.concatenate([position - ARM_BASES[arm], rpy], axis=-1)


def pose_from_joints(arm: str, joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `joints_from_pose`: positions (..., 3) and rotations (..., 3, 3)."""
    joints = np.asarray(joints, dtype=np.float64)
    return joints[..., :3] + ARM_BASES[arm], orientation(joints[..., 3:6])


# Our gripper axes in RoboTwin's: x = approach (our z), y = finger spread (our y), z = x cross y.
TO_ROBOTWIN_AXES = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def fingertips(position: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """World position (..., 3) of the fingertip centre: where a path should lead the gripper."""
    return position + rotation[..., :, 2] * fingertip_offset()


def robotwin_endpose(position: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """The pose RoboTwin's collector would save (..., 7) [x, y, z, qw, qx, qy, qz]: its x axis
    along the approach and its position ROBOTWIN_TCP_OFFSET behind the fingertip centre."""
    r = rotation @ TO_ROBOTWIN_AXES
    return np.concatenate([fingertips(position, rotation) - ROBOTWIN_TCP_OFFSET * r[..., :, 0],
                           matrix_to_quat_wxyz(r)], axis=-1)


def pose_from_robotwin_endpose(endpose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `robotwin_endpose`: palm positions (..., 3) and rotations (..., 3, 3)."""
    rotation = quat_wxyz_to_matrix(endpose[..., 3:7]) @ TO_ROBOTWIN_AXES.T
    tips = tcp_positions(endpose, ROBOTWIN_TCP_OFFSET)
    return tips - rotation[..., :, 2] * fingertip_offset(), rotation


# -- drawing -----------------------------------------------------------------------------------

ARM_PART_NAMES = ("base", "upper", "fore", "wrist", "palm", "finger_a", "finger_b")
_LINK_WIDTH = 0.045


def arm_meshes():
    """Meshes of the drawn arm, in ARM_PART_NAMES order. Links are unit length along z and
    are scaled per frame through their pose (see `arm_part_poses`)."""
    return [
        box_mesh(0.09, 0.09, SHOULDER_HEIGHT),
        box_mesh(_LINK_WIDTH, _LINK_WIDTH, LINK_LENGTHS[0]),
        box_mesh(_LINK_WIDTH * 0.85, _LINK_WIDTH * 0.85, LINK_LENGTHS[1]),
        box_mesh(0.03, 0.03, WRIST_OFFSET - PALM_SIZE[2] / 2),
        box_mesh(*PALM_SIZE),
        box_mesh(*FINGER_SIZE),
        box_mesh(*FINGER_SIZE),
    ]


def _segment_pose(start: np.ndarray, end: np.ndarray):
    """Pose placing a z-aligned box centred between start and end."""
    axis = end - start
    z = axis / (np.linalg.norm(axis) + 1e-12)
    helper = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], axis=1), (start + end) / 2


def arm_part_poses(arm: str, position: np.ndarray, rotation: np.ndarray, gripper: float,
                   min_gap: float = 0.0):
    """World poses (R list, t list) of the drawn arm parts for one frame. `min_gap` keeps the
    fingers from closing through a held object."""
    approach = rotation[:, 2]
    spread = rotation[:, 1]
    base = ARM_BASES[arm]
    shoulder = base + np.array([0.0, 0.0, SHOULDER_HEIGHT])
    wrist = position - approach * WRIST_OFFSET
    # Two-link IK in the vertical plane through shoulder and wrist, elbow up.
    l1, l2 = LINK_LENGTHS
    d_vec = wrist - shoulder
    d = np.clip(np.linalg.norm(d_vec), 1e-6, l1 + l2 - 1e-6)
    u = d_vec / np.linalg.norm(d_vec)
    up = np.array([0.0, 0.0, 1.0]) - u * u[2]
    up = up / (np.linalg.norm(up) + 1e-12)
    cos_a = np.clip((l1 * l1 + d * d - l2 * l2) / (2 * l1 * d), -1.0, 1.0)
    elbow = shoulder + l1 * (cos_a * u + np.sqrt(1 - cos_a * cos_a) * up)
    forearm_end = elbow + l2 * (wrist - elbow) / (np.linalg.norm(wrist - elbow) + 1e-12)

    gap = FINGER_MIN_GAP + (FINGER_MAX_GAP - FINGER_MIN_GAP) * float(np.clip(gripper, 0, 1))
    gap = max(gap, min_gap)
    finger_centre = position + approach * (PALM_SIZE[2] / 2 + FINGER_SIZE[2] / 2)
    poses = [
        (np.eye(3), base + np.array([0.0, 0.0, SHOULDER_HEIGHT / 2])),
        _segment_pose(shoulder, elbow),
        _segment_pose(elbow, forearm_end),
        (rotation, position - approach * (WRIST_OFFSET + PALM_SIZE[2] / 2) / 2),
        (rotation, position),
        (rotation, finger_centre + spread * gap / 2),
        (rotation, finger_centre - spread * gap / 2),
    ]
    return [p[0] for p in poses], [p[1] for p in poses]


def fingertip_offset() -> float:
    """Distance from the end-effector point to the fingertips along the approach axis."""
    return PALM_SIZE[2] / 2 + FINGER_SIZE[2]
