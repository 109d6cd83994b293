"""Simulate scripted episodes and write them in either of RoboTwin's layouts.

`simulate_episode` turns a task layout into per-frame arm and object poses and renders every
camera; `write_episode` stores the result exactly as RoboTwin's collector does (JPEG bytes
encoded by cv2 from RGB arrays, camera matrices per frame, joint arrays, end poses in RoboTwin's
convention, 0.12 m behind the fingertips); `generate_dataset` writes a whole tree, stable 2.0's
`{root}/{task}/{config}` or the current `{root}/{config}/{task}/{embodiment}`, with the
instructions and scene_info.json (the working arm in info["{a}"]), marking everything synthetic.
"""

from __future__ import annotations

import json
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from maniflow import __version__
from maniflow.geometry import cam2world_gl_from_extrinsic_cv, intrinsics_from_fovy, look_at_extrinsic_cv
from maniflow.robotwin import (
    DEFAULT_CONFIG_NAMES,
    ENVS,
    LAYOUTS,
    SINGLE_ARM_TASKS,
    CameraMatrices,
    EpisodeContents,
    write_robotwin_episode,
    write_xpolicylab_episode,
)
from maniflow.storage import write_json
from maniflow.synthetic import arm as armlib
from maniflow.synthetic.render import Background, CameraView, Lighting, PartSpec, Scene, box_mesh, frustum_mesh, render
from maniflow.synthetic.tasks import TASKS, ObjectPart, SceneObject, TaskLayout, Waypoint, part_pose

GENERATOR = f"maniflow.synthetic {__version__}"
WIDTH, HEIGHT, FOVY_DEG = 320, 240, 37.0
# Static cameras (eye, target). RoboTwin's wrist cameras (left/right) are not simulated.
CAMERA_POSES = {
    "head": ((0.0, -0.55, 1.32), (0.0, 0.08, 0.74)),
    "front": ((0.0, 0.80, 1.12), (0.0, -0.02, 0.78)),
}
TABLE_RECT = (-0.6, -0.45, 0.6, 0.5)  # x0, y0, x1, y1 on the plane z = TABLE_Z
GRIPPER_FRAMES = 6  # frames for a full open <-> close
EMBODIMENT = "maniflow_synthetic"  # the robot folder of the current layout
OCCLUDER_MAX_Z = 1.14  # highest hover point of the occluding idle arm (within its reach)
ARM_COLORS = {"base": (0.3, 0.31, 0.33), "upper": (0.78, 0.79, 0.8), "fore": (0.78, 0.79, 0.8),
              "wrist": (0.3, 0.31, 0.33), "palm": (0.22, 0.22, 0.24), "finger_a": (0.12, 0.12, 0.13),
              "finger_b": (0.12, 0.12, 0.13)}
# Part ids in the id image: 0 background, 1 table, arms 10-29, task objects 30+, distractors 60+.
ARM_IDS = {"left": {"palm": 11, "finger_a": 12, "finger_b": 12},
           "right": {"palm": 21, "finger_a": 22, "finger_b": 22}}
ARM_LINK_ID = {"left": 10, "right": 20}
OBJECT_ID0, DISTRACTOR_ID0 = 30, 60


@dataclass(frozen=True)
class GeneratorConfig:
    """What `maniflow generate` writes. Episode content depends only on (seed, task, env, index)."""

    tasks: tuple[str, ...] = SINGLE_ARM_TASKS
    envs: tuple[str, ...] = ENVS
    config_names: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CONFIG_NAMES))
    episodes: int = 10
    seed: int = 0
    cameras: tuple[str, ...] = ("head",)
    step_m: float = 0.015  # mean end-effector travel per frame (smaller = longer episodes)
    occlusion_prob: float = 0.5  # share of episodes where the idle arm hides the task object
    jpeg_quality: int = 95  # cv2's default, as RoboTwin uses
    frame_storage: str = "fixed"  # "fixed" (RoboTwin: padded S{n}) or "vlen" (vlen uint8); stable 2.0 only
    layout: str = "robotwin2"  # or "xpolicylab": RoboTwin's current layout

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r}: choose from {sorted(LAYOUTS)}")

    def episode_params(self) -> dict:
        """Parameters that change episode content (a manifest mismatch forces regeneration)."""
        return {"seed": self.seed, "cameras": list(self.cameras), "step_m": self.step_m,
                "occlusion_prob": self.occlusion_prob, "jpeg_quality": self.jpeg_quality,
                "frame_storage": self.frame_storage, "layout": self.layout, "generator": GENERATOR}


@dataclass
class SimulatedEpisode:
    task: str
    env: str
    index: int
    seed: int
    rgb: dict[str, np.ndarray]  # camera -> (T, H, W, 3) uint8
    ids: dict[str, np.ndarray]  # camera -> (T, H, W) uint8 part ids (ground truth, not stored)
    intrinsic_cv: dict[str, np.ndarray]  # camera -> (3, 3)
    extrinsic_cv: dict[str, np.ndarray]  # camera -> (3, 4)
    vector: np.ndarray  # (T, 14)
    endpose: dict[str, np.ndarray]  # arm -> (T, 7)
    gripper: dict[str, np.ndarray]  # arm -> (T,)
    layout: TaskLayout
    task_object_visibility: np.ndarray  # (T,) visible share of the task object, head camera
    occlusion_frames: tuple[int, int] | None  # [start, end) of the idle arm's occluding trip

    @property
    def num_frames(self) -> int:
        return len(self.vector)

    @property
    def gripper_ids(self) -> dict[str, tuple[int, int]]:
        return {a: (ARM_IDS[a]["palm"], ARM_IDS[a]["finger_a"]) for a in armlib.ARM_BASES}


def episode_rng(seed: int, task: str, env: str, index: int) -> np.random.Generator:
    """Independent stream per episode: any subset of episodes regenerates identically."""
    key = [seed, zlib.crc32(task.encode()), zlib.crc32(env.encode()), index]
    return np.random.default_rng(np.random.SeedSequence(key))


def camera_view(name: str) -> CameraView:
    eye, target = CAMERA_POSES[name]
    return CameraView(name, WIDTH, HEIGHT, intrinsics_from_fovy(WIDTH, HEIGHT, FOVY_DEG),
                      look_at_extrinsic_cv(eye, target))


# -- motion ------------------------------------------------------------------------------------

@dataclass
class Timeline:
    position: np.ndarray  # (T, 3)
    rpy: np.ndarray  # (T, 3)
    gripper: np.ndarray  # (T,)
    held: list  # (T,) name of the rigidly held object or None
    grasping: list  # (T,) object whose width the fingers cannot close through, or None
    joints: dict[str, np.ndarray]  # object -> (T,) articulation value


def interpolate(waypoints: list[Waypoint], step_m: float, joints0: dict[str, float]) -> Timeline:
    """Per-frame values through the waypoints, smooth (smoothstep) unless a waypoint says not.

    Segment length follows the largest change: distance / step_m, rotation, gripper travel
    (GRIPPER_FRAMES for a full stroke) and articulation. `hold` repeats a waypoint's frame.
    """
    first = waypoints[0]
    pos, rpy, grip, held, grasping = [], [], [], [], []
    joints = {k: [] for k in joints0}
    current = dict(joints0)
    holding = None

    def emit(p, r, g, grasp, js):
        pos.append(p), rpy.append(r), grip.append(g), held.append(holding), grasping.append(grasp)
        for k in joints:
            joints[k].append(js[k])

    emit(first.position, np.array([0.0, first.pitch, first.yaw]), first.gripper, None, current)
    for _ in range(first.hold):
        emit(pos[-1], rpy[-1], grip[-1], None, current)
    for prev, wp in zip(waypoints, waypoints[1:]):
        target_rpy = np.array([0.0, wp.pitch, wp.yaw])
        target_joints = {**current, **wp.joints}
        n = max(2, int(np.ceil(np.linalg.norm(wp.position - prev.position) / step_m)),
                int(np.ceil(np.abs(target_rpy - rpy[-1]).max() / (8 * step_m))),
                int(np.ceil(abs(wp.gripper - prev.gripper) * GRIPPER_FRAMES)),
                int(np.ceil(max((abs(target_joints[k] - current[k]) for k in current), default=0) / 0.08)))
        s = np.arange(1, n + 1) / n
        if wp.ease:
            s = s * s * (3 - 2 * s)
        p0, r0, g0, j0 = pos[-1], rpy[-1], grip[-1], current
        for i, si in enumerate(s):
            if i == n - 1:  # grasp and release take effect on arrival
                holding = wp.attach or (None if wp.detach else holding)
            emit(p0 + si * (wp.position - p0), r0 + si * (target_rpy - r0), g0 + si * (wp.gripper - g0),
                 wp.attach or holding, {k: j0[k] + si * (target_joints[k] - j0[k]) for k in joints})
        current = target_joints
        for _ in range(wp.hold):
            emit(pos[-1], rpy[-1], grip[-1], holding, current)
    return Timeline(np.array(pos), np.array(rpy), np.array(grip), held, grasping,
                    {k: np.array(v) for k, v in joints.items()})


def _pad(timeline: Timeline, length: int) -> Timeline:
    """Hold the last frame until `length` frames."""
    extra = length - len(timeline.position)
    if extra <= 0:
        return timeline
    rep = lambda a: np.concatenate([a, np.repeat(a[-1:], extra, axis=0)])  # noqa: E731
    return Timeline(rep(timeline.position), rep(timeline.rpy), rep(timeline.gripper),
                    timeline.held + [timeline.held[-1]] * extra,
                    timeline.grasping + [timeline.grasping[-1]] * extra,
                    {k: rep(v) for k, v in timeline.joints.items()})


def _idle_track(arm: str, step_m: float, hover=None, start: int = 0, hold: int = 0) -> Timeline:
    """The idle arm stays home; to occlude, it waits `start` frames, hovers at `hover` for
    `hold` frames and goes home again."""
    home = armlib.HOME[arm]
    waypoints = [Waypoint(home.copy(), hold=start)]
    if hover is not None:
        waypoints += [Waypoint(hover, hold=hold), Waypoint(home.copy())]
    return interpolate(waypoints, step_m, {})


# -- scene -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Style:
    table_rgb: tuple
    wall_rgb: tuple
    lighting: Lighting


def sample_style(env: str, rng: np.random.Generator) -> Style:
    """Clean: one fixed look. Cluttered: table colour, wall and lighting vary per episode."""
    if env == "clean":
        return Style((0.72, 0.70, 0.66), (0.55, 0.57, 0.6),
                     Lighting(_unit([0.25, -0.35, 1.0]), 0.5, 0.55, np.ones(3)))
    palette = [(0.72, 0.70, 0.66), (0.55, 0.38, 0.24), (0.35, 0.36, 0.38), (0.62, 0.66, 0.55),
               (0.78, 0.62, 0.5), (0.45, 0.5, 0.62), (0.82, 0.8, 0.74)]
    table = np.clip(np.array(palette[rng.integers(len(palette))]) + rng.normal(0, 0.04, 3), 0.05, 0.95)
    wall = rng.uniform(0.2, 0.75, 3)
    azimuth, elevation = rng.uniform(0, 2 * np.pi), rng.uniform(np.radians(35), np.radians(75))
    direction = np.array([np.cos(azimuth) * np.cos(elevation), np.sin(azimuth) * np.cos(elevation),
                          np.sin(elevation)])
    light = Lighting(direction, rng.uniform(0.3, 0.6), rng.uniform(0.35, 0.75),
                     np.clip(1 + rng.normal(0, 0.06, 3), 0.85, 1.15))
    return Style(tuple(table), tuple(wall), light)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def sample_distractors(layout: TaskLayout, rng: np.random.Generator, count: int) -> list[SceneObject]:
    """Random boxes and cylinders placed away from the task's objects and targets."""
    out, keep = [], list(layout.keep_clear)
    for _ in range(200):
        if len(out) == count:
            break
        radius = rng.uniform(0.02, 0.04)
        xy = np.array([rng.uniform(-0.34, 0.34), rng.uniform(-0.12, 0.32)])
        if any(np.linalg.norm(xy - c) < r + radius + 0.02 for c, r in keep):
            continue
        color = tuple(cv2.cvtColor(np.uint8([[[rng.integers(180), rng.integers(80, 256),
                                               rng.integers(90, 256)]]]), cv2.COLOR_HSV2RGB)[0, 0] / 255)
        height = rng.uniform(0.03, 0.12)
        if rng.random() < 0.5:
            mesh, offset = box_mesh(radius * 1.6, radius * rng.uniform(1.0, 2.0), height), (0, 0, height / 2)
        else:
            mesh, offset = frustum_mesh(radius, radius * rng.uniform(0.5, 1.0), height), (0, 0, 0)
        out.append(SceneObject(f"distractor{len(out)}", [ObjectPart(mesh, color, offset)],
                               np.array([xy[0], xy[1], armlib.TABLE_Z]), yaw=rng.uniform(-np.pi, np.pi)))
        keep.append((xy, radius))
    return out


def _object_poses(objects, active: Timeline, ee_rot: np.ndarray, length: int):
    """Per-frame rotations and positions of every object: still, or rigidly following the
    end effector from its grasp to its release (then staying where it was let go)."""
    obj_r = {o.name: np.repeat(o.rotation[None], length, 0) for o in objects}
    obj_t = {o.name: np.repeat(o.position[None], length, 0) for o in objects}
    for name in {h for h in active.held if h}:
        held = np.flatnonzero([h == name for h in active.held])  # one contiguous grasp
        f0, f1 = held[0], held[-1]
        rel_r = ee_rot[f0].T @ obj_r[name][f0]
        rel_t = ee_rot[f0].T @ (obj_t[name][f0] - active.position[f0])
        obj_r[name][held] = ee_rot[held] @ rel_r
        obj_t[name][held] = np.einsum("tij,j->ti", ee_rot[held], rel_t) + active.position[held]
        obj_r[name][f1 + 1:], obj_t[name][f1 + 1:] = obj_r[name][f1], obj_t[name][f1]
    return obj_r, obj_t


def _build_scene(objects, num_task_objects: int):
    """Renderer parts: every object's parts, then both arms. Returns the scene and, for the
    object parts, their (object, part) owners in the same order."""
    specs, owners = [], []
    for k, obj in enumerate(objects):
        part_id = OBJECT_ID0 + k if k < num_task_objects else DISTRACTOR_ID0 + k
        for part in obj.parts:
            specs.append(PartSpec(part.mesh, part.color, part_id))
            owners.append((obj, part))
    for a in ("left", "right"):
        for name, mesh in zip(armlib.ARM_PART_NAMES, armlib.arm_meshes()):
            specs.append(PartSpec(mesh, ARM_COLORS[name], ARM_IDS[a].get(name, ARM_LINK_ID[a])))
    return Scene(specs), owners


def frame_part_poses(owners, obj_r: dict, obj_t: dict, joints: dict, arms: dict):
    """World poses (P, 3, 3), (P, 3) of all scene parts in one frame, in scene order.

    obj_r / obj_t / joints: object name -> rotation, position, articulation value;
    arms: arm -> (position, rotation, gripper, min finger gap: a held object's width)."""
    rots, trans = [], []
    for obj, part in owners:
        r, t = part_pose(obj, part, obj_r[obj.name], obj_t[obj.name], joints[obj.name])
        rots.append(r), trans.append(t)
    for a in ("left", "right"):
        r, t = armlib.arm_part_poses(a, *arms[a])
        rots += r
        trans += t
    return np.array(rots), np.array(trans)


def _min_gap(grasped, widths) -> float:
    return widths[grasped] + armlib.FINGER_SIZE[1] if grasped else 0.0


@dataclass
class EpisodePlan:
    """Everything about one episode before anything is rendered: the scene, its look, the
    scripted motion of both arms. Shared by the generator and the closed-loop environment."""

    layout: TaskLayout
    style: Style
    objects: list[SceneObject]
    tracks: dict[str, Timeline]  # arm -> motion, padded to one length
    occlusion_frames: tuple[int, int] | None
    scene: Scene
    owners: list
    views: dict[str, CameraView]
    backgrounds: dict[str, Background]

    @property
    def idle_arm(self) -> str:
        return "right" if self.layout.arm == "left" else "left"

    @property
    def length(self) -> int:
        return len(self.tracks[self.layout.arm].position)


def plan_episode(task: str, env: str, index: int, seed: int = 0, cameras=("head",),
                 step_m: float = 0.015, occlusion_prob: float = 0.5) -> EpisodePlan:
    """Lay out one episode and script its motion. Deterministic in (seed, task, env, index)."""
    rng = episode_rng(seed, task, env, index)
    layout = TASKS[task](rng)
    style = sample_style(env, rng)
    distractors = sample_distractors(layout, rng, int(rng.integers(4, 8))) if env == "cluttered" else []
    objects = layout.objects + distractors
    occluding = rng.random() < occlusion_prob
    # The head camera is always rendered: it defines the ground truth (visibility).
    views = {c: camera_view(c) for c in dict.fromkeys(("head", *cameras))}
    head = views["head"]

    active = interpolate(layout.waypoints, step_m, {o.name: o.joint for o in objects})
    idle_arm = "right" if layout.arm == "left" else "left"
    occlusion_frames = None
    if occluding:
        # Hover on the head camera's line of sight to the task's key point, as close to the
        # camera as the arm reaches, so the gripper hides what the policy must go to.
        key = layout.key_point
        along = min(0.6, (OCCLUDER_MAX_Z - key[2]) / (head.position[2] - key[2]))
        hover = key + along * (head.position - key)
        n = len(active.position)
        start = int(n * rng.uniform(0.08, 0.16))
        idle = _idle_track(idle_arm, 2 * step_m, hover, start, hold=max(8, int(n * 0.2)))
        occlusion_frames = (start, len(idle.position))
    else:
        idle = _idle_track(idle_arm, step_m)
    length = max(len(active.position), len(idle.position))
    active, idle = _pad(active, length), _pad(idle, length)
    scene, owners = _build_scene(objects, len(layout.objects))
    backgrounds = {c: Background(v, armlib.TABLE_Z, TABLE_RECT, style.table_rgb, style.wall_rgb,
                                 style.lighting, np.random.default_rng(rng.integers(2**32)))
                   for c, v in views.items()}
    return EpisodePlan(layout, style, objects, {layout.arm: active, idle_arm: idle}, occlusion_frames,
                       scene, owners, views, backgrounds)


def simulate_episode(task: str, env: str, index: int, seed: int = 0, cameras=("head",),
                     step_m: float = 0.015, occlusion_prob: float = 0.5) -> SimulatedEpisode:
    """Lay out, move and render one episode. Deterministic in (seed, task, env, index)."""
    plan = plan_episode(task, env, index, seed, cameras, step_m, occlusion_prob)
    layout, objects, tracks, views, length = plan.layout, plan.objects, plan.tracks, plan.views, plan.length
    active, head, style = tracks[layout.arm], views["head"], plan.style
    ee_rot = {a: armlib.orientation(t.rpy) for a, t in tracks.items()}
    obj_r, obj_t = _object_poses(objects, active, ee_rot[layout.arm], length)
    scene = plan.scene
    task_obj_id = OBJECT_ID0 + [o.name for o in layout.objects].index(layout.task_object)

    rgb = {c: np.zeros((length, HEIGHT, WIDTH, 3), np.uint8) for c in views}
    ids = {c: np.zeros((length, HEIGHT, WIDTH), np.uint8) for c in views}
    visibility = np.zeros(length)
    task_mask = scene.ids == task_obj_id
    widths = {o.name: o.grasp_width for o in objects}
    for i in range(length):
        rots, trans = frame_part_poses(
            plan.owners, {k: v[i] for k, v in obj_r.items()}, {k: v[i] for k, v in obj_t.items()},
            {k: v[i] for k, v in active.joints.items()},
            {a: (t.position[i], ee_rot[a][i], t.gripper[i], _min_gap(t.grasping[i], widths))
             for a, t in tracks.items()})
        for c, view in views.items():
            rgb[c][i], ids[c][i] = render(scene, rots, trans, view, plan.backgrounds[c], style.lighting,
                                          armlib.TABLE_Z)
        # Visible share of the task object: its pixels in the frame / when drawn alone.
        _, alone = render(scene, rots, trans, head, plan.backgrounds["head"], style.lighting, armlib.TABLE_Z,
                          only=task_mask)
        total = np.count_nonzero(alone == task_obj_id)
        visibility[i] = np.count_nonzero(ids["head"][i] == task_obj_id) / total if total else 0.0

    vector = np.zeros((length, 14))
    endposes, grippers = {}, {}
    for a, offset in (("left", 0), ("right", 7)):
        tr = tracks[a]
        vector[:, offset:offset + 6] = armlib.joints_from_pose(a, tr.position, ee_rot[a])
        vector[:, offset + 6] = tr.gripper
        endposes[a] = armlib.robotwin_endpose(tr.position, ee_rot[a])
        grippers[a] = tr.gripper.copy()
    rgb = {c: rgb[c] for c in cameras}
    # A simulator reports float32 values: store what float32 can hold, so both layouts (the
    # current one stores float32) keep the same numbers.
    vector = vector.astype(np.float32).astype(np.float64)
    endposes = {a: e.astype(np.float32).astype(np.float64) for a, e in endposes.items()}
    grippers = {a: g.astype(np.float32).astype(np.float64) for a, g in grippers.items()}
    return SimulatedEpisode(
        task, env, index, seed, rgb, ids,
        {c: views[c].intrinsic_cv for c in cameras}, {c: views[c].extrinsic_cv for c in cameras},
        vector, endposes, grippers, layout, visibility, plan.occlusion_frames)


# -- writing -----------------------------------------------------------------------------------

def write_episode(path: Path, ep: SimulatedEpisode, config_name: str, jpeg_quality: int = 95,
                  frame_storage: str = "fixed", layout: str = "robotwin2") -> None:
    """Write one simulated episode as a RoboTwin file of `layout` (atomically)."""
    t = ep.num_frames
    camera = {}
    for cam in ep.rgb:
        e = ep.extrinsic_cv[cam]
        camera[cam] = CameraMatrices(np.repeat(ep.intrinsic_cv[cam][None], t, 0), np.repeat(e[None], t, 0),
                                     np.repeat(cam2world_gl_from_extrinsic_cv(e)[None], t, 0))
    offsets = {"left": 0, "right": 7}
    contents = EpisodeContents(
        rgb=ep.rgb, camera=camera, vector=ep.vector,
        arm_joints={a: ep.vector[:, o:o + 6] for a, o in offsets.items()},
        joint_gripper={a: ep.vector[:, o + 6] for a, o in offsets.items()},
        endpose=ep.endpose, gripper=ep.gripper,
        attrs={"synthetic": True, "generator": GENERATOR, "seed": ep.seed, "task": ep.task, "env": ep.env,
               "config": config_name, "episode": ep.index,
               "note": "Synthetic RoboTwin-format episode rendered by maniflow, not recorded in RoboTwin."})
    if layout == "xpolicylab":
        write_xpolicylab_episode(path, contents, ep.layout.seen, jpeg_quality=jpeg_quality)
    else:
        write_robotwin_episode(path, contents, jpeg_quality, frame_storage)


def scene_info_entry(ep: SimulatedEpisode) -> dict:
    return {
        "info": ep.layout.info,
        "synthetic": True,
        "generator": GENERATOR,
        "seed": ep.seed,
        "arm": ep.layout.arm,
        "task_object": ep.layout.task_object,
        "occlusion": None if ep.occlusion_frames is None else
        {"by": "idle arm", "frames": list(ep.occlusion_frames)},
        "task_object_visibility": np.round(ep.task_object_visibility, 3).tolist(),
    }


def generate_task_config(out: Path, task: str, env: str, cfg: GeneratorConfig) -> dict:
    """Write all episodes of one (task, env) unless an identical set is already there."""
    layout = LAYOUTS[cfg.layout]
    config_dir = layout.folder(out, task, cfg.config_names[env], EMBODIMENT)
    manifest_path = config_dir / ".maniflow-generate.json"
    manifest = {"task": task, "env": env, "episodes": cfg.episodes, **cfg.episode_params()}
    files = [layout.path(config_dir, i) for i in range(cfg.episodes)]
    if manifest_path.exists() and json.loads(manifest_path.read_text()) == manifest \
            and all(p.exists() for p in files):
        return {"task": task, "env": env, "written": 0, "skipped": cfg.episodes}
    manifest_path.unlink(missing_ok=True)
    scene_info, frames = {}, 0
    for i, path in enumerate(files):
        ep = simulate_episode(task, env, i, cfg.seed, cfg.cameras, cfg.step_m, cfg.occlusion_prob)
        write_episode(path, ep, cfg.config_names[env], cfg.jpeg_quality, cfg.frame_storage, cfg.layout)
        instructions = layout.instructions_path(config_dir, i)
        instructions.parent.mkdir(exist_ok=True)
        write_json(instructions, {"seen": ep.layout.seen, "unseen": ep.layout.unseen})
        scene_info[f"episode_{i}"] = scene_info_entry(ep)
        frames += ep.num_frames
    write_json(config_dir / "scene_info.json", scene_info)
    write_json(manifest_path, manifest)
    return {"task": task, "env": env, "written": cfg.episodes, "skipped": 0, "frames": frames}


def generate_dataset(out, cfg: GeneratorConfig, workers: int = 1, progress=print) -> list[dict]:
    """Write the synthetic dataset under `out`; (task, env) pairs run in parallel processes."""
    unknown = set(cfg.tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}; known: {sorted(TASKS)}")
    jobs = [(Path(out), task, env, cfg) for task in cfg.tasks for env in cfg.envs]
    results = []
    if workers <= 1:
        for job in jobs:
            results.append(generate_task_config(*job))
            progress(_describe(results[-1]))
        return results
    with ProcessPoolExecutor(workers) as pool:
        for result in pool.map(generate_task_config, *zip(*jobs)):
            results.append(result)
            progress(_describe(result))
    return results


def _describe(r: dict) -> str:
    if r["written"] == 0:
        return f"{r['task']}/{r['env']}: up to date ({r['skipped']} episodes)"
    return f"{r['task']}/{r['env']}: wrote {r['written']} episodes, {r['frames']} frames"
