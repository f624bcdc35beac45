"""What the toy model's training stages share: the learning-rate schedule and periodic exports."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch


def cosine_lr(step: float, warmup: int, total: int, floor: float = 0.05) -> float:
    """Linear warm-up then cosine decay to `floor` of the peak (a LambdaLR factor)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def replace_folder(path: Path, write: Callable[[Path], object]) -> Path:
    """Write into a sibling temporary folder, then swap it in: readers never see half a model."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    write(tmp)
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


class TrainingStage(L.LightningModule):
    """A stage that trains with AdamW + warm-up/cosine and exports every `export_every` steps and at the end.

    Subclasses set `hparams` lr, warmup_steps, total_steps, export_dir, export_every (and optionally
    schedule_seconds), and implement `trained_parameters` and `write(root)`.

    With `schedule_seconds`, the schedule follows the clock instead of the step count: step s of the
    warm-up/cosine (and of anything else read through `schedule_step`) is the fraction of those seconds
    spent so far times `total_steps`, and training stops when they are spent. That is for a machine lent
    for minutes whose speed is not known in advance: the schedule then ends on time whatever the step
    rate. The number of steps, hence the exact weights, depends on the machine's speed.
    """

    weight_decay = 0.0
    _clock_start: float | None = None
    _device_pool = None

    def full_batch(self, batch: dict) -> dict:
        """The batch with image, foreground and maps: gathered from the pool on this device when the data
        module serves indices only (`ToyWorldData(index_only=True)`)."""
        if "image" in batch:
            return batch
        from framework.toy.model.data import DevicePool

        if self._device_pool is None:
            self._device_pool = DevicePool(self.trainer.datamodule.pool, self.device)
        return {**batch, **self._device_pool.gather(batch["index"])}

    def schedule_step(self, step: int) -> float:
        """Position in the schedule: `step`, or with `schedule_seconds` the elapsed fraction x total_steps."""
        seconds = self.hparams.get("schedule_seconds")
        if not seconds:
            return step
        if self._clock_start is None:
            return 0.0
        return self.hparams.total_steps * min(1.0, (time.perf_counter() - self._clock_start) / seconds)

    def on_train_start(self) -> None:
        self._clock_start = time.perf_counter()

    def trained_parameters(self):
        raise NotImplementedError

    def write(self, root: Path) -> None:
        """Write the exported model under `root`."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after every optimiser step, before a periodic export."""

    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.AdamW(self.trained_parameters(), lr=h.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: cosine_lr(self.schedule_step(s), h.warmup_steps, h.total_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.after_step()
        seconds = self.hparams.get("schedule_seconds")
        if seconds and self._clock_start is not None and time.perf_counter() - self._clock_start >= seconds:
            self.trainer.should_stop = True  # the clock schedule is spent: the last lr was its floor
        every = self.hparams.export_every
        if every and self.global_step % every == 0:
            self.export()

    def on_train_end(self) -> None:
        self.export()

    def export(self, path: str | None = None) -> Path:
        """Write the model (on rank 0) to `path` or `export_dir`; return that folder."""
        root = Path(path or self.hparams.export_dir)
        if self.trainer is None or self.trainer.is_global_zero:
            self.write(root)
        return root
