"""Tolerant parsing of HAMSTER and PEEK answers, without eval.

An answer is tokenised with regular expressions into points, gripper tags and ellipses; what a
real model gets wrong (REFERENCE section 2) is repaired and named, what cannot be repaired fails
with a reason:

    repaired   no <ans> tag but points present; answer cut off before </ans> (and a cut-off
               last tuple dropped); literal "..."; action tag before the first point (taken as
               the initial state); [x, y] pairs; coordinates outside [0, 1] (clipped, or the
               point dropped when far outside); stray text inside the answer (ignored);
               PEEK answer without the TRAJECTORY label (first <ans> used)
    failed     empty answer; no points anywhere
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from maniflow.geometry import Point

OK, REPAIRED, FAILED = "ok", "repaired", "failed"
# A coordinate this far outside [0, 1] is not a slightly-off point but a different convention
# (pixels, 0-1000): the point is dropped rather than clipped to the border.
FAR_OUTSIDE = 0.5

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TOKEN = re.compile(
    rf"(?P<point>(?P<open>[(\[])\s*(?P<x>{_NUM})\s*,\s*(?P<y>{_NUM})\s*[)\]])"
    r"|(?P<tag><action>\s*(?P<act>open|close)\s*(?:gripper)?\s*</action>)"
    r"|(?P<ellipsis>\.\.\.|…)",
    re.IGNORECASE,
)
_CUT_TUPLE = re.compile(rf"[(\[]\s*(?:{_NUM})?\s*,?\s*(?:{_NUM})?\s*$")
_ANS_OPEN = re.compile(r"<ans>", re.IGNORECASE)
_ANS_CLOSE = re.compile(r"</ans>", re.IGNORECASE)
_TRAJECTORY = re.compile(r"TRAJECTORY\s*:?\s*<ans>", re.IGNORECASE)
_FILLER = re.compile(r"[\s,\[\]]+")


@dataclass
class ParsedPath:
    status: str  # ok | repaired | failed
    points: list[Point] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    reason: str | None = None  # why it failed


def parse_hamster(text: str, scale: tuple[float, float] = (1.0, 1.0)) -> ParsedPath:
    """`<ans>[(x, y), ..., <action>Close Gripper</action>, ...]</ans>` -> points with gripper states.

    The state starts closed (0); a tag sets the state of the point just before it and of the
    following points. `scale` divides the coordinates (e.g. 1000 for 0-1000 answers).
    """
    return _parse(text, gripper=True, scale=scale)


def parse_peek(text: str, scale: tuple[float, float] = (1.0, 1.0)) -> ParsedPath:
    """`TRAJECTORY: <ans>[...]</ans> MASK: <ans>[...]</ans>` -> trajectory points, no gripper
    states, in coordinates of the image sent (the square crop; see `protocol.crop_to_frame`)."""
    return _parse(text, gripper=False, scale=scale)


def _parse(text: str, gripper: bool, scale: tuple[float, float]) -> ParsedPath:
    if not text or not text.strip():
        return ParsedPath(FAILED, reason="empty answer")
    repairs: list[str] = []
    region = _answer_region(text, not gripper, repairs)
    if region is None:
        return ParsedPath(FAILED, repairs=repairs, reason="no <ans> tag and no points")

    points: list[list] = []
    state = 0
    leftover = []
    last_end = 0
    for m in _TOKEN.finditer(region):
        leftover.append(region[last_end:m.start()])
        last_end = m.end()
        if m["point"]:
            if m["open"] == "[":
                _note(repairs, "[x, y] pairs read as points")
            points.append([float(m["x"]) / scale[0], float(m["y"]) / scale[1], state if gripper else None])
        elif m["tag"]:
            if not gripper:
                _note(repairs, "action tags ignored (no gripper states in this format)")
                continue
            state = 1 if m["act"].lower() == "open" else 0
            if points:
                points[-1][2] = state
            else:
                _note(repairs, "action tag before the first point taken as the initial state")
        else:
            _note(repairs, "literal '...' ignored")
    tail = region[last_end:]
    cut = _CUT_TUPLE.search(tail)
    if cut and cut.group().strip() not in ("[", ""):
        _note(repairs, "cut-off last point dropped")
        tail = tail[:cut.start()]
    leftover.append(tail)
    if _FILLER.sub("", "".join(leftover)):
        _note(repairs, "stray text inside the answer ignored")

    points = _fit_range(points, repairs)
    if not points:
        return ParsedPath(FAILED, repairs=repairs, reason="no points in answer")
    return ParsedPath(REPAIRED if repairs else OK, [tuple(p) for p in points], repairs)


def _answer_region(text: str, peek: bool, repairs: list[str]) -> str | None:
    """The text between <ans> and </ans> (PEEK: the TRAJECTORY one), repairing what is missing."""
    start = None
    if peek:
        m = _TRAJECTORY.search(text)
        if m:
            start = m.end()
        elif _ANS_OPEN.search(text):
            _note(repairs, "no TRAJECTORY label; first <ans> used")
    if start is None:
        m = _ANS_OPEN.search(text)
        if m is None:
            if not any(t["point"] for t in _TOKEN.finditer(text)):
                return None
            _note(repairs, "no <ans> tag; points read from the whole answer")
            return text
        start = m.end()
    end = _ANS_CLOSE.search(text, start)
    if end is None:
        _note(repairs, "answer cut off before </ans>")
        return text[start:]
    return text[start:end.start()]


def _fit_range(points: list[list], repairs: list[str]) -> list[list]:
    kept, dropped, clipped = [], 0, False
    for p in points:
        x, y = p[0], p[1]
        if min(x, y) < -FAR_OUTSIDE or max(x, y) > 1 + FAR_OUTSIDE:
            dropped += 1
            continue
        cx, cy = min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)
        clipped |= (cx, cy) != (x, y)
        kept.append([cx, cy, p[2]])
    if clipped:
        _note(repairs, "coordinates outside [0, 1] clipped")
    if dropped:
        _note(repairs, "points far outside [0, 1] dropped")
    return kept


def _note(repairs: list[str], what: str) -> None:
    if what not in repairs:
        repairs.append(what)
