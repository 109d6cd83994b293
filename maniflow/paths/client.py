"""Asynchronous chat-completions client over several endpoints at once.

Each endpoint gets `in_flight` worker coroutines (default 1: a HAMSTER server answers one
request at a time). Workers take the next job from one shared queue, so a slow endpoint
simply takes fewer jobs and never holds the others back. A failed request (connection
error, timeout, HTTP 5xx/429, unreadable reply) goes back on the queue for any endpoint, and
the failing endpoint backs off exponentially. After `eject_after` consecutive failures it
leaves the rotation and gets one probe request after `probe_after_s`, then at doubling
intervals while probes fail. Other HTTP 4xx answers (422: a request the server cannot read),
and HAMSTER's HTTP 500 for a model name it was not started with, mean the endpoint is
misconfigured (wrong URL, model or key): it leaves for good, and when every endpoint has left
the run stops at once with `RequestsRejected`, naming each endpoint's answer. When no endpoint
is usable for `give_up_after_s`, the run stops with `NoEndpointAvailable`, naming each
endpoint's last error. A job that fails `max_attempts` times ends with an error outcome; the run goes on.

Jobs come from a plain iterator advanced in a thread, so reading frames and encoding JPEGs
overlap with the network, and only a bounded number of encoded requests exist at once.

Several processes on one host (Dask workers, parallel `maniflow paths`) share the endpoints'
in-flight limits through `slot_dir`: a request is sent only while holding one of the
endpoint's `in_flight` lock files there (fcntl locks, released by the OS if a process dies).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pydantic

from maniflow.config import config, csv, setting
from maniflow.paths.protocol import reply_text

log = logging.getLogger("maniflow.paths")


def parse_endpoints(text: str) -> tuple[str, ...]:
    """Comma-separated base URLs; a port range expands: http://host:8000-8003 -> four URLs."""
    urls = []
    for item in csv(text):
        m = re.fullmatch(r"(.*:)(\d+)-(\d+)(/.*)?", item)
        if m:
            urls += [f"{m[1]}{port}{m[4] or ''}" for port in range(int(m[2]), int(m[3]) + 1)]
        else:
            urls.append(item)
    return tuple(urls)


@config
class ClientConfig:
    """How the VLM servers are reached."""

    endpoints: tuple[str, ...] = setting(
        help="base URLs; a port range expands: http://127.0.0.1:8000-8003 (default $MANIFLOW_VLM_ENDPOINTS or "
        "http://127.0.0.1:8000)", parse=parse_endpoints,
        factory=lambda: parse_endpoints(os.environ.get("MANIFLOW_VLM_ENDPOINTS", "http://127.0.0.1:8000")))
    in_flight: int = setting(1, "requests at a time per endpoint (a HAMSTER server answers one at a time)")
    timeout_s: float = setting(120.0, "seconds per request, after connecting", flag="timeout")
    connect_timeout_s: float = setting(5.0, "seconds to connect")
    max_attempts: int = setting(5, "tries per frame, over all endpoints", flag="attempts")
    backoff_s: float = setting(0.25, "pause after an endpoint's 2nd failure in a row; doubles per further one")
    backoff_max_s: float = setting(30.0, "longest such pause")
    eject_after: int = setting(5, "consecutive failures that take an endpoint out of rotation")
    probe_after_s: float = setting(2.0, "seconds before an endpoint out of rotation is tried again; doubles while "
                                   "it keeps failing", flag="probe-after")
    probe_max_s: float = setting(60.0, "longest wait between probes")
    give_up_after_s: float = setting(60.0, "stop when no endpoint answered for this many seconds", flag="give-up")
    api_key_env: str | None = setting(None, "environment variable holding a bearer token for the server "
                                      "(never logged)")
    slot_dir: str | None = setting(None, "share the endpoints' in-flight limits with other processes on this host "
                                   "(Dask workers, several `maniflow paths`) through lock files in this directory")

    @pydantic.field_validator("endpoints", mode="before")
    @classmethod
    def _expand(cls, value):
        return parse_endpoints(value) if isinstance(value, str) else \
            tuple(url for item in value for url in parse_endpoints(item))

    def __post_init__(self):
        if self.in_flight < 1 or self.max_attempts < 1 or self.eject_after < 1:
            raise ValueError("in_flight, max_attempts and eject_after must be at least 1")


@dataclass
class Job:
    key: Hashable
    body: bytes  # JSON request body
    attempts: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class Answer:
    text: str | None  # None: no answer after max_attempts (see error)
    endpoint: str | None = None
    latency_s: float | None = None
    attempts: int = 0
    error: str | None = None


class NoEndpointAvailable(RuntimeError):
    """Every endpoint failed for longer than the configured patience."""


class RequestsRejected(NoEndpointAvailable):
    """Every endpoint rejected the requests (wrong model name, URL, key or request): asking
    again changes nothing until the configuration does."""


# A VILA server (HAMSTER, PEEK) answers a model name it was not started with by HTTP 500 with
# this message (its server.py raises ValueError and returns every exception as 500).
MODEL_MISMATCH = "The endpoint is configured to use the model"


class _Transient(Exception):
    pass


class _Misconfigured(Exception):
    pass


@dataclass
class EndpointState:
    url: str
    requests: int = 0
    answers: int = 0
    failures: int = 0
    consecutive: int = 0
    busy_s: float = 0.0
    ejections: int = 0
    ejected: bool = False
    dead: bool = False  # misconfigured: never used again in this run
    probing: bool = False
    probe_at: float = 0.0
    probe_delay: float = 0.0
    last_error: str | None = None

    def summary(self) -> dict:
        return {"url": self.url, "requests": self.requests, "answers": self.answers,
                "failures": self.failures, "ejections": self.ejections,
                "mean_latency_s": round(self.busy_s / self.answers, 4) if self.answers else None,
                "usable": not (self.dead or self.ejected), "last_error": self.last_error}


class FileSlots:
    """At most `limit` requests in flight per endpoint across every process using `directory`."""

    def __init__(self, directory, limit: int):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.limit = limit

    @contextlib.asynccontextmanager
    async def hold(self, url: str):
        key = hashlib.sha256(url.encode()).hexdigest()[:16]
        while True:
            for i in range(self.limit):
                fd = os.open(self.dir / f"{key}-{i}.lock", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                try:
                    yield
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
                return
            await asyncio.sleep(random.uniform(0.002, 0.01))


def completions_url(base: str) -> str:
    """`{base}/chat/completions`; the base carries `/v1` for OpenAI-compatible servers."""
    return base.rstrip("/") + "/chat/completions"


class PathClient:
    def __init__(self, config: ClientConfig):
        if not config.endpoints:
            raise ValueError("no endpoints given")
        self.config = config
        self.endpoints = [EndpointState(url) for url in config.endpoints]
        self.slots = FileSlots(config.slot_dir, config.in_flight) if config.slot_dir else None

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        name = self.config.api_key_env
        if name:
            key = os.environ.get(name)
            if not key:
                raise ValueError(f"API key variable {name} is not set")
            headers["authorization"] = f"Bearer {key}"
        return headers

    def run(self, jobs: Iterator[Job], on_answer: Callable[[Job, Answer], None]) -> list[dict]:
        """Send every job, calling on_answer(job, answer) once per job (in the calling
        thread's event loop). Returns per-endpoint statistics."""
        return asyncio.run(self.run_async(jobs, on_answer))

    async def run_async(self, jobs: Iterator[Job], on_answer: Callable[[Job, Answer], None]) -> list[dict]:
        cfg = self.config
        slots = len(self.endpoints) * cfg.in_flight
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        # Encoded requests held ready: enough to ride over reading the next episode, few enough
        # to bound memory (~20 KB each).
        self._credits = asyncio.Semaphore(4 * slots + 32)
        self._outstanding = 0
        self._fed_all = False
        self._finished = asyncio.Event()
        self._on_answer = on_answer
        self._last_progress = time.monotonic()
        timeout = httpx.Timeout(cfg.timeout_s, connect=cfg.connect_timeout_s)
        limits = httpx.Limits(max_connections=slots, max_keepalive_connections=slots)
        async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=self.headers()) as http:
            workers = [asyncio.create_task(self._worker(http, ep)) for ep in self.endpoints
                       for _ in range(cfg.in_flight)]
            feeder = asyncio.create_task(self._feed(jobs))
            watchdog = asyncio.create_task(self._watchdog())
            finished = asyncio.create_task(self._finished.wait())
            pending = {feeder, watchdog, finished, *workers}
            try:
                while not self._finished.is_set():
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:  # surface any exception (watchdog, feeder, on_answer)
                        task.result()
            finally:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        return [ep.summary() for ep in self.endpoints]

    async def _feed(self, jobs: Iterator[Job]) -> None:
        while True:
            await self._credits.acquire()
            job = await asyncio.to_thread(next, jobs, None)
            if job is None:
                self._credits.release()
                break
            self._outstanding += 1
            self._queue.put_nowait(job)
        self._fed_all = True
        self._check_finished()
        await self._finished.wait()

    def _check_finished(self) -> None:
        if self._fed_all and self._outstanding == 0:
            self._finished.set()

    def _complete(self, job: Job, answer: Answer) -> None:
        self._outstanding -= 1
        self._credits.release()
        self._last_progress = time.monotonic()
        self._on_answer(job, answer)
        self._check_finished()

    async def _watchdog(self) -> None:
        """Fail the run when no endpoint has been usable for give_up_after_s."""
        cfg = self.config
        down_since = None
        while True:
            await asyncio.sleep(0.1)
            if all(ep.dead for ep in self.endpoints):
                raise RequestsRejected(self._why("every endpoint rejected the requests"))
            if all(ep.dead or ep.ejected for ep in self.endpoints):
                down_since = down_since or time.monotonic()
                if time.monotonic() - max(down_since, self._last_progress) > cfg.give_up_after_s:
                    raise NoEndpointAvailable(self._why(f"no endpoint answered for {cfg.give_up_after_s:g} s"))
            else:
                down_since = None

    def _why(self, headline: str) -> str:
        lines = [f"{headline}:"] + [f"  {ep.url}: {ep.last_error}" for ep in self.endpoints]
        return "\n".join(lines)

    async def _worker(self, http: httpx.AsyncClient, ep: EndpointState) -> None:
        cfg = self.config
        while True:
            if not await self._wait_usable(ep):
                return
            job = await self._queue.get()
            probe = ep.probing
            ep.requests += 1
            try:
                async with self.slots.hold(ep.url) if self.slots else contextlib.nullcontext():
                    start = time.monotonic()
                    text = await self._post(http, ep, job)
            except _Misconfigured as e:
                ep.dead, ep.last_error = True, str(e)
                log.error("endpoint %s taken out of this run: %s", ep.url, e)
                self._queue.put_nowait(job)  # not the job's fault
                return
            except _Transient as e:
                self._failed(ep, job, str(e), probe)
                if ep.consecutive >= 2:  # one failure in a row is noise; more means trouble
                    await asyncio.sleep(min(cfg.backoff_s * 2 ** (ep.consecutive - 2), cfg.backoff_max_s)
                                        * random.uniform(0.8, 1.2))
                continue
            latency = time.monotonic() - start
            if ep.ejected:
                log.warning("endpoint %s answers again; back in rotation", ep.url)
            ep.answers += 1
            ep.busy_s += latency
            ep.consecutive, ep.ejected, ep.probing = 0, False, False
            job.attempts += 1
            self._complete(job, Answer(text, ep.url, latency, job.attempts))

    async def _wait_usable(self, ep: EndpointState) -> bool:
        """Wait while the endpoint is out of rotation; one worker sends the probe when due."""
        while ep.ejected or ep.dead:
            if ep.dead:
                return False
            now = time.monotonic()
            if not ep.probing and now >= ep.probe_at:
                ep.probing = True
                return True
            await asyncio.sleep(min(max(ep.probe_at - now, 0.05), 0.5))
        return True

    def _failed(self, ep: EndpointState, job: Job, error: str, probe: bool) -> None:
        cfg = self.config
        ep.failures += 1
        ep.consecutive += 1
        ep.last_error = error
        ep.probing = False
        if probe or (not ep.ejected and ep.consecutive >= cfg.eject_after):
            if ep.ejected:
                ep.probe_delay = min(2 * ep.probe_delay, cfg.probe_max_s)
            else:
                ep.ejections += 1
                ep.probe_delay = cfg.probe_after_s
                log.warning("endpoint %s out of rotation after %d failures (%s); probing again in %g s",
                            ep.url, ep.consecutive, error, ep.probe_delay)
            ep.ejected = True
            ep.probe_at = time.monotonic() + ep.probe_delay
        job.attempts += 1
        job.errors.append(f"{ep.url}: {error}")
        if job.attempts >= cfg.max_attempts:
            self._complete(job, Answer(None, attempts=job.attempts,
                                       error=f"no answer after {job.attempts} attempts; last: {error}"))
        else:
            self._queue.put_nowait(job)

    async def _post(self, http: httpx.AsyncClient, ep: EndpointState, job: Job) -> str:
        url = completions_url(ep.url)
        try:
            response = await http.post(url, content=job.body)
        except httpx.TimeoutException:
            raise _Transient(f"timed out after {self.config.timeout_s:g} s") from None
        except httpx.TransportError as e:
            raise _Transient(f"{type(e).__name__}: {e}") from None
        error = _error_text(response) if response.status_code >= 400 else ""
        if response.status_code == 500 and error.startswith(MODEL_MISMATCH):
            raise _Misconfigured(f"POST {url} -> HTTP 500: {error}")
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise _Transient(f"HTTP {response.status_code}: {error}")
        if response.status_code >= 400:
            raise _Misconfigured(f"POST {url} -> HTTP {response.status_code}: {error}"
                                 + (" (OpenAI-compatible servers need the /v1 prefix in the endpoint)"
                                    if response.status_code == 404 else ""))
        try:
            return reply_text(response.json())
        except (ValueError, json.JSONDecodeError) as e:
            raise _Transient(f"unreadable reply: {e}") from None


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and "error" in body:
            err = body["error"]
            return str(err.get("message", err) if isinstance(err, dict) else err)[:300]
        if isinstance(body, dict) and "detail" in body:
            return str(body["detail"])[:300]
    except ValueError:
        pass
    return response.text[:300] or response.reason_phrase
