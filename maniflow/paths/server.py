"""`maniflow serve-paths`: a loopback VLM path server that speaks the real protocols, backed by
the oracle, with injectable faults. It stands in for a 13B model that cannot run here.

    POST /chat/completions      HAMSTER protocol: reply content is a list of parts
    POST /v1/chat/completions   OpenAI-compatible: reply content is a string
    GET  /health, GET /stats    liveness; request and fault counters (not part of the protocol)

The question decides the answer format: the PEEK prompt gets a PEEK answer relative to the
384x384 centre crop it was sent, a prompt asking for "point_2d" a Qwen-VL JSON point list (in
0-1000 as Qwen3-VL, or with `json_coords` pixels of the image or of Qwen2.5-VL's resized
image), any other prompt a HAMSTER answer. The server knows nothing
but the image and the prompt, like a real model: it finds the frame by matching a thumbnail of
the image against the frames stores under `--work` whose episodes have that instruction, and
answers with the oracle path of that frame, optionally perturbed by a known amount (`shift`,
`flip_gripper`: what `maniflow path-quality` must measure back). Like a HAMSTER server it
answers one request at a time per port (`batch` > 1: that many at once, as a batching vLLM or
SGLang server), answers a model name it was not started with (when given) by HTTP 500 with
HAMSTER's message, an image it cannot decode by HTTP 500, a request it cannot read by HTTP
422 (FastAPI's validation error), and cuts answers off at `max_tokens` (default 512, as
HAMSTER's; counted roughly like a LLaMA tokenizer: one token per digit or symbol).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from maniflow.frames import FramesStore, IncompleteStoreError
from maniflow.paths.protocol import (
    PEEK_SIZE,
    centre_crop_box,
    decode_data_url,
    format_hamster_answer,
    format_peek_answer,
    format_points_json,
    frame_to_crop,
)
from maniflow.paths.providers.oracle import store_oracle_paths
from maniflow.paths.store import fallback_sources, smart_resize
from maniflow.workspace import Workspace

log = logging.getLogger("maniflow.paths.server")

# A frame is recognised in two steps: nearest thumbnails (coarse, fast), then the closest of
# those at a finer size, which separates frames where the arm moved a few pixels.
COARSE, FINE, SHORTLIST = 16, 96, 16  # thumbnail widths (full frame; the PEEK crop is square)
MALFORMED_KINDS = ("tag_first", "ellipsis", "truncated", "out_of_range", "no_ans", "garbage")
_QUEST = re.compile(r"<quest>(.*?)</quest>", re.DOTALL)
_TOKENS = re.compile(r"\d|[A-Za-z]+|[^\sA-Za-z\d]")


@dataclass(frozen=True)
class Faults:
    latency_s: float = 0.0  # service time per request (processing included)
    jitter_s: float = 0.0  # uniform extra latency in [0, jitter_s]
    error_rate: float = 0.0  # HTTP 500 {"error": ...}
    timeout_rate: float = 0.0  # hang for hang_s before answering (the client should time out)
    hang_s: float = 30.0
    malformed_rate: float = 0.0  # answer broken in one of MALFORMED_KINDS
    outage_after: int | None = None  # after this many answers, every request gets 503 (a server gone down)
    shift: tuple[float, float] = (0.0, 0.0)  # every answer point moved by this much (fraction of the image)
    flip_gripper: bool = False  # every gripper state inverted
    seed: int = 0

    def perturb(self, path: list) -> list:
        """The oracle path as this server's model answers it (clipped to the image)."""
        dx, dy = self.shift
        return [(min(max(x + dx, 0.0), 1.0), min(max(y + dy, 0.0), 1.0), (1 - g) if self.flip_gripper else g)
                for x, y, g in path]


@dataclass
class _Views:
    """Thumbnails of a frames store's frames as one kind of request shows them."""

    coarse: np.ndarray  # (N, d) float32
    fine: np.ndarray  # (N, D) uint8


@dataclass
class _Task:
    """Thumbnails and oracle paths of one frames store, loaded on first use."""

    store: Path
    views: dict[bool, _Views] = field(default_factory=dict)  # keyed by "is a PEEK crop"
    paths: list = field(default_factory=list)  # per row
    size: tuple[int, int] = (0, 0)  # (w, h)


class OracleIndex:
    """Find the frame an image shows, among the frames stores under `work`."""

    def __init__(self, work, num_points: int = 10):
        self.num_points = num_points
        self.by_instruction: dict[str, list[_Task]] = {}
        self.tasks: list[_Task] = []
        for path in Workspace.of(work).all_frames_stores():
            try:
                frames = FramesStore(path)
            except IncompleteStoreError:
                continue
            task = _Task(path)
            self.tasks.append(task)
            for record in frames.episodes:
                for text in record["instructions"]["seen"] + record["instructions"]["unseen"]:
                    lst = self.by_instruction.setdefault(text.strip(), [])
                    if task not in lst:
                        lst.append(task)
        self._lock = threading.Lock()

    def _load(self, task: _Task) -> _Task:
        with self._lock:
            if task.views:
                return task
            frames = FramesStore(task.store)
            views = {False: ([], []), True: ([], [])}
            paths = []
            for i in range(len(frames.episode_ends)):
                for frame in frames.rgb(i):
                    for crop in (False, True):
                        coarse, fine = _thumbnails(_as_sent(frame, crop))
                        views[crop][0].append(coarse)
                        views[crop][1].append(fine)
                oracle, _, _, degenerate = store_oracle_paths(frames, i, self.num_points)
                # A model always draws something: where the oracle has no path (an arm at rest
                # to the end), answer with the nearest frame's, as the oracle's own fallback does.
                source = fallback_sources(np.array([d is None for d in degenerate]), "nearest")
                paths.extend(oracle[s if s >= 0 else t] for t, s in enumerate(source))
            task.size = (frame.shape[1], frame.shape[0])
            task.paths = paths
            task.views = {crop: _Views(np.stack(c), np.stack(f)) for crop, (c, f) in views.items()}
            log.info("loaded %s: %d frames", task.store, len(paths))
            return task

    def answer(self, rgb: np.ndarray, instruction: str, peek: bool) -> tuple[list, tuple[int, int]]:
        """The oracle path of the frame the image shows, and that frame's (width, height)."""
        candidates = self.by_instruction.get(instruction.strip()) or self.tasks
        if not candidates:
            raise LookupError("no frames stores to answer from")
        coarse, fine = _thumbnails(rgb)
        best = None
        for task in candidates:
            task = self._load(task)
            views = task.views[peek]
            d = ((views.coarse - coarse) ** 2).sum(axis=1)
            short = np.argsort(d)[:SHORTLIST]
            d_fine = np.abs(views.fine[short].astype(np.int32) - fine).sum(axis=1)
            row = int(short[d_fine.argmin()])
            if best is None or d_fine.min() < best[0]:
                best = (int(d_fine.min()), task, row)
        _, task, row = best
        return task.paths[row], task.size


def format_answer(path: list, kind: str, size: tuple[int, int], json_coords: str = "thousand") -> str:
    """A path (of a size (w, h) frame) written as the model kind answers."""
    if kind == "peek":
        crop = frame_to_crop(path, *size)
        return format_peek_answer([(min(max(x, 0), 1), min(max(y, 0), 1), None) for x, y, _ in crop])
    if kind == "points_json":
        scale = {"thousand": (1000.0, 1000.0), "pixel": size, "smart_resize": smart_resize(*size)}[json_coords]
        return format_points_json(path, scale)
    return format_hamster_answer(path)


def _as_sent(frame: np.ndarray, crop: bool) -> np.ndarray:
    """The frame as the client sends it: whole, or PEEK's centre crop at 384x384."""
    if not crop:
        return frame
    x0, y0, side = centre_crop_box(frame.shape[1], frame.shape[0])
    return cv2.resize(frame[y0:y0 + side, x0:x0 + side], (PEEK_SIZE, PEEK_SIZE), interpolation=cv2.INTER_AREA)


def _thumbnails(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coarse float32, fine uint8) thumbnails of an RGB image, keeping its aspect ratio."""
    h, w = image.shape[:2]

    def shrink(width):
        return cv2.resize(image, (width, max(1, round(width * h / w))), interpolation=cv2.INTER_AREA).ravel()

    return shrink(COARSE).astype(np.float32), shrink(FINE)


def truncate_tokens(text: str, max_tokens: int) -> tuple[str, bool]:
    """Cut the text after `max_tokens` tokens; returns (text, was_cut)."""
    for i, m in enumerate(_TOKENS.finditer(text)):
        if i == max_tokens:
            return text[:m.start()].rstrip(), True
    return text, False


def malform(text: str, kind: str, rng: random.Random) -> str:
    """Break an answer the way real VLM answers break (REFERENCE section 2)."""
    if kind == "tag_first":
        return text.replace("<ans>[", "<ans>[<action>Close Gripper</action>, ", 1)
    if kind == "ellipsis":
        return text.replace("]</ans>", ", ...]</ans>", 1)
    if kind == "truncated":
        end = text.find("</ans>")
        return text[:rng.randint(len(text) // 2, max(len(text) // 2, end - 1))]
    if kind == "out_of_range":
        return re.sub(r"\((-?[\d.]+),", "(1.2,", text, count=1)
    if kind == "no_ans":
        return re.sub(r"</?ans>", "", text)
    return "I am not able to determine a trajectory from this image."


class _State:
    def __init__(self, index: OracleIndex, faults: Faults, models: tuple[str, ...], port_seed: int,
                 api_key: str | None, batch: int, json_coords: str):
        self.index = index
        self.api_key = api_key
        self.faults = faults
        self.models = models
        self.json_coords = json_coords
        self.rng = random.Random(port_seed)
        self.lock = asyncio.Semaphore(batch)
        self.counts = {"requests": 0, "answered": 0, "errors": 0, "hangs": 0, "malformed": 0,
                       "truncated": 0, "rejected": 0, "max_in_flight": 0}
        self.in_flight = 0


def make_app(index: OracleIndex, faults: Faults = Faults(), models: tuple[str, ...] = (), port_seed: int = 0,
             api_key: str | None = None, batch: int = 1, json_coords: str = "thousand"):
    app = FastAPI(title="maniflow loopback path server")
    state = _State(index, faults, models, port_seed, api_key, batch, json_coords)

    async def completions(request: Request, string_content: bool):
        """Count concurrent requests (a client must not send more than the server handles)."""
        state.in_flight += 1
        state.counts["max_in_flight"] = max(state.counts["max_in_flight"], state.in_flight)
        try:
            return await answer(request, string_content)
        finally:
            state.in_flight -= 1

    async def answer(request: Request, string_content: bool):
        counts = state.counts
        counts["requests"] += 1
        if state.api_key and request.headers.get("authorization") != f"Bearer {state.api_key}":
            counts["rejected"] += 1
            return JSONResponse({"error": "invalid API key"}, status_code=401)
        arrived = time.monotonic()
        try:
            body = json.loads(await request.body())
            question = _question(body)
        except ValueError as e:  # FastAPI's answer to a body its request model cannot read
            counts["rejected"] += 1
            return JSONResponse({"detail": [{"type": "value_error", "loc": ["body"], "msg": str(e)}]},
                                status_code=422)
        reading = time.monotonic() - arrived
        async with state.lock:  # `batch` requests at a time (1: a HAMSTER server)
            start = time.monotonic() - reading  # the latency budget covers reading the request
            f = state.faults
            draw = state.rng.random()
            latency = f.latency_s + state.rng.uniform(0, f.jitter_s)
            model = body.get("model")
            if state.models and model not in state.models:
                counts["rejected"] += 1
                return JSONResponse({"error": f"The endpoint is configured to use the model "
                                     f"{' or '.join(state.models)}, but the request model is {model}"},
                                    status_code=500)
            if f.outage_after is not None and counts["answered"] >= f.outage_after:
                counts["errors"] += 1
                return JSONResponse({"error": "injected outage"}, status_code=503)
            if draw < f.error_rate:
                counts["errors"] += 1
                await asyncio.sleep(latency)
                return JSONResponse({"error": "injected server error"}, status_code=500)
            if draw < f.error_rate + f.timeout_rate:
                counts["hangs"] += 1
                await asyncio.sleep(f.hang_s)
            try:
                text = await asyncio.to_thread(_answer, state, *question)
            except (ValueError, LookupError) as e:  # HAMSTER returns every exception as 500
                counts["rejected"] += 1
                return JSONResponse({"error": str(e)}, status_code=500)
            if draw < f.error_rate + f.timeout_rate + f.malformed_rate:
                counts["malformed"] += 1
                text = malform(text, state.rng.choice(MALFORMED_KINDS), state.rng)
            text, cut = truncate_tokens(text, int(body.get("max_tokens") or 512))
            counts["truncated"] += cut
            await asyncio.sleep(max(0.0, latency - (time.monotonic() - start)))
            counts["answered"] += 1
        content = text if string_content else [{"type": "text", "text": text}]
        return JSONResponse({"object": "chat.completion", "model": model,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                          "finish_reason": "length" if cut else "stop"}]})

    @app.post("/chat/completions")
    async def hamster_completions(request: Request):
        return await completions(request, string_content=False)

    @app.post("/v1/chat/completions")
    async def openai_completions(request: Request):
        return await completions(request, string_content=True)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/stats")
    async def stats():
        return state.counts

    return app


def _question(body) -> tuple[str, str]:
    """(image URL, prompt) of a chat-completions body; ValueError when it has not that shape."""
    try:
        if not isinstance(body.get("model"), str):
            raise KeyError("model")
        if any(m.get("role") not in ("user", "assistant") for m in body["messages"]):
            raise ValueError("each message's role must be 'user' or 'assistant'")
        content = body["messages"][-1]["content"]
        image = next(p["image_url"]["url"] for p in content if p.get("type") == "image_url")
        prompt = next(p["text"] for p in content if p.get("type") == "text")
    except (KeyError, IndexError, TypeError, AttributeError, StopIteration):
        raise ValueError("expected a model name and one user message with an image_url part and a text part") \
            from None
    return image, prompt


def _answer(state: _State, image: str, prompt: str) -> str:
    quest = _QUEST.search(prompt)
    kind = "peek" if "TRAJECTORY:" in prompt else "points_json" if "point_2d" in prompt else "hamster"
    path, size = state.index.answer(decode_data_url(image), quest.group(1) if quest else "", kind == "peek")
    return format_answer(state.faults.perturb(path), kind, size, state.json_coords)


class _Server(uvicorn.Server):
    """uvicorn.Server without its own signal handling, so several run in one event loop."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def serve_paths(work, ports: list[int], host: str = "127.0.0.1", faults: Faults = Faults(),
                models: tuple[str, ...] = (), ready_file: Path | None = None, api_key: str | None = None,
                batch: int = 1, json_coords: str = "thousand") -> None:
    """Serve on every port (0 = any free port) until SIGINT/SIGTERM. Writes the base URLs to
    `ready_file` (JSON) once listening. With `api_key`, requests need `Authorization: Bearer <key>`
    (as vLLM's --api-key). `batch`: requests answered at once per port."""
    index = OracleIndex(work)
    if not index.tasks:
        raise FileNotFoundError(f"no complete frames stores under {Path(work) / 'frames'}; run maniflow extract")
    sockets = []
    for port in ports:
        # proto IPPROTO_TCP so asyncio sets TCP_NODELAY on accepted connections: with proto 0 it
        # does not, and Nagle + delayed ACK add 40 ms to every keep-alive request.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sockets.append(sock)
    urls = [f"http://{host}:{s.getsockname()[1]}" for s in sockets]
    servers = [_Server(uvicorn.Config(make_app(index, faults, models, faults.seed * 1000 + i, api_key, batch,
                                               json_coords),
                                      log_level="warning", access_log=False, timeout_keep_alive=60))
               for i in range(len(sockets))]

    async def main():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: [setattr(s, "should_exit", True) for s in servers])
        tasks = [asyncio.create_task(s.serve(sockets=[sock])) for s, sock in zip(servers, sockets)]
        while not all(s.started for s in servers):
            await asyncio.sleep(0.01)
        if ready_file is not None:
            tmp = Path(f"{ready_file}.tmp")
            tmp.write_text(json.dumps({"urls": urls}))
            tmp.replace(ready_file)
        print("serving paths (oracle) on " + " ".join(urls), flush=True)
        await asyncio.gather(*tasks)

    asyncio.run(main())
