"""The command line: `python -m framework COMMAND` (framework/cli/main.py lists the commands)."""

from framework.cli.main import COMMANDS, main  # noqa: F401
