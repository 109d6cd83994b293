"""Path store: one path per frame, per (provider label, env, task) and episode. JSON, no pickle.

    {work}/paths/{label}/{env}/{task}/          ({task}@{camera} for cameras other than head)
      provider.json               what produced the answers (kind, model, prompt hash, ...)
      episode{N}.journal.jsonl    answers as they arrive, one JSON line per frame (appended)
      episode{N}.json             the finished episode: one line per frame, written atomically
      summary.json                outcome counts, repairs and failure reasons per episode

An answer is kept as the raw text; the finished file holds, per frame, its outcome (`ok`,
`repaired` with what was repaired, `failed` with why, or `error` when no answer came), the
path to use, and `from`, the frame whose path it is (the frame itself, or the fallback's
source). With every-Nth asking (`every`), frames not asked are `skipped` and take the nearest
asked frame's path. Re-finishing from the stored raw answers (another fallback, a better parser) never
queries again. The journal's last line may be cut off by a kill; it is ignored, and only
complete lines count as answered. Answers whose source episode changed (frames store
fingerprint) are discarded. A path that cannot be drawn as a path is never `ok`: one whose
points all fall in one pixel fails here for every provider, and a provider may fail an answer
itself (the oracle: every point behind the camera or outside the image).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maniflow.geometry import Point, frame_pixels
from maniflow.paths.parse import FAILED, OK, REPAIRED, ParsedPath, parse_hamster, parse_peek, parse_points_json
from maniflow.paths.protocol import PEEK_SIZE, crop_to_frame
from maniflow.storage import code_version, temp_sibling, write_json

log = logging.getLogger("maniflow.paths")

FORMAT = "maniflow.paths"
FORMAT_VERSION = 3  # 3: every-Nth asking (skipped frames); 2: degenerate paths fail, one row per frames-store row
ERROR = "error"  # no answer was received (transport failure after all retries)
SKIPPED = "skipped"  # not asked (every-Nth asking): drawn with the nearest asked frame's path
STATUSES = (OK, REPAIRED, FAILED, ERROR, SKIPPED)
FALLBACKS = ("nearest", "previous", "none")
ONE_PIXEL = "degenerate: every point in one pixel"  # drawn, such a path is a lone marker


class ProviderMismatch(ValueError):
    """The store holds answers of a different provider configuration."""


COORDS = ("unit", "thousand", "pixel", "smart_resize")
ANSWER_FORMATS = {"hamster": parse_hamster, "peek": parse_peek, "points_json": parse_points_json}


def parse_answer(text: str, answer_format: str, width: int, height: int, coords: str = "unit") -> ParsedPath:
    """Raw answer -> path in full-frame coordinates (PEEK answers are relative to the crop).

    `answer_format`: hamster, peek or points_json (ANSWER_FORMATS). `coords` is the answers'
    convention: unit (0-1, as HAMSTER and PEEK are asked), thousand (0-1000, Qwen3-VL), pixel (of
    the image sent) or smart_resize (pixels of the image as Qwen2.5-VL's processor resizes it
    before the model sees it, which is what that model's absolute coordinates refer to)."""
    sent = (PEEK_SIZE, PEEK_SIZE) if answer_format == "peek" else (width, height)
    scale = {"unit": (1.0, 1.0), "thousand": (1000.0, 1000.0), "pixel": sent,
             "smart_resize": smart_resize(*sent) if coords == "smart_resize" else None}[coords]
    if answer_format == "peek":
        parsed = parse_peek(text, scale)
        parsed.points = crop_to_frame(parsed.points, width, height)
        if parsed.mask is not None:
            parsed.mask = [p[:2] for p in crop_to_frame([(x, y, None) for x, y in parsed.mask], width, height)]
        return parsed
    return ANSWER_FORMATS[answer_format](text, scale)


def smart_resize(width: int, height: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 16384 * 28 * 28) -> tuple[int, int]:
    """(width, height) Qwen2.5-VL's image processor resizes an image to (its defaults): each side
    rounded to a multiple of `factor`, the area scaled into [min_pixels, max_pixels]. 320x240 -> 308x252."""
    w, h = max(factor, round(width / factor) * factor), max(factor, round(height / factor) * factor)
    if w * h > max_pixels:
        beta = math.sqrt(width * height / max_pixels)
        w, h = math.floor(width / beta / factor) * factor, math.floor(height / beta / factor) * factor
    elif w * h < min_pixels:
        beta = math.sqrt(min_pixels / (width * height))
        w, h = math.ceil(width * beta / factor) * factor, math.ceil(height * beta / factor) * factor
    return w, h


def fallback_sources(usable: np.ndarray, mode: str) -> np.ndarray:
    """For each frame, the frame whose path it uses: itself if usable, else by `mode`
    (nearest usable frame, ties to the earlier; the previous usable frame; none). -1: none."""
    if mode not in FALLBACKS:
        raise ValueError(f"fallback {mode!r}: choose from {FALLBACKS}")
    frames = np.arange(len(usable))
    good = np.flatnonzero(usable)
    source = np.where(usable, frames, -1)
    if mode == "none" or len(good) == 0:
        return source
    after = np.searchsorted(good, frames)  # first usable frame at or after t
    before = good[np.clip(after - 1, 0, None)]
    has_before = after > 0
    if mode == "previous":
        return np.where(usable, frames, np.where(has_before, before, -1))
    later = good[np.clip(after, None, len(good) - 1)]
    has_later = after < len(good)
    use_before = has_before & (~has_later | (frames - before <= later - frames))
    return np.where(usable, frames, np.where(use_before, before, later))


def asked_frames(num_frames: int, every: int) -> np.ndarray:
    """Which frames are asked with every-Nth asking: 0, N, 2N, ... (each episode's first always)."""
    return np.arange(num_frames) % every == 0


def draw_sources(usable: np.ndarray, asked: np.ndarray, fallback: str) -> np.ndarray:
    """The frame whose path each frame draws (-1: none). An asked frame: itself when usable, else
    by `fallback` among usable asked frames; a frame not asked: the nearest usable asked frame."""
    usable = usable & asked
    return np.where(asked, fallback_sources(usable, fallback), fallback_sources(usable, "nearest"))


def in_one_pixel(xy: np.ndarray, width: int, height: int, valid: np.ndarray | None = None) -> np.ndarray:
    """Whether each path (..., k, 2) of [0, 1] points (those `valid`, default all) lands in a
    single pixel as drawn: no path, only a lone marker."""
    pixel = frame_pixels(xy, width, height)
    valid = np.ones(pixel.shape[:-1], bool) if valid is None else valid
    lo = np.where(valid[..., None], pixel, np.iinfo(np.int64).max).min(axis=-2)
    hi = np.where(valid[..., None], pixel, np.iinfo(np.int64).min).max(axis=-2)
    return (hi == lo).all(axis=-1)


def fail_degenerate(parsed: ParsedPath, width: int, height: int) -> ParsedPath:
    """A usable path whose points all fall in one pixel fails (the fallback then lends a
    neighbour's path)."""
    if parsed.status == FAILED or not in_one_pixel(np.array([p[:2] for p in parsed.points]), width, height):
        return parsed
    return ParsedPath(FAILED, repairs=parsed.repairs, reason=ONE_PIXEL)


@dataclass
class EpisodePaths:
    episode: int
    paths: list[list[Point]]  # per frame, after fallback ([] where there is none)
    status: list[str]
    source: list[int | None]  # frame whose path is used
    record: dict  # the whole finished file

    @property
    def num_frames(self) -> int:
        return len(self.paths)


class PathStore:
    def __init__(self, directory):
        self.dir = Path(directory)

    # --- provider binding -------------------------------------------------------------
    @property
    def provider_file(self) -> Path:
        return self.dir / "provider.json"

    def provider(self) -> dict | None:
        return json.loads(self.provider_file.read_text()) if self.provider_file.exists() else None

    def bind(self, identity: dict, params: dict, reset: bool = False) -> None:
        """Claim the store for a provider configuration; refuse answers of another one, or with
        `reset` (answers that are computed, not asked) drop them."""
        current = self.provider()
        if current is not None and current["identity"] != identity and reset:
            log.info("%s: answers of %s are replaced by %s", self.dir, current["identity"], identity)
            for f in self.dir.glob("episode*.json*"):
                f.unlink()
            current = None
        if current is not None and current["identity"] != identity:
            raise ProviderMismatch(
                f"{self.dir} holds answers of {current['identity']}, not {identity}; "
                "use another label (--label) to keep both, or delete the directory")
        self.dir.mkdir(parents=True, exist_ok=True)
        if current is None or current.get("params") != params:
            write_json(self.provider_file, {"format": FORMAT, "version": FORMAT_VERSION,
                                            "identity": identity, "params": params})

    # --- files --------------------------------------------------------------------------
    def episode_file(self, episode: int) -> Path:
        return self.dir / f"episode{episode}.json"

    def journal_file(self, episode: int) -> Path:
        return self.dir / f"episode{episode}.journal.jsonl"

    def episodes(self) -> list[int]:
        return sorted(int(p.stem[len("episode"):]) for p in self.dir.glob("episode*.json")
                      if p.stem[len("episode"):].isdigit())

    # --- answers --------------------------------------------------------------------------
    def load_answers(self, episode: int, fingerprint) -> dict[int, dict]:
        """Answers already received for this episode: frame -> {raw, endpoint, latency_s, attempts}.
        Empty when the stored answers belong to another version of the episode."""
        answers: dict[int, dict] = {}
        final = self.episode_file(episode)
        if final.exists():
            record = json.loads(final.read_text())
            if record["source_fingerprint"] != fingerprint:
                log.info("%s: episode %d changed since its paths were made; asking again", self.dir, episode)
                return {}
            answers = {f["frame"]: _answer_fields(f) for f in record["frames"]
                       if f.get("raw") is not None or f.get("failed")}
        journal = self.journal_file(episode)
        if journal.exists():
            lines = journal.read_text().split("\n")
            header = _json_line(lines[0])
            if header is None or header.get("source_fingerprint") != fingerprint:
                return answers
            for line in lines[1:]:
                entry = _json_line(line)  # a cut-off last line is not an answer
                if entry is not None and "frame" in entry:
                    answers[entry["frame"]] = _answer_fields(entry)
        return answers

    def is_finished(self, episode: int, fallback: str, coords: str, num_frames: int, every: int = 1) -> bool:
        """The episode's file is written by this version, for `num_frames` frames, with this
        fallback, coordinate convention and asking interval, and no answers wait in a journal."""
        final = self.episode_file(episode)
        if not final.exists() or self.journal_file(episode).exists():
            return False
        record = json.loads(final.read_text())
        return record.get("version") == FORMAT_VERSION and record["stats"]["frames"] == num_frames \
            and record.get("fallback") == fallback and record.get("coords", "unit") == coords \
            and record.get("every", 1) == every

    def journal(self, episode: int, fingerprint) -> Journal:
        return Journal(self.journal_file(episode), fingerprint)

    def finish(self, episode: int, num_frames: int, answers: dict[int, dict], errors: dict[int, str],
               *, answer_format: str, width: int, height: int, fallback: str, meta: dict,
               coords: str = "unit", every: int = 1) -> dict:
        """Parse every answer, apply the fallback (and the every-Nth fill) and write the episode's
        file atomically. Answers of frames not asked are kept for a later, denser asking.
        Returns the episode's statistics."""
        asked = asked_frames(num_frames, every)
        parsed: list[ParsedPath | None] = [None] * num_frames
        for t, a in answers.items():
            if 0 <= t < num_frames:
                parsed[t] = ParsedPath(FAILED, reason=a["failed"]) if a.get("failed") else \
                    fail_degenerate(parse_answer(a["raw"], answer_format, width, height, coords), width, height)
        usable = np.array([p is not None and p.status != FAILED for p in parsed], bool)
        source = draw_sources(usable, asked, fallback)
        frames = []
        for t in range(num_frames):
            p = parsed[t]
            src = int(source[t])
            entry = {"frame": t, "status": SKIPPED if not asked[t] else p.status if p else ERROR,
                     "path": _rounded(parsed[src].points) if src >= 0 else [],
                     "from": src if src >= 0 else None}
            if p is not None:
                entry.update(repairs=p.repairs, reason=p.reason, **p.extras(), **answers[t])
            else:
                entry.update(reason=errors.get(t, "not asked") if asked[t] else None)
            frames.append(entry)
        stats = _episode_stats(frames)
        record = {"format": FORMAT, "version": FORMAT_VERSION, "episode": episode, **meta,
                  "image_size": [width, height], "fallback": fallback, "coords": coords, "every": every,
                  "stats": stats,
                  "code_version": code_version()}
        _write_frames_json(self.episode_file(episode), record, frames)
        self.journal_file(episode).unlink(missing_ok=True)
        return stats

    def read(self, episode: int) -> EpisodePaths:
        record = json.loads(self.episode_file(episode).read_text())
        frames = record["frames"]
        return EpisodePaths(episode, [[tuple(p) for p in f["path"]] for f in frames],
                            [f["status"] for f in frames], [f["from"] for f in frames], record)

    def write_summary(self, extra: dict) -> dict:
        """Outcome counts per episode and in total, from the finished episode files."""
        per_episode, fallbacks = {}, set()
        for n in self.episodes():
            record = json.loads(self.episode_file(n).read_text())
            per_episode[n] = record["stats"]
            fallbacks.add(record.get("fallback"))
        total = merge_stats(per_episode.values())
        summary = {"format": FORMAT, "version": FORMAT_VERSION, "provider": self.provider(),
                   "fallback": fallbacks.pop() if len(fallbacks) == 1 else sorted(map(str, fallbacks)),
                   **extra, "total": total, "episodes": per_episode, "code_version": code_version()}
        path = self.dir / "summary.json"
        # Rewritten only when it changes: an unchanged rerun leaves every file as it was.
        if not path.exists() or json.loads(path.read_text()) != json.loads(json.dumps(summary)):
            write_json(path, summary)
        return summary


class Journal:
    """Append-only answer log; each line is flushed as soon as it is written."""

    def __init__(self, path: Path, fingerprint):
        self.path = path
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        header = _json_line(text.split("\n", 1)[0])
        # start afresh without a valid header or for an older version of the episode
        new = header is None or header.get("source_fingerprint") != fingerprint
        self._file = open(path, "w" if new else "a", encoding="utf-8")
        if new:
            self._write({"journal": FORMAT_VERSION, "source_fingerprint": fingerprint})
        elif not text.endswith("\n"):
            self._file.write("\n")  # end a line cut off by a kill, so the next one is whole

    def _write(self, obj: dict) -> None:
        self._file.write(json.dumps(obj) + "\n")
        self._file.flush()

    def append(self, frame: int, answer: dict) -> None:
        self._write({"frame": frame, **answer})

    def close(self) -> None:
        self._file.close()


# --- helpers --------------------------------------------------------------------------------
_ANSWER_KEYS = ("raw", "endpoint", "latency_s", "attempts", "failed")


def _answer_fields(entry: dict) -> dict:
    return {k: entry.get(k) for k in _ANSWER_KEYS}


def _json_line(line: str) -> dict | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _rounded(points: list[Point]) -> list[list]:
    return [[round(x, 5), round(y, 5), g] for x, y, g in points]


_COUNTS = ("frames", *STATUSES, "fallback_used", "without_path", "points", "points_out_of_range")


def _episode_stats(frames: list[dict]) -> dict:
    """Outcome counts; `parsed_share` is over the frames asked. `points_out_of_range`: answer
    points outside the image under the declared coordinates (before clipping or dropping)."""
    status = Counter(f["status"] for f in frames)
    repairs = Counter(r for f in frames for r in f.get("repairs") or ())
    reasons = Counter(f["reason"] for f in frames if f["status"] in (FAILED, ERROR))
    counts = {"frames": len(frames), **{s: status.get(s, 0) for s in STATUSES},
              "fallback_used": sum(1 for f in frames if f["status"] in (FAILED, ERROR) and f["from"] is not None),
              "without_path": sum(1 for f in frames if f["from"] is None),
              "points": sum(f.get("points", 0) for f in frames if f["status"] != SKIPPED),
              "points_out_of_range": sum(f.get("out_of_range", 0) for f in frames if f["status"] != SKIPPED)}
    return _with_shares(counts, repairs, reasons)


def _with_shares(counts: dict, repairs: Counter, reasons: Counter) -> dict:
    asked = counts["frames"] - counts[SKIPPED]
    return {**counts, "parsed_share": round((counts[OK] + counts[REPAIRED]) / asked, 4) if asked else 0.0,
            "repairs": dict(repairs), "reasons": dict(reasons)}


def merge_stats(stats) -> dict:
    total = Counter()
    repairs, reasons = Counter(), Counter()
    for s in stats:
        total.update({k: s.get(k, 0) for k in _COUNTS})
        repairs.update(s["repairs"])
        reasons.update(s["reasons"])
    return _with_shares({k: total[k] for k in _COUNTS}, repairs, reasons)


def _write_frames_json(path: Path, record: dict, frames: list[dict]) -> None:
    """Valid JSON with one line per frame, so the file reads (and diffs) frame by frame."""
    head = json.dumps(record, indent=1)[:-2]  # drop the closing "\n}"
    body = ",\n".join(json.dumps(f) for f in frames)
    tmp = temp_sibling(path)
    tmp.write_text(f'{head},\n "frames": [\n{body}\n]}}\n', encoding="utf-8")
    os.replace(tmp, path)
