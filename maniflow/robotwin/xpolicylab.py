"""RoboTwin's current layout ("xpolicylab"), as RoboTwin main writes it since 2026-08.

Collected (`scripts/collect_data.py`, writer `envs/utils/pkl2hdf5.py` create_xpolicylab_hdf5):

    {root}/{config}/{task}/{embodiment}/data/episode_{N:07d}.hdf5        (config before task)
    {root}/{config}/{task}/{embodiment}/instruction/episode_{N:07d}.json {"seen": [...], "unseen": [...]}
    {root}/{config}/{task}/{embodiment}/scene_info.json                  {"episode_{N}": {"info": {...}}}

Downloaded or converted (`scripts/download_xpolicylab_data.sh`, `process_data_xpolicylab.py`):
`{root}/{task}/aloha_agilex/data/...`, the config named by `conversion_meta.json`
(task_config) or by the download marker `.download_markers/{task}--{config}.complete`.

Inside a file (T recorded frames, n = T - 1 rows everywhere):

    attrs source_format ("RoboTwin"), source_path
    data_format_version          string, "v1.0"
    instructions                 JSON string of the seen phrases (converter: also an array of
                                 strings, plus a singular `instruction`)
    additional_info/frequency    int32: RoboTwin's save_freq (15), a physics-step decimation,
                                 NOT a rate in Hz (frames are 15 x 1/250 s = 60 ms apart)
    state/X = rows [:-1], action/X = rows [1:], float32, for X in
        {left,right}_arm_joint_states (n, J), {left,right}_ee_joint_states (n, 1),
        {left,right}_ee_poses (n, 7): the same endpose convention as 2.0
        (converter with --same-index-action: action/X = state/X)
    vision/{cam_head, cam_third_view, cam_left_wrist, cam_right_wrist}/
        colors (n,) JPEG bytes (frames [:-1]), shape (H, W, 3), intrinsic_matrix (n, 3, 3),
        extrinsics_matrix (n, 4, 4) (converter: extrinsic_matrix) = cam2world_gl, camera to
        world in OpenGL axes (extrinsic_cv padded to 4x4 when a recording lacked it), depths

The joint vector is [left arm, left gripper, right arm, right gripper], the fields present.
"""

from __future__ import annotations

import json
import os
import re
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np

from maniflow.geometry import cam2world_gl_from_extrinsic_cv, extrinsic_cv_from_cam2world_gl
from maniflow.robotwin.episode import (
    ARMS,
    DEFAULT_SAVE_FREQ,
    CameraMatrices,
    EpisodeArrays,
    EpisodeContents,
    EpisodeError,
    check_finite,
    encode_frames,
    first_bad_row,
    frame_rate,
)
from maniflow.robotwin.hdf5 import HDF5Episode
from maniflow.storage import temp_sibling

LAYOUT = "xpolicylab"
# Our camera names (RoboTwin 2.0's) and the current layout's, both ways.
CAMERA_NAMES = {"head": "cam_head", "front": "cam_third_view", "left": "cam_left_wrist", "right": "cam_right_wrist"}
FROM_VISION = {v: k for k, v in CAMERA_NAMES.items()}
DATA_FORMAT_VERSION = "v1.0"


class XKEYS:
    """HDF5 key names of the current (XPolicyLab) layout."""

    data_format_version = "data_format_version"
    instructions = "instructions"
    instruction = "instruction"  # the converter's single instruction
    frequency = "additional_info/frequency"

    @staticmethod
    def vision(camera: str, item: str) -> str:
        return f"vision/{CAMERA_NAMES[camera]}/{item}"

    EXTRINSICS = ("extrinsics_matrix", "extrinsic_matrix")  # the collector's name, the converter's

    @staticmethod
    def joint_fields(arm: str) -> tuple[str, str]:
        return f"{arm}_arm_joint_states", f"{arm}_ee_joint_states"

    @staticmethod
    def ee_poses(arm: str) -> str:
        return f"{arm}_ee_poses"


# The converter's source_path: {...}/{task}/{config}/data/episode{N}.hdf5 (stable 2.0's file).
SOURCE_PATH = re.compile(r"(?:^|/)(?P<task>[^/]+)/(?P<config>[^/]+)/data/episode_?(?P<index>\d+)\.hdf5$")


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class XPolicyLabEpisode(HDF5Episode):
    """An open episode file of the current layout, read into the same `EpisodeArrays` as a
    stable 2.0 file (`RoboTwinEpisode`) gives for the same recording."""

    layout = LAYOUT

    @property
    def cameras(self) -> list[str]:
        group = self._file.get("vision", {})
        return [FROM_VISION[name] for name in group if name in FROM_VISION]

    def frames_key(self, camera: str = "head") -> str:
        if camera not in CAMERA_NAMES:
            raise EpisodeError(self.path, "missing_key", f"no camera {camera!r}; this layout has "
                               f"{sorted(CAMERA_NAMES)}", f"vision/{camera}")
        return XKEYS.vision(camera, "colors")

    def num_frames(self, camera: str = "head") -> int:
        """Observation frames with an action: every stored frame (one fewer for same-index actions)."""
        return self.recorded_frames(camera) - (1 if self._same_index else 0)

    # -- joints and poses ----------------------------------------------------------------------
    def _joint_fields(self) -> list[str]:
        """The joint fields present, in the order of the joint vector."""
        names = [n for a in ARMS for n in XKEYS.joint_fields(a) if f"state/{n}" in self._file]
        if not names:
            raise EpisodeError(self.path, "missing_key", "no joint states in the file", "state/left_arm_joint_states")
        return names

    def _rows(self, group: str) -> dict[str, np.ndarray]:
        """Every per-row array of `state` or `action` the pipeline reads, by key."""
        rows = {f"{group}/{n}": self._float(f"{group}/{n}", None) for n in self._joint_fields()}
        rows.update({f"{group}/{XKEYS.ee_poses(a)}": self._float(f"{group}/{XKEYS.ee_poses(a)}", (7,))
                     for a in ARMS})
        return rows

    @cached_property
    def _state(self) -> dict[str, np.ndarray]:
        return self._rows("state")

    @cached_property
    def _action(self) -> dict[str, np.ndarray]:
        return self._rows("action")

    @cached_property
    def _same_index(self) -> bool:
        """action/X = state/X (RoboTwin's converter with --same-index-action): no next-frame action."""
        return all(np.array_equal(self._state[f"state/{n}"], self._action[f"action/{n}"]) for n in self._joint_fields())

    def source_episode(self) -> tuple[str, str, int] | None:
        """(task, config, episode number) of the stable 2.0 file RoboTwin's converter made this
        one from (attribute source_path), or None for a native collection."""
        m = SOURCE_PATH.search(_text(self._file.attrs.get("source_path", "")))
        return (m["task"], m["config"], int(m["index"])) if m else None

    # -- cameras -------------------------------------------------------------------------------
    def _extrinsics_key(self, camera: str) -> str:
        for name in XKEYS.EXTRINSICS:
            key = XKEYS.vision(camera, name)
            if key in self._file:
                return key
        return XKEYS.vision(camera, XKEYS.EXTRINSICS[0])  # missing: the error names the collector's key

    def camera_matrices(self, camera: str = "head") -> CameraMatrices:
        return self._camera(camera)[0]

    def _camera(self, camera: str) -> tuple[CameraMatrices, str]:
        """Read once per open file: validate and provenance both ask."""
        cache = self.__dict__.setdefault("_cameras", {})
        if camera not in cache:
            cache[camera] = self._read_camera(camera)
        return cache[camera]

    def _read_camera(self, camera: str) -> tuple[CameraMatrices, str]:
        """The camera's matrices and which extrinsic convention the 4x4 matrix follows.

        RoboTwin stores cam2world_gl, or pads extrinsic_cv to 4x4 when a recording lacks it;
        the two cannot be told apart by shape. The end effectors, which the head camera sees,
        decide: the padded extrinsic_cv is taken only where it puts most of them in front of
        the camera and cam2world_gl does not."""
        key = self._extrinsics_key(camera)
        k = self._float(XKEYS.vision(camera, "intrinsic_matrix"), (3, 3))
        m = self._float(key, (4, 4))
        frame = first_bad_row(np.abs(m[:, 3] - (0.0, 0.0, 0.0, 1.0)).max(axis=1) < 1e-6)
        if frame is not None:
            raise EpisodeError(self.path, "bad_camera", f"not a rigid transform: last row {m[frame, 3].tolist()}",
                               key, frame)
        as_gl = extrinsic_cv_from_cam2world_gl(m)
        positions = [self._state[f"state/{XKEYS.ee_poses(a)}"][:, :3] for a in ARMS]
        if all(len(p) == len(m) for p in positions):
            points = np.stack(positions, axis=1)  # (n, arms, 3)

            def in_front(e):
                depth = np.einsum("tj,tkj->tk", e[:, 2, :3], points) + e[:, 2, 3][:, None]
                return float((depth > 0).mean())
            if in_front(as_gl) < 0.5 < in_front(m[:, :3]):
                return CameraMatrices(k, m[:, :3].copy(), cam2world_gl_from_extrinsic_cv(m[:, :3])), "extrinsic_cv"
        return CameraMatrices(k, as_gl, m), "cam2world_gl"

    # -- provenance ----------------------------------------------------------------------------
    def _scalar_text(self, key: str) -> str | None:
        if key not in self._file:
            return None
        value = self._read(key, ())
        return _text(value.item() if isinstance(value, np.ndarray) else value)

    def provenance(self, camera: str = "head") -> dict:
        """Where the episode's conventions come from, the extrinsics those of `camera`."""
        source_format = self._file.attrs.get("source_format")
        source_format = None if source_format is None else _text(source_format)
        frequency = int(np.asarray(self._read(XKEYS.frequency, ()))) if XKEYS.frequency in self._file else None
        if frequency is None:
            fps, fps_from = frame_rate(DEFAULT_SAVE_FREQ), f"no {XKEYS.frequency}: RoboTwin's save_freq default " \
                                                           f"({DEFAULT_SAVE_FREQ} physics steps of 1/250 s)"
        elif source_format == "RoboTwin":
            fps, fps_from = frame_rate(frequency), f"{XKEYS.frequency} = {frequency} is RoboTwin's save_freq " \
                                                   f"({frequency} physics steps of 1/250 s), not Hz"
        else:
            fps, fps_from = float(frequency), f"{XKEYS.frequency} (Hz; source_format {source_format})"
        source = self.source_episode()
        return {"layout": LAYOUT, "source_format": source_format,
                "data_format_version": self._scalar_text(XKEYS.data_format_version),
                "frequency_field": frequency, "fps": round(fps, 4), "fps_from": fps_from,
                "action_alignment": "same_index (actions rebuilt from the next state)" if self._same_index
                else "next_frame", "extrinsics": self._camera(camera)[1],
                "converted_from": None if source is None else _text(self._file.attrs["source_path"])}

    def instructions_in_file(self) -> tuple[list[str], str]:
        """The file's own instructions: `instructions` (a JSON list, plain text or an array of
        strings), else the singular `instruction`. Returns (texts, key) ([] and "" if none)."""
        for key in (XKEYS.instructions, XKEYS.instruction):
            if key not in self._file:
                continue
            value = self._read(key, ()) if self._dataset(key).shape == () else self._read(key)
            if isinstance(value, np.ndarray) and value.ndim:
                texts = [_text(v) for v in value]
            else:
                text = _text(value.item() if isinstance(value, np.ndarray) else value)
                try:
                    parsed = json.loads(text)
                except ValueError:
                    parsed = text
                texts = [str(v) for v in parsed] if isinstance(parsed, list) else [str(parsed)]
            texts = [t for t in texts if t.strip()]
            if texts:
                return texts, key
        return [], ""

    # -- everything, checked -------------------------------------------------------------------
    def validate(self, camera: str = "head") -> EpisodeArrays:
        """Read and check what the pipeline uses (as `RoboTwinEpisode.validate`): every per-row
        array (state and action joints and poses, cameras) one row per stored frame, no NaN or
        inf, camera matrices that can be right."""
        colors = self.frames_key(camera)
        rows = self.recorded_frames(camera)
        state, action = self._state, self._action
        cams = self.camera_matrices(camera)
        extrinsics = self._extrinsics_key(camera)
        per_row = {**state, **action, XKEYS.vision(camera, "intrinsic_matrix"): cams.intrinsic_cv,
                   extrinsics: cams.cam2world_gl}
        self._check_lengths(per_row, rows, colors)
        n = rows - 1 if self._same_index else rows
        if n < 1:
            raise EpisodeError(self.path, "too_short", f"{rows} row(s); need at least one (state, action) pair",
                               colors)
        check_finite(self.path, per_row)
        frame0 = self.rgb(camera, 0, 1)[0]
        if XKEYS.vision(camera, "shape") in self._file:
            stored = tuple(int(v) for v in self._read(XKEYS.vision(camera, "shape")))
            if stored != frame0.shape:
                raise EpisodeError(self.path, "shape_mismatch", f"frames decode to {frame0.shape}, the file says "
                                   f"{stored}", XKEYS.vision(camera, "shape"), 0)
        self._check_camera(camera, cams, {"intrinsic_cv": XKEYS.vision(camera, "intrinsic_matrix"),
                                          "extrinsic_cv": extrinsics, "cam2world_gl": extrinsics},
                           compare_cam2world=False)
        joints = self._joint_fields()
        state_v = np.concatenate([state[f"state/{f}"] for f in joints], axis=1)
        action_v = np.concatenate([action[f"action/{f}"] for f in joints], axis=1)
        endpose, gripper = {}, {}
        for arm in ARMS:
            pose, grip = XKEYS.ee_poses(arm), XKEYS.joint_fields(arm)[1]
            # An arm without joints never works its gripper: open throughout.
            state_grip = state[f"state/{grip}"][:, 0] if f"state/{grip}" in state else np.ones(rows)
            action_grip = action[f"action/{grip}"][:, 0] if f"action/{grip}" in action else np.ones(rows)
            endpose[arm], gripper[arm] = state[f"state/{pose}"], state_grip
            if not self._same_index:  # then the last action row: the final recorded frame
                endpose[arm] = np.concatenate([endpose[arm], action[f"action/{pose}"][-1:]])
                gripper[arm] = np.concatenate([gripper[arm], action_grip[-1:]])
        if self._same_index:
            state_v, action_v = state_v[:-1], state_v[1:]
        return EpisodeArrays(n, state_v, action_v, endpose, gripper, cams.head(n))


# -- writing -----------------------------------------------------------------------------------

def write_xpolicylab_episode(path, ep: EpisodeContents, instructions: list[str], frequency: int = DEFAULT_SAVE_FREQ,
                             jpeg_quality: int = 95) -> None:
    """Write one recording in the current layout, as RoboTwin's collector does, atomically.

    Rows are the first T - 1 frames (state) and the last T - 1 (action), float32; frames and
    camera matrices of the first T - 1 frames; the instructions as one JSON string."""
    t = len(ep.vector)
    if t < 2:
        raise ValueError("at least two frames are needed for (state, action) pairs")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    text = h5py.string_dtype(encoding="utf-8")
    with h5py.File(tmp, "w") as f:
        f.attrs.update(ep.attrs)
        f.attrs["source_format"] = "RoboTwin"
        f.attrs.setdefault("source_path", "native_collection")
        f.create_dataset(XKEYS.data_format_version, data=DATA_FORMAT_VERSION, dtype=text)
        f.create_dataset(XKEYS.instructions, data=json.dumps([s for s in instructions if s] or [""]), dtype=text)
        f.create_dataset(XKEYS.frequency, data=np.asarray(frequency, np.int32))
        per_frame = {}
        for arm in ARMS:
            if arm in ep.arm_joints:
                joints, grip = XKEYS.joint_fields(arm)
                per_frame[joints] = ep.arm_joints[arm]
                per_frame[grip] = ep.joint_gripper[arm]
            per_frame[XKEYS.ee_poses(arm)] = ep.endpose[arm]
        for name, values in per_frame.items():
            values = np.asarray(values, np.float32)
            values = values[:, None] if values.ndim == 1 else values
            f.create_dataset(f"state/{name}", data=values[:-1])
            f.create_dataset(f"action/{name}", data=values[1:])
        for cam, frames in ep.rgb.items():
            jpegs = encode_frames(frames[:-1], jpeg_quality)
            f.create_dataset(XKEYS.vision(cam, "colors"), data=np.array(jpegs, dtype=f"S{max(map(len, jpegs))}"))
            f.create_dataset(XKEYS.vision(cam, "shape"), data=np.asarray(frames[0].shape, np.int32))
            matrices = ep.camera[cam]
            f.create_dataset(XKEYS.vision(cam, "intrinsic_matrix"), data=matrices.intrinsic_cv[:-1].astype(np.float32))
            f.create_dataset(XKEYS.vision(cam, XKEYS.EXTRINSICS[0]), data=matrices.cam2world_gl[:-1].astype(np.float32))
    os.replace(tmp, path)
