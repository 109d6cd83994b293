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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from maniflow.config import config, setting
from maniflow.frames import FramesStore
from maniflow.paths.client import ClientConfig
from maniflow.paths.oracle import AT_REST
from maniflow.paths.providers import PROVIDERS, PathProvider
from maniflow.paths.store import COORDS, FALLBACKS, Journal, PathStore, asked_frames, merge_stats
from maniflow.workspace import Workspace

log = logging.getLogger("maniflow.paths")

LOW_PARSE_SHARE = 0.9  # below this share of usable answers a task's labels are flagged
MOSTLY_OUT_OF_RANGE = 0.5  # above this share of answer points outside the image, the coordinates are suspect


@config
class ProviderConfig:
    """What produces the answers. `identity()` decides whether stored answers can be reused."""

    kind: str = setting("hamster", "path provider: hamster/peek a VILA server (POST {endpoint}/chat/completions), "
                        "openai any OpenAI-compatible server (endpoint ending in /v1) with HAMSTER's prompt, qwen the "
                        "same asking for a JSON point list (Qwen2.5-VL / Qwen3-VL), oracle the ground truth",
                        flag="provider", choices=lambda: PROVIDERS.names())
    model: str = setting("HAMSTER_dev", "model name sent to the server (HAMSTER accepts only the name it was "
                         "started with)")
    label: str | None = setting(None, "path store name (default: the provider); give a new one for another "
                                "model or settings")
    coords: str | None = setting(None, "coordinates the model answers in: unit 0-1 (HAMSTER, PEEK, the default of "
                                 "every provider but qwen), thousand 0-1000 (Qwen3-VL), pixel of the image sent, "
                                 "smart_resize pixels of the image Qwen2.5-VL's processor resizes it to (multiples "
                                 "of 28); qwen has no default: declare it. A change re-parses stored answers without "
                                 "asking again", choices=COORDS)
    prompt_file: str | None = setting(None, "a prompt template file replacing the provider's ({quest} becomes the "
                                      "instruction); its hash is part of the path store's identity")
    every: int = setting(1, "ask on every Nth frame of an episode (always its first) and draw the others with the "
                         "nearest asked frame's path; answers are kept across values (docs/paths.md)")
    max_tokens: int = setting(512, "answer length limit (128 cuts HAMSTER answers off)")
    jpeg_quality: int = setting(90, "JPEG quality of the frames sent")
    oracle_points: int = setting(10, "oracle: points per path", flag="points")
    fallback: str = setting("nearest", "path of a frame without a usable answer: the nearest answered frame's, the "
                            "previous one's, or none", choices=FALLBACKS)

    def __post_init__(self):
        if self.kind not in PROVIDERS:
            raise ValueError(f"provider {self.kind!r}: choose from {', '.join(PROVIDERS.names())}")
        if self.coords is None:  # the provider's own convention; never a guess
            if self.provider.coords is None:
                raise ValueError(f"provider {self.kind} answers in a convention of the model's: declare coords "
                                 "(thousand for Qwen3-VL's 0-1000 grid, smart_resize for Qwen2.5-VL's pixels)")
            object.__setattr__(self, "coords", self.provider.coords)
        if self.coords not in COORDS:
            raise ValueError(f"coords {self.coords!r}: choose from {COORDS}")
        if self.every < 1:
            raise ValueError(f"every {self.every}: at least 1 (1 asks every frame)")
        if self.prompt_file is not None:
            # Absolute, so workers started elsewhere (Dask, train-run) read the same file.
            object.__setattr__(self, "prompt_file", str(Path(self.prompt_file).resolve()))
            if not self.provider.needs_client:
                raise ValueError(f"provider {self.kind} asks no model: a prompt file means nothing to it")
            text = self.prompt()
            if "{quest}" not in text:
                raise ValueError(f"prompt file {self.prompt_file}: no {{quest}} placeholder for the instruction")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback {self.fallback!r}: choose from {FALLBACKS}")

    @property
    def provider(self) -> PathProvider:
        return PROVIDERS[self.kind]

    def prompt(self) -> str | None:
        """The prompt template of the prompt file, or None for the provider's own."""
        if self.prompt_file is None:
            return None
        try:
            return Path(self.prompt_file).read_text(encoding="utf-8")
        except OSError as e:
            raise ValueError(f"prompt file {self.prompt_file}: {e.strerror}") from None

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
    coords: str = "unit"
    every: int = 1
    total: dict = field(default_factory=dict)  # outcome counts over the whole store
    endpoints: list[dict] = field(default_factory=list)

    @property
    def faults(self) -> int:
        """Frames without a usable answer, except arms at rest to the end of their episode
        (no path to draw there, and that is expected)."""
        t = self.total
        return t.get("failed", 0) + t.get("error", 0) - t.get("reasons", {}).get(AT_REST, 0)

    def warnings(self) -> list[str]:
        """What a user must look at: few usable answers; answer points mostly outside the image
        (the model answers in another coordinate convention than the one declared)."""
        t, out = self.total, []
        asked = t.get("frames", 0) - t.get("skipped", 0) - t.get("reasons", {}).get(AT_REST, 0)
        usable = 1 - self.faults / max(asked, 1)
        if asked > 0 and usable < LOW_PARSE_SHARE:
            out.append(f"only {100 * usable:.1f}% of the answers are usable; look at them: maniflow inspect "
                       f"{self.store}")
        points, outside = t.get("points", 0), t.get("points_out_of_range", 0)
        if points and outside / points > MOSTLY_OUT_OF_RANGE:
            out.append(f"{100 * outside / points:.0f}% of the answer points fall outside the image read as "
                       f"{self.coords!r} coordinates: the model answers in another convention? (--coords "
                       f"{' / '.join(c for c in COORDS if c != self.coords)}; a change re-parses without asking)")
        return out

    def summary(self) -> str:
        t = self.total
        rate = f"{self.asked / self.seconds:.1f} frames/s" if self.asked and self.seconds else "-"
        text = (f"{self.env}/{self.task} [{self.provider}]: {self.episodes} episodes, {self.frames} frames "
                f"({self.asked} asked, {self.reused} reused; {rate}); ok {t.get('ok', 0)}, "
                f"repaired {t.get('repaired', 0)}, failed {t.get('failed', 0)}, error {t.get('error', 0)}"
                + (f", skipped {t['skipped']} (every {self.every})" if t.get("skipped") else "")
                + f"; parsed {100 * t.get('parsed_share', 0):.1f}% -> {self.store}")
        for name, count in sorted(t.get("reasons", {}).items(), key=lambda kv: -kv[1])[:3]:
            text += f"\n  failed: {count} x {name}"
        return text + "".join(f"\n  WARNING: {w}" for w in self.warnings())


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

    todo, reused = [], 0
    for i, (number, record) in enumerate(zip(frames.episode_index, frames.episodes)):
        if episodes is not None and int(number) not in episodes:
            continue
        n = record["frames"]
        fingerprint = provider.source_fingerprint(record)
        ep = _Episode(i, int(number), n, fingerprint, _instruction(record, task),
                      store.load_answers(int(number), fingerprint))
        asked = set(np.flatnonzero(asked_frames(n, provider.every)).tolist())
        ep.missing = asked - ep.answers.keys()
        reused += len(asked & ep.answers.keys())  # answers of frames not asked now do not count
        todo.append(ep)
    episodes_done = list(todo)
    report = LabelReport(env, task, provider.name, store.dir, episodes=len(todo),
                         frames=sum(e.frames for e in todo), coords=provider.coords, every=provider.every)
    report.reused = reused
    done = report.reused
    goal = done + sum(len(ep.missing) for ep in todo)  # with every-Nth asking, fewer than the frames

    def finish(ep: _Episode) -> None:
        if ep.journal is not None:
            ep.journal.close()
        finish_episode(store, frames, ep.index, provider, ep.answers, ep.errors)

    if progress:
        progress(done, goal)
    # Fully answered episodes only need their file (re)written when a journal holds answers not
    # yet in it or the fallback changed.
    for ep in todo:
        if not ep.missing and not store.is_finished(ep.number, provider.fallback, provider.coords, ep.frames,
                                                    provider.every):
            finish(ep)
    todo = [ep for ep in todo if ep.missing]
    report.asked = sum(len(ep.missing) for ep in todo)
    if todo:
        # An answered episode's file is written in a thread of its own: writing it in the client's
        # event loop would leave every endpoint idle meanwhile (with every-Nth asking, an
        # episode's few answers arrive in a fraction of a second, so that idle time counts).
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="paths-finish")
        written = []

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
                written.append(writer.submit(finish, ep))
                for future in written[:-1]:  # a file that could not be written stops the run now
                    if future.done() and future.exception():
                        raise future.exception()
            if progress:
                progress(done, goal)

        try:
            report.endpoints = provider.provider.answer(frames, store, todo, provider, _checked(provider, client),
                                                        deliver)
        finally:
            writer.shutdown(wait=True)
            for ep in todo:
                if ep.journal is not None and ep.missing:
                    ep.journal.close()
        for future in written:
            future.result()  # an episode that could not be written fails the run, as before
    if summary:
        report.total = store.write_summary({"env": env, "task": task, "camera": camera,
                                            "fallback": provider.fallback})["total"]
    else:
        report.total = merge_stats(store.read(ep.number).record["stats"] for ep in episodes_done)
    report.seconds = time.perf_counter() - start
    for warning in report.warnings():
        log.warning("%s/%s [%s]: %s", env, task, provider.name, warning)
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
                        fallback=provider.fallback, meta=meta, coords=provider.coords, every=provider.every)


def _instruction(record: dict, task: str) -> str:
    seen = record.get("instructions", {}).get("seen") or record.get("instructions", {}).get("unseen")
    return seen[0] if seen else task.replace("_", " ")
