"""The oracle: the episode's own future fingertip motion projected into the camera (ground
truth), written as HAMSTER answers. In closed loop: the environment's own path."""

from __future__ import annotations

import logging

from maniflow.geometry import tcp_positions
from maniflow.paths.oracle import oracle_paths
from maniflow.paths.protocol import format_hamster_answer
from maniflow.paths.providers import PathProvider, register

log = logging.getLogger("maniflow.paths")


def store_oracle_paths(frames, index: int, num_points: int):
    """Oracle paths of every frame of the index-th episode of a frames store, following the
    fingertips of the episode's working arm. Returns (paths, arm, points dropped behind the
    camera, per frame why the path is degenerate or None)."""
    record = frames.episodes[index]
    height, width = frames.root["data/rgb"].shape[1:3]
    poses, gripper = frames.arm_track(record["arm"], index)
    paths, behind, degenerate = oracle_paths(tcp_positions(poses, record["tcp_offset"]), gripper,
                                             frames.array("intrinsic_cv", index), frames.array("extrinsic_cv", index),
                                             width, height, num_points)
    return paths, record["arm"], int(behind.sum()), degenerate


class Oracle(PathProvider):
    name = "oracle"
    computed = True
    needs_client = False

    def identity(self, cfg) -> dict:
        return {"kind": "oracle", "points": cfg.oracle_points, "follows": "fingertip centre"}

    def source_fingerprint(self, cfg, record: dict):
        """Also the arm, the fingertip offset and the rows it labels."""
        return {"source": record["fingerprint"], "arm": record["arm"], "tcp_offset": record["tcp_offset"],
                "frames": record["frames"]}

    def answer(self, frames, store, episodes, cfg, client, deliver) -> list[dict]:
        for ep in episodes:
            paths, arm, behind, degenerate = store_oracle_paths(frames, ep.index, cfg.oracle_points)
            if behind:
                log.info("episode %d: %d path points behind the camera dropped", ep.number, behind)
            for t in sorted(ep.missing):
                deliver(ep, t, {"raw": format_hamster_answer(paths[t]), "endpoint": f"oracle:{arm}",
                                "latency_s": None, "attempts": None, "failed": degenerate[t]})
        return []

    def closed_loop(self, cfg, client):
        return lambda envs, frames: [e.oracle_path() for e in envs]


register(Oracle())
