"""Path providers: what answers "where will the gripper go" for a frame.

A provider turns an episode's frames (and instruction, camera, pose) into one text answer per
frame in a declared answer format, so parsing, fallback and storage are the same for all
(`maniflow.paths.label`), and gives the closed-loop evaluation its paths the same way.
Built in:

    hamster, peek, openai,  a VLM server over HTTP (vlm.py; protocols in maniflow.paths.protocol)
    qwen
    oracle                  the episode's own future fingertip motion (oracle.py)

A new provider is one module in this package that calls `PROVIDERS.register` (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable

from maniflow.registry import Registry

# deliver(episode, frame, entry=None, error=None): one frame's answer entry ({"raw": text, ...})
# or the error that left it without one.
Deliver = Callable[..., None]


class PathProvider:
    """Base of the providers; subclasses set the class attributes and implement `answer`."""

    name: str
    answer_format: str = "hamster"  # how stored answers are parsed (maniflow.paths.store.ANSWER_FORMATS)
    coords: str | None = "unit"  # the answers' coordinate convention; None: the user declares it
    computed: bool = False  # answers are computed from the data: free to redo, never journaled
    needs_client: bool = True  # asks a server (a ClientConfig with endpoints)

    def identity(self, cfg) -> dict:
        """What makes two configurations' answers interchangeable (stored answers are reused
        only under the same identity)."""
        raise NotImplementedError

    def source_fingerprint(self, cfg, record: dict):
        """What an episode's answers depend on, from its frames-store record."""
        return record["fingerprint"]

    def answer(self, frames, store, episodes: list, cfg, client, deliver: Deliver) -> list[dict]:
        """Answer the `missing` frames of each episode through `deliver`; returns per-endpoint
        statistics (empty for a computed provider)."""
        raise NotImplementedError

    def closed_loop(self, cfg, client) -> Callable[[list, list], list]:
        """A path source for evaluation: (envs, their current frames) -> one path per env."""
        raise NotImplementedError


PROVIDERS: Registry[PathProvider] = Registry("path provider", __name__)


def register(provider: PathProvider) -> PathProvider:
    return PROVIDERS.register(provider.name, provider)
