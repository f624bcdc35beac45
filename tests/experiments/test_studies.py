"""The one-off studies of experiments/studies/ still run: mask_reduction on the tiny model reports what each
variant costs; lam_study's Fig. 5 report reads levels, steps and their seed floors."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import ROOT


def study(name: str):
    """A script of experiments/studies/ as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / "studies" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return study("mask_reduction")


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


def _rows():
    """Two edits x two repeats at lam 1 and 0.5: background L1 0.03 + 0.02 * (1 - lam) + a repeat offset."""
    rows = {}
    for lam in ("1", "0.5"):
        rows[lam] = []
        for edit in ("a", "b"):
            for repeat in (0, 1):
                bg = 0.03 + 0.02 * (1 - float(lam)) + 0.001 * repeat + (0.004 if edit == "b" else 0.0)
                step_noise = 0.0005 * repeat * (float(lam) == 0.5)  # the step itself differs between repeats
                rows[lam].append({"id": edit, "repeat": repeat, "gt/background_l1": bg + step_noise,
                                  "gt/target_l1": 0.15, "guide/edit_l1": 0.01 + 0.04 * float(lam),
                                  "guide/input_l1": 0.05, "toy/new_class": 0.5, "mask_area": 0.1})
    return rows


def test_fig5_report_levels_steps_and_floors():
    lam_study = study("lam_study")
    report = lam_study.fig5_report(_rows())
    lines = {line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("|")}
    # lam 1: mean background 0.03 + 0.002 (edit b) + 0.0005 (repeat 1); the floor is the std of the two
    # repeats' means (0.0320, 0.0330): 0.000707.
    assert "0.0325 (0.0007)" in lines["1"]
    # L1(edit, G) / L1(input, G) at lam 0.5: 0.03 / 0.05, as the ratio of means and per edit.
    assert "0.60 (0.60)" in lines["0.5"]
    # The step 1 -> 0.5 raises background L1 by 0.01 (+ 0.00025 on average); its floor is the spread of
    # the step between the repeats (0.0100, 0.0105): 0.000354.
    step = lines["1 -> 0.5"]
    assert "+0.0102 [+0.0100, +0.0105] (0.0004)" in step  # 0.01025, printed to 4 places
    assert "-0.0200" in step  # L1 to G: 0.05 -> 0.03
