"""RoboTwin 2.0's stable layout ("robotwin2"), as its collector (branch stable_2.0) writes it.

    {root}/{task}/{config}/data/episode{N}.hdf5
    {root}/{task}/{config}/instructions/episode{N}.json   {"seen": [...], "unseen": [...]}
    {root}/{task}/{config}/scene_info.json                {"episode_{N}": {"info": {"{a}": arm, ...}}}

HDF5 keys are listed in `KEYS` below; every array has one row per recorded frame (T). Frames
are JPEG bytes encoded by cv2 from an RGB array, so `cv2.imdecode` returns RGB directly. The
file has no frame rate: RoboTwin records every `save_freq` (15) physics steps of 1/250 s.
Every problem found while reading raises `EpisodeError` (file, key, frame).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from maniflow.robotwin.episode import (
    ARMS,
    DEFAULT_SAVE_FREQ,
    CameraMatrices,
    EpisodeArrays,
    EpisodeContents,
    EpisodeError,
    check_finite,
    encode_frames,
    frame_rate,
)
from maniflow.robotwin.hdf5 import HDF5Episode
from maniflow.storage import temp_sibling

LAYOUT = "robotwin2"


def _key(pattern: str):
    return staticmethod(pattern.format)


class KEYS:
    """HDF5 key names of the RoboTwin 2.0 episode format: KEYS.rgb("head"), KEYS.endpose("left")."""

    rgb = _key("observation/{}_camera/rgb")
    intrinsic_cv = _key("observation/{}_camera/intrinsic_cv")
    extrinsic_cv = _key("observation/{}_camera/extrinsic_cv")
    cam2world_gl = _key("observation/{}_camera/cam2world_gl")
    vector = "joint_action/vector"
    arm_joints = _key("joint_action/{}_arm")
    joint_gripper = _key("joint_action/{}_gripper")
    endpose = _key("endpose/{}_endpose")
    endpose_gripper = _key("endpose/{}_gripper")


class RoboTwinEpisode(HDF5Episode):
    """An open RoboTwin 2.0 episode file. Use as a context manager.

    >>> with RoboTwinEpisode(path) as ep:
    ...     arrays = ep.validate("head")
    ...     frames = ep.rgb("head", 0, arrays.num_frames)
    """

    layout = LAYOUT

    @property
    def cameras(self) -> list[str]:
        group = self._file.get("observation", {})
        return [name.removesuffix("_camera") for name in group if name.endswith("_camera")]

    def frames_key(self, camera: str = "head") -> str:
        return KEYS.rgb(camera)

    def num_frames(self, camera: str = "head") -> int:
        """Observation frames with an action: T - 1."""
        return max(self.recorded_frames(camera) - 1, 0)

    def joint_vector(self) -> np.ndarray:
        """(T, D): RoboTwin's (T, 14) [left arm 6, left gripper, right arm 6, right gripper], or
        another robot's joints and gripper (ManiSkill's Panda: 7 joints, gripper)."""
        return self._float(KEYS.vector, None)

    def endpose(self, arm: str) -> np.ndarray:
        """(T, 7) world pose [x, y, z, qw, qx, qy, qz]."""
        return self._float(KEYS.endpose(arm), (7,))

    def gripper(self, arm: str) -> np.ndarray:
        """(T,) gripper opening, 1 open and 0 closed."""
        return self._float(KEYS.endpose_gripper(arm), ())

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

    def provenance(self, camera: str = "head") -> dict:
        """Where the episode's conventions come from; `camera` (the one extracted) changes nothing
        here: every stable 2.0 camera stores extrinsic_cv and cam2world_gl alike."""
        return {"layout": LAYOUT, "source_format": "RoboTwin 2.0", "data_format_version": None,
                "frequency_field": None, "fps": round(frame_rate(DEFAULT_SAVE_FREQ), 4),
                "fps_from": f"RoboTwin's save_freq default ({DEFAULT_SAVE_FREQ} physics steps of 1/250 s); "
                            "the stable 2.0 layout stores no frame rate",
                "action_alignment": "next_frame", "extrinsics": "extrinsic_cv, checked against cam2world_gl"}

    def instructions_in_file(self) -> tuple[list[str], str]:
        return [], ""  # stable 2.0 keeps instructions only in instructions/episode{N}.json

    def validate(self, camera: str = "head") -> EpisodeArrays:
        """Read and check everything the pipeline uses except the JPEG bytes past frame 0
        (checked when decoded by `rgb`): keys present, one entry per frame everywhere, at
        least 2 frames, no NaN or inf, camera matrices that can be right."""
        t = self.recorded_frames(camera)
        vector = self.joint_vector()
        endpose = {a: self.endpose(a) for a in ARMS}
        gripper = {a: self.gripper(a) for a in ARMS}
        cams = self.camera_matrices(camera)
        keys = {n: getattr(KEYS, n)(camera) for n in ("intrinsic_cv", "extrinsic_cv", "cam2world_gl")}
        numeric = {
            KEYS.vector: vector,
            **{KEYS.endpose(a): endpose[a] for a in ARMS},
            **{KEYS.endpose_gripper(a): gripper[a] for a in ARMS},
            **{key: getattr(cams, n) for n, key in keys.items()},
        }
        self._check_lengths(numeric, t, KEYS.rgb(camera))
        if t < 2:
            raise EpisodeError(self.path, "too_short", f"{t} frame(s); need at least 2 "
                               "(action = next frame's joint vector)", KEYS.rgb(camera))
        check_finite(self.path, numeric)
        self._check_camera(camera, cams, keys, compare_cam2world=True)
        return EpisodeArrays(t - 1, vector[:-1], vector[1:], endpose, gripper, cams.head(t - 1))


# -- writing -----------------------------------------------------------------------------------

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
