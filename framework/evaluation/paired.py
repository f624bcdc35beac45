"""Paired comparison of a sweep's settings on the same edits, with seed floors and cost.

    python -m framework.evaluation.paired outputs/eval/background_study --base default
    python -m framework.evaluation.paired outputs/eval/background_study --base default --publish docs/results/background_val.md

A sweep's runs named `<setting>_s<k>` are one setting drawn with several seeds (the toy data module's
`seed_shift`); a run without the suffix is a setting with one seed. For each setting and metric it prints:
- the mean over the edits every seed of the setting and of the base scored (each edit's value averaged over
  the setting's seeds first);
- the seed floor: the standard deviation over seeds of the per-seed means (how far the same setting moves
  when only the random draws change; "-" with one seed);
- the paired difference from the base setting with its 95 % bootstrap interval over edits (it excludes 0
  when the data tell the two apart);
- the cost: mean UNet sample-evaluations per edit (result.json `unet_evaluations`) outside the mask stage: a
  sweep's runs share one cached mask per edit, so its cost shows only where it was computed (the default
  Eq. 7 mask adds 80 to every method that estimates one, docs/performance_cost.md).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from framework.evaluation.fronts import Point, read_point
from framework.evaluation.metrics.bootstrap import paired_difference_ci

METRICS = ("gt/background_l1", "gt/target_l1", "toy/new_class")
"""What is kept (background L1 outside the true mask), what is changed (target L1 inside it, the toy
classifier's reading of the new class)."""
SEED_SUFFIX = re.compile(r"^(?P<setting>.+)_s(?P<seed>\d+)$")


@dataclass
class Setting:
    """The runs of one setting, one per seed, and its mean cost."""

    name: str
    seeds: list[Point] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)  # per seed's run: mean UNet samples per edit

    @property
    def unet_samples(self) -> Optional[float]:
        return statistics.fmean(self.costs) if self.costs else None

    def per_edit(self, metric: str) -> dict[str, float]:
        """Each edit's value averaged over the seeds that scored it, for the edits every seed scored."""
        tables = [p.metrics.get(metric, {}) for p in self.seeds]
        common = set.intersection(*(set(t) for t in tables)) if tables else set()
        return {e: statistics.fmean(t[e] for t in tables) for e in common}

    def floor(self, metric: str, edits: Sequence[str]) -> Optional[float]:
        """Std over seeds of the per-seed means over `edits` (None with one seed)."""
        if len(self.seeds) < 2 or not edits:
            return None
        return statistics.stdev(statistics.fmean(p.metrics[metric][e] for e in edits) for p in self.seeds)


def unet_samples(folder: Path) -> Optional[float]:
    """Mean UNet sample-evaluations per edit of a run, the mask stage aside, from its result.json files."""
    totals = []
    for path in folder.glob("*/result.json"):
        counts = json.loads(path.read_text()).get("unet_evaluations")
        if isinstance(counts, dict):
            totals.append(sum(v for k, v in counts.items() if k != "mask"))
    return statistics.fmean(totals) if totals else None


def read_settings(sweep_dir: Path) -> dict[str, Setting]:
    """The settings of a sweep folder, grouping `<setting>_s<k>` runs."""
    settings: dict[str, Setting] = {}
    for folder in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        point = read_point(folder)
        if point is None:
            continue
        match = SEED_SUFFIX.match(folder.name)
        name = match["setting"] if match else folder.name
        setting = settings.setdefault(name, Setting(name))
        setting.seeds.append(point)
        cost = unet_samples(folder)
        if cost is not None:
            setting.costs.append(cost)
    return settings


def compare(settings: dict[str, Setting], base: str, metrics: Sequence[str] = METRICS) -> list[dict]:
    """One row per setting: per metric its mean, seed floor and paired difference from `base` [95 % CI]."""
    if base not in settings:
        raise SystemExit(f"paired: no run of the base setting '{base}' (runs: {sorted(settings)}).")
    rows = []
    for name, setting in settings.items():
        row = {"setting": name, "seeds": len(setting.seeds), "unet": setting.unet_samples}
        for metric in metrics:
            mine, theirs = setting.per_edit(metric), settings[base].per_edit(metric)
            edits = sorted(set(mine) & set(theirs))
            if not edits:
                continue
            mean = statistics.fmean(mine[e] for e in edits)
            diff = paired_difference_ci([mine[e] for e in edits], [theirs[e] for e in edits])
            row[metric] = {"mean": mean, "diff": diff, "edits": len(edits), "floor": setting.floor(metric, edits)}
        rows.append(row)
    return rows


def table(rows: list[dict], base: str, metrics: Sequence[str] = METRICS) -> str:
    """The rows as markdown: `mean (floor)` and `difference from base [95 % CI]` per metric."""
    head = "| setting | seeds | edits | " + " | ".join(f"{m} (floor) | - {base} [95 % CI]" for m in metrics)
    lines = [head + " | UNet samples / edit, mask aside |", "|---|---|---|" + "---|---|" * len(metrics) + "---|"]
    for row in rows:
        edits = max((row[m]["edits"] for m in metrics if m in row), default=0)
        cells = []
        for metric in metrics:
            if metric not in row:
                cells += ["-", "-"]
                continue
            value = row[metric]
            floor = "-" if value["floor"] is None else f"{value['floor']:.4f}"
            diff, low, high = value["diff"]
            cells += [f"{value['mean']:.4f} ({floor})", f"{diff:+.4f} [{low:+.4f}, {high:+.4f}]"]
        unet = "-" if row["unet"] is None else f"{row['unet']:.0f}"
        lines.append(f"| {row['setting']} | {row['seeds']} | {edits} | " + " | ".join(cells) + f" | {unet} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m framework.evaluation.paired", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a sweep's output folder (one sub-folder per run)")
    parser.add_argument("--base", required=True, help="the setting the others are compared with")
    parser.add_argument("--metrics", nargs="+", default=list(METRICS))
    parser.add_argument("--only", nargs="+", help="settings to show (default: all)")
    parser.add_argument("--publish", type=Path, help="also write the table as a markdown page here")
    args = parser.parse_args(argv)
    settings = read_settings(args.sweep_dir)
    if args.only:
        settings = {k: v for k, v in settings.items() if k in set(args.only) | {args.base}}
    text = table(compare(settings, args.base, args.metrics), args.base, args.metrics)
    print(text)
    if args.publish:
        args.publish.parent.mkdir(parents=True, exist_ok=True)
        args.publish.write_text(
            f"# Paired comparison: {args.sweep_dir.name}\n\nGenerated by `python -m framework.evaluation.paired {args.sweep_dir} "
            f"--base {args.base}`. Means over the edits every seed scored (each edit averaged over its seeds), "
            f"the seed floor in brackets after the mean, the paired difference from `{args.base}` with its 95 % "
            f"bootstrap interval over edits. Not edited by hand.\n\n{text}\n")


if __name__ == "__main__":
    main()
