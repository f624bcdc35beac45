"""`python -m framework COMMAND`: import the plugin packages (so short class names resolve), then dispatch."""

import conditioners  # noqa: F401
import losses  # noqa: F401
from framework.cli.main import main

if __name__ == "__main__":
    main()
