"""Closed-loop simulators: which environment evaluates a task.

A simulator says which tasks it runs and builds their evaluation layouts as environments with
the interface of `maniflow.synthetic.env.TabletopEnv` (observe, step, done, success, the
expert's vectors, the oracle path). Built in:

    synthetic   the embedded tabletop environment (the RoboTwin task names it generates)
    maniskill   ManiSkill 3 on CPU SAPIEN (maniflow.maniskill tasks), one closed loop at a time

A new simulator is one module in this package that calls `SIMULATORS.register`
(docs/extending.md); evaluation and the report ask `simulator_for(task)`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from maniflow.registry import Registry


@dataclass(frozen=True)
class Simulator:
    name: str
    title: str  # how the report names it
    tasks: Callable[[], Collection[str]]  # the tasks it can evaluate
    make_envs: Callable  # (task, EvalConfig, Workspace) -> reset environments, one per layout
    exclusive: bool = False  # envs of one process share a renderer: one closed loop at a time
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def running(self, task: str):
        """Hold while a closed loop of `task` runs (the evaluate flow runs cells in threads)."""
        return self._lock if self.exclusive else contextlib.nullcontext()


SIMULATORS: Registry[Simulator] = Registry("simulator", __name__)


def simulator_for(task: str) -> Simulator:
    for sim in SIMULATORS.values():
        if task in sim.tasks():
            return sim
    raise ValueError(f"no simulator evaluates task {task!r} (simulators: {', '.join(SIMULATORS.names())})")
