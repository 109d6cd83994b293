"""Synthetic RoboTwin-2.0-format episodes: the embedded default data.

A small tabletop renderer with a real pinhole camera and scripted motions for the six
single-arm tasks. Episodes are written in exactly RoboTwin 2.0's HDF5 layout and are marked
as synthetic in the files' attributes and in scene_info.json.
"""

from maniflow.synthetic.episode import GeneratorConfig, generate_dataset, simulate_episode, write_episode

__all__ = ["GeneratorConfig", "generate_dataset", "simulate_episode", "write_episode"]
