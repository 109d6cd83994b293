"""A small tabletop renderer: convex meshes through a real pinhole camera.

Parts are convex meshes (boxes, cylinders, frustums). A frame is drawn with the painter's
algorithm: the textured table (a homography of the table plane), shadows cast along the light
direction onto the table, then parts from far to near, each with back faces culled and flat
Lambert shading. Every part also writes its id into an id image, which the generator uses for
ground truth (what is visible) and the tests use to check the camera matrices.

Everything is projected with the same K and extrinsic that are stored in the episode, so the
stored matrices are consistent with the pixels by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from maniflow.geometry import camera_position, project_points

SUBPIXEL_BITS = 4  # cv2 fixed-point coordinates: 1/16 pixel precision
BACKGROUND_ID = 0
TABLE_ID = 1


@dataclass(frozen=True)
class Mesh:
    """A convex mesh: vertices (V, 3) in the part frame, faces as vertex index lists whose
    order is counter-clockwise seen from outside."""

    vertices: np.ndarray
    faces: tuple[tuple[int, ...], ...]


def box_mesh(sx: float, sy: float, sz: float) -> Mesh:
    """Box of the given size centred at the origin."""
    x, y, z = sx / 2, sy / 2, sz / 2
    v = np.array([[-x, -y, -z], [x, -y, -z], [x, y, -z], [-x, y, -z],
                  [-x, -y, z], [x, -y, z], [x, y, z], [-x, y, z]])
    faces = ((0, 3, 2, 1), (4, 5, 6, 7), (0, 1, 5, 4), (1, 2, 6, 5), (2, 3, 7, 6), (3, 0, 4, 7))
    return Mesh(v, faces)


def frustum_mesh(r_bottom: float, r_top: float, height: float, sides: int = 16) -> Mesh:
    """Cylinder (equal radii) or truncated cone along z, base at z=0."""
    a = np.linspace(0, 2 * np.pi, sides, endpoint=False)
    ring = np.stack([np.cos(a), np.sin(a)], axis=1)
    bottom = np.concatenate([ring * r_bottom, np.zeros((sides, 1))], axis=1)
    top = np.concatenate([ring * r_top, np.full((sides, 1), height)], axis=1)
    faces = [tuple(range(sides - 1, -1, -1)), tuple(range(sides, 2 * sides))]
    faces += [(i, (i + 1) % sides, sides + (i + 1) % sides, sides + i) for i in range(sides)]
    return Mesh(np.concatenate([bottom, top]), tuple(faces))


@dataclass(frozen=True)
class Lighting:
    direction: np.ndarray  # unit vector from the scene towards the light (z > 0)
    ambient: float
    diffuse: float
    color: np.ndarray  # RGB multiplier, about 1


@dataclass(frozen=True)
class PartSpec:
    mesh: Mesh
    color: tuple[float, float, float]  # RGB in [0, 1]
    part_id: int  # >= 2; 0 is background, 1 the table
    casts_shadow: bool = True


class Scene:
    """The fixed set of parts of one episode; only their poses change from frame to frame."""

    def __init__(self, parts: list[PartSpec]):
        self.parts = parts
        self.colors = np.array([p.color for p in parts], dtype=np.float64)
        self.ids = np.array([p.part_id for p in parts])
        self.shadow = np.array([p.casts_shadow for p in parts])
        counts = [len(p.mesh.vertices) for p in parts]
        self.vertex_part = np.repeat(np.arange(len(parts)), counts)
        self.local_vertices = np.concatenate([p.mesh.vertices for p in parts])
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.faces = []  # (part index, global vertex indices)
        for i, p in enumerate(parts):
            self.faces += [(i, np.asarray(f) + offsets[i]) for f in p.mesh.faces]
        self.face_part = np.array([i for i, _ in self.faces])
        self.face_tri = np.array([f[:3] for _, f in self.faces])  # three vertices give the normal
        self.vertex_ranges = [(o, o + c) for o, c in zip(offsets, counts)]

    def world_vertices(self, rotations: np.ndarray, translations: np.ndarray) -> np.ndarray:
        """Vertices of every part in world coordinates for part poses (P, 3, 3), (P, 3)."""
        r = rotations[self.vertex_part]
        return np.einsum("vij,vj->vi", r, self.local_vertices) + translations[self.vertex_part]


class Background:
    """Wall plus textured table top as seen by one camera; static for an episode."""

    def __init__(self, camera: CameraView, table_z: float, table_rect, table_rgb, wall_rgb,
                 lighting: Lighting, rng: np.random.Generator, texture_mm: float = 3.0):
        h, w = camera.height, camera.width
        rows = np.linspace(0.0, 1.0, h)[:, None, None]
        image = np.asarray(wall_rgb) * (0.75 + 0.25 * rows) * np.ones((h, w, 1))
        x0, y0, x1, y1 = table_rect
        step = texture_mm / 1000.0
        tw, th = int(round((x1 - x0) / step)), int(round((y1 - y0) / step))
        # Low-frequency stains plus fine grain: real tables are not flat colour, and a policy
        # should not be able to find objects by looking for the only texture in the image.
        low = cv2.resize(rng.normal(0, 1, (6, 8)), (tw, th), interpolation=cv2.INTER_CUBIC)
        grain = cv2.GaussianBlur(rng.normal(0, 1, (th, tw)), (0, 0), 1.2)
        shade = lighting.ambient + lighting.diffuse * max(lighting.direction[2], 0.0)
        texture = np.asarray(table_rgb)[None, None] * (1 + 0.05 * low + 0.04 * grain)[..., None]
        texture = texture * shade * lighting.color
        # Homography from texture pixels (u, v) to image pixels via the plane z = table_z.
        e = camera.extrinsic_cv
        plane = np.stack([e[:, 0] * step, e[:, 1] * step,
                          e[:, 0] * x0 + e[:, 1] * y0 + e[:, 2] * table_z + e[:, 3]], axis=1)
        homography = camera.intrinsic_cv @ plane
        warped = cv2.warpPerspective(texture.astype(np.float32), homography, (w, h),
                                     flags=cv2.INTER_LINEAR)
        mask = cv2.warpPerspective(np.ones((th, tw), np.float32), homography, (w, h),
                                   flags=cv2.INTER_LINEAR)[..., None]
        self.image = (image * (1 - mask) + warped * mask).astype(np.float32)  # RGB in [0, 1]
        self.ids = np.where(mask[..., 0] > 0.5, TABLE_ID, BACKGROUND_ID).astype(np.uint8)


@dataclass(frozen=True)
class CameraView:
    name: str
    width: int
    height: int
    intrinsic_cv: np.ndarray  # (3, 3)
    extrinsic_cv: np.ndarray  # (3, 4)

    @property
    def position(self) -> np.ndarray:
        return camera_position(self.extrinsic_cv)


def _fixed_point(uv: np.ndarray) -> np.ndarray:
    return np.round(uv * (1 << SUBPIXEL_BITS)).astype(np.int32)


def render(scene: Scene, rotations: np.ndarray, translations: np.ndarray, camera: CameraView,
           background: Background, lighting: Lighting, table_z: float,
           only: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Draw one frame. Returns RGB uint8 (H, W, 3) and part ids uint8 (H, W).

    `only` (bool per part) restricts drawing to some parts, over an empty background;
    used to measure how much of an object an unoccluded view would show.
    """
    drawn = np.ones(len(scene.parts), bool) if only is None else np.asarray(only, bool)
    verts = scene.world_vertices(rotations, translations)
    uv, depth = project_points(verts, camera.intrinsic_cv, camera.extrinsic_cv)
    if only is None:
        image = background.image.copy()
        ids = background.ids.copy()
        _draw_shadows(image, scene, verts, camera, lighting, table_z)
    else:
        image = np.zeros_like(background.image)
        ids = np.zeros_like(background.ids)

    # Face normals (world) for culling and shading, all faces at once.
    a, b, c = (verts[scene.face_tri[:, k]] for k in range(3))
    normals = np.cross(b - a, c - a)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    facing = np.einsum("fi,fi->f", normals, camera.position - a) > 0
    lambert = np.clip(normals @ lighting.direction, 0.0, None)
    shade = lighting.ambient + lighting.diffuse * lambert
    face_rgb = np.clip(scene.colors[scene.face_part] * shade[:, None] * lighting.color, 0, 1)
    face_rgb = face_rgb.astype(np.float32)

    # Painter's order: parts far to near by the depth of their centre.
    part_depth = np.array([depth[s:e].mean() for s, e in scene.vertex_ranges])
    in_front = np.array([(depth[s:e] > 1e-3).all() for s, e in scene.vertex_ranges])
    faces_of = {}
    for f, (part, idx) in enumerate(scene.faces):
        if facing[f]:
            faces_of.setdefault(part, []).append((f, idx))
    for part in np.argsort(-part_depth):
        if not (drawn[part] and in_front[part]):
            continue
        for f, idx in faces_of.get(part, ()):
            pts = _fixed_point(uv[idx])
            cv2.fillConvexPoly(image, pts, face_rgb[f].tolist(), cv2.LINE_AA, SUBPIXEL_BITS)
            cv2.fillConvexPoly(ids, pts, int(scene.ids[part]), cv2.LINE_8, SUBPIXEL_BITS)
    rgb = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return rgb, ids


def _draw_shadows(image, scene, verts, camera, lighting, table_z, strength=0.35):
    """Darken the table under each part, projecting its vertices along the light direction."""
    d = lighting.direction
    height = np.clip(verts[:, 2] - table_z, 0.0, None)
    on_table = verts - d[None, :] * (height / max(d[2], 0.2))[:, None]
    on_table[:, 2] = table_z
    uv, depth = project_points(on_table, camera.intrinsic_cv, camera.extrinsic_cv)
    mask = np.zeros(image.shape[:2], np.float32)
    for part, (s, e) in enumerate(scene.vertex_ranges):
        if scene.shadow[part] and (depth[s:e] > 0).all():
            hull = cv2.convexHull(_fixed_point(uv[s:e]))
            cv2.fillConvexPoly(mask, hull, 1.0, cv2.LINE_AA, SUBPIXEL_BITS)
    mask = cv2.GaussianBlur(mask, (0, 0), 1.5)
    image *= (1.0 - strength * mask)[..., None]
