"""Atomic writes and provenance, shared by every store the project writes.

A store is written under a temporary sibling name and renamed into place when complete, so a
killed run leaves either the previous store or nothing under the final name, never a
half-written one. Temporary names carry the writer's pid so leftovers of dead runs can be
cleaned up without touching a live writer's work (same-host assumption).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from functools import lru_cache
from pathlib import Path

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
