"""Path labelling throughput and robustness against loopback VLM servers. Prints JSON.

    python benchmarks/bench_paths.py [--episodes 12] [--latency 0.05] [--endpoints 4]

1. capacity: `maniflow serve-paths` with N ports, each answering one request at a time in
   `latency` seconds. Nominal capacity N / latency; measured capacity N / (one request's round
   trip, timed alone), which adds the server's own overhead.
2. sequential: one request at a time, as the user's scripts do (the same request bodies).
3. maniflow: `label_paths` over all endpoints: the whole run (store writes, reading the first
   episode and the last stragglers included) and the sustained rate in between.
4. faults: 20% HTTP errors and 20% malformed answers: every frame must end with an outcome.
5. oracle: ground-truth labelling speed (no HTTP).
6. every: asking every Nth frame (N = 1, 2, 5, 10) of the same server, answering from the
   oracle: calls saved against the path error added (maniflow path-quality against the oracle;
   medians and 90th percentiles in pixels), and the client's share of capacity at each N.
7. qwen: the same server answering Qwen-VL JSON point lists over /v1 (0-1000 grid).
8. batching: servers answering `--batch` requests at once (vLLM, SGLang), the client sending
   as many per endpoint (`in_flight`): its share of their capacity.
9. frames_per_hour: what N GPUs label per hour, from HAMSTER's one request at a time at about
   1.8 s (the user's measurement) and the client's sustained share of capacity, at each N.

Shares of capacity vary by about 5% between runs on this 2-core machine (client and servers
share the cores); "sustained" excludes start-up and the last stragglers, which is what a long
labelling run is made of.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from maniflow.frames import FramesStore, extract_task
from maniflow.paths.client import ClientConfig, completions_url
from maniflow.paths.label import ProviderConfig, label_paths
from maniflow.paths.protocol import WIRES, jpeg_data_url, reply_text, request_body
from maniflow.paths.quality import task_quality
from maniflow.synthetic import GeneratorConfig, generate_dataset
from maniflow.workspace import Workspace

MANIFLOW = str(Path(sys.executable).with_name("maniflow"))
TASK, ENV = "open_microwave", "clean"


def start_server(work: Path, ports: int, *args) -> tuple[subprocess.Popen, list[str]]:
    ready = work / f"ready-{time.monotonic_ns()}.json"
    proc = subprocess.Popen([MANIFLOW, "serve-paths", "--work", str(work), "--ports", ",".join(["0"] * ports),
                             "--ready-file", str(ready), *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError("serve-paths failed to start")
        time.sleep(0.05)
    urls = json.loads(ready.read_text())["urls"]
    # Warm up: the server loads the task's frames on its first request (a new label each time,
    # or the stored answers of an earlier warm-up would leave this server cold).
    label_paths(work, ENV, TASK, ProviderConfig(kind="hamster", label=f"warmup{time.monotonic_ns()}"),
                ClientConfig(endpoints=tuple(urls)), episodes=[0])
    return proc, urls


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)


def request_bodies(work: Path, limit: int) -> list[bytes]:
    frames = FramesStore(Workspace.of(work).frames(ENV, TASK))
    instruction = frames.episodes[0]["instructions"]["seen"][0]
    rgb = frames.rgb(0)
    hamster = ProviderConfig()
    return [json.dumps(request_body(jpeg_data_url(rgb[t % len(rgb)]), instruction, WIRES["hamster"],
                                    hamster.model, hamster.max_tokens)).encode() for t in range(limit)]


def sequential(url: str, bodies: list[bytes]) -> float:
    """The user's way: one request at a time. Returns requests per second."""
    with httpx.Client(timeout=60) as http:
        start = time.perf_counter()
        for body in bodies:
            response = http.post(completions_url(url), content=body, headers={"content-type": "application/json"})
            reply_text(response.json())
        return len(bodies) / (time.perf_counter() - start)


def round_trip(url: str, bodies: list[bytes]) -> float:
    with httpx.Client(timeout=60) as http:
        times = []
        for body in bodies:
            start = time.perf_counter()
            http.post(completions_url(url), content=body, headers={"content-type": "application/json"})
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def steady_rate(stamps: list[float]) -> float:
    """Answers per second between the 10th and 90th percentile answer (start-up and the last
    stragglers excluded)."""
    lo, hi = len(stamps) // 10, len(stamps) * 9 // 10
    return (hi - lo) / (stamps[hi] - stamps[lo])


HAMSTER_S = 1.8  # seconds per request of a HAMSTER server on one GPU (the user's measurement)
USER_FRAMES = 54_572  # frames of the user's six tasks in both envs
EVERY = (1, 2, 5, 10)


def labelled(work: Path, urls, provider: ProviderConfig, in_flight: int = 1, v1: bool = False) -> tuple:
    """Label the task; returns (report, sustained answers per second)."""
    stamps = []
    report = label_paths(work, ENV, TASK, provider,
                         ClientConfig(endpoints=tuple(u + "/v1" if v1 else u for u in urls), in_flight=in_flight),
                         progress=lambda done, total: stamps.append(time.perf_counter()))
    return report, steady_rate(stamps)


def error_px(work: Path, label: str) -> dict:
    """Median and 90th percentile of the start-point and Fréchet errors against the oracle."""
    q = task_quality(work, label, ENV, TASK)
    return {f"{m}_{name}": round(float(np.percentile(q.metrics[m], pct)), 2)
            for m in ("start_px", "frechet_px") for name, pct in (("p50", 50), ("p90", 90))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=12)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--endpoints", type=int, default=4)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = GeneratorConfig(tasks=(TASK,), envs=(ENV,), episodes=args.episodes, seed=11)
        generate_dataset(tmp / "data", cfg, progress=lambda _: None)
        work = tmp / "work"
        extract_task(tmp / "data", work, ENV, cfg.config_names[ENV], TASK, "head")
        num_frames = FramesStore(Workspace.of(work).frames(ENV, TASK)).num_frames
        out = {"task": TASK, "frames": num_frames, "endpoints": args.endpoints, "latency_s": args.latency,
               "cpus": os.cpu_count()}

        proc, urls = start_server(work, args.endpoints, "--latency", args.latency)
        try:
            bodies = request_bodies(work, 40)
            rtt = round_trip(urls[0], bodies[:20])
            nominal = args.endpoints / args.latency
            measured = args.endpoints / rtt
            out["capacity"] = {"nominal_fps": round(nominal, 1), "single_request_round_trip_s": round(rtt, 4),
                               "measured_fps": round(measured, 1)}
            seq = sequential(urls[0], bodies)
            out["sequential"] = {"fps": round(seq, 2), "share_of_nominal": round(seq / nominal, 3)}

            stamps = []
            report = label_paths(work, ENV, TASK, ProviderConfig(kind="hamster", label="bench"),
                                 ClientConfig(endpoints=tuple(urls)),
                                 progress=lambda done, total: stamps.append(time.perf_counter()))
            fps = report.asked / report.seconds
            sustained = steady_rate(stamps)
            out["maniflow"] = {"fps": round(fps, 2), "seconds": round(report.seconds, 2),
                               "share_of_nominal": round(fps / nominal, 3),
                               "share_of_measured": round(fps / measured, 3),
                               "sustained_fps": round(sustained, 2),
                               "sustained_share_of_nominal": round(sustained / nominal, 3),
                               "sustained_share_of_measured": round(sustained / measured, 3),
                               "speedup_vs_sequential": round(fps / seq, 2),
                               "per_endpoint": [e["answers"] for e in report.endpoints],
                               "outcomes": {k: report.total[k] for k in ("ok", "repaired", "failed", "error")}}
        finally:
            stop(proc)

        proc, urls = start_server(work, args.endpoints, "--latency", args.latency, "--error-rate", 0.2,
                                  "--malformed-rate", 0.2, "--seed", 5)
        try:
            report = label_paths(work, ENV, TASK, ProviderConfig(kind="hamster", label="faults"),
                                 ClientConfig(endpoints=tuple(urls)))
            t = report.total
            outcomes = {k: t[k] for k in ("ok", "repaired", "failed", "error")}
            out["faults"] = {"error_rate": 0.2, "malformed_rate": 0.2, "fps": round(report.asked / report.seconds, 2),
                             "outcomes": outcomes, "frames_with_outcome": sum(outcomes.values()),
                             "missing": num_frames - sum(outcomes.values()),
                             "fallback_used": t["fallback_used"], "without_path": t["without_path"],
                             "repairs": t["repairs"], "reasons": t["reasons"],
                             "endpoint_failures": sum(e["failures"] for e in report.endpoints)}
        finally:
            stop(proc)

        report = label_paths(work, ENV, TASK, ProviderConfig(kind="oracle"))
        out["oracle"] = {"fps": round(report.asked / report.seconds, 1)}

        proc, urls = start_server(work, args.endpoints, "--latency", args.latency)
        try:
            out["every"] = {}
            for n in EVERY:
                report, sustained = labelled(work, urls, ProviderConfig(kind="hamster", label=f"every{n}", every=n))
                out["every"][n] = {"calls": report.asked, "calls_saved": round(1 - report.asked / num_frames, 3),
                                   "share_of_measured": round(report.asked / report.seconds / measured, 3),
                                   "sustained_share_of_measured": round(sustained / measured, 3),
                                   **error_px(work, f"every{n}")}
            base = out["every"][1]
            for n in EVERY:
                out["every"][n]["added_frechet_p50_px"] = round(out["every"][n]["frechet_px_p50"]
                                                                - base["frechet_px_p50"], 2)
            report, sustained = labelled(work, urls, ProviderConfig(kind="qwen", coords="thousand"), v1=True)
            out["qwen"] = {"outcomes": {k: report.total[k] for k in ("ok", "repaired", "failed", "error")},
                           "share_of_measured": round(report.asked / report.seconds / measured, 3),
                           "sustained_share_of_measured": round(sustained / measured, 3), **error_px(work, "qwen")}
        finally:
            stop(proc)

        # A batching server: `batch` requests at once per port, each taking `latency` seconds.
        batch, latency = 8, 8 * args.latency
        proc, urls = start_server(work, args.endpoints, "--latency", latency, "--batch", batch)
        try:
            capacity = args.endpoints * batch / latency
            report, sustained = labelled(work, urls, ProviderConfig(kind="hamster", label="batched"), in_flight=batch)
            out["batching"] = {"batch": batch, "latency_s": latency, "nominal_fps": round(capacity, 1),
                               "share_of_nominal": round(report.asked / report.seconds / capacity, 3),
                               "sustained_share_of_nominal": round(sustained / capacity, 3)}
        finally:
            stop(proc)

        # What N GPUs label per hour with HAMSTER (one request at a time): requests per hour x the
        # client's sustained share of capacity (a long run is all sustained) x frames per request
        # (every Nth frame asked).
        share = out["maniflow"]["sustained_share_of_measured"]
        out["frames_per_hour"] = {"hamster_s_per_request": HAMSTER_S, "client_share": share,
                                  "per_gpus": {gpus: {n: round(gpus * 3600 / HAMSTER_S * share * n)
                                                      for n in EVERY} for gpus in (1, 4, 8)}}
        per_gpus = out["frames_per_hour"]["per_gpus"]
        out["frames_per_hour"]["hours_for_user_frames"] = {
            "frames": USER_FRAMES, "per_gpus": {gpus: {n: round(USER_FRAMES / rate, 1) for n, rate in by_n.items()}
                                                for gpus, by_n in per_gpus.items()}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
