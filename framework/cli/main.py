"""`python -m framework COMMAND ...`: one entry point for every command of the project.

Lightning's own subcommands (fit, validate, test, predict) run an experiment YAML through the Lightning shell;
the others are the evaluation tools, the demo page and the toy world's tools. `python -m framework COMMAND -h`
prints a command's options.
"""

from __future__ import annotations

import sys
from importlib import import_module
from typing import Optional, Sequence

LIGHTNING = "framework.lightning.cli"
COMMANDS: dict[str, tuple[str, str]] = {  # command -> (the module whose main(argv) runs it, what it does)
    "fit": (LIGHTNING, "edit every request of a manifest (one training step = one edit)"),
    "test": (LIGHTNING, "edit and score with the model's metrics (evaluation runs)"),
    "predict": (LIGHTNING, "edit without writing metrics"),
    "validate": (LIGHTNING, "Lightning's validate loop (checks a config end to end)"),
    "sweep": ("framework.evaluation.sweep", "several runs of one experiment: method tables and parameter sweeps"),
    "fronts": ("framework.evaluation.fronts", "trade-off fronts of finished sweeps (one line per method)"),
    "paired": ("framework.evaluation.paired", "paired comparison of a sweep's settings against a base run"),
    "plots": ("framework.evaluation.plots", "each metric against lam, t_u or k over several runs"),
    "fit-auto-lam": ("framework.evaluation.auto_lam_fit",
                     "fit the constants of `lam: auto` on a lam study's per-edit results"),
    "cost-quality": ("framework.evaluation.cost_quality",
                     "cost against quality of a cost sweep, each run beside the unreduced one"),
    "gates": ("framework.toy.model.gate_report", "the toy model's quality gates, each measured value against its gate"),
    "demo": ("framework.cli.demo", "the interactive editing page (needs the [demo] extra)"),
    "condition-map": ("framework.io.conditions", "draw a pose map from keypoints or detect a map in a photo"),
    "toy-examples": ("framework.toy.world.make_examples",
                     "write toy-world edit requests (a manifest with images and maps)"),
}
"""Each module is imported only when its command runs, so `fit` never loads Gradio or matplotlib."""


def _run(module: str, argv: list[str]) -> None:
    import_module(module).main(argv)


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
            return _run(LIGHTNING, argv)
        raise SystemExit(f"error: unknown command '{command}'.\n{usage()}")
    module, _ = COMMANDS[command]
    _run(module, argv if module == LIGHTNING else argv[1:])  # Lightning's CLI reads the subcommand itself
