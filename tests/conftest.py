"""Shared fixtures: small synthetic RoboTwin datasets written once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from maniflow.synthetic import GeneratorConfig, generate_dataset

SMALL = GeneratorConfig(tasks=("click_bell", "open_microwave"), episodes=3, seed=7,
                        cameras=("head", "front"))


@pytest.fixture(scope="session")
def small_root(tmp_path_factory) -> Path:
    """2 tasks x 2 envs x 3 episodes, head and front cameras. Treat as read-only."""
    root = tmp_path_factory.mktemp("robotwin")
    generate_dataset(root, SMALL, progress=lambda _: None)
    return root


@pytest.fixture
def task_copy(small_root, tmp_path):
    """A private, writable copy of one (task, config) directory, for corrupting files."""

    def make(task="click_bell", config="demo_clean") -> Path:
        root = tmp_path / "root"
        shutil.copytree(small_root / task / config, root / task / config)
        return root

    return make
