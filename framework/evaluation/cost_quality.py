"""Cost against quality of a cost sweep (experiments/eval/cost.yaml): each run beside the unreduced one.

    python -m framework cost-quality outputs/eval/cost [--md table.md] [--png plot.png] [--json out.json]

Per run, from its run.yaml and its edits' result.json files (an unfinished run counts the edits it has): the UNet sample-evaluations and seconds per edit and
stage (means over its edits), and per quality metric the mean with its 95 % bootstrap interval and the
paired difference to the reference run (the same edits, resampled together) with its interval. A run's
lam 1 runs are compared with `lam1_<reference>`, the others with the reference.

The test of "within the noise": on every metric the paired 95 % interval of (run - reference) contains
0 or lies wholly on the better side (lower L1, higher accuracy / recall / IoU). The cheapest run that
passes (fewest UNet evaluations per edit) is printed as the candidate default.

A mask read from mask.cache_dir costs the run nothing; its cost is charged from the run of the sweep
that estimated that mask for that edit (same mask and sampling settings), so every run's numbers are
what it costs alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from framework.evaluation.metrics.bootstrap import bootstrap_ci, paired_difference_ci

# metric key -> +1 when higher is better, -1 when lower is better
METRICS = {"gt/background_l1": -1, "gt/target_l1": -1, "toy/new_class": 1, "mask/recall": 1, "mask/iou": 1}
STAGES = ("inversion", "mask", "guidance", "final")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m framework cost-quality", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", type=Path, help="the sweep's output folder (one folder per run)")
    p.add_argument("--reference", default="unreduced", help="the run the others are compared with")
    p.add_argument("--md", type=Path, default=None, help="write the table here (Markdown)")
    p.add_argument("--png", type=Path, default=None, help="write the cost-quality plot here")
    p.add_argument("--json", type=Path, default=None, help="write every number here")
    p.add_argument("--highlight", nargs="*", default=[], help="runs drawn filled in the plot (e.g. the default)")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--min-edits", type=int, default=10,
                   help="a run compared on fewer paired edits is not picked (its intervals say little)")
    return p.parse_args(argv)


def _mask_settings(init_args: dict) -> str:
    """The settings a run's masks depend on (mask and sampling blocks of its config), as a key."""
    mask = {k: v for k, v in (init_args.get("mask") or {}).items() if k not in ("cache_dir", "given")}
    sampling = {k: v for k, v in (init_args.get("sampling") or {}).items()
                if k in ("steps", "guidance_scale", "negative_prompt")}
    return json.dumps([mask, sampling], sort_keys=True)


def read_run(folder: Path) -> dict | None:
    """A run of the sweep, finished or not: its config (run.yaml) and each finished edit's result.json
    (None before it has one), so an interrupted sweep can be analysed on the edits it has."""
    import yaml

    if not (folder / "run.yaml").is_file():
        return None
    init_args = yaml.safe_load((folder / "run.yaml").read_text())["model"]["init_args"]
    records = {}
    for path in sorted(folder.glob("*/result.json")):
        record = json.loads(path.read_text())
        if "error" not in record:
            records[record["id"]] = record
    if not records:
        return None
    values = {key: {i: float(r["metrics"][key]) for i, r in records.items() if key in r.get("metrics", {})}
              for key in METRICS}
    return {"name": folder.name, "records": records, "values": values, "mask_key": _mask_settings(init_args),
            "lam": float(init_args.get("lam", 0.6))}


def estimated_masks(runs: list[dict]) -> dict[tuple[str, str], tuple[int, float]]:
    """(mask settings, edit id) -> (UNet evaluations, seconds) of the run that estimated that mask."""
    found = {}
    for run in runs:
        for id_, rec in run["records"].items():
            if rec.get("mask_source") == "estimated":
                found.setdefault((run["mask_key"], id_), (rec["unet_evaluations"].get("mask", 0),
                                                           rec["seconds"].get("mask", 0.0)))
    return found


def edit_costs(run: dict, masks: dict) -> dict[str, dict[str, float]]:
    """Mean UNet evaluations and seconds per edit, per stage and in total, with cached masks charged."""
    evals = {s: [] for s in (*STAGES, "total")}
    seconds = {s: [] for s in (*STAGES, "total")}
    for id_, rec in run["records"].items():
        e = {s: rec["unet_evaluations"].get(s, 0) for s in STAGES}
        t = {s: rec["seconds"].get(s, 0.0) for s in STAGES}
        t["total"] = rec["seconds"]["total"]
        if rec.get("mask_source") == "cached":
            charged = masks.get((run["mask_key"], id_))
            if charged is None:
                continue  # its mask was estimated outside this sweep: cost unknown
            t["total"] += charged[1] - t["mask"]
            e["mask"], t["mask"] = charged
        e["total"] = sum(e[s] for s in STAGES)
        for s in evals:
            evals[s].append(e[s])
            seconds[s].append(t[s])
    mean = lambda v: sum(v) / len(v) if v else float("nan")  # noqa: E731
    return {"unet": {s: mean(v) for s, v in evals.items()}, "seconds": {s: mean(v) for s, v in seconds.items()},
            "edits_costed": len(evals["total"])}


def compare(run: dict, reference: dict, resamples: int) -> dict[str, dict]:
    """Per metric: the run's mean and interval, and the paired difference to the reference with its interval."""
    out = {}
    for key, better in METRICS.items():
        mine, theirs = run["values"][key], reference["values"][key]
        ids = sorted(set(mine) & set(theirs))
        if not ids:
            continue
        mean, low, high = bootstrap_ci([mine[i] for i in ids], resamples=resamples)
        diff, d_low, d_high = paired_difference_ci([mine[i] for i in ids], [theirs[i] for i in ids],
                                                   resamples=resamples)
        worse = d_high < 0 if better > 0 else d_low > 0  # the whole interval on the worse side
        out[key] = {"mean": mean, "low": low, "high": high, "diff": diff, "diff_low": d_low, "diff_high": d_high,
                    "edits": len(ids), "worse": bool(worse)}
    return out


def analyse(sweep: Path, reference: str = "unreduced", resamples: int = 2000, min_edits: int = 10) -> dict:
    if not sweep.is_dir():
        raise SystemExit(f"error: no sweep folder at {sweep}; run `python -m framework sweep experiments/eval/cost.yaml` "
                         f"first and pass its output_dir.")
    runs = [r for r in (read_run(f) for f in sorted(sweep.iterdir()) if f.is_dir()) if r is not None]
    by_name = {r["name"]: r for r in runs}
    if reference not in by_name:
        raise SystemExit(f"error: the reference run '{reference}' has no results in {sweep} yet; run it (sweep "
                         f"--only {reference}) or name another with --reference.")
    masks = estimated_masks(runs)
    table = []
    for run in runs:
        ref_name = f"lam1_{reference}" if run["lam"] == 1.0 and f"lam1_{reference}" in by_name else reference
        scores = compare(run, by_name[ref_name], resamples)
        table.append({"run": run["name"], "reference": ref_name, "lam": run["lam"], "edits": len(run["records"]),
                      **edit_costs(run, masks), "metrics": scores,
                      "within_noise": bool(scores) and not any(s["worse"] for s in scores.values())})
    table.sort(key=lambda row: (row["lam"], -row["unet"]["total"]))
    passing = [r for r in table if r["within_noise"] and r["lam"] != 1.0 and r["run"] != reference
               and min(m["edits"] for m in r["metrics"].values()) >= min_edits]
    cheapest = min(passing, key=lambda r: r["unet"]["total"])["run"] if passing else None
    return {"reference": reference, "runs": table, "cheapest_within_noise": cheapest}


def _short(key: str) -> str:
    return {"gt/background_l1": "BG L1", "gt/target_l1": "target L1", "toy/new_class": "new class",
            "mask/recall": "recall", "mask/iou": "IoU"}[key]


def format_table(result: dict) -> str:
    keys = list(METRICS)
    lines = ["| run | edits (paired) | UNet / edit (mask, guidance) | s / edit (mask) | "
             + " | ".join(f"{_short(k)}: mean, diff [95 % CI]" for k in keys) + " | within noise |",
             "|---|---|---|---|" + "---|" * len(keys) + "---|"]
    for r in result["runs"]:
        u, s = r["unet"], r["seconds"]
        cells = []
        for k in keys:
            m = r["metrics"].get(k)
            cells.append("" if m is None else f"{m['mean']:.3f}, {m['diff']:+.3f} [{m['diff_low']:+.3f}, "
                         f"{m['diff_high']:+.3f}]{' **worse**' if m['worse'] else ''}")
        paired = min((m["edits"] for m in r["metrics"].values()), default=0)
        lines.append(f"| {r['run']} | {r['edits']} ({paired}) | {u['total']:.0f} ({u['mask']:.0f}, {u['guidance']:.0f}) | "
                     f"{s['total']:.2f} ({s['mask']:.2f}) | " + " | ".join(cells) + f" | "
                     f"{'yes' if r['within_noise'] else 'no'} |")
    return "\n".join(lines)


def plot(result: dict, path: Path, highlight: tuple[str, ...] = ()) -> Path:
    """One panel per metric (mean and 95 % bootstrap interval against UNet evaluations per edit), two a row;
    the references and the runs named in `highlight` drawn filled."""
    from framework.evaluation.plots import IntervalPoint, draw_intervals, new_axes, save

    chosen = {result["reference"], f"lam1_{result['reference']}", *highlight}
    panels = {key: [IntervalPoint(r["run"], r["unet"]["total"], m["mean"], m["low"], m["high"], r["run"] in chosen)
                    for r in result["runs"] if (m := r["metrics"].get(key))] for key in METRICS}
    panels = {key: points for key, points in panels.items() if points}
    if not panels:
        raise SystemExit("error: no run of the sweep has a metric to plot yet; let its runs finish some edits first.")
    figure, first = new_axes("", "", "")
    figure.set_size_inches(14.4, 4.6 * ((len(panels) + 1) // 2))
    first.remove()
    rows = (len(panels) + 1) // 2
    for n, (key, points) in enumerate(panels.items()):
        axes = figure.add_subplot(rows, 2, n + 1)
        axes.set_title(f"{key} (mean, 95 % bootstrap CI) vs cost; filled: references, chosen", fontsize=9)
        axes.set_xlabel("UNet sample-evaluations per edit")
        axes.set_ylabel(key)
        axes.grid(True, color="0.88")
        draw_intervals(axes, points)
    figure.tight_layout()
    return save(figure, path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = analyse(args.sweep, args.reference, args.resamples, args.min_edits)
    text = format_table(result)
    print(text)
    print(f"\ncheapest run within the noise of '{args.reference}' on every metric: {result['cheapest_within_noise']}")
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(text + "\n")
    if args.png:
        from framework.core.errors import EditError

        try:
            print(plot(result, args.png, tuple(args.highlight)))
        except EditError as err:  # matplotlib missing: the table is printed already
            raise SystemExit(f"error: {err}") from None
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
