"""`python -m framework.toymodel fit --config experiments/toyworld/train_<stage>.yaml`."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LightningCLI


def main(args=None) -> None:
    LightningCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                 args=args,
                 save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
