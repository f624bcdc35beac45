"""How well the edit mask finds the true edit region (toy world: the request's `true_mask`)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from framework.evaluation.metrics.base import EditMetric
from framework.evaluation.metrics.pixel import load_like
from framework.io.outputs import EditResult


def region_scores(mask: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Recall, precision and IoU of a binary edit mask against the true region, both (H, W) booleans.

    recall = |M & T| / |T| (how much of what should change may change), precision = |M & T| / |M|,
    IoU = |M & T| / |M | T|. A score whose denominator is empty is left out (recall of an edit with an
    empty true region, precision of an empty mask); IoU of two empty masks is 1.
    """
    inter, m, t = float((mask & truth).sum()), float(mask.sum()), float(truth.sum())
    union = m + t - inter
    scores = {"mask/iou": 1.0 if union == 0 else inter / union}
    if t > 0:
        scores["mask/recall"] = inter / t
    if m > 0:
        scores["mask/precision"] = inter / m
    return scores


class MaskRegionAccuracy(EditMetric):
    """Recall / precision / IoU of the edit's binary mask against the request's `true_mask` (toy world).

    The mask (latent resolution, 1 = edit) is brought to the image's pixels by nearest upsampling, so a
    latent pixel counts for the whole block it decodes; the true mask is loaded at the edit's size and
    thresholded at 0.5. Requests without a `true_mask` give {}. Keys: `mask/recall`, `mask/precision`,
    `mask/iou`.
    """

    def __init__(self, resolution: Optional[int] = None):
        """
        Args:
            resolution: The data module's `resolution`, so the true mask is sized exactly like the input;
                None: inferred from the edit's size (as GroundTruthL1).
        """
        super().__init__()
        self.resolution = resolution

    @torch.no_grad()
    def update(self, result: EditResult, request) -> dict[str, float]:
        extra = request.extra or {}
        if "true_mask" not in extra:
            return {}
        size = tuple(result.edit.shape[-2:])
        truth = load_like(extra["true_mask"], size, self.resolution)[0, 0] > 0.5  # (H, W)
        mask = F.interpolate(result.mask.float(), size=size, mode="nearest")[0, 0] > 0.5  # (H, W)
        return self.record(region_scores(mask, truth))
