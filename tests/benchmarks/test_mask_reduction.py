"""benchmarks/mask_reduction.py runs on the tiny model and reports what each variant costs."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def script():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import mask_reduction

    yield mask_reduction
    sys.path.remove(str(ROOT / "benchmarks"))


def test_variant_parsing(script):
    from framework.core.settings import MaskConfig, paper_literal_mask

    name, cfg = script.parse_variant("seeds=4,resolution=0.5,early_stop_iou=null", paper_literal_mask())
    assert name == "seeds=4,resolution=0.5,early_stop_iou=null"
    assert (cfg.seeds, cfg.resolution, cfg.early_stop_iou, cfg.steps) == (4, 0.5, None, None)
    with pytest.raises(SystemExit, match="unknown MaskConfig field"):
        script.parse_variant("sedes=4", MaskConfig())


def test_reduced_masks_side_by_side(script, one_thread, tiny_dirs):
    summary = script.main(["--pretrained", str(tiny_dirs["sd"]), "--controlnet", f"pose={tiny_dirs['pose']}",
                           "--generate", "1", "--kinds", "text", "pose", "--size", "64", "--steps", "6",
                           "--seeds", "4", "--variant", "seeds=2", "--variant", "steps=4",
                           "--variant", "early_stop_iou=1.0,seed_group=2"])
    by = {row["variant"]: row for row in summary}
    assert by["unreduced"]["iou_min"] == 1.0 and by["unreduced"]["samples_mean"] == 3 * 4 * 4
    assert by["seeds=2"]["samples_ratio"] == 0.5 and by["steps=4"]["samples_ratio"] == pytest.approx(2 / 3)
    # the unreachable early stop runs every group: the unreduced mask at the unreduced sample count
    assert by["early_stop_iou=1.0,seed_group=2"]["iou_min"] == 1.0
    assert by["early_stop_iou=1.0,seed_group=2"]["samples_ratio"] == 1.0
    assert all(0 <= row["iou_min"] <= 1 and row["truth_iou_mean"] is not None for row in summary)
