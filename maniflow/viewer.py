"""`maniflow view`: a read-only viewer of a work directory in the browser (127.0.0.1 by default).

    /                                        the page (one HTML file, no build step)
    /api/tasks                               frames stores: env, task, episodes, quarantine, path labels
    /api/episode/{env}/{task}/{number}       per frame of one episode and label: outcome, repairs,
                                             reason, fallback source, raw answer
    /frame/{env}/{task}/{number}/{t}.png     one frame: ?view=original|overlay|path&label=L
    /api/runs                                training runs: cell, epochs, best validation loss,
                                             their curves and the reports' evaluation strips
    /file/{path}                             a figure or report under the work directory

It reads the stores where they are (no copies), one frame per request, and writes nothing. The
overlay and path-only views are drawn from the stored paths by the datasets' own drawing
(`maniflow.overlay.render_views`) at the frames' native resolution.
"""

from __future__ import annotations

import html
import json
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from maniflow.frames import FramesStore, IncompleteStoreError
from maniflow.overlay import render_views
from maniflow.paths.quality import episode_errors, stored_provider
from maniflow.paths.store import PathStore
from maniflow.workspace import Workspace

VIEWS = ("original", "overlay", "path")
FILE_TYPES = {".png": "image/png", ".md": "text/markdown; charset=utf-8"}  # figures and reports only
PAGE = Path(__file__).with_name("viewer.html")


def _png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


class WorkView:
    """What the viewer shows of one work directory, read from its stores."""

    def __init__(self, work):
        self.root = Workspace.of(work).root.resolve()
        self.workspace = Workspace(self.root)

    def labels(self, env: str, task: str) -> list[str]:
        paths = self.root / "paths"
        return sorted(d.name for d in paths.iterdir() if (d / env / task).is_dir()) if paths.is_dir() else []

    def tasks(self) -> list[dict]:
        """Every frames store; one that cannot be read (unfinished, older format) says why."""
        out = []
        for env, task in self.workspace.frames_stores():
            try:
                store = self.frames(env, task)
            except IncompleteStoreError as e:
                out.append({"env": env, "task": task, "labels": [], "episodes": [], "quarantine": [], "error": str(e)})
                continue
            out.append({"env": env, "task": task, "labels": self.labels(env, task),
                        "episodes": [{"number": int(n), "frames": e["frames"]}
                                     for n, e in zip(store.episode_index, store.episodes)],
                        "quarantine": store.quarantine})
        return out

    def frames(self, env: str, task: str) -> FramesStore:
        if (env, task) not in self.workspace.frames_stores():
            raise KeyError(f"no frames store of {env}/{task}")
        path = self.workspace.frames(env, task)
        # Its attributes' mtime in the key: a store extracted again is opened again.
        return _frames_store(str(path), (path / ".zattrs").stat().st_mtime_ns if (path / ".zattrs").exists() else 0)

    def paths(self, label: str, env: str, task: str, number: int):
        if label not in self.labels(env, task):
            raise KeyError(f"no paths of label {label!r} for {env}/{task}")
        store = PathStore(self.workspace.paths(label, env, task))
        file = store.episode_file(number)
        if not file.exists():
            raise KeyError(f"no finished paths of episode {number} under {store.dir}")
        return _episode_paths(str(store.dir), number, file.stat().st_mtime_ns)

    def episode(self, env: str, task: str, number: int, label: str | None) -> dict:
        store = self.frames(env, task)
        record = store.episodes[store.row(number)]
        out = {"env": env, "task": task, "number": number, "frames": record["frames"],
               "instruction": (record["instructions"]["seen"] or [""])[0], "label": label, "per_frame": None}
        if label:
            try:
                stored = self.paths(label, env, task, number)
            except KeyError as e:  # not labelled (yet): the frames still show
                out["paths_missing"] = str(e).strip("'\"")
                return out
            paths_store = PathStore(self.workspace.paths(label, env, task))
            errors = episode_errors(store, store.row(number), stored, stored_provider(paths_store))  # in pixels
            out["per_frame"] = [{**{k: f.get(k) for k in ("status", "repairs", "reason", "from", "raw")}, "error": e}
                                for f, e in zip(stored.record["frames"], errors)]
        return out

    def frame_png(self, env: str, task: str, number: int, t: int, view: str, label: str | None) -> bytes:
        if view not in VIEWS:
            raise KeyError(f"view {view!r}: one of {', '.join(VIEWS)}")
        store = self.frames(env, task)
        rows = store.episode_slice(store.row(number))
        if not 0 <= t < rows.stop - rows.start:
            raise KeyError(f"episode {number} has no frame {t}")
        rgb = store.root["data/rgb"][rows.start + t]
        if view == "original":
            return _png(rgb)
        if not label:
            raise KeyError(f"the {view} view needs a path label")
        paths = self.paths(label, env, task, number).paths
        if t >= len(paths):
            raise KeyError(f"the paths of episode {number} ({label}) have no frame {t}: label it again")
        overlay, path_only, _ = render_views(rgb, paths[t])
        return _png(overlay if view == "overlay" else path_only)

    def runs(self) -> list[dict]:
        out = []
        for cell in self.workspace.cells():
            run = self.workspace.run(cell)
            history = _metrics(run / "metrics.jsonl")
            losses = [h["val_loss"] for h in history if h.get("val_loss") is not None]
            strips = [s.relative_to(self.root).as_posix() for s in sorted((run / "eval").glob("*-strip.png"))]
            prefect = _json(run / "prefect.json") or {}
            out.append({"cell": str(cell), "name": cell.name, "epochs": len(history),
                        "flow_run": prefect.get("ui_url"), "flow_run_name": prefect.get("flow_run_name"),
                        "best_val_loss": min(losses) if losses else None,
                        "curve": (run / "loss.png").relative_to(self.root).as_posix()
                        if (run / "loss.png").exists() else None, "strips": strips})
        return out

    def reports(self) -> list[str]:
        return [r.relative_to(self.root).as_posix() for r in sorted((self.root / "reports").glob("*/report.md"))]

    def file(self, rel: str) -> tuple[bytes, str]:
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root) or path.suffix not in FILE_TYPES or not path.is_file():
            raise KeyError(f"{rel}: not a figure or report of this work directory")
        return path.read_bytes(), FILE_TYPES[path.suffix]


@lru_cache(maxsize=16)
def _frames_store(path: str, mtime_ns: int) -> FramesStore:
    return FramesStore(path)


@lru_cache(maxsize=64)
def _episode_paths(directory: str, number: int, mtime_ns: int):
    return PathStore(directory).read(number)  # mtime in the key: a relabelled episode is read again


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _metrics(path: Path) -> list[dict]:
    """A run's per-epoch records (metrics.jsonl; a line cut off by a kill is skipped)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def make_app(work):
    """The viewer as an ASGI app (FastAPI), read-only: GET routes only."""
    from fastapi import FastAPI, HTTPException, Query
    from fastapi.responses import HTMLResponse, Response

    view = WorkView(work)
    app = FastAPI(title="maniflow view", docs_url=None, redoc_url=None, openapi_url=None)

    def answer(fn, *args):
        try:
            return fn(*args)
        except (KeyError, ValueError, IncompleteStoreError, FileNotFoundError) as e:
            raise HTTPException(404, str(e).strip("'\"")) from e

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE.read_text().replace("{{WORK}}", html.escape(str(view.root)))

    @app.get("/api/tasks")
    def tasks():
        return {"tasks": answer(view.tasks), "reports": answer(view.reports)}

    @app.get("/api/episode/{env}/{task}/{number}")
    def episode(env: str, task: str, number: int, label: str | None = None):
        return answer(view.episode, env, task, number, label)

    @app.get("/frame/{env}/{task}/{number}/{t}.png")
    def frame(env: str, task: str, number: int, t: int, which: str = Query("original", alias="view"),
              label: str | None = None):
        return Response(answer(view.frame_png, env, task, number, t, which, label), media_type="image/png")

    @app.get("/api/runs")
    def runs():
        return {"runs": answer(view.runs)}

    @app.get("/file/{rel:path}")
    def file(rel: str):
        data, media = answer(view.file, rel)
        return Response(data, media_type=media)

    return app


def serve(work, host: str = "127.0.0.1", port: int = 8765) -> None:
    import uvicorn

    uvicorn.run(make_app(work), host=host, port=port, log_level="warning")
