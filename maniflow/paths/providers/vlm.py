"""VLM servers over HTTP: HAMSTER (VILA-13B), PEEK (VILA-3B) and any OpenAI-compatible server
(HAMSTER's prompt, or Qwen-VL's JSON points). They differ only in their wire (prompt, frame
preparation, answer format, coordinates:
`maniflow.paths.protocol.WIRES`); requests go through `PathClient` (many endpoints, retries,
failover)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

from maniflow.paths.client import Job, PathClient
from maniflow.paths.protocol import WIRES, jpeg_data_url, prepare_image, prompt_sha, request_body
from maniflow.paths.providers import PathProvider, register
from maniflow.paths.store import parse_answer

log = logging.getLogger("maniflow.paths")


class VLM(PathProvider):
    def __init__(self, name: str):
        self.name = name
        self.wire = WIRES[name]
        self.answer_format = self.wire.answer_format
        self.coords = self.wire.coords

    def identity(self, cfg) -> dict:
        return {"kind": self.name, "model": cfg.model, "prompt_sha": prompt_sha(cfg.prompt() or self.wire.prompt)}

    def request(self, rgb, instruction: str, cfg, prompt: str | None = None) -> bytes:
        url = jpeg_data_url(prepare_image(rgb, self.wire), cfg.jpeg_quality)
        return json.dumps(request_body(url, instruction, self.wire, cfg.model, cfg.max_tokens, prompt)).encode()

    def _jobs(self, frames, store, episodes: list, cfg) -> Iterator[Job]:
        """Requests for the missing frames, one episode's frames read at a time (runs in a thread)."""
        prompt = cfg.prompt()
        for ep in episodes:
            ep.journal = store.journal(ep.number, ep.fingerprint)
            missing = sorted(ep.missing)  # with every-Nth asking, a few of the frames: only those are read
            for t, rgb in zip(missing, frames.rgb(ep.index, missing)):
                yield Job((ep.number, t), self.request(rgb, ep.instruction, cfg, prompt))

    def answer(self, frames, store, episodes, cfg, client, deliver) -> list[dict]:
        by_number = {ep.number: ep for ep in episodes}

        def on_answer(job, answer) -> None:
            number, t = job.key
            if answer.text is None:
                deliver(by_number[number], t, error=answer.error)
            else:
                deliver(by_number[number], t, {"raw": answer.text, "endpoint": answer.endpoint,
                                               "latency_s": round(answer.latency_s, 4),
                                               "attempts": answer.attempts})

        return PathClient(client).run(self._jobs(frames, store, episodes, cfg), on_answer)

    def closed_loop(self, cfg, client):
        return _ClosedLoopPaths(self, cfg, client)


class _ClosedLoopPaths:
    """One request per env's current frame, all in flight together; a failed answer keeps the
    env's last path."""

    def __init__(self, provider: VLM, cfg, client):
        self.provider, self.cfg, self.client = provider, cfg, PathClient(client)
        self.last: dict[int, list] = {}

    def __call__(self, envs: list, frames: list) -> list[list]:
        prompt = self.cfg.prompt()
        jobs = [Job(id(env), self.provider.request(rgb, env.instruction, self.cfg, prompt))
                for env, rgb in zip(envs, frames)]
        height, width = frames[0].shape[:2]

        def on_answer(job, answer):
            if answer.text is not None:
                parsed = parse_answer(answer.text, self.provider.answer_format, width, height, self.cfg.coords)
                if parsed.status != "failed":
                    self.last[job.key] = parsed.points

        self.client.run(iter(jobs), on_answer)
        return [self.last.get(id(e), []) for e in envs]


for _name in WIRES:
    register(VLM(_name))
