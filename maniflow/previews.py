"""Look at path labels at a glance: a contact sheet per (env, task) and an MP4 of one episode.

Both are drawn at the frames' native resolution from the frames store and the path store,
with the same renderer as the datasets.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from maniflow.frames import FramesStore
from maniflow.overlay import render_views
from maniflow.paths.store import PathStore
from maniflow.storage import temp_sibling
from maniflow.workspace import Workspace

LABEL_BAR = 18  # pixels of caption above each panel


def _caption(panel: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((LABEL_BAR, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (4, LABEL_BAR - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, panel])


def _write_image(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path).with_suffix(path.suffix)  # cv2 picks the format from the suffix
    if not cv2.imwrite(str(tmp), np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f"could not write {path}")
    tmp.replace(path)


def contact_sheet(work, env: str, task: str, label: str, out: Path, episode: int | None = None,
                  num: int = 4) -> Path:
    """PNG with `num` frames of one episode (default the first with paths), each a row of
    original | overlay | path only, captioned with the frame number and its path outcome."""
    frames = FramesStore(Workspace.of(work).frames(env, task))
    paths = PathStore(Workspace.of(work).paths(label, env, task))
    numbers = [int(n) for n in frames.episode_index]
    if not paths.episodes():
        raise FileNotFoundError(f"no paths under {paths.dir}; run maniflow paths")
    episode = paths.episodes()[0] if episode is None else episode
    index = numbers.index(episode)
    stored = paths.read(episode)
    rgb = frames.rgb(index)
    rows = []
    for t in np.linspace(0, len(rgb) - 1, num).round().astype(int):
        overlay, path_only, _ = render_views(rgb[t], stored.paths[t])
        source = stored.source[t]
        note = stored.status[t] + ("" if source in (t, None) else f", path of frame {source}")
        rows.append(np.concatenate([_caption(rgb[t], f"{env}/{task} ep {episode} frame {t}"),
                                    _caption(overlay, f"overlay [{label}] {note}"),
                                    _caption(path_only, "path only")], axis=1))
    sheet = np.concatenate(rows)
    _write_image(Path(out), sheet)
    return Path(out)


def episode_video(work, env: str, task: str, label: str, episode: int, out: Path, fps: int = 10) -> Path:
    """MP4 of one episode: original and overlay side by side."""
    frames = FramesStore(Workspace.of(work).frames(env, task))
    stored = PathStore(Workspace.of(work).paths(label, env, task)).read(episode)
    rgb = frames.rgb(frames.row(episode))
    h, w = rgb.shape[1:3]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out).with_suffix(".mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (2 * w, h))
    if not writer.isOpened():
        raise OSError("this OpenCV build cannot write MP4 (mp4v)")
    try:
        for t, frame in enumerate(rgb):
            overlay, _, _ = render_views(frame, stored.paths[t])
            writer.write(np.ascontiguousarray(np.concatenate([frame, overlay], axis=1)[..., ::-1]))
    finally:
        writer.release()
    tmp.replace(out)
    return out
