"""The metric-plugin contract: a score of each edit (and of the run) from its result and request."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch import nn

from framework.core.errors import EditError
from framework.core.request import EditResult


class MetricError(EditError, ValueError):
    """A metric cannot be computed from what the run gave it (labels missing, too few edits)."""


class EditMetric(nn.Module):
    """Base of metric plugins: per-edit values from `update`, set-level values from `compute`."""

    def __init__(self):
        super().__init__()
        self.device = torch.device("cpu")
        self.loaded = False
        self.values: dict[str, list[float]] = defaultdict(list)

    def load(self, device: str | torch.device = "cpu") -> "EditMetric":
        """Read the weights (once) and move to `device`."""
        self.device = torch.device(device)
        if not self.loaded:
            self._load()
            self.loaded = True
        return self.to(self.device)

    def _load(self) -> None:
        """Subclasses with weights read them here."""

    def update(self, result: EditResult, request) -> dict[str, float]:
        """Values of one edit (keys with '/')."""
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        """Means of the per-edit values over all updates so far, and their count."""
        out = {key: float(np.mean(v)) for key, v in self.values.items()}
        for key, v in self.values.items():  # edits scored per namespace ('gt/...' keys may skip some)
            count = f"{key.split('/')[0]}/count"
            out[count] = max(out.get(count, 0.0), float(len(v)))
        return out

    def reset(self) -> None:
        """Forget all updates."""
        self.values.clear()

    def resume(self, result: EditResult, request, stored: dict[str, float]) -> dict[str, float]:
        """Count an edit that an earlier run wrote (`result` read back from its files) as `update` would.

        The edit is scored again from its written images, so set-level metrics (FID, ...) see it; the
        per-edit values the earlier run stored for the keys that come out replace the new ones (those
        were computed before the images were rounded to 8 bits), so a resumed run's means equal an
        uninterrupted run's.
        """
        values = self.update(result, request)
        kept = {}
        for key, value in values.items():
            if key in stored and self.values.get(key):
                self.values[key][-1] = float(stored[key])
            kept[key] = float(stored.get(key, value))
        return kept

    def record(self, values: dict[str, float]) -> dict[str, float]:
        """Keep per-edit values for `compute` and return them."""
        for key, value in values.items():
            self.values[key].append(value)
        return values

    def ready(self) -> None:
        """Load on first use if the caller did not."""
        if not self.loaded:
            self.load(self.device)
