"""The synthetic generator as a closed-loop environment.

    env = TabletopEnv("click_bell", "cluttered", index=3, seed=1000)
    obs = env.reset()                 # head-camera RGB, 14-d joint state
    env.step(action)                  # action: the next 14-d joint vector, as in the data
    env.success, env.done, env.observe()   # rendering only when asked: it is the costly part

An episode is laid out exactly as `maniflow generate` lays it out (same tasks, distractors,
lighting, and the idle arm's occluding trip at the same frames), from a seed the training data
does not use. The active arm follows the action: its end effector moves to the commanded pose
(at most `max_move_m` per step) and its gripper to the commanded opening. The idle arm is part
of the scene and follows its scripted track, so occlusion events happen as in the data.

Contact is kinematic, the way the generator's scripts move things:
  - closing the gripper within `grasp_radius` of an object's grasp point picks it up (rigidly);
    opening it lets go and the object rests on the table or on a support under it;
  - hinged parts follow the end effector along their track: a door while its handle is held,
    a lever when pushed (towards the goal only).
Success is each task's `Goal` (see synthetic/tasks.py), checked after every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maniflow.geometry import Point
from maniflow.paths.oracle import live_oracle_path
from maniflow.settings import EVAL_SEED
from maniflow.synthetic import arm as armlib
from maniflow.synthetic.episode import HEIGHT, WIDTH, EpisodePlan, frame_part_poses, plan_episode
from maniflow.synthetic.render import render
from maniflow.synthetic.tasks import Goal

ARM_OFFSET = {"left": 0, "right": 7}  # where each arm's 7 values sit in the 14-d vector


@dataclass(frozen=True)
class EnvConfig:
    seed: int = EVAL_SEED
    step_m: float = 0.015  # the generator's, so scripted timing and occlusions match the data
    occlusion_prob: float = 0.5
    max_steps_factor: float = 1.5  # episode limit: this many times the expert's length
    max_move_m: float = 0.04  # end-effector travel per step the controller allows
    grasp_radius: float = 0.03
    oracle_points: int = 10


@dataclass
class Observation:
    rgb: np.ndarray  # (H, W, 3) uint8, head camera
    state: np.ndarray  # (14,) joint vector
    t: int


def joint_vector(arm: str, position: np.ndarray, rotation: np.ndarray, gripper) -> np.ndarray:
    """One arm's 7 values of the joint vector (6 joints, gripper)."""
    joints = armlib.joints_from_pose(arm, position, rotation)
    return np.concatenate([joints, np.asarray(gripper, np.float64)[..., None]], axis=-1)


def _nearest_on_track(track: np.ndarray, point: np.ndarray) -> tuple[float, float]:
    """(distance, position along the track in segment units) of the track point nearest `point`."""
    a, b = track[:-1], track[1:]
    ab = b - a
    s = np.clip(np.einsum("ki,ki->k", point - a, ab) / np.maximum(np.einsum("ki,ki->k", ab, ab), 1e-12), 0, 1)
    d = np.linalg.norm(a + s[:, None] * ab - point, axis=1)
    k = int(np.argmin(d))
    return float(d[k]), k + float(s[k])


class TabletopEnv:
    def __init__(self, task: str, env: str, index: int, cfg: EnvConfig = EnvConfig()):
        self.task, self.env, self.index, self.cfg = task, env, index, cfg
        self.plan: EpisodePlan = plan_episode(task, env, index, cfg.seed, ("head",), cfg.step_m, cfg.occlusion_prob)
        layout = self.plan.layout
        self.arm, self.goal, self.articulation = layout.arm, layout.goal, layout.articulation
        self.view = self.plan.views["head"]
        expert = self.plan.tracks[self.arm]
        self.expert_rot = armlib.orientation(expert.rpy)
        self.expert_tips = armlib.fingertips(expert.position, self.expert_rot)  # what oracle paths follow
        self.max_steps = int(np.ceil(self.plan.length * cfg.max_steps_factor))
        self.reset()

    # -- the expert (the generator's script) ---------------------------------------------------
    def expert_vectors(self) -> np.ndarray:
        """(T, 14) joint vectors of the scripted episode; vector[t + 1] is the data's action at t."""
        out = np.zeros((self.plan.length, 14))
        for a, track in self.plan.tracks.items():
            o = ARM_OFFSET[a]
            out[:, o:o + 7] = joint_vector(a, track.position, armlib.orientation(track.rpy), track.gripper)
        return out

    # -- simulation ----------------------------------------------------------------------------
    def reset(self) -> Observation:
        expert = self.plan.tracks[self.arm]
        self.t = 0
        self.position, self.rpy = expert.position[0].copy(), expert.rpy[0].copy()
        self.gripper = float(expert.gripper[0])
        self.obj_r = {o.name: o.rotation for o in self.plan.objects}
        self.obj_t = {o.name: o.position.copy() for o in self.plan.objects}
        self.joints = {o.name: o.joint for o in self.plan.objects}
        self.widths = {o.name: o.grasp_width for o in self.plan.objects}
        # Grasp points in the object frame, from the script's grasp waypoints.
        self.grasp_points = {}
        for wp in self.plan.layout.waypoints:
            if wp.attach:
                r, t = self.obj_r[wp.attach], self.obj_t[wp.attach]
                self.grasp_points[wp.attach] = r.T @ (wp.position - t)
        self.held: str | None = None
        self.lifted: set[str] = set()  # objects picked up at some point
        self.held_rel = None  # object pose in the end-effector frame
        self.holding_handle = False
        self.success = False
        self.progress = 0  # index into the expert track, for oracle paths
        return self.observe()

    @property
    def rotation(self) -> np.ndarray:
        return armlib.orientation(self.rpy)

    @property
    def done(self) -> bool:
        return self.success or self.t >= self.max_steps

    def state(self) -> np.ndarray:
        vector = np.zeros(14)
        o = ARM_OFFSET[self.arm]
        vector[o:o + 7] = joint_vector(self.arm, self.position, self.rotation, self.gripper)
        idle = self.plan.idle_arm
        track, i = self.plan.tracks[idle], min(self.t, self.plan.length - 1)
        o = ARM_OFFSET[idle]
        vector[o:o + 7] = joint_vector(idle, track.position[i], armlib.orientation(track.rpy[i]), track.gripper[i])
        return vector

    def observe(self) -> Observation:
        return Observation(self.render(), self.state(), self.t)

    def step(self, action: np.ndarray) -> None:
        """Apply one 14-d action (the active arm's 7 values are used) and advance one frame."""
        if self.done:
            raise RuntimeError("episode is over; call reset()")
        action = np.asarray(action, np.float64)
        if action.shape != (14,) or not np.isfinite(action).all():
            raise ValueError(f"action must be 14 finite values, got shape {action.shape}")
        o = ARM_OFFSET[self.arm]
        target, _ = armlib.pose_from_joints(self.arm, action[o:o + 6])
        move = target - self.position
        dist = np.linalg.norm(move)
        if dist > self.cfg.max_move_m:
            move *= self.cfg.max_move_m / dist
        closing_before = self.gripper < 0.5
        self.position = self.position + move
        self.rpy = action[o + 3:o + 6].copy()
        self.gripper = float(np.clip(action[o + 6], 0.0, 1.0))
        closed = self.gripper < 0.5
        if closed and not closing_before:
            self._try_grasp()
        elif not closed and closing_before:
            self._release()
        self._move_held()
        self._move_articulation(closed)
        self.t += 1
        self.success = self.success or bool(self._goal_reached())

    def _try_grasp(self) -> None:
        for name, local in self.grasp_points.items():
            point = self.obj_r[name] @ local + self.obj_t[name]
            if np.linalg.norm(point - self.position) < self.cfg.grasp_radius:
                rot = self.rotation
                self.held = name
                self.lifted.add(name)
                self.held_rel = (rot.T @ self.obj_r[name], rot.T @ (self.obj_t[name] - self.position))
                return
        art = self.articulation
        if art is not None and art.grasp:
            handle = self._track_point(self.joints[art.name])
            self.holding_handle = np.linalg.norm(handle - self.position) < self.cfg.grasp_radius

    def _release(self) -> None:
        self.holding_handle = False
        if self.held is None:
            return
        name, self.held = self.held, None
        position = self.obj_t[name]
        rest = armlib.TABLE_Z
        for xy, radius, z in self.plan.layout.supports:
            if np.linalg.norm(position[:2] - xy) < radius:
                rest = max(rest, z)
        self.obj_t[name] = np.array([position[0], position[1], rest])

    def _move_held(self) -> None:
        if self.held is not None:
            rel_r, rel_t = self.held_rel
            rot = self.rotation
            self.obj_r[self.held] = rot @ rel_r
            self.obj_t[self.held] = rot @ rel_t + self.position

    def _track_point(self, value: float) -> np.ndarray:
        art = self.articulation
        order = np.argsort(art.values)
        return np.array([np.interp(value, art.values[order], art.track[order, i]) for i in range(3)])

    def _move_articulation(self, closed: bool) -> None:
        art = self.articulation
        if art is None:
            return
        distance, s = _nearest_on_track(art.track, self.position)
        k = min(int(s), len(art.values) - 2)
        value = float(art.values[k] + (s - k) * (art.values[k + 1] - art.values[k]))
        if art.grasp:
            if self.holding_handle and closed and distance < 2 * self.cfg.grasp_radius:
                self.joints[art.name] = value
            else:
                self.holding_handle = False  # slipped off
        elif distance < self.cfg.grasp_radius:
            push = np.sign(art.values[-1] - art.values[0])
            current = self.joints[art.name]
            self.joints[art.name] = max(current, value) if push > 0 else min(current, value)

    def _goal_reached(self) -> bool:
        g: Goal = self.goal
        if g.kind == "reach":
            point = np.asarray(g.point)
            return np.linalg.norm(self.position[:2] - point[:2]) < g.radius and self.position[2] < point[2] + 0.01
        if g.kind == "joint":
            return (self.joints[g.name] - g.value) * g.direction >= 0
        if g.kind == "place":
            where = self.obj_t[g.name]
            return g.name in self.lifted and self.held != g.name \
                and np.linalg.norm(where[:2] - np.asarray(g.point)[:2]) < g.radius
        if g.kind == "tool":
            if self.held != g.name:
                return False
            tip = self.obj_r[g.name] @ np.asarray(g.local) + self.obj_t[g.name]
            return np.linalg.norm(tip - np.asarray(g.point)) < g.radius
        raise ValueError(f"unknown goal kind {g.kind!r}")

    def render(self) -> np.ndarray:
        plan, i = self.plan, min(self.t, self.plan.length - 1)
        idle = plan.tracks[plan.idle_arm]
        min_gap = self.widths[self.held] + armlib.FINGER_SIZE[1] if self.held else 0.0
        arms = {self.arm: (self.position, self.rotation, self.gripper, min_gap),
                plan.idle_arm: (idle.position[i], armlib.orientation(idle.rpy[i]), idle.gripper[i], 0.0)}
        rots, trans = frame_part_poses(plan.owners, self.obj_r, self.obj_t, self.joints, arms)
        rgb, _ = render(plan.scene, rots, trans, self.view, plan.backgrounds["head"], plan.style.lighting,
                        armlib.TABLE_Z)
        return rgb

    # -- paths ---------------------------------------------------------------------------------
    def oracle_path(self) -> list[Point]:
        """The ground-truth path now: from the fingertips along the rest of the script."""
        expert = self.plan.tracks[self.arm]
        path, self.progress = live_oracle_path(armlib.fingertips(self.position, self.rotation), self.gripper,
                                               self.expert_tips, expert.gripper,
                                               self.progress, self.view.intrinsic_cv, self.view.extrinsic_cv,
                                               WIDTH, HEIGHT, self.cfg.oracle_points)
        return path

    @property
    def instruction(self) -> str:
        return self.plan.layout.seen[0]
