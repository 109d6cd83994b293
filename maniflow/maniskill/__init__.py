"""ManiSkill 3 (SAPIEN) as a source of episodes and as the closed-loop simulator.

    envs.py      the project's task variants: ManiSkill's tabletop tasks with the goal visible to
                 the camera and, in the cluttered scene, distractor primitives on the table
    plan.py      motion-planned demonstrations with ManiSkill's own experts; runs in the planner
                 environment (.venv-planner: mplib 0.1.1 needs NumPy < 2), writes the trajectory
                 .h5 + .json that `mani_skill.trajectory` tools read and write
    planner.py   calls plan.py in that environment, as a subprocess
    importer.py  trajectory .h5 + .json -> RoboTwin 2.0 episode files (RGB, end-effector pose,
                 gripper, camera matrices, joint vector, instruction): everything downstream
                 (frames store, paths, overlays, datasets, training, flows) runs unchanged
    env.py       the closed-loop environment the evaluation drives (the synthetic env's interface)

This module imports nothing from ManiSkill, so the pipeline works without it installed
(`make maniskill` installs it).
"""

from __future__ import annotations

from dataclasses import dataclass

# ManiSkill's Panda, stored as RoboTwin's right arm: 7 joints, then the gripper (1 open, 0 closed).
ARM = "right"
ARM_JOINTS = 7
CAMERA = "base_camera"  # ManiSkill's sensor camera, stored as RoboTwin's head camera
DISTRACTORS = {"clean": 0, "cluttered": 8}  # primitives on the table per scene


@dataclass(frozen=True)
class ManiSkillTask:
    base_id: str  # ManiSkill's task: its motion-planning solution
    seen: tuple[str, ...]
    unseen: tuple[str, ...]

    @property
    def env_id(self) -> str:
        """The project's variant of the task (registered by maniflow.maniskill.envs)."""
        return f"Maniflow{self.base_id}"


TASKS = {
    "pick_cube": ManiSkillTask("PickCube-v1", ("Pick up the red cube and move it to the green ball.",),
                               ("Grab the red block and lift it to the green sphere.",)),
    "push_cube": ManiSkillTask("PushCube-v1", ("Push the blue cube onto the red and white target.",),
                               ("Slide the blue block to the target on the table.",)),
    "pull_cube": ManiSkillTask("PullCube-v1", ("Pull the blue cube back onto the red and white target.",),
                               ("Drag the blue block towards the robot, onto the target.",)),
    "stack_cube": ManiSkillTask("StackCube-v1", ("Stack the red cube on top of the green cube.",),
                                ("Put the red block onto the green block.",)),
}

