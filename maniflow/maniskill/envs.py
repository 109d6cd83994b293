"""The project's ManiSkill task variants, registered as `Maniflow{Task}` (e.g. ManiflowPickCube-v1).

Three changes to ManiSkill's task, nothing else (robot, success test, solution all stay):
  - one sensor camera for every task, nearer the workspace than ManiSkill's (its 90-degree view
    leaves a cube a few pixels wide at policy resolution), 128x128 unless `sensor_configs` says;
  - the goal is visible to the camera (PickCube hides its goal sphere from sensors; a policy that
    sees only images, and a VLM drawing a path, must see where the cube goes);
  - `num_distractors` primitives (boxes, lying cylinders; fixed shapes and colours) are placed on
    the table each episode from the episode's seed, clear of the task's objects and of the
    straight lines between them (where the expert moves). 0 is the clean scene.

Importing this module registers the variants; it imports ManiSkill, so only the planner, the
importer and the closed-loop env import it.
"""

from __future__ import annotations

import numpy as np
import sapien
import torch
from mani_skill.envs.tasks import PickCubeEnv, PullCubeEnv, PushCubeEnv, StackCubeEnv
from mani_skill.sensors.camera import CameraConfig
from mani_skill.utils import sapien_utils
from mani_skill.utils.building import actors
from mani_skill.utils.registration import register_env
from mani_skill.utils.structs.pose import Pose

from maniflow.maniskill import CAMERA, TASKS

# (kind, half sizes or (radius, half length), RGBA): muted colours, none the task's own red,
# green or blue, so the task stays well defined while the scene is busy.
SHAPES = (
    ("box", (0.02, 0.02, 0.02), (0.95, 0.85, 0.15, 1)),
    ("box", (0.035, 0.015, 0.012), (0.55, 0.3, 0.75, 1)),
    ("cylinder", (0.018, 0.04), (0.95, 0.55, 0.1, 1)),
    ("box", (0.015, 0.015, 0.035), (0.2, 0.75, 0.8, 1)),
    ("cylinder", (0.025, 0.025), (0.85, 0.85, 0.85, 1)),
    ("box", (0.03, 0.03, 0.008), (0.45, 0.3, 0.2, 1)),
    ("box", (0.012, 0.03, 0.02), (0.95, 0.5, 0.7, 1)),
    ("cylinder", (0.012, 0.05), (0.35, 0.35, 0.35, 1)),
)
CAMERA_EYE, CAMERA_TARGET, CAMERA_FOVY = (0.42, 0.0, 0.5), (-0.08, 0.0, 0.06), np.deg2rad(62)
REGION = ((-0.22, -0.28), (0.22, 0.28))  # table area in front of the robot (robot base at x = -0.615)
CLEARANCE = 0.06  # metres between a distractor's footprint and the task's objects / paths
CANDIDATES = 64  # random positions tried per distractor


def render_backend() -> str:
    """SAPIEN renders on a GPU where there is one, else on the CPU (lavapipe) without asking for CUDA."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def _segment_distance(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) distance of points (N, 2) to the segment a-b (2,)."""
    ab = b - a
    s = ((points - a) @ ab / torch.clamp(ab @ ab, min=1e-9)).clamp(0, 1)
    return torch.linalg.norm(a + s[:, None] * ab - points, dim=1)


def with_distractors(base):
    class Variant(base):
        def __init__(self, *args, num_distractors: int = 0, **kwargs):
            if not 0 <= num_distractors <= len(SHAPES):
                raise ValueError(f"num_distractors must be 0..{len(SHAPES)}, got {num_distractors}")
            self.num_distractors = num_distractors
            super().__init__(*args, **kwargs)

        @property
        def _default_sensor_configs(self):
            pose = sapien_utils.look_at(eye=CAMERA_EYE, target=CAMERA_TARGET)
            return [CameraConfig(CAMERA, pose, 128, 128, CAMERA_FOVY, 0.01, 100)]

        def _load_scene(self, options: dict):
            super()._load_scene(options)
            self._hidden_objects = [o for o in self._hidden_objects if "goal" not in o.name]
            self.distractors = []
            for i, (kind, size, color) in enumerate(SHAPES[:self.num_distractors]):
                name = f"distractor_{i}"
                if kind == "box":
                    actor = actors.build_box(self.scene, half_sizes=list(size), color=color, name=name,
                                             initial_pose=sapien.Pose(p=[2 + i, 2, size[2]]))
                else:  # a cylinder's axis is x: it lies on the table
                    actor = actors.build_cylinder(self.scene, radius=size[0], half_length=size[1], color=color,
                                                  name=name, initial_pose=sapien.Pose(p=[2 + i, 2, size[0]]))
                self.distractors.append((actor, kind, size))

        def _initialize_episode(self, env_idx: torch.Tensor, options: dict):
            super()._initialize_episode(env_idx, options)
            if not self.distractors:
                return
            with torch.device(self.device):
                # CPU simulation runs one scene per env: place for scene 0 (torch is seeded by reset).
                ignore = {"table-workspace", "ground"} | {a.name for a, _, _ in self.distractors}
                task_xy = torch.stack([a.pose.p[0, :2] for name, a in self.scene.actors.items()
                                       if name not in ignore])
                lo, hi = torch.tensor(REGION[0]), torch.tensor(REGION[1])
                placed: list[tuple[torch.Tensor, float]] = []
                for actor, kind, size in self.distractors:
                    radius = float(np.hypot(size[0], size[1]))  # footprint: box (hx, hy), cylinder (r, half length)
                    xy = lo + torch.rand((CANDIDATES, 2)) * (hi - lo)
                    gap = torch.cdist(xy, task_xy).min(1).values
                    for i in range(len(task_xy)):
                        for j in range(i + 1, len(task_xy)):
                            gap = torch.minimum(gap, _segment_distance(xy, task_xy[i], task_xy[j]))
                    ok = gap > CLEARANCE + radius
                    for p, r in placed:
                        ok &= torch.linalg.norm(xy - p, dim=1) > r + radius + 0.01
                    if not ok.any():  # no room: park it off the table, out of view
                        actor.set_pose(Pose.create_from_pq(p=torch.tensor([[3.0, 3.0 + len(placed), 0.1]])))
                        continue
                    chosen = xy[int(torch.argmax(ok.int()))]
                    placed.append((chosen, radius))
                    z = size[2] if kind == "box" else size[0]
                    yaw = float(torch.rand(1)) * np.pi
                    q = torch.tensor([[np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]], dtype=torch.float32)
                    actor.set_pose(Pose.create_from_pq(p=torch.tensor([[chosen[0], chosen[1], z]]), q=q))

    Variant.__name__ = f"Maniflow{base.__name__}"
    return Variant


_BASES = {"PickCube-v1": PickCubeEnv, "PushCube-v1": PushCubeEnv, "PullCube-v1": PullCubeEnv,
          "StackCube-v1": StackCubeEnv}
for _task in TASKS.values():
    # Episodes end on success or at the evaluation's limit, never at ManiSkill's short default.
    register_env(_task.env_id, max_episode_steps=1000)(with_distractors(_BASES[_task.base_id]))
