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
    scores = []
    for values in table.values():
        area = next(iter(values.values()))[1]
        lam = min(high, max(low, intercept + slope * area))
        nearest = min(lams, key=lambda v: abs(v - lam))
        scores.append(values[nearest][0])
    return statistics.fmean(scores)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path)
    p.add_argument("--variant", default="default")
    p.add_argument("--objective", default="gt/l1")
    args = p.parse_args(argv)
    rows = json.loads(args.results.read_text())[args.variant]
    table = per_edit(rows, args.objective)
    lams = sorted({lam for v in table.values() for lam in v})
    fixed = {lam: statistics.fmean(v[lam][0] for v in table.values()) for lam in lams}
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


if __name__ == "__main__":
    main()
