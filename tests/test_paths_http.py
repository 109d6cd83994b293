"""Path labelling over real HTTP on loopback, against `maniflow serve-paths` in its own process."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from maniflow.frames import FramesStore
from maniflow.paths.client import ClientConfig, Job, NoEndpointAvailable, PathClient, RequestsRejected
from maniflow.paths.label import ProviderConfig, label_paths
from maniflow.paths.protocol import (
    WIRES,
    crop_to_frame,
    decode_data_url,
    frame_to_crop,
    jpeg_data_url,
    prompt_sha,
    request_body,
)
from maniflow.paths.quality import task_quality
from maniflow.paths.store import PathStore, ProviderMismatch
from maniflow.workspace import Workspace

pytestmark = pytest.mark.slow  # servers, workers or simulators: `make test-fast` skips them

MANIFLOW = str(Path(sys.executable).with_name("maniflow"))
FAST = dict(backoff_s=0.02, probe_after_s=0.3, give_up_after_s=2.0, timeout_s=10.0)


def client(urls, **kw) -> ClientConfig:
    return ClientConfig(endpoints=tuple(urls), **{**FAST, **kw})


def oracle_store(work, env="clean", task="click_bell") -> PathStore:
    report = label_paths(work, env, task, ProviderConfig(kind="oracle"))
    return PathStore(report.store)


def compare(store: PathStore, truth: PathStore, transform=None) -> tuple[float, float]:
    """(worst first-point error, share of frames whose whole path matches within 1e-3).

    The server sees only the image: where the arm is pictured identically at two moments (before
    and after pressing), it answers with the earlier moment's path, as a real model could. The
    current position (first point) is always right where the arm is in the picture. `transform`
    maps the true path to what the provider can say, or None to skip a frame."""
    worst, same, n = 0.0, 0, 0
    for number in truth.episodes():
        got, want = store.read(number).paths, truth.read(number).paths
        for g, w in zip(got, want, strict=True):
            w = transform(w) if transform else w
            if w is None:
                continue
            worst = max(worst, abs(g[0][0] - w[0][0]), abs(g[0][1] - w[0][1]))
            same += len(g) == len(w) and np.allclose([p[:2] for p in g], [p[:2] for p in w], atol=1e-3) \
                and [p[2] for p in g] == [p[2] for p in w]
            n += 1
    return worst, same / n


def test_images_are_sent_as_jpeg_with_rgb_order():
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[..., 0] = 200  # red
    rgb[:, 16:, 2] = 180  # right half magenta
    back = decode_data_url(jpeg_data_url(rgb, 95)).astype(int)
    # Away from the colour edge (chroma subsampling blurs it) colours survive; swapped
    # channels would turn red into blue.
    assert np.abs(back[:, :12] - (200, 0, 0)).max() < 6
    assert np.abs(back[:, 20:] - (200, 0, 180)).max() < 6


def test_hamster_and_openai_protocols_give_the_oracle_paths(work_copy, path_server):
    truth = oracle_store(work_copy)
    server = path_server(work_copy, 2, "--models", "HAMSTER_dev,qwen3-vl")
    report = label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="hamster"), client(server.urls))
    assert report.total["ok"] == report.frames == report.asked
    worst, share = compare(PathStore(report.store), truth)
    assert worst < 2e-4 and share > 0.8
    # OpenAI-compatible: /v1 prefix, string content, any model name the server serves.
    report = label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="openai", model="qwen3-vl"),
                         client([u + "/v1" for u in server.urls]))
    assert report.total["ok"] == report.frames
    worst, share = compare(PathStore(report.store), truth)
    assert worst < 2e-4 and share > 0.8
    assert server.total("answered") == 2 * report.frames  # every frame asked exactly once per provider


def test_peek_sends_the_centre_crop_and_maps_answers_back(work_copy, path_server):
    truth = oracle_store(work_copy)
    server = path_server(work_copy, 1)
    report = label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="peek"), client(server.urls))
    assert report.total["ok"] == report.frames

    def through_crop(path):  # what PEEK can say: the oracle path seen in the crop, clipped to it
        crop = frame_to_crop(path, 320, 240)
        if not 0 < crop[0][0] < 1:
            return None  # the arm is outside the crop: the server cannot tell these frames apart
        return crop_to_frame([(min(max(x, 0), 1), min(max(y, 0), 1), None) for x, y, _ in crop], 320, 240)

    worst, share = compare(PathStore(report.store), truth, through_crop)
    assert worst < 2e-4 and share > 0.8
    xs = [p[0] for path in PathStore(report.store).read(0).paths for p in path]
    assert min(xs) >= 40 / 320 - 1e-9 and max(xs) <= 280 / 320 + 1e-9  # inside the crop
    assert all(p[2] is None for path in PathStore(report.store).read(0).paths for p in path)
    # PEEK's MASK answer is kept with each frame, mapped to the frame like the path, and not drawn.
    frame = PathStore(report.store).read(0).record["frames"][0]
    assert frame["mask"] and all(40 / 320 - 1e-6 <= x <= 280 / 320 + 1e-6 for x, _ in frame["mask"])


def test_one_endpoint_down_the_other_does_all_the_work(work_copy, path_server, caplog):
    server = path_server(work_copy, 1)
    dead = "http://127.0.0.1:9"  # discard port: connection refused
    with caplog.at_level(logging.WARNING, "maniflow.paths"):
        report = label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="hamster"),
                             client([dead, *server.urls]))
    assert report.total["ok"] == report.frames
    down, up = report.endpoints
    assert down["answers"] == 0 and down["ejections"] >= 1 and "ConnectError" in down["last_error"]
    assert up["answers"] == report.frames
    assert "out of rotation" in caplog.text


def test_server_errors_and_timeouts_are_retried_elsewhere(work_copy, path_server):
    flaky = path_server(work_copy, 2, "--error-rate", 0.25, "--timeout-rate", 0.05, "--hang", 0.5, "--seed", 3)
    report = label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="hamster"),
                         client(flaky.urls, timeout_s=0.2, max_attempts=20, give_up_after_s=30))
    assert report.total["ok"] == report.frames  # every frame answered in the end
    assert flaky.total("errors") > 0 and flaky.total("hangs") > 0
    frames = [f for n in PathStore(report.store).episodes() for f in PathStore(report.store).read(n).record["frames"]]
    assert max(f["attempts"] for f in frames) > 1
    # Every attempt reached the server; retries cover at least the injected faults (a request
    # sent while the server hangs on an earlier one waits behind it and times out too).
    assert sum(f["attempts"] for f in frames) == flaky.total("requests")
    assert sum(f["attempts"] - 1 for f in frames) >= flaky.total("errors") + flaky.total("hangs")


def test_malformed_answers_get_an_outcome_and_a_fallback(work_copy, path_server):
    server = path_server(work_copy, 2, "--malformed-rate", 1.0, "--seed", 1)
    report = label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="hamster"), client(server.urls))
    t = report.total
    assert "WARNING: only" in report.summary() and "maniflow inspect" in report.summary()
    assert t["ok"] + t["repaired"] + t["failed"] + t["error"] == report.frames
    assert t["repaired"] > 0 and t["failed"] > 0 and t["error"] == 0
    assert t["reasons"] == {"no <ans> tag and no points": t["failed"]}
    for number in PathStore(report.store).episodes():
        ep = PathStore(report.store).read(number)
        for frame, (status, source) in enumerate(zip(ep.status, ep.source)):
            if status == "failed":
                assert source != frame and ep.status[source] in ("ok", "repaired")
                assert ep.paths[frame] == ep.paths[source] and ep.record["frames"][frame]["raw"]


def test_short_max_tokens_cuts_answers_off_like_the_real_server(work_copy, path_server):
    server = path_server(work_copy, 1)
    report = label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="hamster", max_tokens=40),
                         client(server.urls))
    # Cut to one point, an answer is no path (degenerate); every answer was cut.
    assert report.total["repaired"] + report.total["reasons"]["degenerate: every point in one pixel"] == report.frames
    assert report.total["repaired"] > report.frames / 2
    assert report.total["repairs"]["answer cut off before </ans>"] == report.frames


def test_no_reachable_endpoint_fails_clearly_and_quickly(work_copy):
    start = time.monotonic()
    with pytest.raises(NoEndpointAvailable) as err:
        label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="hamster"),
                    client(["http://127.0.0.1:9", "http://127.0.0.1:19"], give_up_after_s=1.0))
    assert time.monotonic() - start < 10
    assert "http://127.0.0.1:9: ConnectError" in str(err.value) and "http://127.0.0.1:19" in str(err.value)


def test_wrong_url_or_model_is_reported_not_retried_forever(work_copy, path_server):
    server = path_server(work_copy, 1, "--models", "HAMSTER_dev")
    # An OpenAI-compatible base without /v1 hits the HAMSTER route... so use a path that does not exist.
    with pytest.raises(NoEndpointAvailable, match="HTTP 404.*/v1 prefix"):
        label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="openai"),
                    client([server.urls[0] + "/openai"]))
    assert server.stats()["answered"] == 0
    # HAMSTER's answer to a model it was not started with: HTTP 500 with its message. Not a
    # transient error: the run stops at once (not after give_up_after_s), naming the model.
    start = time.monotonic()
    with pytest.raises(RequestsRejected, match="HTTP 500: The endpoint is configured to use the model HAMSTER_dev, "
                       "but the request model is HAMSTER_13b"):
        label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="hamster", model="HAMSTER_13b"),
                    client(server.urls, give_up_after_s=60.0, max_attempts=50))
    assert time.monotonic() - start < 10 and server.stats()["requests"] == 1


def test_the_loopback_server_answers_like_hamster_where_the_client_can_tell(work_copy, path_server):
    server = path_server(work_copy, 1, "--models", "HAMSTER_dev")
    rgb = FramesStore(Workspace(work_copy).frames("clean", "click_bell")).rgb(0)[3]
    body = request_body(jpeg_data_url(rgb), "click the bell", WIRES["hamster"], "HAMSTER_dev", 512)
    url = server.urls[0] + "/chat/completions"
    del body["max_tokens"]  # HAMSTER's default is 512 tokens: a whole answer
    reply = httpx.post(url, json=body, timeout=30)
    assert reply.status_code == 200 and reply.json()["choices"][0]["finish_reason"] == "stop"
    bad_image = {**body, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}, {"type": "text", "text": "x"}]}]}
    reply = httpx.post(url, json=bad_image, timeout=30)
    assert reply.status_code == 500 and "decodable image" in reply.json()["error"]
    reply = httpx.post(url, json={"model": "HAMSTER_dev", "messages": "hello"}, timeout=30)
    assert reply.status_code == 422 and reply.json()["detail"][0]["loc"] == ["body"]
    system = {**body, "messages": [{**body["messages"][0], "role": "system"}]}
    reply = httpx.post(url, json=system, timeout=30)
    assert reply.status_code == 422 and "'user' or 'assistant'" in reply.json()["detail"][0]["msg"]
    # A request the server cannot read takes the endpoint out at once: no retries.
    with pytest.raises(RequestsRejected, match="HTTP 422"):
        PathClient(client(server.urls, max_attempts=50)).run(iter([Job("bad", b'{"model": "HAMSTER_dev"}')]),
                                                            lambda job, answer: None)


def test_known_perturbations_are_measured_back(work_copy, path_server):
    """Answers moved by (0.05, 0.02) of a 320x240 frame, gripper states inverted: path-quality
    must measure 16.7 px at the start, the end and in shape, and no gripper agreement."""
    server = path_server(work_copy, 2, "--shift", "0.05,0.02", "--flip-gripper")
    label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="hamster"), client(server.urls))
    q = task_quality(work_copy, "hamster", "clean", "click_bell")
    shift = np.hypot(0.05 * 320, 0.02 * 240)
    # Medians: points pushed past the border are clipped there, so some frames measure less.
    for metric in ("start_px", "end_px", "frechet_px"):
        assert np.median(q.metrics[metric]) == pytest.approx(shift, abs=0.1), metric
    assert np.nanmean(q.metrics["gripper"]) < 0.02
    unshifted = path_server(work_copy, 1)
    label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="hamster", label="exact"),
                client(unshifted.urls))
    exact = task_quality(work_copy, "exact", "clean", "click_bell")
    assert np.median(exact.metrics["frechet_px"]) < 0.05 and np.nanmean(exact.metrics["gripper"]) > 0.98


def test_qwen_json_answers_are_declared_with_their_coordinates(work_copy, path_server, caplog):
    server = path_server(work_copy, 1)
    v1 = client([server.urls[0] + "/v1"])
    with pytest.raises(ValueError, match="declare coords"):
        ProviderConfig(kind="qwen")
    report = label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="qwen", coords="thousand"), v1)
    assert report.total["ok"] == report.frames and not report.warnings()
    frame = PathStore(report.store).read(0).record["frames"][5]
    assert frame["raw"].startswith("```json") and frame["labels"][0] == "waypoint 1"
    assert all(p[2] is None for p in frame["path"])  # the format has no gripper states: none invented
    q = task_quality(work_copy, "qwen", "clean", "click_bell")
    assert np.median(q.metrics["start_px"]) < 0.4  # a 0-1000 grid: 0.32 px steps across 320 px
    assert np.isnan(q.metrics["gripper"]).all()
    # Read as pixels the same answers mostly fall outside the image: re-parsed, not asked again,
    # and said loudly.
    requests = server.stats()["requests"]
    with caplog.at_level(logging.WARNING, "maniflow.paths"):
        report = label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="qwen", coords="pixel"), v1)
    assert report.asked == 0 and server.stats()["requests"] == requests
    assert "fall outside the image read as 'pixel' coordinates" in report.summary()
    assert "fall outside the image" in caplog.text
    # Qwen2.5-VL answers in pixels of the image its processor resized (320x240 -> 308x252): read
    # as such they are right; read as pixels of the frame sent they are off by up to 4%.
    qwen25 = path_server(work_copy, 1, "--json-coords", "smart_resize")
    v1 = client([qwen25.urls[0] + "/v1"])
    label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="qwen", coords="smart_resize", label="q25"), v1)
    assert np.median(task_quality(work_copy, "q25", "clean", "click_bell").metrics["start_px"]) < 0.8
    label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="qwen", coords="pixel", label="q25"), v1)
    assert np.median(task_quality(work_copy, "q25", "clean", "click_bell").metrics["start_px"]) > 3


def test_a_prompt_file_changes_the_store_identity(work_copy, path_server, tmp_path):
    server = path_server(work_copy, 1)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text('Task: <quest>{quest}</quest>. Give the gripper path as [{"point_2d": [x, y]}].')
    with pytest.raises(ValueError, match="no {quest} placeholder"):
        bad = tmp_path / "bad.txt"
        bad.write_text("Where does the gripper go?")
        ProviderConfig(kind="qwen", coords="thousand", prompt_file=str(bad))
    cfg = ProviderConfig(kind="qwen", coords="thousand", prompt_file=str(prompt))
    report = label_paths(work_copy, "clean", "click_bell", cfg, client([server.urls[0] + "/v1"]))
    assert report.total["ok"] == report.frames
    assert PathStore(report.store).provider()["identity"]["prompt_sha"] == prompt_sha(prompt.read_text())
    prompt.write_text(prompt.read_text() + " Be brief.")
    with pytest.raises(ProviderMismatch):
        label_paths(work_copy, "clean", "click_bell", cfg, client([server.urls[0] + "/v1"]))


def test_every_nth_frame_is_asked_and_denser_asking_later_reuses_the_answers(work_copy, path_server):
    server = path_server(work_copy, 2, "--batch", "3")
    report = label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="hamster", every=5),
                         client(server.urls, in_flight=3))
    store = PathStore(report.store)
    lengths = [store.read(n).num_frames for n in store.episodes()]
    assert report.asked == server.total("requests") == sum(-(-n // 5) for n in lengths)
    assert report.total["skipped"] == sum(lengths) - report.asked
    assert max(server.stats(i)["max_in_flight"] for i in range(2)) == 3  # a batching server takes 3 at once
    ep = store.read(0)
    usable = [s for s in range(0, ep.num_frames, 5) if ep.status[s] in ("ok", "repaired")]
    for t, (status, source) in enumerate(zip(ep.status, ep.source)):
        assert (status == "skipped") == (t % 5 != 0)
        if status == "skipped":  # the nearest usable asked frame's path, ties to the earlier
            assert source == min(usable, key=lambda s: (abs(s - t), s)) and ep.paths[t] == ep.paths[source]
    report = label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="hamster"), client(server.urls))
    assert report.asked == sum(lengths) - sum(-(-n // 5) for n in lengths)
    assert server.total("requests") == sum(lengths) and report.total["skipped"] == 0


def test_api_key_comes_from_the_environment_and_never_reaches_the_logs(work_copy, path_server, caplog,
                                                                       monkeypatch):
    secret = "sk-test-5f2b9c0e"
    server = path_server(work_copy, 1, "--api-key-env", "SERVER_KEY", env={"SERVER_KEY": secret})
    with pytest.raises(ValueError, match="MY_VLM_KEY is not set"):
        label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="openai"),
                    client([server.urls[0] + "/v1"], api_key_env="MY_VLM_KEY"))
    monkeypatch.setenv("MY_VLM_KEY", "sk-wrong-key-123")
    with caplog.at_level(logging.DEBUG), pytest.raises(NoEndpointAvailable, match="HTTP 401") as err:
        label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="openai"),
                    client([server.urls[0] + "/v1"], api_key_env="MY_VLM_KEY"))
    assert "sk-wrong-key-123" not in caplog.text + str(err.value)
    monkeypatch.setenv("MY_VLM_KEY", secret)
    with caplog.at_level(logging.DEBUG):
        report = label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="openai"),
                             client([server.urls[0] + "/v1"], api_key_env="MY_VLM_KEY"))
    assert report.total["ok"] == report.frames
    assert secret not in caplog.text
    assert secret not in "".join(p.read_text() for p in report.store.rglob("*.json*"))


def test_killed_run_resumes_asking_only_what_is_missing(work_copy, path_server):
    server = path_server(work_copy, 1, "--latency", 0.02)
    store_dir = work_copy / "paths" / "hamster" / "clean" / "open_microwave"
    cmd = [MANIFLOW, "paths", "--work", str(work_copy), "--envs", "clean", "--tasks", "open_microwave",
           "--endpoints", server.urls[0]]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60

    def answered_lines() -> int:
        return sum(len(p.read_text().splitlines()) - 1 for p in store_dir.glob("*.journal.jsonl"))

    # Kill once the first episode is finished and the second is half way.
    while not (list(store_dir.glob("episode*.json")) and answered_lines() >= 20):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    asked_before = server.stats()["answered"]
    frames = FramesStore(Workspace.of(work_copy).frames("clean", "open_microwave"))
    store = PathStore(store_dir)
    kept = {int(n): store.load_answers(int(n), rec["fingerprint"])
            for n, rec in zip(frames.episode_index, frames.episodes)}
    have = sum(len(a) for a in kept.values())
    assert 0 < have < frames.num_frames

    report = label_paths(work_copy, "clean", "open_microwave", ProviderConfig(kind="hamster"),
                         client(server.urls))
    assert report.reused == have and report.asked == frames.num_frames - have
    assert server.stats()["answered"] - asked_before == report.asked  # nothing asked twice
    assert report.total["ok"] == frames.num_frames  # nothing lost
    assert not list(store_dir.glob("*.journal.jsonl")) and not list(store_dir.glob("*.tmp-*"))
    for number, answers in kept.items():  # answers from before the kill are kept as they were
        stored = store.read(number).record["frames"]
        for t, a in answers.items():
            assert (stored[t]["raw"], stored[t]["latency_s"]) == (a["raw"], a["latency_s"])


def test_cli_labels_with_a_progress_line_and_endpoint_ranges(work_copy, path_server):
    from maniflow.paths.client import parse_endpoints

    assert parse_endpoints("http://h:8000-8002,http://g:9000/v1") == (
        "http://h:8000", "http://h:8001", "http://h:8002", "http://g:9000/v1")
    assert parse_endpoints("http://h:8000-8001/v1") == ("http://h:8000/v1", "http://h:8001/v1")
    server = path_server(work_copy, 2)
    result = subprocess.run([MANIFLOW, "paths", "--work", str(work_copy), "--tasks", "click_bell",
                             "--endpoints", ",".join(server.urls)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "clean/click_bell [hamster]" in result.stdout and "cluttered/click_bell [hamster]" in result.stdout
    assert "parsed 100.0%" in result.stdout
    assert "/s" in result.stderr  # progress
    summary = json.loads((work_copy / "paths/hamster/cluttered/click_bell/summary.json").read_text())
    assert summary["total"]["ok"] == summary["total"]["frames"] > 0
    text = subprocess.run([MANIFLOW, "inspect", str(work_copy / "paths/hamster/cluttered/click_bell")],
                          capture_output=True, text=True, timeout=60).stdout
    assert "provider kind hamster, model HAMSTER_dev" in text
    assert f"3 episodes, {summary['total']['frames']} frames: ok {summary['total']['ok']}" in text


@pytest.mark.parametrize("shared", [True, False])
def test_in_flight_limits_hold_across_processes_sharing_a_slot_dir(work_copy, path_server, tmp_path, shared):
    server = path_server(work_copy, 1, "--latency", 0.03)
    procs = [subprocess.Popen([MANIFLOW, "paths", "--work", str(work_copy), "--envs", env, "--tasks", "click_bell",
                               "--episodes", "0", "--endpoints", server.urls[0],
                               *(["--slot-dir", str(tmp_path / "slots")] if shared else [])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for env in ("clean", "cluttered")]
    assert [p.wait(120) for p in procs] == [0, 0]
    stats = server.stats()
    assert stats["answered"] > 60
    # Two processes, one endpoint that takes one request at a time: with a shared slot directory
    # the server never sees two at once; without, it does (the check can fail).
    assert stats["max_in_flight"] == (1 if shared else 2)
