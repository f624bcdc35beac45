"""Plots of each metric against lam, t_u or k over several runs (PNG, drawn with Pillow).

    python -m framework.evaluation.plots outputs/eval/lam_sweep --out outputs/eval/lam_sweep/plots
    python -m framework.evaluation.plots runA/results.csv runB/ --x lam

A source is a run's `results.csv`, a run folder (its results.csv), or a folder of run folders (a
sweep). Each edit of each run is a point: x its lam (results.csv), t_u or k (the run's
summary.json: ito.update_steps, ito.inner_steps), y its metric. Runs with the same values of the
other parameters form a series, drawn as a line through the mean at each x; a run whose x varies
from edit to edit (lam: auto) is drawn as its own series of points with a dashed line at its mean.
One PNG per metric and axis that varies: `<metric>_vs_<axis>.png` ('/' in names becomes '_').
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

from PIL import Image, ImageDraw

from framework.core.errors import EditError

AXES = {"lam": ("lam",), "t_u": ("ito", "update_steps"), "k": ("ito", "inner_steps")}
"""Plot axes and where a run's summary.json parameters hold them."""
_NOT_METRICS = {"id", "method", "lam", "run", *AXES}
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
           (140, 86, 75), (227, 119, 194)]
SIZE, MARGIN = (720, 460), (70, 170, 40, 50)  # image; margins left, right (legend), top, bottom


@dataclass
class EditRow:
    """One edit of one run: its parameters (lam, t_u, k, when known) and metric values."""

    run: str
    params: dict[str, float]
    metrics: dict[str, float]


@dataclass
class PlotInfo:
    """What a plot shows, with pixel positions (for checks): one point per edit, one mean per series and x."""

    path: Path
    points: list[tuple[int, int]] = field(default_factory=list)
    means: list[tuple[int, int]] = field(default_factory=list)
    series: dict[str, int] = field(default_factory=dict)  # label -> number of points


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


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """At most about `count` round tick values within [low, high] (steps of 1, 2, 2.5 or 5 x 10^n)."""
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step + 1e-9) + 1)]


def _limits(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    pad = (high - low) * 0.06 if high > low else max(abs(low) * 0.1, 0.5)
    return low - pad, high + pad


def _label(value: float) -> str:
    return f"{value:.4g}"


class _Canvas:
    """A plot area mapping data coordinates to pixels, with axes, ticks and a legend."""

    def __init__(self, xs: list[float], ys: list[float], title: str, x_name: str, y_name: str):
        self.image = Image.new("RGB", SIZE, "white")
        self.draw = ImageDraw.Draw(self.image)
        self.x_range, self.y_range = _limits(xs), _limits(ys)
        left, right, top, bottom = MARGIN
        self.box = (left, top, SIZE[0] - right, SIZE[1] - bottom)
        self._axes(title, x_name, y_name)

    def px(self, x: float, y: float) -> tuple[int, int]:
        (x0, x1), (y0, y1), (left, top, right, bottom) = self.x_range, self.y_range, self.box
        return (round(left + (x - x0) / (x1 - x0) * (right - left)),
                round(bottom - (y - y0) / (y1 - y0) * (bottom - top)))

    def _axes(self, title: str, x_name: str, y_name: str) -> None:
        left, top, right, bottom = self.box
        draw, grey = self.draw, (225, 225, 225)
        for x in nice_ticks(*self.x_range):
            px = self.px(x, self.y_range[0])[0]
            if left <= px <= right:
                draw.line([(px, top), (px, bottom)], fill=grey)
                draw.text((px, bottom + 6), _label(x), fill="black", anchor="mt")
        for y in nice_ticks(*self.y_range):
            py = self.px(self.x_range[0], y)[1]
            if top <= py <= bottom:
                draw.line([(left, py), (right, py)], fill=grey)
                draw.text((left - 6, py), _label(y), fill="black", anchor="rm")
        draw.rectangle(self.box, outline="black")
        draw.text(((left + right) // 2, 12), title, fill="black", anchor="mt")
        draw.text(((left + right) // 2, SIZE[1] - 14), x_name, fill="black", anchor="mt")
        draw.text((8, top - 16), y_name, fill="black")

    def legend(self, entries: list[tuple[str, tuple[int, int, int]]]) -> None:
        x, y = self.box[2] + 14, self.box[1]
        for label, colour in entries:
            self.draw.rectangle([x, y + 2, x + 10, y + 12], fill=colour)
            self.draw.text((x + 16, y + 1), label[:24], fill="black")
            y += 18


def _natural(item: tuple[str, Any]) -> list:
    """Sort key of a series label with its numbers compared as numbers ('t_u=5' before 't_u=15')."""
    return [(0, float(part), "") if re.fullmatch(r"\d+(\.\d+)?", part) else (1, 0.0, part)
            for part in re.split(r"(\d+(?:\.\d+)?)", item[0]) if part]


def _lighter(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(round(c + (255 - c) * 0.55) for c in colour)


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
    canvas = _Canvas([r.params[x] for r in rows], [r.metrics[metric] for r in rows],
                     f"{metric} vs {x} ({len(rows)} edit scores, {len({r.run for r in rows})} runs)", x, metric)
    info, legend = PlotInfo(Path(path)), []
    for n, (label, (series_rows, varies)) in enumerate(sorted(_series(rows, x, others).items(), key=_natural)):
        colour = PALETTE[n % len(PALETTE)]
        legend.append((label, colour))
        info.series[label] = len(series_rows)
        if varies:  # e.g. lam: auto: where its edits fall, and its mean as a dashed level
            mean = sum(r.metrics[metric] for r in series_rows) / len(series_rows)
            y = canvas.px(canvas.x_range[0], mean)[1]
            for start in range(canvas.box[0], canvas.box[2], 12):
                canvas.draw.line([(start, y), (min(start + 6, canvas.box[2]), y)], fill=colour, width=2)
        else:
            groups: dict[float, list[float]] = defaultdict(list)
            for r in series_rows:
                groups[r.params[x]].append(r.metrics[metric])
            means = [canvas.px(v, sum(ys) / len(ys)) for v, ys in sorted(groups.items())]
            if len(means) > 1:
                canvas.draw.line(means, fill=colour, width=2)
            for cx, cy in means:
                canvas.draw.rectangle([cx - 4, cy - 4, cx + 4, cy + 4], outline=colour, width=2)
            info.means += means
        for r in series_rows:
            cx, cy = canvas.px(r.params[x], r.metrics[metric])
            canvas.draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=_lighter(colour) if not varies else colour)
            info.points.append((cx, cy))
    canvas.legend(legend)
    info.path.parent.mkdir(parents=True, exist_ok=True)
    canvas.image.save(info.path, format="PNG")
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


def plot_intervals(points: Sequence[IntervalPoint], title: str, x_name: str, y_name: str,
                   path: str | Path) -> PlotInfo:
    """Each point as a square with a vertical interval bar and its label: e.g. a metric's mean and bootstrap
    interval against the UNet evaluations of each run of a cost sweep."""
    if not points:
        raise EditError(f"no point to plot for '{y_name}'.")
    canvas = _Canvas([p.x for p in points], [v for p in points for v in (p.low, p.high)], title, x_name, y_name)
    info = PlotInfo(Path(path))
    for n, p in enumerate(points):
        colour = PALETTE[n % len(PALETTE)]
        (cx, cy), top, bottom = canvas.px(p.x, p.y), canvas.px(p.x, p.high)[1], canvas.px(p.x, p.low)[1]
        canvas.draw.line([(cx, top), (cx, bottom)], fill=colour, width=2)
        for end in (top, bottom):
            canvas.draw.line([(cx - 4, end), (cx + 4, end)], fill=colour, width=2)
        canvas.draw.rectangle([cx - 4, cy - 4, cx + 4, cy + 4], outline=colour, width=2,
                              fill=colour if p.highlight else "white")
        canvas.draw.text((cx + 7, cy), p.label[:18], fill=colour, anchor="lm")
        info.points.append((cx, cy))
    info.path.parent.mkdir(parents=True, exist_ok=True)
    canvas.image.save(info.path, format="PNG")
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
    parser = argparse.ArgumentParser(prog="python -m framework.evaluation.plots", description=__doc__.splitlines()[0])
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
