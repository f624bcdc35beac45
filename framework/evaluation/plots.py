"""Plots of each metric against lam, t_u or k over several runs (PNG, drawn with matplotlib).

    python -m framework plots outputs/eval/lam_sweep --out outputs/eval/lam_sweep/plots
    python -m framework plots runA/results.csv runB/ --x lam

A source is a run's `results.csv`, a run folder (its results.csv), or a folder of run folders (a
sweep). Each edit of each run is a point: x its lam (results.csv), t_u or k (the run's
summary.json: ito.update_steps, ito.inner_steps), y its metric. Runs with the same values of the
other parameters form a series, drawn as a line through the mean at each x; a run whose x varies
from edit to edit (lam: auto) is drawn as its own series of points with a dashed line at its mean.
One PNG per metric and axis that varies: `<metric>_vs_<axis>.png` ('/' in names becomes '_').
Needs matplotlib (the `[eval]` extra); each plot's `PlotInfo.figure` is the matplotlib Figure, to restyle
or save again.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from framework.core.errors import EditError

AXES = {"lam": ("lam",), "t_u": ("ito", "update_steps"), "k": ("ito", "inner_steps")}
"""Plot axes and where a run's summary.json parameters hold them."""
_NOT_METRICS = {"id", "method", "lam", "run", *AXES}
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
"""Series colours, in order (matplotlib's tab10, reordered so the first two contrast)."""
SIZE, DPI = (7.2, 4.6), 100  # inches and dots per inch: 720 x 460 pixels


@dataclass
class EditRow:
    """One edit of one run: its parameters (lam, t_u, k, when known) and metric values."""

    run: str
    params: dict[str, float]
    metrics: dict[str, float]


@dataclass
class PlotInfo:
    """What a plot shows, in data coordinates: one point per edit, one mean per series and x; and its figure."""

    path: Path
    points: list[tuple[float, float]] = field(default_factory=list)
    means: list[tuple[float, float]] = field(default_factory=list)
    series: dict[str, int] = field(default_factory=dict)  # label -> number of points
    figure: Any = None  # the matplotlib Figure that was saved


# ---------------------------------------------------------------------------------- reading


def _number(text: str) -> Optional[float]:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _summary_params(folder: Path) -> dict[str, float]:
    """lam, t_u and k of a run from its summary.json ({} without one); lam 'auto' is left out."""
    path = folder / "summary.json"
    if not path.is_file():
        return {}
    parameters = json.loads(path.read_text()).get("parameters", {})
    out = {}
    for axis, keys in AXES.items():
        value = parameters
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[axis] = float(value)
    return out


def read_results(path: Path, run: Optional[str] = None) -> list[EditRow]:
    """The per-edit rows of a results.csv (the 'mean' row skipped); t_u and k from summary.json beside it."""
    with open(path, newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    defaults = _summary_params(path.parent)
    rows = []
    for entry in table:
        if entry.get("id") == "mean":
            continue
        params = dict(defaults)
        params.update({a: v for a in AXES if (v := _number(entry.get(a, ""))) is not None})
        metrics = {k: v for k, text in entry.items() if k not in _NOT_METRICS and (v := _number(text)) is not None}
        rows.append(EditRow(run or path.parent.name, params, metrics))
    return rows


def read_sources(sources: Sequence[str | Path]) -> list[EditRow]:
    """Rows of every source: results.csv files, run folders, or folders of run folders."""
    rows: list[EditRow] = []
    for source in map(Path, sources):
        if source.is_file():
            rows += read_results(source)
        elif (source / "results.csv").is_file():
            rows += read_results(source / "results.csv")
        elif source.is_dir() and (found := sorted(source.glob("*/results.csv"))):
            for path in found:
                rows += read_results(path)
        else:
            raise EditError(f"'{source}' is not a results.csv, a run folder with one, or a folder of run folders; "
                            f"runs write results.csv when model.metrics are set (python -m framework test).")
    return rows


# ---------------------------------------------------------------------------------- drawing


class PlotsUnavailable(EditError):
    """matplotlib is not installed."""


def new_axes(title: str, x_name: str, y_name: str):
    """A figure of SIZE at DPI with one axes, titled and labelled (matplotlib's object API, Agg: no display)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotsUnavailable("plots need matplotlib, which is not installed: pip install 'ito-edit[eval]' "
                               "(or pip install matplotlib).") from None
    figure = Figure(figsize=SIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=9)
    axes.set_xlabel(x_name)
    axes.set_ylabel(y_name)
    axes.grid(True, color="0.88")
    return figure, axes


def save(figure, path: Path) -> Path:
    """Write the figure as PNG (SIZE at DPI, so every plot has the same pixel size), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=DPI)
    return path


def _label(value: float) -> str:
    return f"{value:.4g}"


def _natural(item: tuple[str, Any]) -> list:
    """Sort key of a series label with its numbers compared as numbers ('t_u=5' before 't_u=15')."""
    return [(0, float(part), "") if re.fullmatch(r"\d+(\.\d+)?", part) else (1, 0.0, part)
            for part in re.split(r"(\d+(?:\.\d+)?)", item[0]) if part]


def _series(rows: list[EditRow], x: str, others: list[str]) -> dict[str, tuple[list[EditRow], bool]]:
    """label -> (rows, varies): runs grouped by the other parameters; a run whose x varies is its own series."""
    by_run: dict[str, list[EditRow]] = defaultdict(list)
    for row in rows:
        by_run[row.run].append(row)
    series: dict[str, tuple[list[EditRow], bool]] = {}
    for run, run_rows in by_run.items():
        if len({r.params[x] for r in run_rows}) > 1:
            series[run] = (run_rows, True)
            continue
        label = ", ".join(f"{o}={_label(run_rows[0].params[o])}" for o in others if o in run_rows[0].params)
        series.setdefault(label or f"fixed {x}", ([], False))[0].extend(run_rows)
    return series


def plot_metric(rows: list[EditRow], x: str, metric: str, path: str | Path,
                others: Optional[list[str]] = None) -> PlotInfo:
    """Draw `metric` against parameter `x` for the rows that have both; `others` name the series."""
    rows = [r for r in rows if x in r.params and metric in r.metrics]
    if not rows:
        raise EditError(f"no edit has both '{x}' and '{metric}' to plot.")
    others = [o for o in (others or []) if o != x]
    figure, axes = new_axes(f"{metric} vs {x} ({len(rows)} edit scores, {len({r.run for r in rows})} runs)",
                            x, metric)
    info = PlotInfo(Path(path), figure=figure)
    for n, (label, (series_rows, varies)) in enumerate(sorted(_series(rows, x, others).items(), key=_natural)):
        colour = PALETTE[n % len(PALETTE)]
        info.series[label] = len(series_rows)
        points = [(r.params[x], r.metrics[metric]) for r in series_rows]
        if varies:  # e.g. lam: auto: where its edits fall, and its mean as a dashed level
            axes.axhline(sum(y for _, y in points) / len(points), color=colour, linestyle="--", linewidth=1.5,
                         label=label)
            axes.scatter(*zip(*points), s=12, color=colour, zorder=3)
        else:
            groups: dict[float, list[float]] = defaultdict(list)
            for xv, yv in points:
                groups[xv].append(yv)
            means = [(xv, sum(ys) / len(ys)) for xv, ys in sorted(groups.items())]
            axes.plot(*zip(*means), color=colour, marker="s", markerfacecolor="white", linewidth=1.5, label=label)
            axes.scatter(*zip(*points), s=12, color=colour, alpha=0.45, zorder=3)
            info.means += means
        info.points += points
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.subplots_adjust(left=0.1, right=0.74)
    save(figure, info.path)
    return info


@dataclass
class IntervalPoint:
    """One run of a cost-quality plot: x (its cost), y (a metric's mean) and the interval [low, high] of y."""

    label: str
    x: float
    y: float
    low: float
    high: float
    highlight: bool = False  # drawn filled (e.g. the chosen setting and the reference)


def draw_intervals(axes, points: Sequence[IntervalPoint]) -> list[tuple[float, float]]:
    """Each point as a square with a vertical interval bar and its label, on `axes`; the centres drawn."""
    for n, p in enumerate(points):
        colour = PALETTE[n % len(PALETTE)]
        axes.errorbar([p.x], [p.y], yerr=[[p.y - p.low], [p.high - p.y]], color=colour, marker="s", capsize=4,
                      markerfacecolor=colour if p.highlight else "white", linewidth=1.5)
        axes.annotate(p.label[:18], (p.x, p.y), xytext=(7, 0), textcoords="offset points", va="center",
                      color=colour, fontsize=8)
    return [(p.x, p.y) for p in points]


def plot_intervals(points: Sequence[IntervalPoint], title: str, x_name: str, y_name: str,
                   path: str | Path) -> PlotInfo:
    """e.g. a metric's mean and bootstrap interval against the UNet evaluations of each run of a cost sweep."""
    if not points:
        raise EditError(f"no point to plot for '{y_name}'.")
    figure, axes = new_axes(title, x_name, y_name)
    info = PlotInfo(Path(path), points=draw_intervals(axes, points), figure=figure)
    save(figure, info.path)
    return info


def varying_axes(rows: list[EditRow], axes: Sequence[str] = tuple(AXES)) -> list[str]:
    """The axes with at least two distinct values among the rows."""
    return [a for a in axes if len({r.params[a] for r in rows if a in r.params}) > 1]


def plot_all(rows: list[EditRow], out: str | Path, axes: Optional[Sequence[str]] = None,
             metrics: Optional[Sequence[str]] = None) -> list[PlotInfo]:
    """One plot per metric and per axis that varies (or each of `axes`); files in `out`."""
    axes = varying_axes(rows, axes or tuple(AXES))
    names = metrics or sorted({m for r in rows for m in r.metrics if not m.endswith("/count")})
    plots = []
    for x in axes:
        for metric in names:
            if any(x in r.params and metric in r.metrics for r in rows):
                path = Path(out) / f"{metric.replace('/', '_')}_vs_{x}.png"
                plots.append(plot_metric(rows, x, metric, path, others=[a for a in axes if a != x]))
    return plots


def main(argv: Optional[Sequence[str]] = None) -> list[PlotInfo]:
    parser = argparse.ArgumentParser(prog="python -m framework plots", description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="results.csv files, run folders or sweep folders")
    parser.add_argument("--out", default=None, help="folder of the PNGs (default: <first source>/plots)")
    parser.add_argument("--x", nargs="+", choices=list(AXES), default=None, help="axes (default: those that vary)")
    parser.add_argument("--metrics", nargs="+", default=None, help="metric keys (default: every one)")
    args = parser.parse_args(argv)
    try:
        rows = read_sources(args.sources)
        first = Path(args.sources[0])
        out = Path(args.out) if args.out else (first.parent if first.is_file() else first) / "plots"
        plots = plot_all(rows, out, args.x, args.metrics)
    except EditError as err:
        raise SystemExit(f"error: {err}") from None
    if not plots:
        print(f"Nothing to plot: none of {args.x or list(AXES)} varies across the {len(rows)} edits read.")
    for info in plots:
        print(info.path)
    return plots


if __name__ == "__main__":
    main()
