"""framework.evaluation.auto_lam_fit (`python -m framework fit-auto-lam`): rules scored, the cross-seed oracle and
the held-out check, on hand-made rows."""

from __future__ import annotations

import json

import pytest

from framework.core.settings import AutoLam


@pytest.fixture(scope="module")
def fit():
    from framework.evaluation import auto_lam_fit

    return auto_lam_fit


def test_auto_lam_rules_scored_on_a_sweeps_held_out_runs(fit, tmp_path):
    # Three held-out edits at lam 0 and 1: a small and a large spatial-only edit, and a large text edit.
    objective = {"0.0": {"small": 0.5, "large": 0.1, "text": 0.3}, "1.0": {"small": 0.2, "large": 0.4, "text": 0.1}}
    for lam, values in objective.items():
        for edit, area in (("small", 0.02), ("large", 0.3), ("text", 0.3)):
            folder = tmp_path / f"ito_lam{lam}" / edit
            folder.mkdir(parents=True)
            prompts = ("a red circle", "a blue circle" if edit == "text" else "a red circle")
            (folder / "result.json").write_text(json.dumps({
                "mask_area": area, "source_prompt": prompts[0], "edit_prompt": prompts[1],
                "metrics": {"gt/l1": values[edit]}}))
    table = fit.per_edit(fit.sweep_rows(tmp_path), "gt/l1")
    assert set(table) == {("small", 0), ("large", 0), ("text", 0)}
    assert {k[0]: v[1.0][2] for k, v in table.items()} == {"small": False, "large": False, "text": True}
    # lam = 1 - 2 * area: 0.96 for the small mask (nearest studied lam 1), 0.4 for the large ones (nearest 0).
    area_only = dict(intercept=1.0, slope=-2.0, prompt_change=0.0, low=0.0, high=1.0)
    assert dict(zip(table, fit.rule_scores(table, area_only))) == {("small", 0): 0.2, ("large", 0): 0.1,
                                                                   ("text", 0): 0.3}
    # + 0.6 when the prompt changes: the text edit gets lam 1.0 (0.1), the spatial ones are unchanged.
    rule = dict(area_only, prompt_change=0.6)
    assert fit.rule_score(table, rule) == pytest.approx((0.2 + 0.1 + 0.1) / 3)
    # The grid search finds a rule at least that good, and among equals the one with the highest floor.
    score, best = fit.best_rule(table)
    assert score == pytest.approx(0.4 / 3) and best["low"] == 0.4
    assert AutoLam(**best)(0.3, False) < 0.5 <= AutoLam(**best)(0.3, True)


def test_cross_seed_oracle_picks_each_edits_lam_from_its_other_seed(fit):
    # Edit "a" prefers lam 0 at both seeds (a reproducible preference); edit "b" prefers lam 0 at seed 0 and
    # lam 1 at seed 1 (seed noise). Values as (objective, mask area, prompt changed).
    table = {("a", 0): {0.0: (0.1, 0.2, False), 1.0: (0.3, 0.2, False)},
             ("a", 1): {0.0: (0.2, 0.2, False), 1.0: (0.4, 0.2, False)},
             ("b", 0): {0.0: (0.1, 0.1, False), 1.0: (0.2, 0.1, False)},
             ("b", 1): {0.0: (0.5, 0.1, False), 1.0: (0.3, 0.1, False)},
             ("c", 0): {0.0: (0.9, 0.1, False), 1.0: (0.0, 0.1, False)}}  # one seed: nothing to read it from
    scores, chosen = fit.cross_seed_oracle(table)
    # a keeps lam 0 at both seeds; b's seed 0 gets seed 1's choice (lam 1) and vice versa: the oracle pays
    # for b's noise (0.2 and 0.5 instead of the in-seed minima 0.1 and 0.3).
    assert dict(chosen) == {("a", 0): 0.0, ("a", 1): 0.0, ("b", 0): 1.0, ("b", 1): 0.0}
    assert scores == [0.1, 0.2, 0.2, 0.5]


def test_fit_names_the_missing_run_when_the_test_sweep_lacks_the_val_best_lam(fit, tmp_path, capsys):
    # 'val': lam 0.8 is best for both edits; the 'test' sweep ran only lam 0 and 1.
    val = {lam: [{"id": e, "repeat": 0, "mask_area": 0.1, "prompt_changed": False, "gt/target_l1": score}
                 for e in ("a", "b")] for lam, score in (("0", 0.3), ("0.8", 0.1), ("1", 0.2))}
    (tmp_path / "val.json").write_text(json.dumps({"default": val}))
    for lam in ("0.0", "1.0"):
        folder = tmp_path / "sweep" / f"ito_lam{lam}" / "a"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({"mask_area": 0.1, "source_prompt": "x", "edit_prompt": "x",
                                                        "metrics": {"gt/target_l1": 0.2}}))
    fit.main([str(tmp_path / "val.json"), "--test", str(tmp_path / "sweep")])
    out = capsys.readouterr().out
    assert "best fixed lam 0.8: 0.1000" in out
    assert "no run at the val-best lam 0.8" in out and "--only ito_lam0.8" in out
