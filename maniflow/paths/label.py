"""Label every frame of a frames store with a path, resumably: the one entry point for providers.

Every provider (maniflow.paths.providers: hamster, peek, openai over HTTP; the oracle) turns
(frames, instruction, camera and pose of an episode) into one answer per frame in a text format
(the oracle writes HAMSTER's), so parsing, fallback and storage are the same for all. Only
frames without a stored answer are asked; each answer is journaled as it arrives and an
episode's file is written once all its frames have an outcome.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from maniflow.config import config, setting
from maniflow.frames import FramesStore
from maniflow.paths.client import ClientConfig
from maniflow.paths.oracle import AT_REST
from maniflow.paths.providers import PROVIDERS, PathProvider
from maniflow.paths.store import COORDS, FALLBACKS, Journal, PathStore, merge_stats
from maniflow.workspace import Workspace

log = logging.getLogger("maniflow.paths")

LOW_PARSE_SHARE = 0.9  # below this share of usable answers a task's labels are flagged


@config
class ProviderConfig:
    """What produces the answers. `identity()` decides whether stored answers can be reused."""

    kind: str = setting("hamster", "path provider: hamster/peek a VILA server (POST {endpoint}/chat/completions), "
                        "openai any OpenAI-compatible server (endpoint ending in /v1), oracle the ground truth",
                        flag="provider", choices=lambda: PROVIDERS.names())
    model: str = setting("HAMSTER_dev", "model name sent to the server (HAMSTER accepts only the name it was "
                         "started with)")
    label: str | None = setting(None, "path store name (default: the provider); give a new one for another "
                                "model or settings")
    coords: str = setting("unit", "coordinates the model answers in: unit 0-1 (HAMSTER, PEEK), thousand 0-1000 "
                          "(Qwen-VL style), pixel (of the image sent); a change re-parses stored answers without "
                          "asking again", choices=COORDS)
    max_tokens: int = setting(512, "answer length limit (128 cuts HAMSTER answers off)")
    jpeg_quality: int = setting(90, "JPEG quality of the frames sent")
    oracle_points: int = setting(10, "oracle: points per path", flag="points")
    fallback: str = setting("nearest", "path of a frame without a usable answer: the nearest answered frame's, the "
                            "previous one's, or none", choices=FALLBACKS)

    def __post_init__(self):
        if self.kind not in PROVIDERS:
            raise ValueError(f"provider {self.kind!r}: choose from {', '.join(PROVIDERS.names())}")
        if self.coords not in COORDS:
            raise ValueError(f"coords {self.coords!r}: choose from {COORDS}")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback {self.fallback!r}: choose from {FALLBACKS}")

    @property
    def provider(self) -> PathProvider:
        return PROVIDERS[self.kind]

    @property
    def name(self) -> str:
        return self.label or self.kind

    @property
    def answer_format(self) -> str:
        return self.provider.answer_format

    @property
    def computed(self) -> bool:
        """Answers are computed from the data, not asked: they cost nothing to redo."""
        return self.provider.computed

    def identity(self) -> dict:
        return self.provider.identity(self)

    def source_fingerprint(self, record: dict):
        """What an episode's answers depend on, from its frames-store record."""
        return self.provider.source_fingerprint(self, record)

    def params(self) -> dict:
        return asdict(self)

    def closed_loop(self, client: ClientConfig | None):
        """The path source of a closed-loop evaluation."""
        return self.provider.closed_loop(self, _checked(self, client))


def _checked(provider: ProviderConfig, client: ClientConfig | None) -> ClientConfig | None:
    if provider.provider.needs_client and (client is None or not client.endpoints):
        raise ValueError(f"provider {provider.kind} needs endpoints (a ClientConfig)")
    return client


@dataclass
class LabelReport:
    env: str
    task: str
    provider: str
    store: Path
    episodes: int = 0
    frames: int = 0
    asked: int = 0
    reused: int = 0
    seconds: float = 0.0
    total: dict = field(default_factory=dict)  # outcome counts over the whole store
    endpoints: list[dict] = field(default_factory=list)

    @property
    def faults(self) -> int:
        """Frames without a usable answer, except arms at rest to the end of their episode
        (no path to draw there, and that is expected)."""
        t = self.total
        return t.get("failed", 0) + t.get("error", 0) - t.get("reasons", {}).get(AT_REST, 0)

    def summary(self) -> str:
        t = self.total
        rate = f"{self.asked / self.seconds:.1f} frames/s" if self.asked and self.seconds else "-"
        text = (f"{self.env}/{self.task} [{self.provider}]: {self.episodes} episodes, {self.frames} frames "
                f"({self.asked} asked, {self.reused} reused; {rate}); ok {t.get('ok', 0)}, "
                f"repaired {t.get('repaired', 0)}, failed {t.get('failed', 0)}, error {t.get('error', 0)}; "
                f"parsed {100 * t.get('parsed_share', 0):.1f}% -> {self.store}")
        for name, count in sorted(t.get("reasons", {}).items(), key=lambda kv: -kv[1])[:3]:
            text += f"\n  failed: {count} x {name}"
        asked = t.get("frames", 0) - t.get("reasons", {}).get(AT_REST, 0)
        usable = 1 - self.faults / max(asked, 1)
        if t.get("frames") and usable < LOW_PARSE_SHARE:
            text += (f"\n  WARNING: only {100 * usable:.1f}% of the answers are usable; "
                     f"look at them: maniflow inspect {self.store}")
        return text


@dataclass
class _Episode:
    """One stored episode being labelled."""

    index: int  # row in the frames store
    number: int  # source episode number
    frames: int
    fingerprint: dict
    instruction: str
    answers: dict[int, dict]
    errors: dict[int, str] = field(default_factory=dict)
    missing: set[int] = field(default_factory=set)
    journal: Journal | None = None


def label_paths(work, env: str, task: str, provider: ProviderConfig, client: ClientConfig | None = None, *,
                camera: str = "head", episodes: list[int] | None = None,
                progress: Callable[[int, int], None] | None = None, summary: bool = True) -> LabelReport:
    """Label the frames store of (env, task) with `provider` into the path store.

    `episodes` restricts to these source episode numbers. `progress(done, total)` is called as
    frames get their outcome. Returns the report; the store's summary.json holds the statistics.
    With `summary=False` (one episode of many, e.g. a per-episode task) the summary is left to
    the caller (`PathStore.write_summary`, once) and `total` covers the labelled episodes only.
    """
    start = time.perf_counter()
    workspace = Workspace.of(work)
    frames = FramesStore(workspace.frames(env, task, camera))
    store = PathStore(workspace.paths(provider.name, env, task, camera))
    store.bind(provider.identity(), provider.params(), reset=provider.computed)

    todo = []
    for i, (number, record) in enumerate(zip(frames.episode_index, frames.episodes)):
        if episodes is not None and int(number) not in episodes:
            continue
        n = record["frames"]
        fingerprint = provider.source_fingerprint(record)
        ep = _Episode(i, int(number), n, fingerprint, _instruction(record, task),
                      store.load_answers(int(number), fingerprint))
        ep.missing = set(range(n)) - set(ep.answers)
        todo.append(ep)
    episodes_done = list(todo)
    report = LabelReport(env, task, provider.name, store.dir, episodes=len(todo),
                         frames=sum(e.frames for e in todo))
    report.reused = sum(len(e.answers) for e in todo)
    done = report.reused

    def finish(ep: _Episode) -> None:
        if ep.journal is not None:
            ep.journal.close()
        finish_episode(store, frames, ep.index, provider, ep.answers, ep.errors)

    if progress:
        progress(done, report.frames)
    # Fully answered episodes only need their file (re)written when a journal holds answers not
    # yet in it or the fallback changed.
    for ep in todo:
        if not ep.missing and not store.is_finished(ep.number, provider.fallback, provider.coords, ep.frames):
            finish(ep)
    todo = [ep for ep in todo if ep.missing]
    report.asked = sum(len(ep.missing) for ep in todo)
    if todo:
        def deliver(ep: _Episode, t: int, entry: dict | None = None, error: str | None = None) -> None:
            nonlocal done
            if entry is None:
                ep.errors[t] = error
                log.warning("%s/%s episode %d frame %d: %s", env, task, ep.number, t, error)
            else:
                ep.answers[t] = entry
                if ep.journal is not None:
                    ep.journal.append(t, entry)
            ep.missing.discard(t)
            done += 1
            if not ep.missing:
                finish(ep)
            if progress:
                progress(done, report.frames)

        try:
            report.endpoints = provider.provider.answer(frames, store, todo, provider, _checked(provider, client),
                                                        deliver)
        finally:
            for ep in todo:
                if ep.journal is not None and ep.missing:
                    ep.journal.close()
    if summary:
        report.total = store.write_summary({"env": env, "task": task, "camera": camera,
                                            "fallback": provider.fallback})["total"]
    else:
        report.total = merge_stats(store.read(ep.number).record["stats"] for ep in episodes_done)
    report.seconds = time.perf_counter() - start
    return report


def finish_episode(store: PathStore, frames: FramesStore, index: int, provider: ProviderConfig,
                   answers: dict[int, dict], errors: dict[int, str] | None = None) -> dict:
    """Write the path file of the index-th episode of `frames` from its answers."""
    record = frames.episodes[index]
    height, width = frames.root["data/rgb"].shape[1:3]
    attrs = frames.attrs
    meta = {"env": attrs["env"], "task": attrs["task"], "camera": attrs["camera"],
            "frames_store": str(frames.path), "provider": {"label": provider.name, **provider.identity()},
            "source_fingerprint": provider.source_fingerprint(record),
            "instruction": _instruction(record, attrs["task"])}
    return store.finish(int(frames.episode_index[index]), record["frames"], answers, errors or {},
                        answer_format=provider.answer_format, width=width, height=height,
                        fallback=provider.fallback, meta=meta, coords=provider.coords)


def _instruction(record: dict, task: str) -> str:
    seen = record.get("instructions", {}).get("seen") or record.get("instructions", {}).get("unseen")
    return seen[0] if seen else task.replace("_", " ")
