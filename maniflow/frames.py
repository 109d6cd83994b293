"""Frames store: the episodes of one (env, task), decoded once, in Zarr.

    {work}/frames/{env}/{task}.zarr          (head camera; other cameras: {task}@{camera}.zarr)
      data/rgb           (N, H, W, 3) uint8   native resolution, one chunk per frame
      data/state         (N, D) float64       joint vector of frame t (D from the data: 14 for RoboTwin)
      data/action        (N, D) float64       joint vector of frame t+1
      data/{left,right}_endpose (N, 7), data/{left,right}_endpose_next (N, 7)
                                              end pose of frame t and t+1 [x, y, z, qw, qx, qy, qz],
                                              RoboTwin's convention (see tcp_offset)
      data/{left,right}_gripper (N,), data/{left,right}_gripper_next (N,)   1 open, 0 closed
      data/intrinsic_cv (N, 3, 3), data/extrinsic_cv (N, 3, 4), data/cam2world_gl (N, 4, 4)
      meta/episode_ends  (E,) int64           cumulative frame counts (ReplayBuffer style)
      meta/episode_index (E,) int64           source episode numbers
      attrs: format, complete, task, env, config, camera, source root, provenance (layouts, data
             format versions, embodiment, frame rate, where instructions and arms came from),
             per-episode records, quarantine, code version

Every row is a (state, action) pair, as both RoboTwin layouts define it: an episode of T recorded
frames gives T - 1 rows (the last frame has no action; the current layout does not even store
its image). Its end pose is kept as the last row's `*_next`, so the oracle sees the motion to
its end (`FramesStore.arm_track`). An episode stored in either layout extracts to the same rows.

Extraction is per episode into a part, `{task}.parts/episode{N}.part/` (rgb/ as a Zarr array,
arrays.npz with the small arrays, record.json), written under a temporary name and renamed
when complete. The parts are then assembled into the store, which is also renamed into place
only when complete. A rerun reuses every part whose source file is unchanged; assembly links
the frame chunk files of the parts instead of copying them. Bad episodes (unreadable, missing
keys, wrong lengths, NaN, cameras that cannot be right) are quarantined with a located error.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numcodecs
import numpy as np
import zarr

from maniflow.robotwin import (
    ARMS,
    EpisodeArrays,
    EpisodeError,
    EpisodeRef,
    SourceOptions,
    read_instructions,
    scene_info_arm,
    scene_info_number,
    select_episodes,
)
from maniflow.robotwin.episode import busiest_arm
from maniflow.storage import append_frames, code_version, remove_stale_temps, replace_dir, temp_sibling, write_json
from maniflow.workspace import Workspace

FORMAT = "maniflow.frames"
FORMAT_VERSION = 2  # 2: rows are (state, action) pairs of either layout, end poses to the end, provenance
# Blosc-zstd level 1: measured on decoded JPEG frames (benchmarks/bench_extract.py), level 3
# saves ~13% of bytes for ~3x the encoding time; shuffle does nothing for uint8.
RGB_COMPRESSOR = numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.NOSHUFFLE)
SMALL_COMPRESSOR = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)
DECODE_BATCH = 32  # frames decoded at a time: bounds memory whatever the episode length
ARM_ARRAYS = tuple(f"{a}_{what}" for a in ARMS for what in ("endpose", "gripper"))  # of frame t; "_next": t + 1
SMALL_ARRAYS = ("state", "action", *ARM_ARRAYS, *(f"{name}_next" for name in ARM_ARRAYS),
                "intrinsic_cv", "extrinsic_cv", "cam2world_gl")


class IncompleteStoreError(Exception):
    """A store that is missing, of another kind, or was not finished."""


def parts_dir(store_path: Path) -> Path:
    return Path(store_path).with_suffix(".parts")


def part_path(store_path: Path, index: int) -> Path:
    return parts_dir(store_path) / f"episode{index}.part"


def quarantine_path(store_path: Path, index: int) -> Path:
    return parts_dir(store_path) / f"episode{index}.quarantine.json"


# -- one episode -------------------------------------------------------------------------------

def _small_arrays(arrays: EpisodeArrays) -> dict[str, np.ndarray]:
    n = arrays.num_frames
    tracks = {f"{a}_endpose": arrays.endpose[a] for a in ARMS} | {f"{a}_gripper": arrays.gripper[a] for a in ARMS}
    return {
        "state": arrays.state, "action": arrays.action,
        **{name: track[:n] for name, track in tracks.items()},
        **{f"{name}_next": track[1:n + 1] for name, track in tracks.items()},
        "intrinsic_cv": arrays.camera.intrinsic_cv, "extrinsic_cv": arrays.camera.extrinsic_cv,
        "cam2world_gl": arrays.camera.cam2world_gl,
    }


def _whole(values: np.ndarray) -> tuple:
    """One chunk for a small array (zarr needs chunk sizes >= 1)."""
    return tuple(max(1, n) for n in values.shape)


def extract_episode(ref: EpisodeRef, destination: Path, camera: str = "head",
                    tcp_offset: float | None = None) -> dict:
    """Decode one episode into a part at `destination`; return its record.

    tcp_offset: metres from the stored end pose to the fingertip centre (None: the file's own
    convention, RoboTwin's 0.12 unless the file says otherwise). Raises EpisodeError (file, key,
    frame) for bad input; nothing is left at `destination` unless the whole episode was written.
    """
    fingerprint = ref.fingerprint()  # before reading: a file rewritten meanwhile looks changed
    tmp = temp_sibling(destination)
    try:
        with ref.open() as ep:
            arrays = ep.validate(camera)
            t = arrays.num_frames
            tmp.mkdir(parents=True)
            rgb = None
            for start in range(0, t, DECODE_BATCH):
                frames = ep.rgb(camera, start, min(start + DECODE_BATCH, t))
                if rgb is None:
                    rgb = zarr.create_array(tmp / "rgb", shape=(t, *frames.shape[1:]),
                                            chunks=(1, *frames.shape[1:]), dtype=np.uint8,
                                            compressors=RGB_COMPRESSOR, zarr_format=2)
                elif frames.shape[1:] != rgb.shape[1:]:
                    raise EpisodeError(ref.path, "bad_frame", f"frame size {frames.shape[1:]} differs "
                                       f"from frame 0's {rgb.shape[1:]}", ep.frames_key(camera), start)
                rgb[start:start + len(frames)] = frames
            np.savez(tmp / "arrays.npz", **_small_arrays(arrays))
            instructions = read_instructions(ref, ep)
            source = ep.source_episode()  # a converted file: the stable 2.0 file it came from
            if source and source[1] != ref.config:
                raise EpisodeError(ref.path, "config_mismatch", f"converted from config {source[1]!r}, but its "
                                   f"folder is read as config {ref.config!r}: RoboTwin's converter put episodes of "
                                   "two configs in one folder; convert each config into its own output root",
                                   "attrs/source_path")
            scene_number = scene_info_number(ref, ep)
            arm, arm_note = scene_info_arm(ref, scene_number)
            arm_from = "scene_info.json"
            if arm is None:
                arm, arm_from = busiest_arm(arrays.endpose, arrays.gripper), "heuristic"
            offset, offset_from = ep.tcp_offset() if tcp_offset is None else (float(tcp_offset), "set by the user")
            record = {
                "episode": ref.index, "file": str(ref.path), "fingerprint": fingerprint,
                "frames_key": ep.frames_key(camera), "frames": t, "height": int(rgb.shape[1]),
                "width": int(rgb.shape[2]), "joint_dim": int(arrays.state.shape[1]),
                "camera": camera, "format_version": FORMAT_VERSION, "tcp_offset_override": tcp_offset,
                "layout": ref.layout, "embodiment": ref.embodiment, "config": ref.config,
                "config_from": ref.config_from,
                "provenance": ep.provenance(camera),
                "instructions": {"seen": instructions.seen, "unseen": instructions.unseen, "from": instructions.source},
                "arm": arm, "arm_from": arm_from, "arm_note": arm_note, "scene_info_episode": scene_number,
                "tcp_offset": offset, "tcp_offset_from": offset_from,
                "synthetic": bool(ep.attrs.get("synthetic", False)),
            }
            (tmp / "record.json").write_text(json.dumps(record))
        replace_dir(tmp, destination)
        return record
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads((path / "record.json").read_text())
    except (OSError, ValueError):
        return None


def _part_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path / "arrays.npz", allow_pickle=False) as npz:
        return {name: npz[name] for name in SMALL_ARRAYS}


def _part_is_current(record: dict | None, ref: EpisodeRef, fingerprint: dict, camera: str,
                     tcp_offset: float | None) -> bool:
    """A part is reused while its file, camera, settings, format and the recorded arm stand."""
    if not record:
        return False
    arm = scene_info_arm(ref, record.get("scene_info_episode"))[0]
    same_arm = (record.get("arm_from"), record.get("arm") if arm else None) == \
        ("heuristic" if arm is None else "scene_info.json", arm)
    return record.get("fingerprint") == fingerprint and record.get("camera") == camera and same_arm \
        and record.get("format_version") == FORMAT_VERSION and record.get("tcp_offset_override") == tcp_offset


def process_episode(ref: EpisodeRef, store_path: Path, camera: str = "head",
                    retry_quarantined: bool = False, tcp_offset: float | None = None) -> dict:
    """The unit of work a worker runs: reuse, extract or quarantine one episode.

    Returns {"status": "reused" | "extracted" | "quarantined", "episode": N, ...}. Bad input
    never raises: its error is written to the quarantine record and returned.
    """
    fingerprint = ref.fingerprint()
    part = part_path(store_path, ref.index)
    record = _read_record(part) if part.exists() else None
    if _part_is_current(record, ref, fingerprint, camera, tcp_offset):
        return {"status": "reused", "episode": ref.index, "frames": record["frames"]}
    qpath = quarantine_path(store_path, ref.index)
    if qpath.exists() and not retry_quarantined:
        previous = json.loads(qpath.read_text())
        if (previous.get("fingerprint"), previous.get("camera"), previous.get("format_version")) == \
                (fingerprint, camera, FORMAT_VERSION):  # a newer reader may judge the file otherwise
            return {"status": "quarantined", "episode": ref.index, "error": previous["error"]}
    parts_dir(store_path).mkdir(parents=True, exist_ok=True)
    try:
        record = extract_episode(ref, part, camera, tcp_offset)
    except EpisodeError as e:
        shutil.rmtree(part, ignore_errors=True)  # an older part of a now-broken file is stale
        write_json(qpath, {"fingerprint": fingerprint, "camera": camera, "format_version": FORMAT_VERSION,
                           "error": e.to_record()})
        return {"status": "quarantined", "episode": ref.index, "error": e.to_record()}
    qpath.unlink(missing_ok=True)
    return {"status": "extracted", "episode": ref.index, "frames": record["frames"]}


# -- assembly ----------------------------------------------------------------------------------

def assemble_frames_store(store_path: Path, refs: list[EpisodeRef], env: str, config: str,
                          camera: str = "head", link: bool = True) -> dict:
    """Build the store from the parts of `refs` (those without a good part are quarantined)."""
    store_path = Path(store_path)
    records, quarantine = [], []
    for ref in sorted(refs, key=lambda r: r.index):
        record = _read_record(part_path(store_path, ref.index))
        if record is None:
            q = quarantine_path(store_path, ref.index)
            error = json.loads(q.read_text())["error"] if q.exists() else \
                {"file": str(ref.path), "kind": "missing", "message": "not extracted"}
            quarantine.append({"episode": ref.index, **error})
            continue
        if records and (record["height"], record["width"]) != (records[0]["height"], records[0]["width"]):
            quarantine.append({"episode": ref.index, "file": record["file"], "kind": "shape_mismatch",
                               "key": record["frames_key"], "frame": 0,
                               "message": f"{record['width']}x{record['height']} frames, but episode "
                                          f"{records[0]['episode']} has {records[0]['width']}x{records[0]['height']}"})
            continue
        records.append(record)

    tmp = temp_sibling(store_path)
    try:
        root = zarr.open_group(tmp, mode="w", zarr_format=2)
        lengths = np.array([r["frames"] for r in records], dtype=np.int64)
        total = int(lengths.sum())
        parts = [_part_arrays(part_path(store_path, r["episode"])) for r in records]
        for name in SMALL_ARRAYS:
            values = np.concatenate([p[name] for p in parts]) if parts else np.zeros((0,))
            root.create_array(f"data/{name}", data=values, chunks=_whole(values),
                              compressors=SMALL_COMPRESSOR)
        if records:
            h, w = records[0]["height"], records[0]["width"]
            rgb = root.create_array("data/rgb", shape=(total, h, w, 3), chunks=(1, h, w, 3),
                                    dtype=np.uint8, compressors=RGB_COMPRESSOR)
            offset = 0
            for record in records:
                append_frames(part_path(store_path, record["episode"]) / "rgb", rgb, tmp / "data" / "rgb",
                              offset, link)
                offset += record["frames"]
        ends = np.cumsum(lengths)
        index = np.array([r["episode"] for r in records], np.int64)
        root.create_array("meta/episode_ends", data=ends, chunks=_whole(ends))
        root.create_array("meta/episode_index", data=index, chunks=_whole(index))
        root.attrs.update({
            "format": FORMAT, "format_version": FORMAT_VERSION, "env": env, "config": config,
            "task": refs[0].task if refs else None, "camera": camera,
            "source_root": str(refs[0].root) if refs else None,
            "synthetic": bool(records) and all(r["synthetic"] for r in records),
            "layout": sorted({r["layout"] for r in records}), "embodiment": sorted({r["embodiment"] for r in records}),
            "provenance": summarize_provenance(records),
            "state_action": "every row is a pair: state[t] = joint vector[t], action[t] = joint vector[t+1]; "
                            "each recording's last frame (no action) has no row, its end pose is the last "
                            "row's *_next",
            "episodes": records, "quarantine": quarantine, "code_version": code_version(),
            "parts_signature": parts_signature(store_path, refs),
            "complete": True,  # written last: only a finished store carries it
        })
        replace_dir(tmp, store_path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {"episodes": len(records), "frames": int(lengths.sum()), "quarantine": quarantine}


# -- one task ----------------------------------------------------------------------------------

@dataclass
class ExtractReport:
    store: Path
    task: str
    env: str
    statuses: list[dict] = field(default_factory=list)
    frames: int = 0
    assembled: bool = False

    def count(self, status: str) -> int:
        return sum(s["status"] == status for s in self.statuses)

    @property
    def quarantined(self) -> list[dict]:
        return [s for s in self.statuses if s["status"] == "quarantined"]

    def summary(self) -> str:
        text = (f"{self.env}/{self.task}: {len(self.statuses)} episodes "
                f"({self.count('extracted')} extracted, {self.count('reused')} reused, "
                f"{self.count('quarantined')} quarantined), {self.frames} frames -> {self.store}"
                f"{'' if self.assembled else ' (up to date)'}")
        for q in self.quarantined:
            e = q["error"]
            text += f"\n  quarantined episode{q['episode']}: {e['kind']} {e.get('key') or ''}" \
                    f"{'' if e.get('frame') is None else ' frame ' + str(e['frame'])}: {e['message']}"
        return text


def summarize_provenance(records: list[dict]) -> dict:
    """Where a store's episodes came from, counted over its episodes (for reports)."""
    def count(values) -> dict:
        return dict(sorted(Counter(str(v) for v in values).items()))

    return {
        "layouts": count(r["layout"] for r in records),
        "data_format_versions": count(r["provenance"]["data_format_version"] or "none" for r in records),
        "embodiments": count(r["embodiment"] or "not recorded" for r in records),
        "configs": count(f"{r['config']} (from {r['config_from']})" for r in records),
        "fps": count(r["provenance"]["fps"] for r in records),
        "fps_from": count(r["provenance"]["fps_from"] for r in records),
        "action_alignment": count(r["provenance"]["action_alignment"] for r in records),
        "instructions_from": count(r["instructions"]["from"] for r in records),
        "arm_from": count(r["arm_from"] for r in records),
        "tcp_offset_m": count(f"{r['tcp_offset']} ({r['tcp_offset_from']})" for r in records),
        "joint_dim": count(r["joint_dim"] for r in records),
    }


def parts_signature(store_path: Path, refs: list[EpisodeRef]) -> list:
    """What an assembly is made of: each episode with a digest of its part's record (or None)."""
    out = []
    for ref in sorted(refs, key=lambda r: r.index):
        path = part_path(store_path, ref.index) / "record.json"
        out.append([ref.index, hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else None])
    return out


def _store_is_current(store_path: Path, refs: list[EpisodeRef], camera: str) -> bool:
    try:
        store = FramesStore(store_path)
    except IncompleteStoreError:
        return False
    return store.attrs.get("camera") == camera and \
        store.attrs.get("parts_signature") == parts_signature(store_path, refs)


def extract_task(root, work, env: str, config: str, task: str, camera: str = "head",
                 workers: int = 1, retry_quarantined: bool = False, executor: Executor | None = None,
                 source: SourceOptions = SourceOptions()) -> ExtractReport:
    """Extract every episode of (config, task) under `root`, in whichever layout holds it, into
    the frames store of (env, task).

    `source` chooses among several recordings of the same (config, task) and may override the
    files' end-pose convention (see `extract_episode`). Episodes run on `executor` if given
    (e.g. one pool shared by many tasks), else on a pool of `workers` processes, else here.
    """
    refs = select_episodes(root, task, config, source.embodiment, source.layout)
    tcp_offset = source.tcp_offset
    store = Workspace.of(work).frames(env, task, camera)
    store.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(parts_dir(store))
    remove_stale_temps(store.parent)
    report = ExtractReport(store, task, env)
    args = (refs, [store] * len(refs), [camera] * len(refs), [retry_quarantined] * len(refs),
            [tcp_offset] * len(refs))
    if executor is not None:
        report.statuses = list(executor.map(process_episode, *args))
    elif workers > 1 and len(refs) > 1:
        with worker_pool(min(workers, len(refs))) as pool:
            report.statuses = list(pool.map(process_episode, *args))
    else:
        report.statuses = list(map(process_episode, *args))
    if not _store_is_current(store, refs, camera):
        assemble_frames_store(store, refs, env, config, camera)
        report.assembled = True
    report.frames = FramesStore(store).num_frames
    return report


def _one_blosc_thread() -> None:
    numcodecs.blosc.set_nthreads(1)  # the pool already keeps every core busy


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Processes for per-episode work; create one and share it across tasks."""
    return ProcessPoolExecutor(workers, initializer=_one_blosc_thread)


# -- reading -----------------------------------------------------------------------------------

class FramesStore:
    """Read access to a complete frames store."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self.root = zarr.open_group(self.path, mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            raise IncompleteStoreError(f"{self.path}: no frames store here") from e
        self.attrs = self.root.attrs.asdict()
        if self.attrs.get("format") != FORMAT:
            raise IncompleteStoreError(f"{self.path}: not a {FORMAT} store")
        if self.attrs.get("complete") is not True:
            raise IncompleteStoreError(f"{self.path}: store was not finished; rerun extraction")
        if self.attrs.get("format_version") != FORMAT_VERSION:
            raise IncompleteStoreError(f"{self.path}: written by an older maniflow (frames format "
                                       f"{self.attrs.get('format_version')}, now {FORMAT_VERSION}); rerun extraction")
        self.episode_ends = self.root["meta/episode_ends"][:]
        self.episode_index = self.root["meta/episode_index"][:]

    @property
    def episodes(self) -> list[dict]:
        return self.attrs["episodes"]

    @property
    def quarantine(self) -> list[dict]:
        return self.attrs["quarantine"]

    @property
    def num_frames(self) -> int:
        return int(self.episode_ends[-1]) if len(self.episode_ends) else 0

    def row(self, number: int) -> int:
        """The store's row of source episode `number`."""
        return [int(n) for n in self.episode_index].index(number)

    def episode_slice(self, i: int) -> slice:
        """Rows of the i-th stored episode (not the source episode number)."""
        start = int(self.episode_ends[i - 1]) if i > 0 else 0
        return slice(start, int(self.episode_ends[i]))

    def rgb(self, i: int, frames: list[int] | None = None) -> np.ndarray:
        """The i-th episode's frames, or only `frames` of it (one chunk per frame: only those are read)."""
        rows = self.episode_slice(i)
        if frames is None:
            return self.root["data/rgb"][rows]
        return self.root["data/rgb"].oindex[[rows.start + t for t in frames]]

    def array(self, name: str, i: int | None = None) -> np.ndarray:
        arr = self.root[f"data/{name}"]
        return arr[:] if i is None else arr[self.episode_slice(i)]

    def arm_track(self, arm: str, i: int) -> tuple[np.ndarray, np.ndarray]:
        """End poses (n + 1, 7) and gripper (n + 1,) of one arm over the whole i-th episode:
        every row's, then the final recorded frame's."""
        poses, grip = self.array(f"{arm}_endpose", i), self.array(f"{arm}_gripper", i)
        last = self.episode_slice(i).stop - 1
        return (np.concatenate([poses, self.root[f"data/{arm}_endpose_next"][last:last + 1]]),
                np.concatenate([grip, self.root[f"data/{arm}_gripper_next"][last:last + 1]]))
