"""The edit mask against the true region (recall / precision / IoU) and bootstrap intervals over edits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from framework.evaluation.metrics import MaskRegionAccuracy, bootstrap_ci, paired_difference_ci, region_scores
from framework.io.outputs import EditResult


def test_region_scores_by_hand():
    truth = torch.zeros(8, 8, dtype=torch.bool)
    truth[:4, :4] = True  # 16 pixels
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:4, :2] = True  # 8 of them
    mask[6:, 6:] = True  # 4 outside
    scores = region_scores(mask, truth)
    assert scores == pytest.approx({"mask/recall": 8 / 16, "mask/precision": 8 / 12, "mask/iou": 8 / 20})
    empty = torch.zeros(8, 8, dtype=torch.bool)
    assert region_scores(empty, empty) == {"mask/iou": 1.0}  # nothing to find, nothing marked
    assert region_scores(empty, truth) == {"mask/iou": 0.0, "mask/recall": 0.0}


def test_mask_region_accuracy_upsamples_the_latent_mask(tmp_path):
    truth = np.zeros((16, 16), np.uint8)
    truth[:8, :8] = 255  # the top-left latent pixel of a 2x2 latent grid (/8)
    Image.fromarray(truth).save(tmp_path / "true.png")
    latent = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])  # top half marked: twice the true region
    image = torch.zeros(1, 3, 16, 16)
    result = EditResult("e", image, image, latent, None, None, {}, {})

    class Request:
        extra = {"true_mask": str(tmp_path / "true.png")}

    metric = MaskRegionAccuracy()
    scores = metric.update(result, Request())
    assert scores == pytest.approx({"mask/recall": 1.0, "mask/precision": 0.5, "mask/iou": 0.5})
    assert metric.compute()["mask/count"] == 1.0

    class NoTruth:
        extra = {}

    assert metric.update(result, NoTruth()) == {}


def test_bootstrap_interval_matches_the_standard_error():
    values = np.random.default_rng(1).normal(2.0, 1.0, size=400)
    mean, low, high = bootstrap_ci(values, resamples=4000)
    assert mean == pytest.approx(values.mean())
    half = 1.96 * values.std(ddof=1) / np.sqrt(values.size)  # normal theory, ~0.098
    assert low < mean < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert bootstrap_ci(values, resamples=500) == bootstrap_ci(values, resamples=500)  # seeded


def test_paired_difference_removes_the_shared_spread():
    rng = np.random.default_rng(2)
    base = rng.normal(0.0, 5.0, size=200)  # edit-to-edit spread shared by both settings
    shifted = base + 0.1 + rng.normal(0.0, 0.01, size=200)
    diff, low, high = paired_difference_ci(shifted, base)
    assert diff == pytest.approx(0.1, abs=0.003)
    assert 0 < low < 0.1 < high < 0.2  # tells a 0.1 shift apart; unpaired intervals (+-0.7) could not
    same = paired_difference_ci(base, base)
    assert same == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same edits"):
        paired_difference_ci(base, base[:10])
