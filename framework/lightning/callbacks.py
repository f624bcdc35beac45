"""Trainer callbacks for edit runs: W&B media and tables, latent previews, within-edit progress.

Add them in YAML under `trainer.callbacks` by `class_path` (`framework.lightning.callbacks.LatentPreview`,
...). `WandbEditLogger` is on by default and does nothing unless the run logs to W&B.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, ClassVar

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger  # a plain class: wandb itself is imported on first use

from framework.core.errors import EditError, warn
from framework.io.outputs import EditResult, mask_overlay, save_json, save_png, to_pil

STAGE_SECONDS = ("encode", "inversion", "mask", "guidance", "final", "decode", "total")


def wandb_loggers(trainer: Trainer) -> list[WandbLogger]:
    """The trainer's W&B loggers (usually none or one)."""
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def edit_result(outputs: Any) -> EditResult | None:
    """The EditResult in a step's outputs: `{"result": ...}` (fit/test), itself (predict), else None."""
    if isinstance(outputs, dict):
        outputs = outputs.get("result")
    return outputs if isinstance(outputs, EditResult) else None


def describe(record: dict[str, Any]) -> str:
    """A one-line caption of an edit: id, prompts, lam and seed."""
    source, edit = record.get("source_prompt", ""), record.get("edit_prompt", "")
    prompts = f"'{source}'" if source == edit else f"'{source}' -> '{edit}'"
    return f"{record.get('id')}: {prompts} (lam={record.get('lam')}, seed={record.get('seed')})"


class WandbEditLogger(Callback):
    """Log each edit's images and, at the end, a table of all edits to every W&B logger of the run."""

    def __init__(self) -> None:
        self._active = True

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # The CLI adds one by default; if the config lists another, only the first one logs.
        first = next(cb for cb in trainer.callbacks if isinstance(cb, WandbEditLogger))
        self._active = first is self and bool(wandb_loggers(trainer))

    # ------------------------------------------------------------------------ per edit
    def _log_edit(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch_idx: int) -> None:
        result = edit_result(outputs)
        if not self._active or result is None:  # failed or resumed edits have no result
            return
        images, captions = self.panels(result)
        strip = Path(pl_module.output_dir) / result.id / "strip.png"  # written by write_edit before the step returned
        for logger in wandb_loggers(trainer):
            logger.log_image(key=f"edits/{result.id}", images=images, caption=captions, step=batch_idx)
            if strip.is_file():  # its own key: W&B wants the images of one key to share a size
                logger.log_image(key=f"strips/{result.id}", images=[str(strip)],
                                 caption=[describe(result.record)], step=batch_idx)

    @staticmethod
    def panels(result: EditResult) -> tuple[list, list[str]]:
        """The images of one edit (PIL, all of the input's size) and their captions."""
        caption = describe(result.record)
        panels = [("input", to_pil(result.input))]
        panels += [(f"source {m}", to_pil(image)) for m, image in result.source_maps.items()]
        panels += [(f"edit {m}", to_pil(image)) for m, image in result.edit_maps.items()]
        panels.append(("mask", to_pil(mask_overlay(result.input, result.mask))))
        if result.guidance is not None:
            panels.append(("guidance", to_pil(result.guidance)))
        panels.append(("edit", to_pil(result.edit)))
        return [image for _, image in panels], [f"{name} | {caption}" for name, _ in panels]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._log_edit(trainer, pl_module, outputs, batch_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._log_edit(trainer, pl_module, outputs, batch_idx)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._log_edit(trainer, pl_module, outputs, batch_idx)

    # ------------------------------------------------------------------------- end of run
    COLUMNS: ClassVar[list[str]] = ["id", "source_prompt", "edit_prompt", "modalities", "lam", "seed", "mask_area",
                                    *[f"seconds_{s}" for s in STAGE_SECONDS], "unet_evaluations", "error", "edit"]

    @classmethod
    def columns(cls, metric_names: list[str]) -> list[str]:
        """The table's columns: COLUMNS with the run's metric keys (`edit/l1`, ...) before the edit image."""
        return [*cls.COLUMNS[:-1], *metric_names, cls.COLUMNS[-1]]

    @staticmethod
    def metric_names(records: list[dict[str, Any]]) -> list[str]:
        """Every per-edit metric key of the run's records, sorted."""
        return sorted({key for record in records for key in record.get("metrics", {})})

    @staticmethod
    def table_row(record: dict[str, Any], output_dir: Path, metric_names: tuple[str, ...] = ()) -> list[Any]:
        """One table row from an edit record (`result.json`, or `{"id", "error"}` of a failed edit).

        `metric_names`: the metric columns, in order; an edit without a value gets None there.
        """
        import wandb

        seconds = record.get("seconds", {})
        edit_png = output_dir / str(record.get("id")) / "edit.png"
        image = wandb.Image(str(edit_png)) if "error" not in record and edit_png.is_file() else None
        return [str(record.get("id")), record.get("source_prompt"), record.get("edit_prompt"),
                ", ".join(record.get("modalities", [])), record.get("lam"), record.get("seed"),
                record.get("mask_area"), *[seconds.get(s) for s in STAGE_SECONDS],
                sum(record.get("unet_evaluations", {}).values()) if "error" not in record else None,
                record.get("error"), *[record.get("metrics", {}).get(name) for name in metric_names], image]

    def _log_run(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._active:
            return
        # The module's records cover every edit of this process: new, resumed and failed ones.
        records = list(getattr(pl_module, "records", []))
        output_dir = Path(pl_module.output_dir)
        for logger in wandb_loggers(trainer):
            if records:
                names = self.metric_names(records)  # per-edit scores (test runs with model.metrics)
                rows = [self.table_row(r, output_dir, names) for r in records]
                logger.log_table(key="edits/table", columns=self.columns(names), data=rows)
            logger.log_hyperparams(pl_module.resolved_parameters())

    def on_train_end(self, trainer, pl_module) -> None:
        self._log_run(trainer, pl_module)

    def on_test_end(self, trainer, pl_module) -> None:
        self._log_run(trainer, pl_module)

    def on_predict_end(self, trainer, pl_module) -> None:
        self._log_run(trainer, pl_module)


class StopRequested(EditError):
    """The run was asked to stop (SIGTERM): finished edits are kept, a rerun resumes."""

    exit_code = 143  # 128 + SIGTERM, what a scheduler expects of a process it terminated


# The layers at whose start a stop request is checked: a UNet / ControlNet / VAE block, a transformer block or an
# attention. One UNet call on a large image is itself minutes on a CPU (1024 px through the toy model), and the mask
# stage makes dozens of calls between two DDIM steps; a layer is at most seconds.
_STOP_POINTS = ("Block2D", "Block", "Attention", "Transformer2DModel")


class RunGuard(Callback):
    """A run that stops early stays usable: on SIGTERM it stops within seconds, at the next layer of any network
    (the edit in flight is dropped, the finished ones are kept), and when a run stops for any reason summary.json,
    index.html and the contact sheet are written for the edits it made, so they never describe an older run.

    Lightning's own SIGTERM handler sets `trainer.received_sigterm` and stops only after the current batch,
    which here is a whole edit (minutes on a large image: longer than a scheduler's grace period).
    """

    def __init__(self) -> None:
        self._hooks: list = []

    def _watch(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Check for a stop request at the start of every block and attention layer of the run's networks."""
        self._unwatch()
        networks = [getattr(pl_module.backbone, name, None) for name in ("unet", "vae")] if hasattr(
            pl_module, "backbone") else []
        networks += list(getattr(pl_module, "conditioners", []))
        check = lambda module, args: self._check(trainer, pl_module, during=True)  # noqa: E731
        for network in networks:
            if isinstance(network, torch.nn.Module):
                self._hooks += [m.register_forward_pre_hook(check) for m in network.modules()
                                if type(m).__name__.endswith(_STOP_POINTS)]

    def _unwatch(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def on_fit_start(self, trainer, pl_module) -> None:
        self._watch(trainer, pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._watch(trainer, pl_module)

    def on_predict_start(self, trainer, pl_module) -> None:
        self._watch(trainer, pl_module)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._unwatch()  # the module may be used outside a run afterwards (a notebook, the demo)

    def _check(self, trainer: Trainer, pl_module: LightningModule, during: bool) -> None:
        if not getattr(trainer, "received_sigterm", False):
            return
        done = sum(1 for r in getattr(pl_module, "records", []) if "error" not in r)
        current = getattr(getattr(pl_module, "engine", None), "request_id", None)  # the edit in flight
        where = f"during edit '{current}' (dropped)" if during and current else "between edits"
        raise StopRequested(f"SIGTERM received: stopped {where}; {done} finished edit(s) are in "
                            f"{pl_module.output_dir}. Run the same command again to resume.")

    def on_edit_step(self, trainer: Trainer, pl_module: LightningModule, info: dict[str, Any]) -> None:
        self._check(trainer, pl_module, during=True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._check(trainer, pl_module, during=False)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._check(trainer, pl_module, during=False)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._check(trainer, pl_module, during=False)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        write = getattr(pl_module, "_write_summary", None)
        if write is None or trainer.world_size > 1 or not getattr(pl_module, "records", None):
            return  # with several processes the others may still be editing: rank files stay for the rerun
        try:
            write()
            path = Path(pl_module.output_dir) / "summary.json"
            summary = json.loads(path.read_text())
            summary["stopped"] = f"{type(exception).__name__}: {exception}"  # why it is shorter than its manifest
            save_json(summary, path)
        except Exception as err:  # noqa: BLE001 - never hide the exception that stopped the run
            warn(f"could not write the summary of the stopped run: {err}")


class LatentPreview(Callback):
    """Decode and save the latents every `every_n_steps` DDIM steps of the chosen stages.

    Files: `<output_dir>/<id>/previews/<stage>_<i:03d>_t<t>.png`, for steps i = 0, N, 2N, ...;
    also logged to W&B when the run uses it. Stages with DDIM steps: inversion, guidance, final.
    """

    def __init__(self, every_n_steps: int = 5, stages: list[str] = ["final"]):  # noqa: B006 - copied below
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}.")
        self.every_n_steps = every_n_steps
        self.stages = list(stages)

    def wants(self, info: dict[str, Any]) -> bool:
        """Only DDIM steps: an ITO update shares its step's i and t, and the step after it shows its effect."""
        return info["kind"] == "step" and info["stage"] in self.stages and info["i"] % self.every_n_steps == 0

    def on_edit_step(self, trainer: Trainer, pl_module: LightningModule, info: dict[str, Any]) -> None:
        if not self.wants(info):
            return
        with torch.no_grad():
            image = to_pil(pl_module.backbone.decode_latents(info["latents"].detach()).cpu())
        name = f"{info['stage']}_{info['i']:03d}_t{info['t']}"
        save_png(image, Path(pl_module.output_dir) / str(info["id"]) / "previews" / f"{name}.png")
        for logger in wandb_loggers(trainer):
            logger.log_image(key=f"previews/{info['id']}/{info['stage']}", images=[image],
                             caption=[f"{info['id']} {info['stage']} step {info['i']} (t={info['t']})"])


class _StageMetrics:
    """Progress-bar mixin: keeps the latest `on_edit_step` and adds `stage` and `step` to the bar's metrics.

    Lightning's bars show `get_metrics()` and redraw only between batches, while one batch here is
    a whole edit; so each step also redraws the bar in place (`_redraw`), at most every
    `min_interval_s` seconds, without printing lines of its own.
    """

    min_interval_s: float = 0.2
    current: dict[str, Any]
    _last_redraw: float = 0.0

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        return {**super().get_metrics(trainer, pl_module), **getattr(self, "current", {})}

    def on_edit_step(self, trainer: Trainer, pl_module: LightningModule, info: dict[str, Any]) -> None:
        self.current = {"stage": info["stage"], "step": info["i"]}
        now = time.monotonic()
        if self.is_enabled and now - self._last_redraw >= self.min_interval_s:
            self._last_redraw = now
            self._redraw(trainer, pl_module)

    def _redraw(self, trainer: Trainer, pl_module: LightningModule) -> None:
        raise NotImplementedError


class StageProgress(_StageMetrics, TQDMProgressBar):
    """Lightning's tqdm bar, plus the stage and DDIM step of the edit in progress (fit, test, predict)."""

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False,
                 min_interval_s: float = 0.2):
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self.min_interval_s = min_interval_s
        self.current = {}

    def _redraw(self, trainer: Trainer, pl_module: LightningModule) -> None:
        fn = trainer.state.fn.value if trainer.state.fn else ""
        name = {"fit": "_train_progress_bar", "test": "_test_progress_bar", "predict": "_predict_progress_bar"}
        # The public properties raise before a bar exists; the attributes are plain None then.
        bar = getattr(self, name[fn], None) if fn in name else None
        if bar is not None and not bar.disable:
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)


class RichStageProgress(_StageMetrics, RichProgressBar):
    """Lightning's rich bar (its default when `rich` is installed), plus the stage and DDIM step.

    Rich shows metrics on the training bar only, so the stage appears under `fit`, not `test`/`predict`.
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = False, min_interval_s: float = 0.2):
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self.min_interval_s = min_interval_s
        self.current = {}

    def _redraw(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._update_metrics(trainer, pl_module)  # RichProgressBar's own path from get_metrics to its column
        self.refresh()
