"""Several runs of one experiment: method comparisons (Table 1) and parameter sweeps.

    python -m framework.evaluation.sweep experiments/eval/lam_sweep.yaml
    python -m framework.evaluation.sweep experiments/eval/toy_table1.yaml --only ito_full --set data.edits=20
    python -m framework.evaluation.sweep experiments/eval/tu_k_sweep.yaml -- --trainer.precision bf16-mixed

A sweep file is an experiment YAML (model, data, trainer) with a `sweep:` section:

    sweep:
      name: lam_sweep                     # names the W&B group
      command: test                       # subcommand of every run (test scores; fit, predict)
      output_dir: outputs/eval/lam_sweep  # one folder per run inside
      runs:                               # named runs, each overriding the base config ...
        - {name: diffedit_0.7, set: {model.class_path: framework.lightning.baselines.DiffEdit}}
      grid:                               # ... and/or one run per combination of these values
        model.lam: [0.2, 0.6, auto]

Keys are dotted paths as on the command line (`model.lam`, `data.edits`, `model.conditioners.0.scale`;
`init_args` is implied below a `class_path`). Precedence, lowest first: the file's base config,
`--set KEY=VALUE`, the run's own values, then arguments after `--` (passed to every run's CLI).
Each run writes `<output_dir>/<run>/` (edits, summary.json, results.md/.csv, logs, run.yaml: its
resolved config) and resumes finished edits when rerun. At the end, `sweep.csv` and `sweep.md`
(one row / column per run: parameters and scores) and, for a grid over lam, t_u or k,
`plots/<metric>_vs_<axis>.png`. Runs can be spread over machines with `--only` and gathered with
`--collect`; `--publish docs/results/<sweep>.md` also writes the table as a page for the docs.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import itertools
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from framework.core.errors import ConfigError, EditError, edit_error_in

COMMANDS = ("fit", "test", "predict")
# Grid keys that are plot axes (framework.evaluation.plots): the last part of the key -> axis.
AXIS_OF_KEY = {"lam": "lam", "update_steps": "t_u", "inner_steps": "k"}


@dataclass
class Run:
    """One run of a sweep: a name and the overrides of the base config."""

    name: str
    overrides: dict[str, Any]


# ------------------------------------------------------------------------------ the sweep file


def set_dotted(config: dict, key: str, value: Any) -> None:
    """config[key] = value for a dotted key, through `init_args` below a `class_path` and list indices."""
    parts, node = key.split("."), config
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, dict) and "class_path" in node and part not in ("class_path", "init_args"):
            node = node.setdefault("init_args", {})
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"sweep key '{key}': '{part}' is not an index of a {len(node)}-item list.")
            if last:
                node[int(part)] = value
            node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"sweep key '{key}': '{'.'.join(parts[:i])}' is a value, not a mapping or list.")


def _label(value: Any) -> str:
    return str(value).replace("/", "-").replace(" ", "")


def grid_runs(grid: dict[str, list]) -> list[Run]:
    """One run per combination of the grid's values, named `<key end>-<value>_...`."""
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.grid.{key}: give a non-empty list of values, got {values!r}.")
    runs = []
    for combination in itertools.product(*grid.values()):
        overrides = dict(zip(grid, combination))
        runs.append(Run("_".join(f"{k.split('.')[-1]}-{_label(v)}" for k, v in overrides.items()), overrides))
    return runs


def read_sweep(path: str | Path) -> tuple[dict, dict, list[Run]]:
    """(sweep section, base config, runs) of a sweep file; names must be unique folder names."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file '{path}' does not exist.")
    config = yaml.safe_load(path.read_text()) or {}
    sweep = config.pop("sweep", None)
    if not isinstance(sweep, dict):
        raise ConfigError(f"'{path}' has no `sweep:` section; it is a plain experiment: python -m framework test "
                          f"--config {path}")
    unknown = set(sweep) - {"name", "command", "output_dir", "runs", "grid", "fronts"}
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key(s) {sorted(unknown)}; use name, command, output_dir, runs, grid, fronts.")
    if sweep.get("command", "test") not in COMMANDS:
        raise ConfigError(f"{path}: sweep.command must be one of {COMMANDS}, got {sweep.get('command')!r}.")
    runs = []
    for n, entry in enumerate(sweep.get("runs") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"{path}: sweep.runs[{n}] needs a `name` and a `set` mapping of overrides.")
        runs.append(Run(entry["name"], dict(entry.get("set") or {})))
    runs += grid_runs(sweep["grid"]) if sweep.get("grid") else []
    names = [r.name for r in runs]
    if not runs or len(set(names)) != len(names) or any(not n or "/" in n for n in names):
        raise ConfigError(f"{path}: the sweep needs runs with unique names (folder names), got {names}.")
    return sweep, config, runs


def run_config(base: dict, run: Run, sets: dict[str, Any], out: Path, sweep_name: str) -> dict:
    """The full config of one run: base, then `--set`, then the run's overrides; outputs in `out`."""
    config = copy.deepcopy(base)
    for key, value in {**sets, **run.overrides}.items():
        set_dotted(config, key, value)
    set_dotted(config, "model.output_dir", str(out))
    trainer = config.setdefault("trainer", {})
    loggers = trainer.get("logger") or {"class_path": "lightning.pytorch.loggers.CSVLogger"}
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, dict):
            args = logger.setdefault("init_args", {})
            args["save_dir"] = str(out / "logs")
            if "WandbLogger" in str(logger.get("class_path", "")):
                args.update(name=f"{sweep_name}/{run.name}", group=sweep_name)
    trainer["logger"] = loggers
    return config


# ------------------------------------------------------------------------------ running


def check_run(config_path: Path, extra: Sequence[str], name: Optional[str] = None) -> None:
    """Parse and instantiate a run's config (model, data, trainer) without editing: fails as the run would.
    `name` names the run in the error (default: the config's path)."""
    from framework.lightning.cli import EditCLI, quiet_libraries

    quiet_libraries()
    try:
        EditCLI(args=["--config", str(config_path), *extra], run=False)
    except Exception as err:  # noqa: BLE001 - re-raised unless it is one of ours
        found = edit_error_in(err)
        if found is None:
            raise
        raise ConfigError(f"run config {name or repr(str(config_path))}: {found}") from None


def execute(command: str, config_path: Path, extra: Sequence[str]) -> None:
    """One run through the project's CLI, in this process (imports and compiled kernels are shared)."""
    from framework.lightning.cli import main

    try:
        main([command, "--config", str(config_path), *extra])
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise EditError(f"the run of '{config_path}' failed (above); fix it and rerun the sweep: "
                            f"finished edits are kept.") from None


def run_in(folder: Path, text: str, command: str, extra: Sequence[str]) -> None:
    """One run from `folder/run.yaml`, written as `text`. A run that fails (e.g. refused because the folder
    holds edits made with other settings) puts back the run.yaml that was there, which still describes
    those edits, and keeps its own config as run.failed.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    previous = path.read_text() if path.is_file() else None
    path.write_text(text)
    try:
        execute(command, path, extra)
    except EditError:
        if previous is None or previous == text:
            raise
        failed = folder / "run.failed.yaml"
        failed.write_text(text)
        path.write_text(previous)
        raise EditError(f"the run of '{failed}' failed (above); '{path}' is again the config of the run already "
                        f"in that folder. Fix it and rerun the sweep: finished edits are kept.") from None


# ------------------------------------------------------------------------------ collecting

_PARAMETERS = ("method", "lam", "encode_ratio", "t_u", "k", "edits", "failed")


def method_label(method: str, stages: dict[str, Any]) -> str:
    """The model's class name; for EditModule with another decoder, the decoder's; '+' the inversion if not DDIM."""
    short = lambda path: path.rsplit(".", 1)[-1]  # noqa: E731
    label = short(method)
    decoder = short(stages.get("decoder", {}).get("class", "ITODecode"))
    if label == "EditModule" and decoder != "ITODecode":
        label = decoder
    inversion = short(stages.get("inversion", {}).get("class", "DDIMInversion"))
    return label if inversion == "DDIMInversion" else f"{label}+{inversion}"


def run_row(folder: Path) -> Optional[dict[str, Any]]:
    """A run's parameters and run-level scores from its summary.json (None before it has one)."""
    path = folder / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    params = summary.get("parameters", {})
    method = params.get("method") or next((e["method"] for e in summary.get("edits", []) if "method" in e), "")
    stages = params.get("stages", {})
    ito = stages.get("ito", True)  # baselines without ITO: lam, t_u and k do not apply
    return {"run": folder.name, "method": method_label(method, stages), "lam": params.get("lam") if ito else None,
            "encode_ratio": params.get("sampling", {}).get("encode_ratio"),
            "t_u": params.get("ito", {}).get("update_steps") if ito else None,
            "k": params.get("ito", {}).get("inner_steps") if ito else None,
            "edits": summary.get("totals", {}).get("edits"), "failed": summary.get("totals", {}).get("failed"),
            **summary.get("metrics", {})}


def pick_preferences(folders: list[Path]) -> dict[str, float]:
    """Table 1's PickScore row: per edit, the softmax over runs of their `pick/score`, averaged.

    Only when every run scored PickScore on the same edits; {} otherwise.
    """
    from framework.evaluation.metrics import pick_probability

    scores: dict[str, dict[str, float]] = {}
    for folder in folders:
        path = folder / "results.csv"
        if not path.is_file():
            return {}
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
        if not rows or "pick/score" not in rows[0]:
            return {}
        scores[folder.name] = {r["id"]: float(r["pick/score"]) for r in rows if r["id"] != "mean"}
    ids = [set(s) for s in scores.values()]
    if len(scores) < 2 or any(i != ids[0] for i in ids):
        return {}
    order = sorted(ids[0])
    return pick_probability({run: [s[i] for i in order] for run, s in scores.items()})


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "" if value is None else str(value)


def collect(out: Path, names: list[str]) -> list[dict[str, Any]]:
    """sweep.csv and sweep.md from the runs' summaries (runs without one are listed as missing)."""
    folders = [out / n for n in names]
    rows = [row for folder in folders if (row := run_row(folder)) is not None]
    preferences = pick_preferences([out / r["run"] for r in rows])
    for row in rows:
        if row["run"] in preferences:
            row["pick/probability"] = preferences[row["run"]]
    scores = sorted({k for r in rows for k in r if k not in ("run", *_PARAMETERS)})
    header = ["run", *_PARAMETERS, *scores]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[_fmt(r.get(k)) for k in header] for r in rows])
    (out / "sweep.csv").write_text(buffer.getvalue())
    md = ["| | " + " | ".join(r["run"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    md += [f"| {k} | " + " | ".join(_fmt(r.get(k)) for r in rows) + " |" for k in (*_PARAMETERS, *scores)]
    missing = [n for n in names if n not in {r["run"] for r in rows}]
    if missing:
        md += ["", f"Runs without results yet: {', '.join(missing)}."]
    (out / "sweep.md").write_text("\n".join(md) + "\n")
    return rows


def publish(sweep_md: Path, target: Path, sweep_file: str, base: dict, out: Path) -> Path:
    """A Markdown page for docs/ with the sweep's table, what it ran on and the command that regenerates it."""
    model = (base.get("model") or {}).get("init_args") or {}
    backbone = ((model.get("backbone") or {}).get("init_args") or {}).get("pretrained", "the default SD 1.5")
    data = base.get("data") or {}
    settings = ", ".join(f"{k}: {v}" for k, v in (data.get("init_args") or {}).items() if k != "cache_dir")
    command = f"python -m framework.evaluation.sweep {sweep_file} --collect --publish {target}"
    lines = [f"<!-- Generated by `{command}` from the runs in {out}; rerun it to update this page. -->",
             f"# {out.name}", "",
             f"Sweep file `{sweep_file}`, model `{backbone}`, data `{data.get('class_path', '?')}` ({settings}). "
             "One column per run; each score is the mean over the run's edits (per-edit scores: "
             f"`{out}/<run>/results.csv`).", "", sweep_md.read_text().rstrip(), ""]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines))
    return target


def plot_sweep(out: Path, names: list[str], axes: list[str]) -> list[Path]:
    """Plots of every metric against the sweep's axes, from the runs' results.csv files."""
    from framework.evaluation.plots import plot_all, read_results

    rows = []
    for name in names:
        if (out / name / "results.csv").is_file():
            rows += read_results(out / name / "results.csv")
    return [info.path for info in plot_all(rows, out / "plots", axes)] if rows and axes else []


# ------------------------------------------------------------------------------ command line


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    sets = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. data.edits=20), got '{item}'.")
        sets[key] = yaml.safe_load(value)
    return sets


def main(argv: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m framework.evaluation.sweep", description=__doc__.splitlines()[0],
                                     epilog="Arguments after `--` go to every run's CLI (they win over the file).")
    parser.add_argument("file", help="sweep YAML (an experiment with a `sweep:` section)")
    parser.add_argument("--only", action="append", default=None, metavar="RUN", help="run only this run (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override the base config, e.g. data.edits=20 (repeatable)")
    parser.add_argument("--output_dir", default=None, help="instead of sweep.output_dir")
    parser.add_argument("--check", action="store_true", help="build and instantiate every run's config; edit nothing")
    parser.add_argument("--collect", action="store_true", help="only gather sweep.csv/md and plots of finished runs")
    parser.add_argument("--list", action="store_true", help="print the runs and their overrides")
    parser.add_argument("--publish", type=Path, default=None, metavar="PAGE.md",
                        help="also write the table as a Markdown page (e.g. docs/results/<sweep>.md) that names the "
                             "command regenerating it")
    args = parser.parse_args(argv)
    try:
        return _main(args, extra)
    except EditError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _main(args: argparse.Namespace, extra: list[str]) -> list[dict[str, Any]]:
    sweep, base, runs = read_sweep(args.file)
    name = sweep.get("name") or Path(args.file).stem
    out = Path(args.output_dir or sweep.get("output_dir") or f"outputs/{name}")
    chosen = runs
    if args.only:
        unknown = sorted(set(args.only) - {r.name for r in runs})
        if unknown:
            raise ConfigError(f"--only: no run named {unknown}; runs: {[r.name for r in runs]}.")
        chosen = [r for r in runs if r.name in args.only]
    if args.list:
        for run in chosen:
            print(f"{run.name}: {run.overrides}")
        return []
    sets = _parse_set(args.set)
    if not args.collect:
        for n, run in enumerate(chosen, 1):
            folder = out / run.name
            text = yaml.safe_dump(run_config(base, run, sets, folder, name), sort_keys=False)
            print(f"[sweep {name}] {'checking' if args.check else 'running'} {n}/{len(chosen)}: {run.name} "
                  f"{run.overrides}", file=sys.stderr, flush=True)
            if args.check:
                with tempfile.TemporaryDirectory() as tmp:  # a check leaves the run's folder as it was
                    path = Path(tmp) / "run.yaml"
                    path.write_text(text)
                    check_run(path, extra, name=f"'{run.name}' of '{args.file}'")
            else:
                run_in(folder, text, sweep.get("command", "test"), extra)
    if args.check:
        return []
    names = [r.name for r in runs]
    rows = collect(out, names)
    axes = sorted({AXIS_OF_KEY[k.rsplit(".", 1)[-1]] for k in sweep.get("grid") or {}
                   if k.rsplit(".", 1)[-1] in AXIS_OF_KEY})
    from framework.evaluation.plots import PlotsUnavailable

    try:  # the runs and tables are done: a missing matplotlib costs only the drawings
        for path in plot_sweep(out, names, axes):
            print(path)
        if sweep.get("fronts") and rows:  # trade-off fronts (framework.evaluation.fronts): true, or metric pairs
            from framework.evaluation.fronts import PAIRS, write_fronts

            pairs = [tuple(p) for p in sweep["fronts"]] if isinstance(sweep["fronts"], list) else PAIRS
            for path in write_fronts(out, pairs, names):
                print(path)
    except PlotsUnavailable as err:
        print(f"[sweep {name}] no plots: {err}", file=sys.stderr)
    print(f"[sweep {name}] {len(rows)}/{len(names)} runs with results: {out / 'sweep.md'}", file=sys.stderr)
    if args.publish is not None:
        print(f"[sweep {name}] published: {publish(out / 'sweep.md', args.publish, str(args.file), base, out)}",
              file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
