"""Means and 95% intervals over training seeds and evaluation episodes.

Outcomes are arrays (tasks, seeds, episodes). The interval is a two-level percentile bootstrap:
seeds and evaluation episodes are resampled with replacement (tasks are fixed: they are what
the question is asked over). Differences between two conditions are paired: every cell sees
the same evaluation episodes and seeds, so the same resample is applied to both, which is
what makes a small matrix informative. Resamples are counts, so one resample is one einsum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 4000


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    n: int  # outcomes behind it

    def points(self, scale: float = 100.0) -> str:
        return f"{self.mean * scale:.1f} [{self.low * scale:.1f}, {self.high * scale:.1f}]"


def bootstrap(values: np.ndarray, resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95) -> Estimate:
    """Mean of (tasks, seeds, episodes) values with a bootstrap interval over seeds and episodes."""
    x = np.asarray(values, np.float64)
    if x.ndim == 2:
        x = x[None]
    t, s, e = x.shape
    rng = np.random.default_rng(seed)
    ws = rng.multinomial(s, np.full(s, 1 / s), size=resamples).astype(np.float64)
    we = rng.multinomial(e, np.full(e, 1 / e), size=resamples).astype(np.float64)
    means = np.einsum("bs,tse,be->b", ws, x, we) / (t * s * e)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Estimate(float(x.mean()), float(low), float(high), x.size)


def paired_difference(a: np.ndarray, b: np.ndarray, **kw) -> Estimate:
    """a - b for outcomes on the same (tasks, seeds, episodes)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need one shape, got {a.shape} and {b.shape}")
    return bootstrap(a - b, **kw)


def in_words(name_a: str, name_b: str, d: Estimate, unit: str = "points of success") -> str:
    """"A beats B by X points of success, 95% CI [a, b]" with the honest qualifier."""
    x, lo, hi = d.mean * 100, d.low * 100, d.high * 100
    if abs(x) < 1e-9 and abs(lo) < 1e-9 and abs(hi) < 1e-9:
        return f"{name_a} and {name_b} do equally well (no difference on any episode)"
    verb = "beats" if x > 0 else "trails"
    text = f"{name_a} {verb} {name_b} by {abs(x):.1f} {unit}, 95% CI [{lo:.1f}, {hi:.1f}]"
    if lo > 0 or hi < 0:
        return text + " (the interval excludes zero)"
    return text + " (the interval includes zero: not distinguishable at this sample size)"
