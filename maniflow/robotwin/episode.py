"""What every RoboTwin episode is, whichever layout stored it: names, errors and contents.

An episode is a recording of T frames. Both layouts turn it into the same (state, action)
pairs: the first T - 1 frames are observations, each with state = joint vector[t] and
action = joint vector[t + 1]; the last frame has no action. The end-effector poses of all T
frames are kept, so a ground-truth path can follow the motion to its end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

SINGLE_ARM_TASKS = (
    "beat_block_hammer",
    "click_bell",
    "move_can_pot",
    "open_microwave",
    "place_object_stand",
    "turn_switch",
)
ENVS = ("clean", "cluttered")
# The two environments of the experiment matrix and RoboTwin's config names for them;
# users make their own cluttered configs, so every entry point takes the mapping as a parameter.
# RoboTwin's demo_randomized sets cluttered_table, random_background, random_light and
# random_table_height: "cluttered" data differs from clean in more than the clutter.
DEFAULT_CONFIG_NAMES = {"clean": "demo_clean", "cluttered": "demo_randomized"}
CAMERAS = ("head", "front", "left", "right")
ARMS = ("left", "right")

# RoboTwin saves `endpose` as `Robot._trans_endpose(is_endpose=False)`: the position lies
# 0.12 m behind the gripper's centre point along the pose's own x axis (the approach axis),
# so the fingertip centre is position + 0.12 * R[:, 0]. Files written with the pose of the
# fingertip centre itself (ManiSkill's TCP) say so with the attribute TCP_OFFSET_ATTR.
ROBOTWIN_TCP_OFFSET = 0.12
TCP_OFFSET_ATTR = "tcp_offset_m"
# RoboTwin records a frame every `save_freq` physics steps of 1/250 s; its configs use 15.
PHYSICS_STEP_S = 1 / 250
DEFAULT_SAVE_FREQ = 15


class EpisodeError(Exception):
    """A bad episode: names the file, the HDF5 key and the frame where it went wrong.

    `kind` is one of: unreadable, missing_key, bad_frame, length_mismatch, non_finite,
    shape_mismatch, too_short, bad_camera, config_mismatch.
    """

    def __init__(self, path, kind: str, message: str, key: str | None = None, frame: int | None = None):
        self.path, self.kind, self.key, self.frame, self.message = str(path), kind, key, frame, message
        where = self.path + (f" [{key}]" if key else "") + (f" frame {frame}" if frame is not None else "")
        super().__init__(f"{where}: {kind}: {message}")

    def to_record(self) -> dict:
        return {"file": self.path, "kind": self.kind, "key": self.key, "frame": self.frame,
                "message": self.message}


@dataclass(frozen=True)
class CameraMatrices:
    intrinsic_cv: np.ndarray  # (n, 3, 3) OpenCV K
    extrinsic_cv: np.ndarray  # (n, 3, 4) world to camera, OpenCV axes
    cam2world_gl: np.ndarray  # (n, 4, 4) camera to world, OpenGL axes

    def head(self, n: int) -> CameraMatrices:
        """The matrices of the first n frames."""
        return CameraMatrices(self.intrinsic_cv[:n], self.extrinsic_cv[:n], self.cam2world_gl[:n])


@dataclass(frozen=True)
class EpisodeArrays:
    """The numeric contents of an episode as (state, action) pairs, checked.

    n = num_frames observation frames; the arm tracks hold n + 1 rows (the final recorded
    frame, which has no observation, included)."""

    num_frames: int
    state: np.ndarray  # (n, D) joint vector of frame t: 14 for aloha-agilex, 16 for a Franka pair
    action: np.ndarray  # (n, D) joint vector of frame t + 1
    endpose: dict[str, np.ndarray]  # arm -> (n + 1, 7) [x, y, z, qw, qx, qy, qz], RoboTwin's convention
    gripper: dict[str, np.ndarray]  # arm -> (n + 1,) 1 open, 0 closed
    camera: CameraMatrices  # the observed camera's matrices, n frames


@dataclass(frozen=True)
class Instructions:
    seen: list[str] = field(default_factory=list)
    unseen: list[str] = field(default_factory=list)
    source: str = "none"  # where they came from: a JSON file, the episode file, or none

    @property
    def default(self) -> str:
        """The instruction used when one text is needed (e.g. the VLM prompt)."""
        return (self.seen or self.unseen or [""])[0]


def frame_rate(save_freq: float) -> float:
    """Frames per second of RoboTwin data recorded every `save_freq` physics steps."""
    return 1.0 / (PHYSICS_STEP_S * save_freq)


def decode_jpeg(buffer, path="?", key="?", frame: int | None = None) -> np.ndarray:
    """One stored frame to an RGB uint8 (H, W, 3) array.

    Accepts fixed-length byte strings (numpy `S`), opaque (`V`) and variable-length uint8
    HDF5 elements. RoboTwin's writers pass RGB arrays to cv2.imencode (which takes them for
    BGR), so cv2.imdecode gives the RGB order back without a swap.
    """
    if isinstance(buffer, np.ndarray):
        data = buffer.astype(np.uint8, copy=False).ravel()
    else:  # bytes, numpy S/V scalars; h5py also returns text elements as bytes
        data = np.frombuffer(bytes(buffer), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise EpisodeError(path, "bad_frame", f"undecodable JPEG ({data.size} bytes)", key, frame)
    return image


def encode_frames(frames: np.ndarray, quality: int = 95) -> list[bytes]:
    """JPEG-encode RGB frames the way RoboTwin does: cv2.imencode on the RGB array as is
    (95 is cv2's default quality, which RoboTwin uses)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    out = []
    for f in frames:
        ok, buf = cv2.imencode(".jpg", f, params)
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        out.append(buf.tobytes())
    return out


def decode_frames(raw, path, key: str, start: int) -> np.ndarray:
    """Decoded frames (n, H, W, 3) of one camera; every frame must have the first one's size."""
    frames = [decode_jpeg(buf, path, key, start + i) for i, buf in enumerate(raw)]
    if not frames:
        return np.zeros((0, 0, 0, 3), np.uint8)
    shape = frames[0].shape
    for i, f in enumerate(frames):
        if f.shape != shape:
            raise EpisodeError(path, "bad_frame", f"frame is {f.shape[1]}x{f.shape[0]}, earlier frames are "
                               f"{shape[1]}x{shape[0]}", key, start + i)
    return np.stack(frames)


@dataclass
class EpisodeContents:
    """Everything a recording holds, per frame (T frames): what the writers of both layouts take."""

    rgb: dict[str, np.ndarray]  # camera -> (T, H, W, 3) uint8
    camera: dict[str, CameraMatrices]
    vector: np.ndarray  # (T, D)
    arm_joints: dict[str, np.ndarray]  # arm -> (T, J): the arm's slice of the vector
    joint_gripper: dict[str, np.ndarray]  # arm -> (T,)
    endpose: dict[str, np.ndarray]  # arm -> (T, 7) [x, y, z, qw, qx, qy, qz], both ARMS
    gripper: dict[str, np.ndarray]  # arm -> (T,) 1 open, 0 closed, both ARMS
    attrs: dict = field(default_factory=dict)


def busiest_arm(endpose: dict[str, np.ndarray], gripper: dict[str, np.ndarray]) -> str:
    """The arm that most likely does the task, when nothing says which: the one that works its
    gripper most, then the one whose end effector travels furthest (an idle arm may still move,
    e.g. out of the way or into view)."""
    def score(arm):
        return (float(np.abs(np.diff(gripper[arm])).sum()),
                float(np.linalg.norm(np.diff(endpose[arm][:, :3], axis=0), axis=1).sum()))
    return max(endpose, key=score)


def first_bad_row(ok: np.ndarray) -> int | None:
    """Index of the first False in a per-frame check, or None when all pass."""
    bad = ~np.asarray(ok, bool)
    return int(np.argmax(bad)) if bad.any() else None


def check_finite(path, arrays: dict[str, np.ndarray]) -> None:
    """NaN or inf anywhere is a located error (key, first frame)."""
    for key, arr in arrays.items():
        ok = np.isfinite(np.asarray(arr, np.float64).reshape(len(arr), -1)).all(axis=1)
        frame = first_bad_row(ok)
        if frame is not None:
            raise EpisodeError(path, "non_finite", f"NaN or inf in {int((~ok).sum())} frame(s), first shown",
                               key, frame)
