"""`python -m framework.toy.model fit --config experiments/toyworld/<stage>.yaml`."""

from __future__ import annotations

import sys

import lightning as L
from lightning.pytorch.cli import LightningCLI

from framework.core.errors import edit_error_in


def main(args=None) -> None:
    """Run a training stage; the project's errors (a missing stage-1 VAE, ...) end it with one line and status 2."""
    try:
        LightningCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     args=args, save_config_kwargs={"overwrite": True})
    except Exception as err:
        found = edit_error_in(err)
        if found is None:
            raise
        print(f"error: {found}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
