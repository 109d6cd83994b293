"""Atomic writes and provenance, shared by every store the project writes.

A store is written under a temporary sibling name and renamed into place when complete, so a
killed run leaves either the previous store or nothing under the final name, never a
half-written one. Temporary names carry the writer's pid so leftovers of dead runs can be
cleaned up without touching a live writer's work (same-host assumption).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import uuid
from functools import lru_cache
from pathlib import Path

import numpy as np
import zarr

from maniflow import __version__

_TEMP = re.compile(r"\.(tmp|old)-(\d+)-[0-9a-f]{8}$")


def temp_sibling(path: Path, kind: str = "tmp") -> Path:
    """A unique temporary name next to `path` (same filesystem, so rename is atomic)."""
    path = Path(path)
    return path.with_name(f"{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished directory into place, replacing any previous version.

    Two renames: the old version is moved aside first, so a kill in between leaves no store
    under the final name (and a rerun rebuilds it) rather than a mixture.
    """
    final = Path(final)
    old = None
    if final.exists():
        old = temp_sibling(final, "old")
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, obj) -> None:
    """Write JSON atomically."""
    path = Path(path)
    tmp = temp_sibling(path)
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def write_frames(array, array_dir: Path, offset: int, frames) -> None:
    """Write frames into a Zarr v2 array chunked one frame per chunk, as chunk files encoded
    directly with the array's compressor: the same bytes zarr would write, without its
    per-chunk overhead (measured 1.6 vs 0.95 ms per 224x224 frame)."""
    (compressor,) = array.compressors
    rest = ".0" * (array.ndim - 1)
    for i, frame in enumerate(frames):
        Path(array_dir, f"{offset + i}{rest}").write_bytes(
            compressor.encode(np.ascontiguousarray(frame, dtype=array.dtype)))


def append_frames(src_dir: Path, dst, dst_dir: Path, offset: int, link: bool = True) -> int:
    """Put the frames of the Zarr v2 array at `src_dir` into `dst` (on disk at `dst_dir`) from
    row `offset` on. Both are chunked one frame per chunk; when they encode identically the
    chunk files are hard-linked instead of decoded and re-encoded. Returns the frame count."""
    src = zarr.open_array(src_dir, mode="r")
    n = src.shape[0]
    if not (link and _same_encoding(Path(src_dir), Path(dst_dir))):
        dst[offset:offset + n] = src[:]
        return n
    rest = ".0" * (src.ndim - 1)
    for i in range(n):
        chunk = Path(src_dir) / f"{i}{rest}"
        if chunk.exists():  # chunks equal to the fill value are not stored
            _link_or_copy(chunk, Path(dst_dir) / f"{offset + i}{rest}")
    return n


def _same_encoding(a: Path, b: Path) -> bool:
    meta = [json.loads((p / ".zarray").read_text()) for p in (a, b)]
    for m in meta:
        m.pop("shape")
    return meta[0] == meta[1]


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # other filesystem, or links not supported
        shutil.copyfile(src, dst)


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete temporary files and directories left by processes that no longer run."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = _TEMP.search(p.name)
        if m and not _pid_alive(int(m.group(2))):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def remove_stale_temps_below(directory: Path) -> list[Path]:
    """`remove_stale_temps` in `directory` and every directory under it."""
    directory = Path(directory)
    removed = remove_stale_temps(directory)
    for sub in sorted(p for p in directory.rglob("*") if p.is_dir()):
        if sub.exists():
            removed += remove_stale_temps(sub)
    return removed


@contextlib.contextmanager
def exclusive(path: Path):
    """Hold an exclusive lock on `path`'s lock file (`.{name}.lock` beside it) across processes;
    the OS releases it when a holder dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def file_stats(paths) -> list:
    """[path, size, mtime] of each file that exists, sorted: a cheap signature of inputs."""
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(paths) if p.exists()]


@lru_cache(maxsize=1)
def code_version() -> dict:
    """Package version and, when run from a git checkout, the commit (recorded in store attrs)."""
    commit = None
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            commit = out.stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
            if dirty.stdout.strip():
                commit += "+dirty"
    except (OSError, subprocess.SubprocessError):
        pass
    return {"maniflow": __version__, "git": commit}
