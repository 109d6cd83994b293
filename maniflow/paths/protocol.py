"""The wire protocols of the path-generating VLM servers (REFERENCE section 2).

    hamster  POST {base}/chat/completions      reply content: a list of parts
    peek     same server protocol, PEEK prompt, frame centre-cropped and resized to 384x384
    openai   POST {base}/chat/completions      with base ending in /v1 (vLLM etc.); string content;
                                               HAMSTER's prompt and answer format
    qwen     as openai, asking for a JSON point list (Qwen2.5-VL / Qwen3-VL); coordinates in
             0-1000 (Qwen3-VL) or pixels (Qwen2.5-VL), declared by the user, never guessed

Everything here is pure: request bodies, reply text extraction and coordinate mapping, shared
by the client and by the loopback server (`maniflow serve-paths`), so both speak one protocol.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

import cv2
import numpy as np

from maniflow.geometry import Point

HAMSTER_PROMPT = (
    "\nIn the image, please execute the command described in <quest>{quest}</quest>.\n"
    "Provide a sequence of points denoting the trajectory of a robot gripper to achieve the goal.\n"
    "Format your answer as a list of tuples enclosed by <ans> and </ans> tags. For example:\n"
    "<ans>[(0.25, 0.32), (0.32, 0.17), (0.13, 0.24), <action>Open Gripper</action>, (0.74, 0.21), "
    "<action>Close Gripper</action>, ...]</ans>\n"
    "The tuple denotes point x and y location of the end effector in the image. "
    "The action tags indicate gripper actions.\n"
    "Coordinates should be floats between 0 and 1, representing relative positions.\n"
    "Remember to provide points between <ans> and </ans> tags and think step by step."
)

# "integers" is in the original PEEK prompt; kept verbatim because the model was trained on it.
PEEK_PROMPT = (
    "In the image, please execute the command described in <quest>{quest}</quest>.\n"
    "Provide a sequence of points denoting the trajectory of a robot gripper and a set of points "
    "denoting the areas the robot must see to achieve the goal.\n"
    "Format your answer as a list of tuples enclosed by <ans> and </ans> tags. For example:\n"
    "TRAJECTORY: <ans>[(0.25, 0.32), (0.32, 0.17), (0.13, 0.24), (0.74, 0.21), ...]</ans> "
    "MASK: <ans>[(0.25, 0.32), (0.32, 0.17), (0.13, 0.24), (0.74, 0.21), ...]</ans>\n"
    "The tuple denotes point x and y location of the end effector of the gripper in the image.\n"
    "The coordinates should be integers ranging between 0.0 and 1.0, indicating the relative "
    "locations of the points in the image.\n"
)

# Qwen-VL models are trained to point with JSON lists (REFERENCE section 8). The <quest> tags
# mark the instruction as in the other prompts; the model reads them as plain text.
QWEN_PROMPT = (
    "The robot must do this: <quest>{quest}</quest>.\n"
    "Point to the positions the robot gripper's end effector passes through to do it, in order, from "
    "where it is now to where it finishes: at most 10 points.\n"
    'Answer with JSON only: [{"point_2d": [x, y], "label": "short description"}, ...]'
)

PEEK_SIZE = 384
OPEN, CLOSE = "<action>Open Gripper</action>", "<action>Close Gripper</action>"


@dataclass(frozen=True)
class Wire:
    """How one provider kind talks: prompt, answer format and what is done to the frame."""

    kind: str
    prompt: str  # the default template; `{quest}` is replaced by the instruction
    answer_format: str  # hamster, peek or points_json (maniflow.paths.store.ANSWER_FORMATS)
    crop: bool  # centre-crop to a square and resize to PEEK_SIZE before sending
    vila: bool  # a VILA server: sends its extra sampling keys (strict OpenAI servers may reject them)
    coords: str | None  # the convention its answers are in; None: the user must declare it


def prompt_sha(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()[:12]


WIRES = {
    "hamster": Wire("hamster", HAMSTER_PROMPT, "hamster", crop=False, vila=True, coords="unit"),
    "peek": Wire("peek", PEEK_PROMPT, "peek", crop=True, vila=True, coords="unit"),
    "openai": Wire("openai", HAMSTER_PROMPT, "hamster", crop=False, vila=False, coords="unit"),
    "qwen": Wire("qwen", QWEN_PROMPT, "points_json", crop=False, vila=False, coords=None),
}


def centre_crop_box(width: int, height: int) -> tuple[int, int, int]:
    """(x0, y0, side) of the centred square crop PEEK's client sends."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def prepare_image(rgb: np.ndarray, wire: Wire) -> np.ndarray:
    """The image as the server must see it (RGB): the frame, or PEEK's square crop at 384x384."""
    if not wire.crop:
        return rgb
    x0, y0, side = centre_crop_box(rgb.shape[1], rgb.shape[0])
    crop = rgb[y0:y0 + side, x0:x0 + side]
    interp = cv2.INTER_AREA if side > PEEK_SIZE else cv2.INTER_LINEAR
    return cv2.resize(crop, (PEEK_SIZE, PEEK_SIZE), interpolation=interp)


def crop_to_frame(points: list[Point], width: int, height: int) -> list[Point]:
    """Map PEEK answer coordinates (relative to the square crop) to the full frame."""
    x0, y0, side = centre_crop_box(width, height)
    return [((x0 + x * side) / width, (y0 + y * side) / height, g) for x, y, g in points]


def frame_to_crop(points: list[Point], width: int, height: int) -> list[Point]:
    """Inverse of `crop_to_frame` (used by the loopback server to answer like PEEK)."""
    x0, y0, side = centre_crop_box(width, height)
    return [((x * width - x0) / side, (y * height - y0) / side, g) for x, y, g in points]


def jpeg_data_url(rgb: np.ndarray, quality: int = 90) -> str:
    """RGB frame -> `data:image/jpeg;base64,...` (cv2 encodes BGR, hence the swap)."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def decode_data_url(url: str) -> np.ndarray:
    """`data:image/...;base64,...` -> RGB array; ValueError if it is not a decodable image."""
    head, sep, data = url.partition(",")
    if not sep or not head.startswith("data:image/") or not head.endswith(";base64"):
        raise ValueError("image_url must be a base64 data URL")
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError as e:
        raise ValueError(f"image_url is not valid base64: {e}") from None
    bgr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("image_url does not hold a decodable image")
    return bgr[..., ::-1]


def request_body(image_url: str, instruction: str, wire: Wire, model: str, max_tokens: int,
                 prompt: str | None = None) -> dict:
    """Chat-completions body with greedy decoding, as the HAMSTER client sends it. `prompt`: a
    template replacing the wire's (its `{quest}` becomes the instruction; other braces stay)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_url}},
            {"type": "text", "text": (prompt or wire.prompt).replace("{quest}", instruction)},
        ]}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "top_p": 1.0,
    }
    if wire.vila:
        body.update(num_beams=1, use_cache=True)
    return body


def reply_text(reply: dict) -> str:
    """The answer text of a chat-completions reply: content as a string (OpenAI) or a list of
    parts (HAMSTER). Raises ValueError on a reply without one."""
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("reply has no choices[0].message.content") from None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content is None:
        return ""
    raise ValueError(f"reply content is a {type(content).__name__}, not text")


def format_hamster_answer(points: list[Point], digits: int = 4) -> str:
    """A path in HAMSTER's answer format (the inverse of `parse.parse_hamster`).

    A tag sets the state of the point just before it and of the following points; the state
    starts closed, so a tag follows every point whose state differs from the current one.
    """
    items, state = [], 0
    for x, y, g in points:
        items.append(f"({x:.{digits}f}, {y:.{digits}f})")
        if g is not None and g != state:
            items.append(OPEN if g else CLOSE)
            state = g
    return "<ans>[" + ", ".join(items) + "]</ans>"


def format_points_json(points: list[Point], scale: tuple[float, float] = (1000.0, 1000.0), fence: bool = True) -> str:
    """A path as a Qwen-VL JSON point list in `scale` units (the inverse of
    `parse.parse_points_json`), inside a ```json fence as those models usually answer."""
    items = [{"point_2d": [round(x * scale[0]), round(y * scale[1])], "label": f"waypoint {i + 1}"}
             for i, (x, y, _) in enumerate(points)]
    text = json.dumps(items)
    return f"```json\n{text}\n```" if fence else text


def format_peek_answer(points: list[Point], digits: int = 4) -> str:
    coords = ", ".join(f"({x:.{digits}f}, {y:.{digits}f})" for x, y, _ in points)
    return f"TRAJECTORY: <ans>[{coords}]</ans> MASK: <ans>[{coords}]</ans>"
