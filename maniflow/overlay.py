"""Draw a 2D path onto a frame, pixel for pixel as the user's HAMSTER-style draw function does
(seed 001's spec as their `overlay_utils.py` implements it; REFERENCE section 3).

    scale     max(min(W, H) / 512, 1); circle radius int(7 * scale); line and circle thickness
              max(1, int(2 * scale))
    markers   drawn first: hollow circles at the first point and wherever the gripper state
              changes from the previous point: close red, open blue, as seen on screen (arrays
              here are RGB; theirs are BGR with the colours given in BGR)
    path      pixel points (int(x * W), int(y * H)); cumulative arc length in float32,
              100 evenly spaced samples (np.linspace), interpolated in float32 and truncated to
              int32; drawn after the markers as 99 cv2.line segments coloured by matplotlib's
              jet from start (blue) to end (red)
    degenerate  a path of zero length (one point, or all points the same) draws its markers
              and no line, as theirs does

Where theirs would fail, this draws: coordinates far out of range are clipped to COORD_LIMIT
frame sizes first (theirs overflows cv2's integer coordinates). An empty path leaves the frame
unchanged and is reported. Paths without gripper states (PEEK) get no markers.
"""

from __future__ import annotations

import cv2
import matplotlib
import numpy as np

from maniflow.geometry import Point, frame_pixels

SUBDIVISIONS = 100
# jet(linspace(0, 1, 100)) as uint8 RGB, as HAMSTER computes it; segment i takes colour i.
JET = (matplotlib.colormaps["jet"](np.linspace(0, 1, SUBDIVISIONS))[:, :3] * 255).astype(np.uint8)
_JET_COLOURS = [tuple(c) for c in JET.tolist()]  # plain ints: cv2 calls are the hot loop
CLOSE_RGB, OPEN_RGB = (255, 0, 0), (0, 0, 255)
# Coordinates are clipped to this many frame sizes around the frame before drawing, so absurd
# values cannot overflow cv2's integer coordinates; cv2 clips the rest.
COORD_LIMIT = 4.0


def sizes(width: int, height: int) -> tuple[int, int]:
    """(circle radius, line and circle thickness) for a frame size."""
    scale = max(min(width, height) / 512.0, 1.0)
    return int(7 * scale), max(1, int(2 * scale))


def pixel_points(path: list[Point], width: int, height: int) -> np.ndarray:
    """(n, 2) int pixel coordinates (column, row) of a path, as int(x * W), int(y * H)."""
    xy = np.clip(np.array([p[:2] for p in path], np.float64).reshape(-1, 2), -COORD_LIMIT, COORD_LIMIT)
    return frame_pixels(xy, width, height)


def resample(points: np.ndarray, num: int = SUBDIVISIONS) -> np.ndarray | None:
    """`num` int32 points evenly spaced by arc length along a pixel polyline (n, 2), with
    their float32 arithmetic; None when the polyline has no length.

    Sample k lies on the first segment whose end is at or beyond its arc length; zero-length
    segments give their start point."""
    p = np.asarray(points, np.float32)
    length = np.concatenate([np.zeros(1, np.float32), np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
    if length[-1] == 0:
        return None
    targets = np.linspace(0, length[-1], num)  # the same call as theirs: float32 samples
    seg = np.clip(np.searchsorted(length[1:], targets, side="left"), 0, len(p) - 2)
    span = length[seg + 1] - length[seg]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.clip((targets - length[seg]) / span, 0, 1)
    t = np.where(span == 0, np.float32(0), t)[:, None]
    return np.where(span[:, None] == 0, p[seg], (1 - t) * p[seg] + t * p[seg + 1]).astype(np.int32)


def draw_path(image: np.ndarray, path: list[Point]) -> tuple[int, int, int, int] | None:
    """Draw `path` onto the RGB uint8 `image` in place. Returns the box (x0, y0, x1, y1) that
    holds every drawn pixel, or None when nothing was drawn (an empty path, or a path of zero
    length without gripper states)."""
    if not path:
        return None
    height, width = image.shape[:2]
    radius, thickness = sizes(width, height)
    px = pixel_points(path, width, height)
    states = [p[2] if len(p) > 2 else None for p in path]
    markers = [i for i, state in enumerate(states) if state is not None and (i == 0 or state != states[i - 1])]
    for i in markers:
        cv2.circle(image, px[i].tolist(), radius, OPEN_RGB if states[i] else CLOSE_RGB, thickness)
    line = resample(px)
    if line is not None:
        pts = line.tolist()
        for i in range(SUBDIVISIONS - 1):
            cv2.line(image, pts[i], pts[i + 1], _JET_COLOURS[i], thickness)
    drawn = [px[markers] - radius, px[markers] + radius] + ([line, line] if line is not None else [])
    if not any(len(d) for d in drawn):
        return None
    pad = thickness + 1
    lo = np.concatenate(drawn).min(axis=0) - pad
    hi = np.concatenate(drawn).max(axis=0) + pad + 1
    x0, y0 = (int(v) for v in np.clip(lo, 0, (width, height)))
    x1, y1 = (int(v) for v in np.clip(hi, 0, (width, height)))
    return x0, y0, x1, y1


def render_views(rgb: np.ndarray, path: list[Point]) -> tuple[np.ndarray, np.ndarray, bool]:
    """(overlay, path-only image on black, drawn) at the frame's native resolution.

    The path is drawn once, on black; the overlay takes the drawn pixels from it (within the
    path's box). Lines are not anti-aliased and no drawn colour is black, so this equals
    drawing on the frame itself."""
    path_only = np.zeros_like(rgb)
    overlay = rgb.copy()
    box = draw_path(path_only, path)
    if box is None:
        return overlay, path_only, False
    x0, y0, x1, y1 = box
    src, dst = path_only[y0:y1, x0:x1], overlay[y0:y1, x0:x1]
    drawn = (src[..., 0] | src[..., 1] | src[..., 2]) != 0
    dst[drawn] = src[drawn]
    return overlay, path_only, True
