"""Bootstrap intervals of a mean and of a paired difference of means over edits (percentile method)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def bootstrap_means(values: Sequence[float], resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """Means of `resamples` resamples with replacement of `values` (1-D), seeded: (resamples,)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap needs a non-empty 1-D sequence of values, got shape {x.shape}.")
    picks = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    return x[picks].mean(axis=1)


def bootstrap_ci(values: Sequence[float], level: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and its percentile bootstrap interval at `level`."""
    means = bootstrap_means(values, resamples, seed)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(np.mean(values)), float(low), float(high)


def paired_difference_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95, resamples: int = 2000,
                         seed: int = 0) -> tuple[float, float, float]:
    """(mean of a - b, low, high) over paired values (the same edits in the same order), resampling edits.

    Pairing removes the edit-to-edit spread that both settings share, so the interval is that of the
    setting's own effect; it contains 0 when the data cannot tell the two settings apart.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same edits: got {a.shape} and {b.shape}.")
    return bootstrap_ci(a - b, level, resamples, seed)
