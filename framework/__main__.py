"""Entry point: import the plugin packages (so short class names resolve), then run the CLI (or the demo page)."""

import sys

import conditioners  # noqa: F401
import losses  # noqa: F401
from framework.cli import main

if __name__ == "__main__":
    if sys.argv[1:2] == ["demo"]:
        from framework.demo import main as demo

        demo(sys.argv[2:])
    else:
        main()
