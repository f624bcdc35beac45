"""Fit `lam: auto`'s constants (framework.core.settings.AutoLam) on a lam study's per-edit results.

    python experiments/studies/lam_study.py --edits 200 --split val --variants default --repeats 2 --out outputs/lam_val
    python -m framework fit-auto-lam outputs/lam_val/results.json --test outputs/eval/fronts

`lam: auto` sets lam = clip(intercept + slope * mask_area + prompt_change * [the prompt changes], low, high)
per edit. Given every edit's scores at each studied lam, a rule's score is the mean over edits of the
objective at the studied lam nearest to the rule's lam for that edit (the study's grid, 0.2 apart, bounds
the error of that reading). The objective is `gt/target_l1` by default, the L1 distance to the true
target inside the true edit region: what lam is turned for. `gt/l1` (the whole image) is dominated by the
background and always asks for lam 1 on the toy model. Prints the best fixed lam, the best rule on a grid
of constants (ties go to the highest floor `low`, the least guidance), their difference with a paired
95 % bootstrap interval, what the rule costs in background L1, and the rule's constants as YAML.

With two or more seeds per edit it also prints what any per-edit rule could gain at most: the
cross-seed oracle, which gives each edit-seed the lam that scored best on the same edit at its other
seeds. That is what a rule that knew everything about the edit but the noise of its seed would choose;
if even that does not beat the best fixed lam, no feature of the edit (its mask area, its kind,
anything) can.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

Table = dict  # (edit id, repeat) -> {lam: (objective, mask area, prompt changed)}
GRID = dict(intercept=[0.4, 0.6, 0.8, 1.0, 1.2], slope=[-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0],
            prompt_change=[-0.4, -0.2, 0.0, 0.2, 0.4, 0.6], low=[0.0, 0.2, 0.3, 0.4, 0.6], high=[0.6, 0.8, 1.0])
"""The constants searched (AutoLam's fields)."""


def per_edit(rows: dict, key: str) -> Table:
    """(edit id, repeat) -> {lam: (objective, mask area, prompt changed)} for the edits scored at every lam."""
    table: Table = {}
    for lam, edits in rows.items():
        for e in edits:
            if key in e:
                table.setdefault((e["id"], e["repeat"]), {})[float(lam)] = (e[key], e["mask_area"],
                                                                          bool(e.get("prompt_changed", False)))
    lams = {float(lam) for lam in rows}
    return {k: v for k, v in table.items() if set(v) == lams}


def rule_scores(table: Table, rule: dict) -> list[float]:
    """Per edit (in the table's order): the objective at the studied lam nearest to the lam that
    framework.core.settings.AutoLam(**rule) gives it."""
    from framework.core.settings import AutoLam

    auto_lam = AutoLam(**rule)
    out = []
    for values in table.values():
        _, area, prompt_changed = next(iter(values.values()))
        lam = auto_lam(area, prompt_changed)
        out.append(values[min(values, key=lambda v: abs(v - lam))][0])
    return out


def rule_score(table: Table, rule: dict) -> float:
    """Mean over edits of `rule_scores`."""
    return statistics.fmean(rule_scores(table, rule))


def fixed_scores(table: Table) -> dict[float, float]:
    """Each studied lam -> the mean objective over the table's edits."""
    lams = sorted({lam for v in table.values() for lam in v})
    return {lam: statistics.fmean(v[lam][0] for v in table.values()) for lam in lams}


def best_rule(table: Table, grid: dict = GRID) -> tuple[float, dict]:
    """The grid's rule of lowest mean objective; among rules within 1e-5 of it, the one with the highest floor."""
    rules = [dict(zip(grid, c)) for c in itertools.product(*grid.values())]
    fits = [(rule_score(table, r), r) for r in rules if r["low"] <= r["high"]]
    best = min(score for score, _ in fits)
    return min(((s, r) for s, r in fits if s <= best + 1e-5), key=lambda f: (-f[1]["low"], f[0]))


def cross_seed_oracle(table: Table) -> tuple[list[float], list[tuple[tuple[str, int], float]]]:
    """Per edit-seed (with another seed of the same edit in the table): the objective at the lam that was
    best for that edit at its other seeds (their mean), and which (key, lam) was chosen. An upper bound on what a
    per-edit lam rule can gain that is not fitted to seed noise."""
    seeds: dict[str, list[int]] = {}
    for edit, repeat in table:
        seeds.setdefault(edit, []).append(repeat)
    scores, chosen = [], []
    for (edit, repeat), values in table.items():
        others = [table[(edit, r)] for r in seeds[edit] if r != repeat]
        if not others:
            continue
        lam = min(values, key=lambda v: statistics.fmean(o[v][0] for o in others))
        scores.append(values[lam][0])
        chosen.append(((edit, repeat), lam))
    return scores, chosen


def sweep_rows(folder: Path, prefix: str = "ito_lam") -> dict:
    """A fronts sweep's ITO runs (FOLDER/ito_lam<value>/<edit>/result.json) as lam-study rows, one repeat."""
    rows: dict = {}
    for run in sorted(folder.glob(f"{prefix}*")):
        lam = run.name[len(prefix):]
        for edit, r in run_records(run).items():
            rows.setdefault(f"{float(lam):g}", []).append({
                "id": edit, "repeat": 0, "mask_area": r["mask_area"],
                "prompt_changed": r["source_prompt"] != r["edit_prompt"], **r.get("metrics", {})})
    return rows


def run_records(run: Path) -> dict[str, dict]:
    """A sweep run's edits: edit id -> its result.json."""
    return {r.parent.name: json.loads(r.read_text()) for r in sorted(run.glob("*/result.json"))}


def compare_run(folder: Path, lam: float, keys=("gt/target_l1", "gt/background_l1", "toy/new_class")) -> None:
    """The sweep's lam: auto run (FOLDER/ito_auto), as run, against its fixed-lam run on the same edits."""
    auto, fixed = run_records(folder / "ito_auto"), run_records(folder / f"ito_lam{lam:.1f}")
    mean_lam = statistics.fmean(r["lam"] for r in auto.values())
    print(f"test, lam: auto as run ({len(auto)} edits, mean lam {mean_lam:.2f}) against lam {lam:g}:")
    for key in keys:
        ours, theirs = ({i: r["metrics"][key] for i, r in run.items() if key in r.get("metrics", {})}
                        for run in (auto, fixed))
        common = sorted(set(ours) & set(theirs))
        if common:
            print(f"  {key}: {statistics.fmean(ours[i] for i in common):.4f} against "
                  f"{statistics.fmean(theirs[i] for i in common):.4f}, difference "
                  f"{ci([ours[i] for i in common], [theirs[i] for i in common])}")


def ci(ours: list[float], theirs: list[float]) -> str:
    from framework.evaluation.metrics.bootstrap import paired_difference_ci

    return "{:+.4f} [{:+.4f}, {:+.4f}]".format(*paired_difference_ci(ours, theirs))


def compare(label: str, rows: dict, objective: str, rule: dict, lam: float) -> None:
    """Print the rule against the fixed lam on `rows`: the objective and, beside it, the background L1."""
    table = per_edit(rows, objective)
    ours = rule_scores(table, rule)
    print(f"{label}: rule {statistics.fmean(ours):.4f}, fixed lam {lam:g} "
          f"{statistics.fmean(v[lam][0] for v in table.values()):.4f}; rule - fixed: "
          f"{ci(ours, [v[lam][0] for v in table.values()])}")
    if objective != "gt/background_l1":
        bg = per_edit(rows, "gt/background_l1")
        if bg:
            fixed_bg = [v[lam][0] for v in bg.values()]
            print(f"{label}, background L1: rule - fixed: {ci(rule_scores(bg, rule), fixed_bg)}")


def read_study(path: Path, variant: str) -> dict:
    """One variant's rows of a lam study's results.json: {lam: [per-edit scores]}."""
    if not path.is_file():
        raise SystemExit(f"error: no lam study results at {path}; run experiments/studies/lam_study.py --out FOLDER "
                         f"first and pass FOLDER/results.json.")
    study = json.loads(path.read_text())
    if variant not in study:
        raise SystemExit(f"error: {path} has no variant '{variant}' (it has: {', '.join(study)}); pass --variant.")
    return study[variant]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m framework fit-auto-lam", description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="a lam study's results.json (experiments/studies/lam_study.py --out)")
    p.add_argument("--variant", default="default", help="the study's variant to fit on")
    p.add_argument("--objective", default="gt/target_l1", help="the per-edit metric to minimise")
    p.add_argument("--area-only", action="store_true", help="fit with prompt_change = 0 (the mask area alone)")
    p.add_argument("--test", type=Path, default=None, metavar="SWEEP_FOLDER",
                   help="also score the fitted rule and the best fixed lam on a fronts sweep's ITO runs (held-out "
                        "'test' edits: FOLDER/ito_lam<value>/), with a paired 95 %% bootstrap interval")
    args = p.parse_args(argv)
    rows = read_study(args.results, args.variant)
    table = per_edit(rows, args.objective)
    fixed = fixed_scores(table)
    best_lam = min(fixed, key=fixed.get)
    grid = dict(GRID, prompt_change=[0.0]) if args.area_only else GRID
    score, rule = best_rule(table, grid)
    print(f"{len(table)} edit-seeds x {len(fixed)} lams; objective {args.objective} (lower is better)")
    print("fixed lam: " + ", ".join(f"{lam:g}: {v:.4f}" for lam, v in fixed.items()))
    print(f"best fixed lam {best_lam:g}: {fixed[best_lam]:.4f}; best rule: {score:.4f} "
          f"({(score - fixed[best_lam]) / fixed[best_lam] * 100:+.1f} %)")
    print("auto_lam: {" + ", ".join(f"{k}: {v:g}" for k, v in rule.items()) + "}")
    compare("val (fitted here)", rows, args.objective, rule, best_lam)
    oracle, chosen = cross_seed_oracle(table)
    if oracle:
        print(f"val, cross-seed oracle (each edit's best lam at its other seeds; the most any rule can gain): "
              f"{statistics.fmean(oracle):.4f}; minus the best fixed lam: "
              f"{ci(oracle, [table[key][best_lam][0] for key, _ in chosen])}")
    if args.test:
        test_rows = sweep_rows(args.test)
        fixed_test = fixed_scores(per_edit(test_rows, args.objective))
        print("test: fixed lam: " + ", ".join(f"{lam:g}: {v:.4f}" for lam, v in fixed_test.items()))
        if best_lam in fixed_test:
            compare("test, the val rule against the val-best fixed lam", test_rows, args.objective, rule, best_lam)
        else:
            print(f"test: the sweep has no run at the val-best lam {best_lam:g}; add it with "
                  f"`python -m framework sweep FRONTS.yaml --only ito_lam{best_lam:.1f}`")
        if (args.test / "ito_auto").is_dir():  # the sweep ran the default rule itself: its edits as made
            for lam in sorted({best_lam, min(fixed_test, key=fixed_test.get)} & set(fixed_test)):
                compare_run(args.test, lam)


if __name__ == "__main__":
    main()
