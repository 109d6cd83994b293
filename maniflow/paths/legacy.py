"""Import existing HAMSTER output directories into the path store, without unpickling.

    {src}/{task}/episode_{NN}/paths/*{frame}.pkl        list of (x, y, gripper_state) tuples
    {src}/{task}/episode_{NN}/raw_outputs/*{frame}.txt  the model's raw answer

A raw answer, when present, is stored as the answer and parsed by our parser (so frames the
original scripts lost to parse failures come back when they are repairable). Otherwise the
pickled path is stored, rewritten in HAMSTER's answer format. Pickles are read by
`load_plain_pickle`, which interprets the opcode stream itself and accepts only lists, tuples,
floats, ints, booleans and None: nothing is imported or called, whatever the file holds.
"""

from __future__ import annotations

import pickletools
import re
from pathlib import Path

from maniflow.frames import FramesStore
from maniflow.paths.protocol import format_hamster_answer
from maniflow.paths.store import PathStore
from maniflow.workspace import Workspace

_EPISODE_DIR = re.compile(r"episode_?(\d+)$")
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


class UnsafePickleError(ValueError):
    """A pickle holding anything but plain lists, tuples, numbers and None."""


_PUSH = {"NONE": lambda arg: None, "NEWTRUE": lambda arg: True, "NEWFALSE": lambda arg: False,
         **{op: lambda arg: arg for op in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
                                            "FLOAT", "BINFLOAT")},
         "EMPTY_LIST": lambda arg: [], "EMPTY_TUPLE": lambda arg: ()}
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}
_NO_OP = {"PROTO", "FRAME"}


def load_plain_pickle(data: bytes, name: str = "<bytes>"):
    """Evaluate a pickle made only of lists, tuples, ints, floats, bools and None.

    The opcodes are decoded by `pickletools.genops` (which executes nothing) and interpreted
    here; any other opcode (globals, calls, object building, strings, dicts) raises
    UnsafePickleError naming it and its byte offset.
    """
    stack: list = []
    marks: list[int] = []
    memo: dict = {}
    try:
        for op, arg, pos in pickletools.genops(data):
            code = op.name
            if code in _PUSH:
                stack.append(_PUSH[code](arg))
            elif code in _NO_OP:
                pass
            elif code == "MARK":
                marks.append(len(stack))
            elif code in _MEMO_PUT:
                memo[arg] = stack[-1]
            elif code == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif code in _MEMO_GET:
                stack.append(memo[arg])
            elif code == "APPEND":
                item = stack.pop()
                stack[-1].append(item)
            elif code in ("APPENDS", "LIST", "TUPLE"):
                start = marks.pop()
                items = stack[start:]
                del stack[start:]
                if code == "APPENDS":
                    stack[-1].extend(items)
                else:
                    stack.append(list(items) if code == "LIST" else tuple(items))
            elif code in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(code[-1])
                items = tuple(stack[-n:])
                del stack[-n:]
                stack.append(items)
            elif code == "POP":
                stack.pop()
            elif code == "STOP":
                if len(stack) != 1:
                    break
                return stack[0]
            else:
                raise UnsafePickleError(f"{name}: pickle opcode {code} at byte {pos} is not allowed "
                                        "(only lists, tuples, numbers and None are accepted)")
    except UnsafePickleError:
        raise
    except (ValueError, IndexError, KeyError, AttributeError, TypeError) as e:
        raise UnsafePickleError(f"{name}: not a readable plain pickle ({type(e).__name__}: {e})") from None
    raise UnsafePickleError(f"{name}: pickle ended without a single result")


def read_path_pickle(path: Path) -> list[tuple]:
    """A HAMSTER path pickle -> [(x, y, gripper_state or None), ...]; errors name the file."""
    obj = load_plain_pickle(Path(path).read_bytes(), str(path))
    if not isinstance(obj, (list, tuple)):
        raise UnsafePickleError(f"{path}: expected a list of points, found {type(obj).__name__}")
    points = []
    for i, p in enumerate(obj):
        if (not isinstance(p, (list, tuple)) or len(p) not in (2, 3)
                or not all(isinstance(v, (int, float)) or v is None for v in p) or None in p[:2]):
            raise UnsafePickleError(f"{path}: point {i} is {p!r}, not (x, y[, gripper_state])")
        g = p[2] if len(p) == 3 else None
        points.append((float(p[0]), float(p[1]), None if g is None else int(round(g))))
    return points


def _frame_number(path: Path) -> int | None:
    m = _LAST_NUMBER.search(path.stem)
    return int(m.group(1)) if m else None


def import_hamster_dir(src, work, env: str, task: str, provider=None, camera: str = "head") -> dict:
    """Import {src}/{task}/episode_*/ into the path store of (label, env, task).

    `provider` (a ProviderConfig of kind hamster; default: HAMSTER's) names the label and the
    model that made the answers. Episodes are matched to the frames store by number, which must
    exist (its fingerprint and frame counts are what later runs check). Imported answers count
    as answered, so a later `maniflow paths` with the same label asks only for the frames still
    missing. Returns counts per episode.
    """
    from maniflow.paths.label import ProviderConfig, finish_episode

    frames = FramesStore(Workspace.of(work).frames(env, task, camera))
    provider = provider or ProviderConfig(kind="hamster")
    if provider.kind != "hamster":
        raise ValueError(f"HAMSTER output directories hold HAMSTER answers, not {provider.kind}'s")
    store = PathStore(Workspace.of(work).paths(provider.name, env, task, camera))
    store.bind(provider.identity(), provider.params())
    task_dir = Path(src) / task
    if not task_dir.is_dir():
        raise FileNotFoundError(f"{task_dir}: no such directory")
    rows = {int(n): i for i, n in enumerate(frames.episode_index)}
    imported = {}
    for ep_dir in sorted(task_dir.iterdir()):
        m = _EPISODE_DIR.search(ep_dir.name)
        if not (ep_dir.is_dir() and m):
            continue
        number = int(m.group(1))
        if number not in rows:
            raise ValueError(f"{ep_dir}: the frames store {frames.path} has no episode {number}")
        record = frames.episodes[rows[number]]
        answers = store.load_answers(number, provider.source_fingerprint(record))
        counts = {"raw": 0, "pickle": 0}
        for txt in sorted((ep_dir / "raw_outputs").glob("*.txt")):
            t = _frame_number(txt)
            if t is not None and t not in answers:
                answers[t] = {"raw": txt.read_text(encoding="utf-8", errors="replace"),
                              "endpoint": f"import:{txt}", "latency_s": None, "attempts": None}
                counts["raw"] += 1
        for pkl in sorted((ep_dir / "paths").glob("*.pkl")):
            t = _frame_number(pkl)
            if t is not None and t not in answers:
                answers[t] = {"raw": format_hamster_answer(read_path_pickle(pkl)),
                              "endpoint": f"import:{pkl}", "latency_s": None, "attempts": None}
                counts["pickle"] += 1
        finish_episode(store, frames, rows[number], provider, answers)
        imported[number] = counts
    store.write_summary({"env": env, "task": task, "camera": camera, "imported_from": str(src)})
    return imported
