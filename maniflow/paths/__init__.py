"""Path labels: a 2D end-effector path for every frame, from a VLM server or the ground truth.

    protocol   prompts, request bodies, reply text, PEEK crop mapping (pure)
    parse      tolerant HAMSTER / PEEK / Qwen-VL JSON answer parsing, no eval
    oracle     ground-truth path geometry from the episode's own motion
    providers  what answers: hamster, peek, openai, qwen (VLM servers) and the oracle, a registry
    client     asynchronous multi-endpoint HTTP client with retries and failover
    store      the path store (JSON per episode, journaled, atomic) and fallbacks
    label      ProviderConfig and label_paths(): one entry point for every provider, resumable
    quality    a label's paths against the ground truth: pixel errors per frame, distributions
    legacy     import of existing HAMSTER output directories (restricted pickle loader)
    server     the loopback server behind `maniflow serve-paths`
"""

from maniflow.paths.client import ClientConfig, NoEndpointAvailable
from maniflow.paths.label import LabelReport, ProviderConfig, label_paths
from maniflow.paths.providers import PROVIDERS
from maniflow.paths.store import EpisodePaths, PathStore

__all__ = ["PROVIDERS", "ClientConfig", "EpisodePaths", "LabelReport", "NoEndpointAvailable", "PathStore",
           "ProviderConfig", "label_paths"]
