"""Sharded editing across processes: `--trainer.devices N --trainer.strategy ddp`.

No weights are trained, so there is nothing to synchronise: each process edits its own share of
the manifest (the data module shards it by rank) and writes its own results; rank 0 merges the
summaries. DistributedDataParallel refuses a model without trainable parameters, so this
strategy keeps the process-group set-up of DDP and leaves the module unwrapped.
"""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy
from torch.nn import Module


class ShardedEditStrategy(DDPStrategy):
    """DDP process groups (gloo on CPU, nccl on GPU) without gradient synchronisation."""

    strategy_name = "edit_ddp"

    def _setup_model(self, model: Module) -> Module:
        return model

    def configure_ddp(self) -> None:
        self.model = self._setup_model(self.model)
