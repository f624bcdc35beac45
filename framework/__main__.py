"""Entry point: import the plugin packages (so short class names resolve), then run the CLI."""

import conditioners  # noqa: F401
import losses  # noqa: F401
from framework.cli import main

if __name__ == "__main__":
    main()
