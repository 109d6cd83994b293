"""The six single-arm tasks of the matrix as scripted tabletop scenes.

Each task function samples a layout with a seeded generator and returns a `TaskLayout`: the
objects on the table, which arm acts (the one on the object's side; open_microwave always
left), the arm's waypoints (approach, grasp or press, move, release) and the instruction texts.
Object frames have their origin on the table surface under the object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from maniflow.geometry import euler_to_matrix
from maniflow.synthetic.arm import HOME, TABLE_Z, fingertip_offset
from maniflow.synthetic.render import Mesh, box_mesh, frustum_mesh

CLEARANCE = 0.10  # height of approach / retreat points above a grasp or press point


@dataclass(frozen=True)
class Hinge:
    point: tuple[float, float, float]  # object frame
    axis: tuple[float, float, float]  # unit vector, object frame


@dataclass(frozen=True)
class ObjectPart:
    mesh: Mesh
    color: tuple[float, float, float]
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)  # part centre in the object frame
    hinge: Hinge | None = None  # articulated parts rotate about it by the object's joint value


@dataclass
class SceneObject:
    name: str
    parts: list[ObjectPart]
    position: np.ndarray  # world, on the table
    yaw: float = 0.0
    joint: float = 0.0  # initial articulation value (radians)
    grasp_width: float = 0.0  # fingers cannot close further than this while holding it

    @property
    def rotation(self) -> np.ndarray:
        return euler_to_matrix(np.array([0.0, 0.0, self.yaw]))

    def to_world(self, local, joint: float | None = None, hinge: Hinge | None = None) -> np.ndarray:
        """World position of a point given in the object frame (optionally on a hinged part)."""
        p = np.asarray(local, dtype=np.float64)
        if hinge is not None:
            p = _hinge_rotation(hinge, self.joint if joint is None else joint) @ (
                p - np.asarray(hinge.point)) + np.asarray(hinge.point)
        return self.position + self.rotation @ p


def _hinge_rotation(hinge: Hinge, angle: float) -> np.ndarray:
    """Rodrigues rotation about the hinge axis."""
    k = np.asarray(hinge.axis, dtype=np.float64)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def part_pose(obj: SceneObject, part: ObjectPart, obj_rotation, obj_position, joint: float):
    """World pose of one part given the object's pose and joint value."""
    local_r = np.eye(3)
    local_t = np.asarray(part.offset, dtype=np.float64)
    if part.hinge is not None:
        local_r = _hinge_rotation(part.hinge, joint)
        pivot = np.asarray(part.hinge.point)
        local_t = local_r @ (local_t - pivot) + pivot
    return obj_rotation @ local_r, obj_rotation @ local_t + obj_position


@dataclass
class Waypoint:
    """A pose the active arm reaches; values interpolate from the previous waypoint."""

    position: np.ndarray
    yaw: float = 0.0
    pitch: float = 0.0
    gripper: float = 1.0
    attach: str | None = None  # object rigidly held from this waypoint on
    detach: bool = False  # held object released at this waypoint
    joints: dict[str, float] = field(default_factory=dict)  # articulation reached here
    ease: bool = True  # smooth start/stop; False for points along a continuous arc
    hold: int = 0  # frames to stay here afterwards


@dataclass(frozen=True)
class Goal:
    """What success means in closed loop; the environment checks it after every step.

    reach   the end effector comes within `radius` of `point` in x, y and at most 1 cm above it
    joint   object `name`'s articulation passes `value` in `direction` (+1 or -1)
    place   object `name`, picked up and released, rests within `radius` (in x, y) of `point`
    tool    while held, point `local` (object frame) of object `name` comes within `radius` of `point`
    """

    kind: str
    point: tuple[float, float, float] | None = None
    radius: float = 0.03
    name: str | None = None
    value: float = 0.0
    direction: float = 1.0
    local: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class Articulation:
    """How the end effector moves a hinged part in closed loop: along `track` (end-effector
    positions, K x 3) the part's value goes through `values` (K). `grasp`: only while the gripper
    holds the handle; otherwise by pushing (the value only moves towards the goal)."""

    name: str
    track: np.ndarray
    values: np.ndarray
    grasp: bool


@dataclass
class TaskLayout:
    objects: list[SceneObject]
    task_object: str
    arm: str
    waypoints: list[Waypoint]
    keep_clear: list[tuple[np.ndarray, float]]  # (xy, radius) discs distractors must avoid
    key_point: np.ndarray  # world point the arm must reach (grasp or contact); occlusion aims here
    info: dict[str, str]
    seen: list[str]
    unseen: list[str]
    goal: Goal | None = None
    articulation: Articulation | None = None
    supports: list[tuple[np.ndarray, float, float]] = field(default_factory=list)  # (xy, radius, z) to rest on


# -- helpers -----------------------------------------------------------------------------------

def _xy(rng, x_range, y_range, side=None) -> np.ndarray:
    x = rng.uniform(*x_range)
    if side is not None:
        x = abs(x) * side
    return np.array([x, rng.uniform(*y_range), TABLE_Z])


def _side(rng) -> float:
    return -1.0 if rng.random() < 0.5 else 1.0


def _arm_for(x: float) -> str:
    return "left" if x < 0 else "right"


def _wrap_half_pi(yaw: float) -> float:
    """A parallel gripper is symmetric: keep yaw in [-pi/2, pi/2)."""
    return (yaw + np.pi / 2) % np.pi - np.pi / 2


def _palm_height(grasp_z: float) -> float:
    """End-effector height that puts the fingertips 1.5 cm below a grasp point, above the table."""
    return max(grasp_z - 0.015, TABLE_Z + 0.004) + fingertip_offset()


def _start(arm: str, gripper: float = 1.0) -> list[Waypoint]:
    return [Waypoint(HOME[arm].copy(), gripper=1.0)] + (
        [Waypoint(HOME[arm].copy(), gripper=gripper)] if gripper != 1.0 else [])


def _pick(point: np.ndarray, yaw: float, name: str) -> list[Waypoint]:
    """Approach from above, descend, close on the object, lift."""
    above = point + [0, 0, CLEARANCE]
    return [Waypoint(above, yaw), Waypoint(point.copy(), yaw),
            Waypoint(point.copy(), yaw, gripper=0.0, attach=name),
            Waypoint(above.copy(), yaw, gripper=0.0)]


def _place(point: np.ndarray, yaw: float) -> list[Waypoint]:
    """Carry above a point, lower, open, retreat."""
    above = point + [0, 0, CLEARANCE]
    return [Waypoint(above, yaw, gripper=0.0), Waypoint(point.copy(), yaw, gripper=0.0),
            Waypoint(point.copy(), yaw, gripper=1.0, detach=True),
            Waypoint(above.copy(), yaw, gripper=1.0, hold=4)]


# Colours (RGB, 0-1). Task objects keep their colours in both configs, so the instruction
# ("the red block") stays true; the cluttered config varies table, light and distractors.
RED = (0.86, 0.16, 0.12)
GREY = (0.55, 0.56, 0.58)
DARK = (0.18, 0.18, 0.2)
WOOD = (0.62, 0.42, 0.24)
GOLD = (0.9, 0.72, 0.22)
BLUE = (0.2, 0.42, 0.85)
GREEN = (0.2, 0.68, 0.3)
WHITE = (0.88, 0.88, 0.86)
ORANGE = (0.95, 0.55, 0.1)


# -- tasks -------------------------------------------------------------------------------------

def beat_block_hammer(rng: np.random.Generator) -> TaskLayout:
    side = _side(rng)
    hammer = SceneObject("hammer", [
        ObjectPart(box_mesh(0.18, 0.024, 0.024), WOOD, (0.0, 0.0, 0.012)),
        ObjectPart(box_mesh(0.04, 0.075, 0.04), GREY, (0.105, 0.0, 0.02)),
    ], _xy(rng, (0.10, 0.22), (-0.02, 0.10), side), yaw=rng.uniform(-0.5, 0.5) + (np.pi if side > 0 else 0),
        grasp_width=0.024)
    block = SceneObject("block", [ObjectPart(box_mesh(0.05, 0.05, 0.05), RED, (0, 0, 0.025))],
                        _xy(rng, (-0.06, 0.06), (0.14, 0.22)), yaw=rng.uniform(-0.4, 0.4))
    arm = _arm_for(hammer.position[0])
    grasp = hammer.to_world((-0.03, 0.0, 0.012))
    yaw = _wrap_half_pi(hammer.yaw + np.pi / 2)
    ee_grasp = np.array([grasp[0], grasp[1], _palm_height(grasp[2])])
    head = hammer.to_world((0.105, 0.0, 0.02))
    strike = np.array([*block.position[:2], TABLE_Z + 0.05 + 0.02]) - (head - ee_grasp)
    waypoints = _start(arm) + _pick(ee_grasp, yaw, "hammer") + [
        Waypoint(strike + [0, 0, 0.08], yaw, gripper=0.0),
        Waypoint(strike, yaw, gripper=0.0),
        Waypoint(strike + [0, 0, 0.06], yaw, gripper=0.0, hold=4),
    ]
    return TaskLayout(
        [hammer, block], "hammer", arm, waypoints,
        [(hammer.position[:2], 0.13), (block.position[:2], 0.08)], grasp,
        {"{A}": "hammer", "{B}": "red block", "{a}": arm},
        seen=[f"Pick up the hammer with the {arm} arm and beat the red block.",
              "Grab the hammer and hit the red block with it.",
              f"Use the {arm} gripper to lift the hammer and strike the block.",
              "Hammer the red block."],
        unseen=["Take the hammer and knock on the red cube.",
                f"With your {arm} hand, smash the block using the hammer."],
        goal=Goal("tool", tuple(head - ee_grasp + strike), 0.035, "hammer", local=(0.105, 0.0, 0.02)),
    )


def click_bell(rng: np.random.Generator) -> TaskLayout:
    bell = SceneObject("bell", [
        ObjectPart(frustum_mesh(0.05, 0.05, 0.015), DARK),
        ObjectPart(frustum_mesh(0.045, 0.014, 0.035), GOLD, (0, 0, 0.015)),
        ObjectPart(frustum_mesh(0.01, 0.008, 0.01), DARK, (0, 0, 0.05)),
    ], _xy(rng, (0.05, 0.22), (0.0, 0.2), _side(rng)))
    arm = _arm_for(bell.position[0])
    top = bell.to_world((0, 0, 0.06))
    press = np.array([top[0], top[1], top[2] - 0.004 + fingertip_offset()])
    # The demonstration ends holding the press. With a retreat to the approach point, a policy
    # hovering there cannot tell "before the press" from "after it" (both are seen in training)
    # and, at demo scale, every condition hovers: 0-5% closed-loop success against 50% without.
    waypoints = _start(arm, gripper=0.0) + [
        Waypoint(press + [0, 0, CLEARANCE], gripper=0.0),
        Waypoint(press, gripper=0.0, hold=4),
    ]
    return TaskLayout(
        [bell], "bell", arm, waypoints, [(bell.position[:2], 0.09)], top,
        {"{A}": "bell", "{a}": arm},
        seen=[f"Press the bell with the {arm} arm.", "Click the bell.",
              "Ring the golden bell on the table.", f"Use the {arm} gripper to push the bell's button."],
        unseen=["Tap the bell once.", f"Reach over with the {arm} hand and ring the bell."],
        goal=Goal("reach", tuple(press), 0.03),  # fingers (3 cm wide) on the 2 cm button
    )


def move_can_pot(rng: np.random.Generator) -> TaskLayout:
    side = _side(rng)
    pot = SceneObject("pot", [
        ObjectPart(frustum_mesh(0.085, 0.085, 0.075), DARK),
        ObjectPart(box_mesh(0.05, 0.02, 0.012), DARK, (0.1, 0, 0.065)),
        ObjectPart(box_mesh(0.05, 0.02, 0.012), DARK, (-0.1, 0, 0.065)),
    ], _xy(rng, (-0.07, 0.07), (0.12, 0.2)))
    can = SceneObject("can", [
        ObjectPart(frustum_mesh(0.03, 0.03, 0.11), BLUE),
        ObjectPart(frustum_mesh(0.03, 0.028, 0.004), GREY, (0, 0, 0.11)),
    ], np.array([pot.position[0] + side * rng.uniform(0.17, 0.25), rng.uniform(-0.04, 0.08), TABLE_Z]),
        grasp_width=0.06)
    arm = _arm_for(can.position[0])
    can_top = TABLE_Z + 0.114
    ee_grasp = np.array([*can.position[:2], can_top - 0.045 + fingertip_offset()])
    target = np.array([pot.position[0] + side * 0.15, pot.position[1] - 0.02, ee_grasp[2]])
    waypoints = _start(arm) + _pick(ee_grasp, 0.0, "can") + _place(target, 0.0)
    return TaskLayout(
        [pot, can], "can", arm, waypoints,
        [(pot.position[:2], 0.13), (can.position[:2], 0.07), (target[:2], 0.07)],
        can.to_world((0, 0, 0.08)),
        {"{A}": "can", "{B}": "pot", "{a}": arm},
        seen=[f"Use the {arm} arm to move the blue can next to the pot.",
              "Pick up the can and put it beside the pot.", "Move the can to the pot.",
              "Place the blue can next to the black pot."],
        unseen=["Set the can down by the pot.", f"Grab the can with the {arm} gripper and bring it to the pot."],
        goal=Goal("place", (target[0], target[1], TABLE_Z), 0.05, "can"),
    )


def open_microwave(rng: np.random.Generator) -> TaskLayout:
    hinge = Hinge((-0.15, -0.11, 0.0), (0.0, 0.0, -1.0))  # door swings towards the robot
    handle_local = (0.05, -0.132, 0.09)
    microwave = SceneObject("microwave", [
        ObjectPart(box_mesh(0.30, 0.22, 0.18), WHITE, (0, 0, 0.09)),
        ObjectPart(box_mesh(0.07, 0.006, 0.15), DARK, (0.11, -0.113, 0.09)),
        ObjectPart(box_mesh(0.22, 0.012, 0.15), (0.3, 0.32, 0.36), (-0.04, -0.116, 0.09), hinge),
        ObjectPart(box_mesh(0.016, 0.02, 0.10), GREY, handle_local, hinge),
    ], _xy(rng, (-0.1, 0.04), (0.15, 0.22)), yaw=rng.uniform(-0.15, 0.15), grasp_width=0.016)
    arm = "left"
    handle_top = handle_local[2] + 0.05

    def handle_pose(angle):
        # Fingers overlap the top 4 cm of the handle bar.
        p = microwave.to_world((handle_local[0], handle_local[1], handle_top - 0.025), angle, hinge)
        return np.array([p[0], p[1], _palm_height(p[2])]), _wrap_half_pi(microwave.yaw - angle)

    ee0, yaw0 = handle_pose(0.0)
    waypoints = _start(arm) + [
        Waypoint(ee0 + [0, 0, CLEARANCE], yaw0), Waypoint(ee0.copy(), yaw0),
        Waypoint(ee0.copy(), yaw0, gripper=0.0),
    ]
    opened = 1.25
    for angle in np.linspace(0, opened, 9)[1:]:
        ee, yaw = handle_pose(angle)
        waypoints.append(Waypoint(ee, yaw, gripper=0.0, joints={"microwave": float(angle)}, ease=False))
    ee, yaw = handle_pose(opened)
    waypoints += [Waypoint(ee.copy(), yaw, gripper=1.0),
                  Waypoint(ee + [0, 0, CLEARANCE], yaw, gripper=1.0, hold=4)]
    return TaskLayout(
        [microwave], "microwave", arm, waypoints, [(microwave.position[:2], 0.25)],
        microwave.to_world(handle_local, 0.0, hinge),
        {"{A}": "microwave", "{a}": arm},
        seen=["Open the microwave door with the left arm.", "Open the microwave.",
              "Pull the microwave door open by its handle.", "Use the left gripper to open the microwave."],
        unseen=["Swing the microwave door open.", "Grab the handle and open the oven door."],
        goal=Goal("joint", name="microwave", value=0.9, direction=1.0),
        articulation=Articulation("microwave", np.array([handle_pose(a)[0] for a in np.linspace(0, opened, 26)]),
                                  np.linspace(0, opened, 26), grasp=True),
    )


def place_object_stand(rng: np.random.Generator) -> TaskLayout:
    side = _side(rng)
    stand = SceneObject("stand", [
        ObjectPart(frustum_mesh(0.035, 0.03, 0.03), DARK),
        ObjectPart(box_mesh(0.11, 0.11, 0.012), WOOD, (0, 0, 0.036)),
    ], _xy(rng, (-0.06, 0.06), (0.13, 0.21)), yaw=rng.uniform(-0.5, 0.5))
    toy = SceneObject("object", [ObjectPart(frustum_mesh(0.026, 0.02, 0.08), GREEN)],
                      _xy(rng, (0.12, 0.24), (-0.03, 0.1), side), grasp_width=0.046)
    arm = _arm_for(toy.position[0])
    ee_grasp = np.array([*toy.position[:2], _palm_height(TABLE_Z + 0.05)])
    lift = ee_grasp[2] - TABLE_Z  # keep the object's bottom where it was relative to the palm
    target = np.array([*stand.position[:2], TABLE_Z + 0.042 + lift + 0.003])
    waypoints = _start(arm) + _pick(ee_grasp, 0.0, "object") + _place(target, 0.0)
    return TaskLayout(
        [stand, toy], "object", arm, waypoints,
        [(stand.position[:2], 0.1), (toy.position[:2], 0.06)], toy.to_world((0, 0, 0.05)),
        {"{A}": "green object", "{B}": "stand", "{a}": arm},
        seen=[f"Use the {arm} arm to place the green object on the stand.",
              "Put the object on the display stand.", "Pick up the green object and set it on the stand.",
              "Place the object onto the stand."],
        unseen=["Move the green item onto the wooden stand.", f"With the {arm} gripper, put the object on the stand."],
        goal=Goal("place", tuple(stand.position), 0.035, "object"),
        supports=[(stand.position[:2].copy(), 0.055, TABLE_Z + 0.042)],
    )


def turn_switch(rng: np.random.Generator) -> TaskLayout:
    hinge = Hinge((0.0, 0.0, 0.03), (1.0, 0.0, 0.0))
    switch = SceneObject("switch", [
        ObjectPart(box_mesh(0.09, 0.06, 0.03), WHITE, (0, 0, 0.015)),
        ObjectPart(box_mesh(0.016, 0.056, 0.012), ORANGE, (0, 0, 0.03), hinge),
    ], _xy(rng, (0.05, 0.22), (0.0, 0.18), _side(rng)), yaw=rng.uniform(-0.4, 0.4), joint=0.45)
    arm = _arm_for(switch.position[0])

    def lever_end(angle):
        p = switch.to_world((0.0, 0.024, 0.036), angle, hinge)
        return np.array([p[0], p[1], p[2] - 0.004 + fingertip_offset()])

    yaw = _wrap_half_pi(switch.yaw)
    waypoints = _start(arm, gripper=0.0) + [
        Waypoint(lever_end(0.45) + [0, 0, CLEARANCE], yaw, gripper=0.0),
        Waypoint(lever_end(0.45), yaw, gripper=0.0),
        Waypoint(lever_end(-0.45), yaw, gripper=0.0, joints={"switch": -0.45}),
        Waypoint(lever_end(-0.45) + [0, 0, CLEARANCE], yaw, gripper=0.0, hold=4),
    ]
    return TaskLayout(
        [switch], "switch", arm, waypoints, [(switch.position[:2], 0.08)],
        switch.to_world((0.0, 0.024, 0.036), 0.45, hinge),
        {"{A}": "switch", "{a}": arm},
        seen=[f"Turn the switch with the {arm} arm.", "Flip the switch.", "Press down the orange lever of the switch.",
              f"Use the {arm} gripper to toggle the switch."],
        unseen=["Switch it the other way.", "Push the switch lever down."],
        goal=Goal("joint", name="switch", value=0.0, direction=-1.0),
        articulation=Articulation("switch", np.array([lever_end(a) for a in np.linspace(0.45, -0.45, 19)]),
                                  np.linspace(0.45, -0.45, 19), grasp=False),
    )


TASKS = {f.__name__: f for f in (beat_block_hammer, click_bell, move_can_pot, open_microwave,
                                  place_object_stand, turn_switch)}
