"""Tolerant parsing of path answers, without eval: HAMSTER's tuples, PEEK's labelled answers and
JSON point lists as Qwen2.5-VL / Qwen3-VL write them (REFERENCE section 8).

An answer is tokenised with regular expressions into points, gripper tags and ellipses; what a
real model gets wrong (REFERENCE section 2) is repaired and named, what cannot be repaired fails
with a reason:

    repaired   no <ans> tag but points present; answer cut off before </ans> (and a cut-off
               last tuple dropped); literal "..."; action tag before the first point (taken as
               the initial state); [x, y] pairs; coordinates outside [0, 1] (clipped, or the
               point dropped when far outside); stray text inside the answer (ignored);
               PEEK answer without the TRAJECTORY label (first <ans> used)
    failed     empty answer; no points anywhere

Every parse counts the answer's points and those outside the image under the declared
coordinates, so a run whose model answers in another convention is told loudly (label.py).
"""

from __future__ import annotations

import json
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
_MASK = re.compile(r"MASK\s*:?\s*<ans>(.*?)(?:</ans>|$)", re.IGNORECASE | re.DOTALL)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)(?:```|$)", re.IGNORECASE | re.DOTALL)
_POINT_2D = re.compile(rf'"point(?:_2d)?"\s*:\s*\[\s*({_NUM})\s*,\s*({_NUM})\s*\]')
_LABEL = re.compile(r'"label"\s*:\s*"((?:[^"\\]|\\.)*)"', re.DOTALL)
_OBJECT = re.compile(r"\{[^{}]*\}")  # innermost objects: a point list's entries, wrapped or not


@dataclass
class ParsedPath:
    status: str  # ok | repaired | failed
    points: list[Point] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    reason: str | None = None  # why it failed
    answered: int = 0  # points in the answer
    out_of_range: int = 0  # of those, outside the image under the declared coordinates
    labels: list | None = None  # JSON point lists: each kept point's label
    mask: list | None = None  # PEEK: the MASK points (x, y), kept, not drawn

    def extras(self) -> dict:
        """What the path store keeps besides the path: counts, and labels or mask when given."""
        out = {"points": self.answered, "out_of_range": self.out_of_range}
        if self.labels is not None:
            out["labels"] = self.labels
        if self.mask is not None:
            out["mask"] = [[round(x, 5), round(y, 5)] for x, y in self.mask]
        return out


def parse_hamster(text: str, scale: tuple[float, float] = (1.0, 1.0)) -> ParsedPath:
    """`<ans>[(x, y), ..., <action>Close Gripper</action>, ...]</ans>` -> points with gripper states.

    The state starts closed (0); a tag sets the state of the point just before it and of the
    following points. `scale` divides the coordinates (e.g. 1000 for 0-1000 answers).
    """
    return _parse(text, gripper=True, scale=scale)


def parse_peek(text: str, scale: tuple[float, float] = (1.0, 1.0)) -> ParsedPath:
    """`TRAJECTORY: <ans>[...]</ans> MASK: <ans>[...]</ans>` -> trajectory points, no gripper
    states, and the mask points, in coordinates of the image sent (the square crop; see
    `protocol.crop_to_frame`)."""
    parsed = _parse(text, gripper=False, scale=scale)
    m = _MASK.search(text or "")
    if m:
        mask = [[float(t["x"]) / scale[0], float(t["y"]) / scale[1], None] for t in _TOKEN.finditer(m.group(1))
                if t["point"]]
        parsed.mask = [(x, y) for x, y, _ in _fit_range(mask, [])[0]]
    return parsed


def parse_points_json(text: str, scale: tuple[float, float] = (1.0, 1.0)) -> ParsedPath:
    """`[{"point_2d": [x, y], "label": "..."}, ...]`, bare or in a ```json fence -> points in
    order, no gripper states (the format has none), each point's label kept.

    Repaired: text around the JSON; entries without `point_2d` (skipped); bare [x, y] entries;
    invalid, cut-off or wrapped JSON (each object holding a `point_2d` read one by one)."""
    if not text or not text.strip():
        return ParsedPath(FAILED, reason="empty answer")
    repairs: list[str] = []
    fence = _FENCE.search(text)
    body = (fence.group(1) if fence else text).strip()
    data = _json(body)
    if data is None and "[" in body and "]" in body:
        data = _json(body[body.index("["):body.rindex("]") + 1])
        if data is not None:
            _note(repairs, "text around the JSON ignored")
    if isinstance(data, dict) and _is_xy(data.get("point_2d", data.get("point"))):
        data = [data]  # one point, as a bare object
    found = _listed_points(data, repairs) if isinstance(data, list) else []
    if not found:
        found = [p for p in map(_object_point, _OBJECT.findall(body)) if p is not None]
        if found:
            _note(repairs, "points read one by one (invalid, cut-off or wrapped JSON)")
    if not found:
        return ParsedPath(FAILED, repairs=repairs, reason="no point_2d points in answer")
    points = [[x / scale[0], y / scale[1], None] for (x, y), _ in found]
    kept, out_of_range = _fit_range(points, repairs)
    keep = [i for i, p in enumerate(points) if _kept(p)]
    if not kept:
        return ParsedPath(FAILED, repairs=repairs, reason="every point outside the image",
                          answered=len(points), out_of_range=out_of_range)
    return ParsedPath(REPAIRED if repairs else OK, [tuple(p) for p in kept], repairs, answered=len(points),
                      out_of_range=out_of_range, labels=[found[i][1] for i in keep])


def _listed_points(items: list, repairs: list[str]) -> list[tuple[tuple[float, float], str | None]]:
    """((x, y), label) of a parsed JSON list's entries: objects with point_2d, or bare pairs."""
    out = []
    for item in items:
        xy = item.get("point_2d", item.get("point")) if isinstance(item, dict) else item
        if isinstance(item, list):
            _note(repairs, "bare [x, y] entries read as points")
        if _is_xy(xy):
            label = item.get("label") if isinstance(item, dict) else None
            out.append(((float(xy[0]), float(xy[1])), label if isinstance(label, str) else None))
        else:
            _note(repairs, "entries without point_2d ignored")
    return out


def _object_point(obj: str) -> tuple[tuple[float, float], str | None] | None:
    """((x, y), label) of one `{...}` object's text, valid JSON or not; None without point_2d."""
    data = _json(obj)
    xy = data.get("point_2d", data.get("point")) if isinstance(data, dict) else None
    if _is_xy(xy):
        label = data.get("label")
        return (float(xy[0]), float(xy[1])), label if isinstance(label, str) else None
    point, label = _POINT_2D.search(obj), _LABEL.search(obj)
    if point is None:
        return None
    return (float(point[1]), float(point[2])), label[1] if label else None  # the label's raw text


def _is_xy(xy) -> bool:
    return isinstance(xy, list) and len(xy) == 2 and all(isinstance(v, (int, float)) for v in xy)


def _json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


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

    answered = len(points)
    points, out_of_range = _fit_range(points, repairs)
    if not points:
        return ParsedPath(FAILED, repairs=repairs, reason="no points in answer", answered=answered,
                          out_of_range=out_of_range)
    return ParsedPath(REPAIRED if repairs else OK, [tuple(p) for p in points], repairs, answered=answered,
                      out_of_range=out_of_range)


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


def _kept(p: list) -> bool:
    return -FAR_OUTSIDE <= min(p[0], p[1]) and max(p[0], p[1]) <= 1 + FAR_OUTSIDE


def _fit_range(points: list[list], repairs: list[str]) -> tuple[list[list], int]:
    """Points clipped to [0, 1] (those far outside dropped), and how many were outside."""
    kept, dropped, clipped = [], 0, False
    outside = sum(1 for p in points if min(p[0], p[1]) < 0 or max(p[0], p[1]) > 1)
    for p in points:
        x, y = p[0], p[1]
        if not _kept(p):
            dropped += 1
            continue
        cx, cy = min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)
        clipped |= (cx, cy) != (x, y)
        kept.append([cx, cy, p[2]])
    if clipped:
        _note(repairs, "coordinates outside [0, 1] clipped")
    if dropped:
        _note(repairs, "points far outside [0, 1] dropped")
    return kept, outside


def _note(repairs: list[str], what: str) -> None:
    if what not in repairs:
        repairs.append(what)
