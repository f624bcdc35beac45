"""`python -m framework COMMAND ...`: one entry point for every command of the project.

Lightning's own subcommands (fit, validate, test, predict) run an experiment YAML through the Lightning shell;
the others are the evaluation tools, the demo page and the toy world's tools. `python -m framework COMMAND -h`
prints a command's options.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence


def _lightning(argv: list[str]) -> None:
    from framework.lightning.cli import main

    main(argv)


def _sweep(argv: list[str]) -> None:
    from framework.evaluation.sweep import main

    main(argv)


def _fronts(argv: list[str]) -> None:
    from framework.evaluation.fronts import main

    main(argv)


def _paired(argv: list[str]) -> None:
    from framework.evaluation.paired import main

    main(argv)


def _plots(argv: list[str]) -> None:
    from framework.evaluation.plots import main

    main(argv)


def _fit_auto_lam(argv: list[str]) -> None:
    from framework.evaluation.auto_lam_fit import main

    main(argv)


def _cost_quality(argv: list[str]) -> None:
    from framework.evaluation.cost_quality import main

    main(argv)


def _gates(argv: list[str]) -> None:
    from framework.toy.model.gate_report import main

    main(argv)


def _demo(argv: list[str]) -> None:
    from framework.cli.demo import main

    main(argv)


def _condition_map(argv: list[str]) -> None:
    from framework.io.conditions import main

    main(argv)


def _toy_examples(argv: list[str]) -> None:
    from framework.toy.world.make_examples import main

    main(argv)


COMMANDS: dict[str, tuple[Callable[[list[str]], None], str]] = {
    "fit": (_lightning, "edit every request of a manifest (one training step = one edit)"),
    "test": (_lightning, "edit and score with the model's metrics (evaluation runs)"),
    "predict": (_lightning, "edit without writing metrics"),
    "validate": (_lightning, "Lightning's validate loop (checks a config end to end)"),
    "sweep": (_sweep, "several runs of one experiment: method tables and parameter sweeps"),
    "fronts": (_fronts, "trade-off fronts of finished sweeps (one line per method)"),
    "paired": (_paired, "paired comparison of a sweep's settings against a base run"),
    "plots": (_plots, "each metric against lam, t_u or k over several runs"),
    "fit-auto-lam": (_fit_auto_lam, "fit the constants of `lam: auto` on a lam study's per-edit results"),
    "cost-quality": (_cost_quality, "cost against quality of a cost sweep, each run beside the unreduced one"),
    "gates": (_gates, "the toy model's quality gates, each measured value against its gate"),
    "demo": (_demo, "the interactive editing page (needs the [demo] extra)"),
    "condition-map": (_condition_map, "draw a pose map from keypoints or detect a map in a photo"),
    "toy-examples": (_toy_examples, "write toy-world edit requests (a manifest with images and maps)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name.ljust(width)}  {what}" for name, (_, what) in COMMANDS.items()]
    return "usage: python -m framework COMMAND [options]   (COMMAND -h: its options)\n\ncommands:\n" + "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    command = argv[0]
    if command not in COMMANDS:
        if command.startswith("-"):  # LightningCLI's own top-level options (--version, --print_config ...)
            return _lightning(argv)
        raise SystemExit(f"error: unknown command '{command}'.\n{usage()}")
    run, _ = COMMANDS[command]
    run(argv if run is _lightning else argv[1:])
