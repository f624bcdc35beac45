"""Fit `lam: auto`'s constants (framework.config.AutoLam) on a lam study's per-edit results.

    python benchmarks/lam_study.py --edits 40 --split val --variants default --repeats 2 --out outputs/lam_val
    python benchmarks/fit_auto_lam.py outputs/lam_val/results.json --variant default

`lam: auto` sets lam = clip(intercept + slope * mask_area, low, high) per edit. Given every edit's scores
at each studied lam, a rule's score is the mean over edits of the objective at the studied lam nearest
to the rule's lam for that edit (the study's grid, 0.2 apart, bounds the error of that reading). The
objective is `gt/l1`, the L1 distance of the whole edit to the true target (lower is better): it counts
both what should change and what should not. Prints the best fixed lam, the best rule on a grid of
constants and both scores, and the rule's constants as YAML for `model.auto_lam`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path


def per_edit(rows: dict, key: str) -> dict[tuple[str, int], dict[float, tuple[float, float]]]:
    """(edit id, repeat) -> {lam: (objective, mask area)} for the edits scored at every lam."""
    table: dict[tuple[str, int], dict[float, tuple[float, float]]] = {}
    for lam, edits in rows.items():
        for e in edits:
            if key in e:
                table.setdefault((e["id"], e["repeat"]), {})[float(lam)] = (e[key], e["mask_area"])
    lams = {float(lam) for lam in rows}
    return {k: v for k, v in table.items() if set(v) == lams}


def rule_score(table, lams: list[float], intercept: float, slope: float, low: float, high: float) -> float:
    """Mean over edits of `rule_scores`."""
    return statistics.fmean(rule_scores(table, lams, intercept, slope, low, high))


def fixed_scores(table) -> dict[float, float]:
    """Each studied lam -> the mean objective over the table's edits."""
    lams = sorted({lam for v in table.values() for lam in v})
    return {lam: statistics.fmean(v[lam][0] for v in table.values()) for lam in lams}


def rule_scores(table, lams: list[float], intercept: float, slope: float, low: float, high: float) -> list[float]:
    """Per edit (in the table's order): the objective at the studied lam nearest to the rule's lam."""
    out = []
    for values in table.values():
        area = next(iter(values.values()))[1]
        lam = min(high, max(low, intercept + slope * area))
        out.append(values[min(lams, key=lambda v: abs(v - lam))][0])
    return out


def sweep_rows(folder: Path, prefix: str = "ito_lam") -> dict:
    """A fronts sweep's ITO runs (FOLDER/ito_lam<value>/<edit>/result.json) as lam-study rows, one repeat."""
    rows: dict = {}
    for run in sorted(folder.glob(f"{prefix}*")):
        lam = run.name[len(prefix):]
        for result in sorted(run.glob("*/result.json")):
            r = json.loads(result.read_text())
            rows.setdefault(f"{float(lam):g}", []).append({"id": result.parent.name, "repeat": 0,
                                                          "mask_area": r["mask_area"], **r.get("metrics", {})})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path)
    p.add_argument("--variant", default="default")
    p.add_argument("--objective", default="gt/l1")
    p.add_argument("--test", type=Path, default=None, metavar="SWEEP_FOLDER",
                   help="also score the fitted rule and the best fixed lam on a fronts sweep's ITO runs (held-out "
                        "'test' edits: FOLDER/ito_lam<value>/), with a paired 95 %% bootstrap interval")
    args = p.parse_args(argv)
    rows = json.loads(args.results.read_text())[args.variant]
    table = per_edit(rows, args.objective)
    fixed = fixed_scores(table)
    lams = list(fixed)
    best_lam = min(fixed, key=fixed.get)
    grid = itertools.product([0.6, 0.8, 1.0, 1.2], [-4.0, -2.0, -1.0, 0.0, 1.0, 2.0], [0.0, 0.2, 0.4, 0.6],
                             [0.6, 0.8, 1.0])
    fits = [(rule_score(table, lams, *c), c) for c in grid if c[2] <= c[3]]
    score, (intercept, slope, low, high) = min(fits)
    print(f"{len(table)} edits x {len(lams)} lams; objective {args.objective} (lower is better)")
    print("fixed lam: " + ", ".join(f"{lam:g}: {v:.4f}" for lam, v in fixed.items()))
    print(f"best fixed lam {best_lam:g}: {fixed[best_lam]:.4f}; best rule: {score:.4f} "
          f"({(score - fixed[best_lam]) / fixed[best_lam] * 100:+.1f} %)")
    print(f"auto_lam: {{intercept: {intercept}, slope: {slope}, low: {low}, high: {high}}}")
    from framework.metrics.bootstrap import paired_difference_ci

    rule = (intercept, slope, low, high)
    diff = paired_difference_ci(rule_scores(table, lams, *rule), [v[best_lam][0] for v in table.values()])
    print("val, rule - best fixed lam: {:+.4f} [{:+.4f}, {:+.4f}] (paired 95 % bootstrap; fitted here)".format(*diff))
    if args.test:
        test = per_edit(sweep_rows(args.test), args.objective)
        fixed_test = fixed_scores(test)
        test_lams = list(fixed_test)
        print(f"test: {len(test)} edits; fixed lam: " + ", ".join(f"{lam:g}: {v:.4f}" for lam, v in fixed_test.items()))
        ours = rule_scores(test, test_lams, *rule)
        diff = paired_difference_ci(ours, [v[best_lam][0] for v in test.values()])
        print(f"test, the val rule: {statistics.fmean(ours):.4f}; minus the val-best fixed lam {best_lam:g}: "
              "{:+.4f} [{:+.4f}, {:+.4f}]".format(*diff))


if __name__ == "__main__":
    main()
