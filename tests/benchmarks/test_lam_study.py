"""benchmarks/lam_study.py's Fig. 5 report and benchmarks/fit_auto_lam.py's held-out check, on hand-made rows."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def scripts():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import fit_auto_lam
    import lam_study

    yield lam_study, fit_auto_lam
    sys.path.remove(str(ROOT / "benchmarks"))


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


def test_fig5_report_levels_steps_and_floors(scripts):
    lam_study, _ = scripts
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


def test_auto_lam_rules_scored_on_a_sweeps_held_out_runs(scripts, tmp_path):
    _, fit = scripts
    for lam, objective in (("0.0", {"small": 0.5, "large": 0.1}), ("1.0", {"small": 0.2, "large": 0.4})):
        for edit, area in (("small", 0.02), ("large", 0.3)):
            folder = tmp_path / f"ito_lam{lam}" / edit
            folder.mkdir(parents=True)
            (folder / "result.json").write_text(json.dumps({"mask_area": area,
                                                            "metrics": {"gt/l1": objective[edit]}}))
    table = fit.per_edit(fit.sweep_rows(tmp_path), "gt/l1")
    assert set(table) == {("small", 0), ("large", 0)}
    # lam = 1 - 2 * area: 0.96 for the small mask (nearest studied lam 1), 0.4 for the large (nearest 0).
    scores = dict(zip(table, fit.rule_scores(table, [0.0, 1.0], 1.0, -2.0, 0.0, 1.0)))
    assert scores == {("small", 0): 0.2, ("large", 0): 0.1}
    assert fit.rule_score(table, [0.0, 1.0], 1.0, -2.0, 0.0, 1.0) == pytest.approx(0.15)
