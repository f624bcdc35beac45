"""Trade-off fronts: each method swept over its own knob, drawn as one line per method per pair of metrics.

    python -m framework.evaluation.sweep experiments/eval/fronts.yaml    # runs the sweep and draws its fronts
    python -m framework.evaluation.fronts outputs/eval/fronts            # redraws them from the finished runs

A method's knob trades one metric for another (ITO: lam, DiffEdit: encode ratio, ControlNet-SDEdit:
strength), so one run per method says little; its front says where it stands. Each run of a sweep
folder is one point: its mean over edits of two metrics, with 95 % bootstrap intervals over the
edits (framework.evaluation.metrics.bootstrap; the same resampled edits for every run). Runs are grouped
into methods by the class they ran (ITO also by t_u and G's own encode ratio), ordered by their knob. Writes
`fronts/<x>_vs_<y>.png` and `fronts/fronts.md` (the table, and where fronts are compared).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from framework.core.errors import EditError
from framework.evaluation.metrics.bootstrap import bootstrap_ci

PAIRS = (("gt/background_l1", "gt/target_l1"), ("gt/background_l1", "toy/new_class"))
"""The default pairs: what is kept (background L1 outside the true mask) against what is changed."""
KNOBS = {"EditModule": "lam", "DiffEdit": "encode_ratio", "SDEdit": "encode_ratio"}
"""Each method's knob, as read from the run's summary.json parameters."""


@dataclass
class Point:
    """One run: its method, knob value and per-edit metric values (edit id -> value)."""

    run: str
    method: str
    knob: str
    value: float
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def ito_variant(params: dict) -> str:
    """What sets an ITO run's line apart besides t_u (the background levers of docs/background.md)."""
    ito, parts = params.get("ito", {}), []
    if ito.get("blend", "none") != "none":
        parts.append("blend" + (f" f{ito['feather']:g}" if ito.get("feather") else "")
                     + (f" +{ito['blend_margin']}" if ito.get("blend_margin") else "")
                     + (f" w{ito['blend_weight']:g}" if ito.get("blend_weight") is not None else ""))
    if ito.get("lam_end") is not None:
        parts.append(f"lam->{ito['lam_end']:g}")
    if ito.get("outside_guidance_scale") is not None:
        parts.append(f"cfg out {ito['outside_guidance_scale']:g}")
    if params.get("sampling", {}).get("guidance_rescale"):
        parts.append(f"rescale {params['sampling']['guidance_rescale']:g}")
    inversion = str(params.get("stages", {}).get("inversion", {}).get("class", "")).rsplit(".", 1)[-1]
    if inversion and inversion != "DDIMInversion":
        parts.append(inversion.replace("Inversion", "").lower() or inversion)
    return "".join(f" {p}" for p in parts)


def read_point(folder: Path) -> Optional[Point]:
    """A run folder's point (None without summary.json and results.csv)."""
    if not (folder / "summary.json").is_file() or not (folder / "results.csv").is_file():
        return None
    params = json.loads((folder / "summary.json").read_text()).get("parameters", {})
    cls = str(params.get("method", "")).rsplit(".", 1)[-1]
    decoder = params.get("stages", {}).get("decoder", {})
    knob = KNOBS.get(cls, "lam")
    value = params.get("lam") if knob == "lam" else params.get("sampling", {}).get("encode_ratio")
    t_u = params.get("ito", {}).get("update_steps")
    method = f"ITO t_u={t_u}" if cls == "EditModule" else cls
    if str(decoder.get("class", "")).endswith("PromptToPrompt"):  # its knob: the steps with injected maps
        cls, method, knob, value = "PromptToPrompt", "prompt-to-prompt", "cross_replace", decoder.get("cross_replace")
    elif cls == "EditModule":
        method += ito_variant(params)
    g_encode = params.get("guidance", {}).get("encode_ratio")
    if cls == "EditModule" and g_encode is not None:  # G encoded to its own noise level: another line
        method += f" G {g_encode:g}"
    if value == "auto":  # lam per edit: a point of its own beside the fixed-lam front, at the edits' mean lam
        lams = [json.loads(r.read_text()).get("lam") for r in folder.glob("*/result.json")]
        lams = [v for v in lams if isinstance(v, (int, float))]
        if not lams:
            return None
        method, value = f"{method} auto", round(sum(lams) / len(lams), 2)
    if not isinstance(value, (int, float)):
        return None
    point = Point(folder.name, method, knob, float(value))
    with open(folder / "results.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("id") in (None, "mean"):
                continue
            for key, text in row.items():
                try:
                    number = float(text)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(number):
                    point.metrics.setdefault(key, {})[row["id"]] = number
    return point


def front_table(points: list[Point], pairs: Sequence[tuple[str, str]]) -> tuple[list[dict], list[str]]:
    """Rows (method, knob, value, then mean / low / high of every metric of the pairs) and the edit ids."""
    keys = sorted({k for pair in pairs for k in pair})
    # Only the edits every run scored, so each point is a mean over the same edits (a run may have more).
    edited = [set().union(*(p.metrics.get(k, {}) for k in keys)) for p in points]
    ids = sorted(set.intersection(*edited)) if edited else []
    if not ids:
        raise EditError(f"no run has per-edit values of {keys}; score the runs with the metrics that give them.")
    rows = []
    for p in sorted(points, key=lambda p: (p.method, p.value)):
        row = {"method": p.method, "knob": p.knob, "value": p.value, "run": p.run}
        for key in keys:
            values = [p.metrics.get(key, {})[i] for i in ids if i in p.metrics.get(key, {})]
            if values:  # the same seed and count give every run the same resampled edits
                row[key] = bootstrap_ci(values, resamples=1000)
        rows.append(row)
    return rows, ids


def value_at(rows: list[dict], method: str, x_key: str, y_key: str, x: float) -> Optional[float]:
    """The method's y at x, linearly interpolated between its points ordered by x (None outside them)."""
    line = sorted((r[x_key][0], r[y_key][0]) for r in rows if r["method"] == method and x_key in r and y_key in r)
    for (x0, y0), (x1, y1) in zip(line, line[1:]):
        if min(x0, x1) <= x <= max(x0, x1):
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return next((y for xv, y in line if xv == x), None)


def draw_front(rows: list[dict], x_key: str, y_key: str, path: Path):
    """One line per method through its points, each with its 95 % intervals in both metrics; returns the PlotInfo
    (its `figure` is the matplotlib Figure, `series` the number of points per method)."""
    from framework.evaluation.plots import PALETTE, PlotInfo, new_axes, save

    used = [r for r in rows if x_key in r and y_key in r]
    figure, axes = new_axes(f"{y_key} vs {x_key} (95 % bootstrap intervals over edits)", x_key, y_key)
    info = PlotInfo(Path(path), figure=figure)
    for n, method in enumerate(sorted({r["method"] for r in used})):
        colour = PALETTE[n % len(PALETTE)]
        line = [r for r in used if r["method"] == method]
        label = f"{method} ({line[0]['knob']})"
        xs, ys = [r[x_key][0] for r in line], [r[y_key][0] for r in line]
        xerr = [[x - r[x_key][1] for x, r in zip(xs, line)], [r[x_key][2] - x for x, r in zip(xs, line)]]
        yerr = [[y - r[y_key][1] for y, r in zip(ys, line)], [r[y_key][2] - y for y, r in zip(ys, line)]]
        axes.errorbar(xs, ys, xerr=xerr, yerr=yerr, color=colour, marker="o", markersize=4, linewidth=1.5,
                      elinewidth=0.8, label=label)
        for r, x, y in zip(line, xs, ys):
            axes.annotate(f"{r['value']:g}", (x, y), xytext=(4, 5), textcoords="offset points", color=colour,
                          fontsize=7)
        info.series[label] = len(line)
        info.points += list(zip(xs, ys))
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.subplots_adjust(left=0.1, right=0.7)
    save(figure, info.path)
    return info


def _cell(stat: Optional[tuple[float, float, float]]) -> str:
    return "" if stat is None else f"{stat[0]:.4f} [{stat[1]:.4f}, {stat[2]:.4f}]"


def write_fronts(folder: Path, pairs: Sequence[tuple[str, str]] = PAIRS,
                 runs: Optional[Sequence[str]] = None) -> list[Path]:
    """fronts/*.png and fronts/fronts.md for the run folders inside `folder` (only `runs`, when given)."""
    subs = [folder / r for r in runs] if runs is not None else sorted(s for s in folder.iterdir() if s.is_dir())
    points = [p for sub in subs if (p := read_point(sub))]
    if not points:
        raise EditError(f"'{folder}' holds no finished run (summary.json + results.csv); run the sweep first.")
    rows, ids = front_table(points, pairs)
    out = folder / "fronts"
    paths = [draw_front(rows, x, y, out / f"{x.replace('/', '_')}_vs_{y.replace('/', '_')}.png").path
             for x, y in pairs]
    keys = sorted({k for pair in pairs for k in pair})
    md = [f"Means over the {len(ids)} edits every run scored, with 95 % bootstrap intervals (1000 resamples of "
          "the edits; a metric some edits lack, e.g. the classifier's, is averaged over those that have it).", "",
          "| method | knob | value | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    md += [f"| {r['method']} | {r['knob']} | {r['value']:g} | " + " | ".join(_cell(r.get(k)) for k in keys) + " |"
           for r in rows]
    (out / "fronts.md").write_text("\n".join(md) + "\n")
    return [*paths, out / "fronts.md"]


def publish(folder: Path, paths: list[Path], page: Path) -> Path:
    """A docs page with the fronts' table and plots (copied beside it) and the command that made them."""
    import shutil

    page.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# Trade-off fronts: {folder.name}", "",
             f"Generated by `python -m framework.evaluation.fronts {folder} --publish {page}` from the runs in "
             f"`{folder}` (each run's `run.yaml` holds its config). Not edited by hand.", ""]
    for path in paths:
        if path.suffix == ".png":
            target = page.parent / f"{page.stem}_{path.name}"
            shutil.copyfile(path, target)
            lines += [f"![{path.stem}]({target.name})", ""]
    lines += [next(p for p in paths if p.suffix == ".md").read_text()]
    page.write_text("\n".join(lines))
    return page


def main(argv: Optional[Sequence[str]] = None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m framework fronts", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a sweep's output folder (its runs' folders inside)")
    parser.add_argument("--pair", nargs=2, action="append", metavar=("X", "Y"), default=None,
                        help="a pair of metric keys (repeatable; default: background L1 vs target L1 and new class)")
    parser.add_argument("--publish", default=None, metavar="PAGE.md",
                        help="also write the table and the plots as a docs page (its PNGs beside it)")
    args = parser.parse_args(argv)
    try:
        paths = write_fronts(Path(args.folder), [tuple(p) for p in args.pair] if args.pair else PAIRS)
    except EditError as err:
        raise SystemExit(f"error: {err}") from None
    if args.publish:
        paths.append(publish(Path(args.folder), paths, Path(args.publish)))
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
