"""Draw a 2D path onto a frame, exactly in HAMSTER's style (REFERENCE section 3).

    scale     max(min(W, H) / 512, 1); circle radius int(7 * scale); line and circle thickness
              max(1, int(2 * scale))
    path      pixel points (int(x * W), int(y * H)), resampled by cumulative arc length to 100
              evenly spaced points, drawn as 99 cv2.line segments coloured by matplotlib's jet
              from start (blue) to end (red)
    markers   hollow circles at the first point and wherever the gripper state changes from
              the previous point: close red, open blue, as seen on screen (arrays here are RGB)

Where the original crashes, this draws: one point (a dot), repeated points (zero-length
steps), coordinates out of range (drawn clipped by cv2). An empty path leaves the frame
unchanged and is reported. Paths without gripper states (PEEK) get no markers.
"""

from __future__ import annotations

import cv2
import matplotlib
import numpy as np

from maniflow.paths.protocol import Point

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
    return (xy * (width, height)).astype(np.int64)


def resample(points: np.ndarray, num: int = SUBDIVISIONS) -> np.ndarray:
    """`num` points evenly spaced by arc length along a polyline (n, 2); repeated points and a
    single point are fine (the result then repeats the point)."""
    points = np.asarray(points, np.float64)
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    if s[-1] == 0:
        return np.repeat(points[:1], num, axis=0)
    keep = np.concatenate([[True], seg > 0])  # np.interp needs increasing arc lengths
    targets = np.linspace(0.0, s[-1], num)
    return np.stack([np.interp(targets, s[keep], points[keep, i]) for i in range(2)], axis=1)


def draw_path(image: np.ndarray, path: list[Point]) -> tuple[int, int, int, int] | None:
    """Draw `path` onto the RGB uint8 `image` in place. Returns the box (x0, y0, x1, y1) that
    holds every drawn pixel, or None (image untouched) for an empty path."""
    if not path:
        return None
    height, width = image.shape[:2]
    radius, thickness = sizes(width, height)
    px = pixel_points(path, width, height)
    line = resample(px).astype(np.int64)
    pts = line.tolist()
    for i in range(SUBDIVISIONS - 1):
        cv2.line(image, pts[i], pts[i + 1], _JET_COLOURS[i], thickness)
    states = [p[2] if len(p) > 2 else None for p in path]
    markers = px.tolist()
    for i, state in enumerate(states):
        if state is None or (i > 0 and state == states[i - 1]):
            continue
        cv2.circle(image, markers[i], radius, OPEN_RGB if state else CLOSE_RGB, thickness)
    pad = radius + thickness + 1
    lo = np.minimum(line.min(axis=0), px.min(axis=0)) - pad
    hi = np.maximum(line.max(axis=0), px.max(axis=0)) + pad + 1
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
