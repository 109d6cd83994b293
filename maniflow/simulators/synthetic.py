"""The embedded tabletop environment evaluates the RoboTwin tasks it generates."""

from __future__ import annotations

from maniflow.simulators import SIMULATORS, Simulator


def _tasks():
    from maniflow.synthetic.tasks import TASKS

    return TASKS


def _envs(task: str, cfg, workspace) -> list:
    from maniflow.synthetic.env import TabletopEnv

    return [TabletopEnv(task, cfg.env, i, cfg.env_config()) for i in range(cfg.episodes)]


SIMULATORS.register("synthetic", Simulator("synthetic", "the synthetic environment", _tasks, _envs))
