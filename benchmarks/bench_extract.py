"""Extraction throughput and frames-store size on the default synthetic data; prints JSON.

    python benchmarks/bench_extract.py [--root data/robotwin] [--episodes 10]

Compares, in one run: serial vs 2-process extraction, assembling by linking chunk files vs
re-encoding them, the chosen RGB codec against alternatives (bytes per frame and encode
time on the same frames), and RoboTwin's two layouts holding the same recordings (reading
speed, file size, and whether the extracted rows are identical). Uses --root if it holds
episodes (e.g. after `make demo`), otherwise generates the default data set into a temporary
directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numcodecs
import numpy as np

from maniflow.frames import FramesStore, assemble_frames_store, extract_task, parts_dir, worker_pool
from maniflow.robotwin import DEFAULT_CONFIG_NAMES, discover_episodes
from maniflow.synthetic import GeneratorConfig, generate_dataset
from maniflow.workspace import Workspace


def _files(path: Path):
    return [p for p in Path(path).rglob("*") if p.is_file()]


def extract_all(root: Path, work: Path, workers: int) -> dict:
    """Every (env, task) of the root, as `maniflow extract --workers N` runs it (one pool)."""
    start = time.perf_counter()
    frames = 0
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(worker_pool(workers)) if workers > 1 else None
        for env, config in DEFAULT_CONFIG_NAMES.items():
            for task in sorted({r.task for r in discover_episodes(root, configs=[config])}):
                frames += extract_task(root, work, env, config, task, executor=pool).frames
    seconds = time.perf_counter() - start
    return {"workers": workers, "seconds": round(seconds, 2), "frames": frames,
            "frames_per_s": round(frames / seconds, 1)}


def store_sizes(work: Path) -> dict:
    stores = Workspace(work).all_frames_stores()
    frames = sum(FramesStore(s).num_frames for s in stores)
    store_files = [f for s in stores for f in _files(s)]
    store_inodes = {f.stat().st_ino for f in store_files}
    rgb = sum(f.stat().st_size for s in stores for f in _files(s / "data" / "rgb"))
    total = sum(f.stat().st_size for f in store_files)
    # Parts share the frame chunks with the stores (hard links); count only what they add.
    extra = sum(f.stat().st_size for s in stores for f in _files(parts_dir(s)) if f.stat().st_ino not in store_inodes)
    return {"stores": len(stores), "frames": frames, "store_bytes_per_frame": round(total / frames),
            "rgb_bytes_per_frame": round(rgb / frames), "parts_extra_bytes_per_frame": round(extra / frames)}


def assembly(root: Path, work: Path) -> dict:
    """Re-assemble one store from its parts: link chunk files vs decode and re-encode."""
    env, config = "cluttered", DEFAULT_CONFIG_NAMES["cluttered"]
    task = sorted({r.task for r in discover_episodes(root, configs=[config])})[0]
    refs = discover_episodes(root, tasks=[task], configs=[config])
    store = Workspace(work).frames(env, task)
    out = {"task": f"{env}/{task}", "frames": FramesStore(store).num_frames}
    for mode, link in (("link", True), ("reencode", False)):
        start = time.perf_counter()
        assemble_frames_store(store, refs, env, config, link=link)
        out[f"{mode}_s"] = round(time.perf_counter() - start, 3)
    return out


def codecs(work: Path, sample: int = 200) -> dict:
    """Bytes per frame and encode time of RGB codecs on the same decoded frames."""
    stores = Workspace(work).all_frames_stores()
    rng = np.random.default_rng(0)
    frames = []
    for s in stores:
        rgb = FramesStore(s).root["data/rgb"]
        for i in rng.choice(rgb.shape[0], size=min(sample // len(stores) + 1, rgb.shape[0]), replace=False):
            frames.append(rgb[int(i)])
    frames = frames[:sample]
    candidates = {
        "blosc-zstd-1 (chosen)": numcodecs.Blosc("zstd", 1, numcodecs.Blosc.NOSHUFFLE),
        "blosc-zstd-3": numcodecs.Blosc("zstd", 3, numcodecs.Blosc.NOSHUFFLE),
        "blosc-zstd-5": numcodecs.Blosc("zstd", 5, numcodecs.Blosc.NOSHUFFLE),
        "blosc-lz4-5": numcodecs.Blosc("lz4", 5, numcodecs.Blosc.NOSHUFFLE),
    }
    out = {"frames_sampled": len(frames), "raw_bytes_per_frame": int(frames[0].nbytes)}
    for name, codec in candidates.items():
        start = time.perf_counter()
        sizes = [len(codec.encode(f)) for f in frames]
        out[name] = {"bytes_per_frame": round(float(np.mean(sizes))),
                     "encode_ms_per_frame": round((time.perf_counter() - start) / len(frames) * 1e3, 3)}
    return out


def layouts(scratch: Path, episodes: int = 5) -> dict:
    """The same synthetic recordings in stable 2.0's and the current layout, extracted serially."""
    out, stores = {}, {}
    for layout in ("robotwin2", "xpolicylab"):
        root = scratch / f"layout-{layout}"
        generate_dataset(root, GeneratorConfig(tasks=("click_bell", "open_microwave"), episodes=episodes,
                                               layout=layout), progress=lambda _: None)
        refs = discover_episodes(root)
        out[layout] = extract_all(root, scratch / f"work-{layout}", workers=1)
        out[layout]["source_bytes_per_frame"] = round(sum(r.path.stat().st_size for r in refs) / out[layout]["frames"])
        stores[layout] = Workspace(scratch / f"work-{layout}").all_frames_stores()
    names = ("rgb", "state", "action", "left_endpose", "right_endpose_next", "right_gripper")
    out["identical_rows"] = all(np.array_equal(FramesStore(a).array(n), FramesStore(b).array(n))
                                for a, b in zip(stores["robotwin2"], stores["xpolicylab"]) for n in names)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("data/robotwin"))
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task/env if generating")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        root = args.root
        generated = None
        if not (root.is_dir() and discover_episodes(root)):
            root = scratch / "robotwin"
            start = time.perf_counter()
            generate_dataset(root, GeneratorConfig(episodes=args.episodes), workers=2, progress=lambda _: None)
            generated = round(time.perf_counter() - start, 1)
        refs = discover_episodes(root)
        jpeg = sum(r.path.stat().st_size for r in refs)
        serial = extract_all(root, scratch / "serial", workers=1)
        parallel = extract_all(root, scratch / "parallel", workers=2)
        result = {
            "benchmark": "frame extraction",
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "data": {"root": str(root), "episodes": len(refs), "frames": serial["frames"],
                     "generated_in_s": generated, "source_hdf5_bytes_per_frame": round(jpeg / serial["frames"])},
            "extract_serial": serial,
            "extract_2_workers": parallel,
            "speedup_2_workers": round(serial["seconds"] / parallel["seconds"], 2),
            "frames_store": store_sizes(scratch / "serial"),
            "assemble_one_store": assembly(root, scratch / "serial"),
            "rgb_codecs": codecs(scratch / "serial"),
            "layouts": layouts(scratch),
        }
        json.dump(result, sys.stdout, indent=2)
        print()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
