"""RoboTwin 2.0 episodes: discovery, reading and validation.

Layout written by RoboTwin 2.0's collector:

    {root}/{task}/{config}/data/episode{N}.hdf5
    {root}/{task}/{config}/instructions/episode{N}.json   {"seen": [...], "unseen": [...]}
    {root}/{task}/{config}/scene_info.json

HDF5 keys are listed in `KEYS` below. Frames are JPEG bytes encoded by cv2 from an RGB array,
so `cv2.imdecode` returns RGB directly (no channel swap). Every problem found while reading
raises `EpisodeError`, which names the file, the key and (where there is one) the frame.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import h5py
import numpy as np

from maniflow.storage import temp_sibling

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
DEFAULT_CONFIG_NAMES = {"clean": "demo_clean", "cluttered": "demo_randomized"}
CAMERAS = ("head", "front", "left", "right")
ARMS = ("left", "right")


class KEYS:
    """HDF5 key names of the RoboTwin 2.0 episode format."""

    @staticmethod
    def rgb(camera: str) -> str:
        return f"observation/{camera}_camera/rgb"

    @staticmethod
    def intrinsic_cv(camera: str) -> str:
        return f"observation/{camera}_camera/intrinsic_cv"

    @staticmethod
    def extrinsic_cv(camera: str) -> str:
        return f"observation/{camera}_camera/extrinsic_cv"

    @staticmethod
    def cam2world_gl(camera: str) -> str:
        return f"observation/{camera}_camera/cam2world_gl"

    vector = "joint_action/vector"

    @staticmethod
    def arm_joints(arm: str) -> str:
        return f"joint_action/{arm}_arm"

    @staticmethod
    def joint_gripper(arm: str) -> str:
        return f"joint_action/{arm}_gripper"

    @staticmethod
    def endpose(arm: str) -> str:
        return f"endpose/{arm}_endpose"

    @staticmethod
    def endpose_gripper(arm: str) -> str:
        return f"endpose/{arm}_gripper"


class EpisodeError(Exception):
    """A bad episode: names the file, the HDF5 key and the frame where it went wrong.

    `kind` is one of: unreadable, missing_key, bad_frame, length_mismatch, non_finite,
    shape_mismatch, too_short.
    """

    def __init__(self, path, kind: str, message: str, key: str | None = None, frame: int | None = None):
        self.path, self.kind, self.key, self.frame, self.message = str(path), kind, key, frame, message
        where = self.path + (f" [{key}]" if key else "") + (f" frame {frame}" if frame is not None else "")
        super().__init__(f"{where}: {kind}: {message}")

    def to_record(self) -> dict:
        return {"file": self.path, "kind": self.kind, "key": self.key, "frame": self.frame,
                "message": self.message}


@dataclass(frozen=True, order=True)
class EpisodeRef:
    """Where one episode lives. Small and picklable, so it can travel to a Dask worker."""

    root: Path
    task: str
    config: str
    index: int

    @property
    def config_dir(self) -> Path:
        return Path(self.root) / self.task / self.config

    @property
    def path(self) -> Path:
        return self.config_dir / "data" / f"episode{self.index}.hdf5"

    @property
    def instructions_path(self) -> Path:
        return self.config_dir / "instructions" / f"episode{self.index}.json"

    def fingerprint(self) -> dict:
        """Size and modification time of the inputs: changes when an episode is rewritten."""
        out = {}
        for name, p in (("hdf5", self.path), ("instructions", self.instructions_path)):
            try:
                st = p.stat()
                out[name] = [st.st_size, st.st_mtime_ns]
            except FileNotFoundError:
                out[name] = None
        return out


_EPISODE_FILE = re.compile(r"^episode(\d+)\.hdf5$")


def discover_episodes(root, tasks=None, configs=None) -> list[EpisodeRef]:
    """All episodes under `root`, sorted by (task, config, episode number)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"RoboTwin data directory not found: {root}")
    refs = []
    for data_dir in root.glob("*/*/data"):
        task, config = data_dir.parent.parent.name, data_dir.parent.name
        if (tasks and task not in tasks) or (configs and config not in configs):
            continue
        for f in data_dir.iterdir():
            m = _EPISODE_FILE.match(f.name)
            if m:
                refs.append(EpisodeRef(root, task, config, int(m.group(1))))
    return sorted(refs)


@dataclass(frozen=True)
class Instructions:
    seen: list[str] = field(default_factory=list)
    unseen: list[str] = field(default_factory=list)

    @property
    def default(self) -> str:
        """The instruction used when one text is needed (e.g. the VLM prompt)."""
        return (self.seen or self.unseen or [""])[0]


def read_instructions(ref: EpisodeRef) -> Instructions:
    """The episode's language instructions; empty if the file is missing."""
    p = ref.instructions_path
    if not p.exists():
        return Instructions()
    try:
        raw = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise EpisodeError(p, "unreadable", f"instructions are not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise EpisodeError(p, "unreadable", "instructions must be a JSON object with 'seen'/'unseen'")
    return Instructions(seen=[str(s) for s in raw.get("seen", [])],
                        unseen=[str(s) for s in raw.get("unseen", [])])


def decode_jpeg(buffer, path="?", key="?", frame: int | None = None) -> np.ndarray:
    """One stored frame to an RGB uint8 (H, W, 3) array.

    Accepts fixed-length byte strings (numpy `S`), opaque (`V`) and variable-length uint8
    HDF5 elements. cv2 wrote the bytes from an RGB array, so cv2 decodes them back to RGB.
    """
    if isinstance(buffer, np.ndarray):
        data = buffer.astype(np.uint8, copy=False).ravel()
    else:  # bytes, numpy S/V scalars; h5py also returns text elements as bytes
        data = np.frombuffer(bytes(buffer), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise EpisodeError(path, "bad_frame", f"undecodable JPEG ({data.size} bytes)", key, frame)
    return image


@dataclass(frozen=True)
class CameraMatrices:
    intrinsic_cv: np.ndarray  # (T, 3, 3)
    extrinsic_cv: np.ndarray  # (T, 3, 4)
    cam2world_gl: np.ndarray  # (T, 4, 4)


@dataclass(frozen=True)
class EpisodeArrays:
    """The numeric contents of an episode, checked for length and finiteness."""

    num_frames: int
    vector: np.ndarray  # (T, D): 14 for RoboTwin's two arms
    endpose: dict[str, np.ndarray]  # arm -> (T, 7)
    gripper: dict[str, np.ndarray]  # arm -> (T,)
    camera: CameraMatrices


class RoboTwinEpisode:
    """An open RoboTwin 2.0 episode file. Use as a context manager.

    >>> with RoboTwinEpisode(path) as ep:
    ...     ep.validate("head")
    ...     frames = ep.rgb("head", 0, 64)
    """

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except (OSError, ValueError) as e:
            raise EpisodeError(self.path, "unreadable", f"cannot open HDF5 file ({e})") from e

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._file.close()

    # -- low level ---------------------------------------------------------------------------
    def _dataset(self, key: str) -> h5py.Dataset:
        try:
            ds = self._file[key]
        except KeyError:
            raise EpisodeError(self.path, "missing_key", "key not found in file", key) from None
        except (OSError, RuntimeError) as e:
            raise EpisodeError(self.path, "unreadable", f"cannot read ({e})", key) from e
        if not isinstance(ds, h5py.Dataset):
            raise EpisodeError(self.path, "missing_key", "expected a dataset, found a group", key)
        return ds

    def _read(self, key: str, sel=slice(None)) -> np.ndarray:
        ds = self._dataset(key)
        try:
            return ds[sel]
        except (OSError, RuntimeError, ValueError) as e:
            raise EpisodeError(self.path, "unreadable", f"cannot read data ({e})", key) from e

    def _float(self, key: str, shape_tail: tuple | None) -> np.ndarray:
        """A numeric (T, *shape_tail) array; shape_tail None: any (T, D) with D >= 1."""
        arr = np.asarray(self._read(key))
        ok = arr.shape[1:] == shape_tail if shape_tail is not None else arr.ndim == 2 and arr.shape[1] >= 1
        if not ok or not np.issubdtype(arr.dtype, np.number):
            expected = ", ".join(map(str, shape_tail)) if shape_tail is not None else "D"
            raise EpisodeError(self.path, "shape_mismatch",
                               f"expected (T, {expected}) numbers, found {arr.shape} {arr.dtype}", key)
        return arr

    # -- contents ----------------------------------------------------------------------------
    @property
    def cameras(self) -> list[str]:
        group = self._file.get("observation", {})
        return [name.removesuffix("_camera") for name in group if name.endswith("_camera")]

    @property
    def attrs(self) -> dict:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in self._file.attrs.items()}

    def num_frames(self, camera: str = "head") -> int:
        return int(self._dataset(KEYS.rgb(camera)).shape[0])

    def rgb(self, camera: str = "head", start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames [start, stop) of a camera as RGB uint8 (n, H, W, 3)."""
        key = KEYS.rgb(camera)
        raw = self._read(key, slice(start, stop))
        frames = [decode_jpeg(buf, self.path, key, start + i) for i, buf in enumerate(raw)]
        if not frames:
            return np.zeros((0, 0, 0, 3), np.uint8)
        shape = frames[0].shape
        for i, f in enumerate(frames):
            if f.shape != shape:
                raise EpisodeError(self.path, "bad_frame",
                                   f"frame is {f.shape[1]}x{f.shape[0]}, earlier frames are "
                                   f"{shape[1]}x{shape[0]}", key, start + i)
        return np.stack(frames)

    def joint_vector(self) -> np.ndarray:
        """(T, D): RoboTwin's (T, 14) [left arm 6, left gripper, right arm 6, right gripper], or
        another robot's joints and gripper (ManiSkill's Panda: 7 joints, gripper)."""
        return self._float(KEYS.vector, None).astype(np.float64)

    def endpose(self, arm: str) -> np.ndarray:
        """(T, 7) world pose [x, y, z, qw, qx, qy, qz]."""
        return self._float(KEYS.endpose(arm), (7,)).astype(np.float64)

    def gripper(self, arm: str) -> np.ndarray:
        """(T,) gripper opening, 1 open and 0 closed."""
        return self._float(KEYS.endpose_gripper(arm), ()).astype(np.float64)

    def camera_matrices(self, camera: str = "head") -> CameraMatrices:
        return CameraMatrices(
            intrinsic_cv=self._float(KEYS.intrinsic_cv(camera), (3, 3)),
            extrinsic_cv=self._float(KEYS.extrinsic_cv(camera), (3, 4)),
            cam2world_gl=self._float(KEYS.cam2world_gl(camera), (4, 4)),
        )

    def state_action(self) -> tuple[np.ndarray, np.ndarray]:
        """Policy pairs as RoboTwin defines them: state = vector[t], action = vector[t+1].

        The last frame has no action and is dropped: both arrays are (T-1, D).
        """
        vector = self.joint_vector()
        return vector[:-1], vector[1:]

    def validate(self, camera: str = "head") -> EpisodeArrays:
        """Read and check everything the pipeline uses except the JPEG bytes (checked when
        decoded by `rgb`): keys present, one entry per frame everywhere, at least 2 frames,
        no NaN or inf."""
        t = self.num_frames(camera)
        arrays = EpisodeArrays(t, self.joint_vector(), {a: self.endpose(a) for a in ARMS},
                               {a: self.gripper(a) for a in ARMS}, self.camera_matrices(camera))
        numeric = {
            KEYS.vector: arrays.vector,
            **{KEYS.endpose(a): arrays.endpose[a] for a in ARMS},
            **{KEYS.endpose_gripper(a): arrays.gripper[a] for a in ARMS},
            **{getattr(KEYS, n)(camera): getattr(arrays.camera, n)
               for n in ("intrinsic_cv", "extrinsic_cv", "cam2world_gl")},
        }
        for key, arr in numeric.items():
            if len(arr) != t:
                raise EpisodeError(self.path, "length_mismatch",
                                   f"{len(arr)} entries but {KEYS.rgb(camera)} has {t} frames", key,
                                   frame=min(len(arr), t))
        if t < 2:
            raise EpisodeError(self.path, "too_short", f"{t} frame(s); need at least 2 "
                               "(action = next frame's joint vector)", KEYS.rgb(camera))
        for key, arr in numeric.items():
            bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
            if bad.any():
                first = int(np.argmax(bad))
                raise EpisodeError(self.path, "non_finite",
                                   f"NaN or inf in {int(bad.sum())} frame(s), first shown", key, first)
        return arrays


# -- writing -----------------------------------------------------------------------------------

def encode_frames(frames: np.ndarray, quality: int) -> list[bytes]:
    """JPEG-encode RGB frames the way RoboTwin does: cv2.imencode on the RGB array as is.

    cv2 treats the array as BGR, so other decoders (PIL) show red and blue swapped, while
    cv2.imdecode returns the original RGB order.
    """
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    out = []
    for f in frames:
        ok, buf = cv2.imencode(".jpg", f, params)
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        out.append(buf.tobytes())
    return out


@dataclass
class EpisodeContents:
    """Everything an episode file holds, per frame (T frames)."""

    rgb: dict[str, np.ndarray]  # camera -> (T, H, W, 3) uint8
    camera: dict[str, CameraMatrices]
    vector: np.ndarray  # (T, D)
    arm_joints: dict[str, np.ndarray]  # arm -> (T, J): the arm's slice of the vector
    joint_gripper: dict[str, np.ndarray]  # arm -> (T,)
    endpose: dict[str, np.ndarray]  # arm -> (T, 7) [x, y, z, qw, qx, qy, qz], both ARMS
    gripper: dict[str, np.ndarray]  # arm -> (T,) 1 open, 0 closed, both ARMS
    attrs: dict = field(default_factory=dict)


def write_robotwin_episode(path, ep: EpisodeContents, jpeg_quality: int = 95, frame_storage: str = "fixed") -> None:
    """Write one episode file in RoboTwin 2.0's layout, atomically (temporary file, then rename).

    frame_storage: "fixed" (numpy S strings, as RoboTwin writes) or "vlen" (variable-length uint8).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    t = len(ep.vector)
    with h5py.File(tmp, "w") as f:
        f.attrs.update(ep.attrs)
        for cam, frames in ep.rgb.items():
            jpegs = encode_frames(frames, jpeg_quality)
            if frame_storage == "fixed":
                f.create_dataset(KEYS.rgb(cam), data=np.array(jpegs, dtype=f"S{max(len(b) for b in jpegs)}"))
            else:
                ds = f.create_dataset(KEYS.rgb(cam), (t,), dtype=h5py.vlen_dtype(np.uint8))
                for i, b in enumerate(jpegs):
                    ds[i] = np.frombuffer(b, np.uint8)
            m = ep.camera[cam]
            f[KEYS.intrinsic_cv(cam)] = m.intrinsic_cv.astype(np.float32)
            f[KEYS.extrinsic_cv(cam)] = m.extrinsic_cv.astype(np.float32)
            f[KEYS.cam2world_gl(cam)] = m.cam2world_gl.astype(np.float32)
        for a in ep.arm_joints:
            f[KEYS.arm_joints(a)] = ep.arm_joints[a]
            f[KEYS.joint_gripper(a)] = ep.joint_gripper[a]
        for a in ARMS:
            f[KEYS.endpose(a)] = ep.endpose[a]
            f[KEYS.endpose_gripper(a)] = ep.gripper[a]
        f[KEYS.vector] = ep.vector
    os.replace(tmp, path)
