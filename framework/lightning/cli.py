"""`python -m framework fit|test|predict --config exp.yaml`: LightningCLI with the project's defaults."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch
import yaml
from jsonargparse import set_parsing_settings
from jsonargparse._common import debug_mode_active
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from framework.core.errors import ConfigError, edit_error_in, note
from framework.io.records import OutputLock, writable_folder
from framework.lightning.callbacks import RunGuard, StopRequested, WandbEditLogger
from framework.lightning.data import EditDataModule
from framework.lightning.messages import (
    WarningLines,
    check_yaml_files,
    compact_help,
    config_files,
    explain,
    settings_help,
)
from framework.lightning.module import EditModule
from framework.lightning.preflight import after_load
from framework.lightning.threads import apply_cpu_threads

# Field docstrings of the settings dataclasses become their --help text (LitGPT style).
set_parsing_settings(docstring_parse_attribute_docstrings=True)

TRAINER_DEFAULTS = {
    "max_epochs": 1,  # one pass over the manifest
    "precision": None,  # None: 16-mixed on a GPU, 32-true on the CPU (bf16 on CPU is 4-10x slower)
    "devices": 1,
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "outputs/logs"}},
    "enable_checkpointing": False,  # nothing is trained: no checkpoints of frozen weights
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 1,
    "inference_mode": False,  # test/predict still optimise latents with autograd
    "use_distributed_sampler": False,  # the data module shards the manifest itself, without repeats
}

# Default callbacks. LightningCLI appends `trainer_defaults["callbacks"]` as-is to the callbacks
# already instantiated from the config (LightningCLI._instantiate_trainer), so these are instances,
# not class_path dicts; each resets its state in `setup`, so one instance serves every run.
# WandbEditLogger does nothing unless the run logs to W&B; RunGuard stops cleanly on SIGTERM and keeps
# summary.json / index.html true to what was written when a run stops early.
TRAINER_DEFAULTS["callbacks"] = [WandbEditLogger(), RunGuard()]

_QUIET_WARNINGS = (
    r".*configure_optimizers.*returned `None`.*",
    r".*does not have many workers.*",
    r".*LeafSpec.*",
    r".*treespec, LeafSpec.*",
    r".*Found .* module\(s\) in eval mode.*",
    r".*The number of training batches .* is smaller than the logging interval.*",
    r".*`training_step` returned `None`.*",
    r".*requires_grad.*no parameters.*",
    r".*There is a wandb run already in progress.*",
    r".*anonymous.*",
    r".*args parameter is intended to run from within Python.*",
)


def quiet_libraries() -> None:
    """Silence the start-up chatter of torch, Lightning, transformers and diffusers on a normal run."""
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed",
                 "lightning.pytorch.accelerators.cuda", "lightning_fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        import diffusers
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def _wandb_key_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class EditArgumentParser(LightningArgumentParser):
    """The CLI's parser: a mistake is one line (key, where it was given, nearest valid names), not a usage
    dump; `fit --help` also lists the settings of EditModule."""

    command_line: list[str] = []  # the arguments of this command, for locating mistakes in them

    def error(self, message: str, ex: Optional[Exception] = None):
        if not self.exit_on_error or debug_mode_active():  # jsonargparse trying alternatives: not final
            return super().error(message, ex)
        sys.stderr.write(f"error: {explain(message, self.command_line)}\n")
        self.exit(2)

    def format_help(self) -> str:
        """A subcommand's `--help` is one line per option (messages.compact_help); the full texts stay in the group
        helps (`--model.sampling.help`), `--model.help EditModule` and docs/settings.md."""
        options = self._option_string_actions
        if "--model.help" not in options or "--trainer.max_epochs" not in options:  # not a subcommand's parser
            return super().format_help()
        from jsonargparse import ArgumentParser

        models = ArgumentParser(prog="model", add_help=False)
        models.add_class_arguments(EditModule, "model")
        data = ArgumentParser(prog="data", add_help=False)
        data.add_class_arguments(EditDataModule, "data")
        return compact_help(self, models, data, self.prog.split()[-1])


class EditSaveConfig(SaveConfigCallback):
    """Writes config.yaml (Lightning's behaviour) and logs the resolved config and the settings digest to
    every W&B logger of the run, so runs can be compared and filtered on the dashboard."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.loggers or self.already_saved:
            return super().setup(trainer, pl_module, stage)
        # No logger (`--trainer.logger false`): Lightning's log dir falls back to the working directory, where a
        # run must write nothing; the config goes with the run's edits instead.
        folder = getattr(pl_module, "output_dir", None)
        if folder is not None and trainer.is_global_zero:
            self.parser.save(self.config, str(Path(folder) / self.config_filename), skip_none=False, overwrite=True,
                             multifile=self.multifile)
        self.save_to_log_dir = False
        try:
            super().setup(trainer, pl_module, stage)
        finally:
            self.save_to_log_dir = True

    def save_config(self, trainer, pl_module, stage: str) -> None:
        from framework.lightning.callbacks import wandb_loggers

        loggers = wandb_loggers(trainer)
        if not loggers:
            return
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False, skip_validation=True))
        digest = pl_module.settings_digest() if hasattr(pl_module, "settings_digest") else None
        for logger in loggers:
            logger.log_hyperparams({**config, "settings_digest": digest})


class EditCLI(LightningCLI):
    """LightningCLI whose model is an `EditModule` (or subclass) and whose data is a manifest."""

    def __init__(self, args=None, run: bool = True):
        super().__init__(
            EditModule, EditDataModule, subclass_mode_model=True, subclass_mode_data=True,
            trainer_defaults=TRAINER_DEFAULTS, auto_configure_optimizers=False, args=args, run=run,
            save_config_callback=EditSaveConfig, save_config_kwargs={"overwrite": True},
            seed_everything_default=0, parser_kwargs={"default_env": False}, parser_class=EditArgumentParser,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--sweep", type=Optional[dict], default=None,
                            help="Several runs of this config: read by `python -m framework.evaluation.sweep FILE`.")
        parser.add_argument("--cpu_threads", type=Optional[int], default=None,
                            help="Torch intra-op threads of a CPU run. null: OMP_NUM_THREADS if set, else the "
                                 "cores not already busy (framework.lightning.threads; 1 on a saturated machine).")

    warning_lines: Optional[WarningLines] = None  # set by `main`: where the run's warnings go
    output_lock: Optional[OutputLock] = None  # held by the run's first process until `main` ends

    def _prepare_run(self) -> None:
        """Before the Trainer starts (and a W&B run is created): lock the output folder against a second run, load
        the weights, which checks every conditioner against the UNet, then the checks that need the tokenizer."""
        output_dir = getattr(self.model, "output_dir", None)
        if output_dir is not None:  # created and checked writable before it is locked (EditModule.load_weights checks)
            output_dir = self.model.output_dir = writable_folder(output_dir)
        rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
        if output_dir is not None and rank == 0 and EditCLI.output_lock is None:  # other ranks are this same run
            EditCLI.output_lock = OutputLock(output_dir).acquire()
        if self.warning_lines is not None and output_dir is not None:
            self.warning_lines.open_log(output_dir)
        if hasattr(self.model, "load_weights"):
            self.model.load_weights()
            after_load(self.model, self.datamodule)

    def before_fit(self) -> None:
        self._prepare_run()

    def before_test(self) -> None:
        self._prepare_run()

    def before_predict(self) -> None:
        self._prepare_run()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("sweep") is not None:
            raise ConfigError("this config has a `sweep:` section (several runs); run it with "
                              "`python -m framework.evaluation.sweep <file>` (see its --help).")
        trainer = config.trainer
        on_gpu = torch.cuda.is_available() and trainer.accelerator not in ("cpu",)
        if trainer.precision is None:
            trainer.precision = "16-mixed" if on_gpu else "32-true"
        apply_cpu_threads(config.get("cpu_threads"), on_gpu)
        launchers = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}
        if trainer.strategy in ("auto", None) and _device_count(trainer) > 1:
            trainer.strategy = "ddp"  # several devices: each edits its share (DDP refuses a frozen model)
        if isinstance(trainer.strategy, str) and trainer.strategy in launchers:
            # No weights are trained: each process edits its share, nothing to synchronise.
            trainer.strategy = {"class_path": "framework.lightning.strategy.ShardedEditStrategy",
                                "init_args": {"start_method": launchers[trainer.strategy]}}
        logger = trainer.logger
        if _uses_wandb(logger):
            if not os.environ.get("WANDB_MODE") and not _wandb_key_available():
                os.environ["WANDB_MODE"] = "offline"
                note("W&B: no API key found, logging offline (sync later with `wandb sync`). "
                     "Set WANDB_API_KEY to log online, WANDB_MODE=disabled to turn it off.")
            for item in logger if isinstance(logger, list) else [logger]:
                save_dir = getattr(item, "init_args", None) and item.init_args.get("save_dir")
                if save_dir:
                    Path(save_dir).mkdir(parents=True, exist_ok=True)


def _device_count(trainer) -> int:
    """How many processes `trainer.devices` x `num_nodes` asks for ('auto' / -1: every GPU, or 1 on the CPU)."""
    devices = trainer.devices
    if isinstance(devices, str):
        devices = devices.strip()
        devices = [d for d in devices.split(",") if d.strip()] if "," in devices else (
            int(devices) if devices.lstrip("-").isdigit() else devices)
    on_gpu = torch.cuda.is_available() and trainer.accelerator not in ("cpu",)
    if devices in ("auto", -1):
        count = torch.cuda.device_count() if on_gpu else 1
    elif isinstance(devices, (list, tuple)):
        count = len(devices)
    elif isinstance(devices, int):
        count = devices
    else:
        return 1  # not a device count: Lightning names the problem itself
    return count * int(trainer.num_nodes or 1)


def _uses_wandb(logger) -> bool:
    items = logger if isinstance(logger, list) else [logger]
    return any("WandbLogger" in str(getattr(item, "class_path", "")) for item in items)


def main(args=None) -> None:
    """Run the CLI; the project's errors end the run with one clear line and exit status 2."""
    quiet_libraries()
    argv = list(sys.argv[1:] if args is None else args)
    EditArgumentParser.command_line = argv
    with WarningLines() as lines:
        EditCLI.warning_lines = lines
        try:
            _run(argv, args, lines)
        finally:
            EditCLI.warning_lines = None
            if EditCLI.output_lock is not None:
                EditCLI.output_lock.release()
                EditCLI.output_lock = None
            _finish_wandb()


def _run(argv: list[str], args, lines: WarningLines) -> None:
    """The command itself; the project's errors and stops become one line (also in the run's log)."""
    try:
        check_yaml_files(config_files(argv))
        _group_help(argv)
        EditCLI(args=args)
    except Exception as err:  # noqa: BLE001 - re-raised unless it is one of ours
        if isinstance(err, SIGTERMException):  # Lightning's own stop, after an edit finished
            _say("stopped: SIGTERM received after an edit; run the same command again to resume.", lines)
            raise SystemExit(StopRequested.exit_code) from None
        edit_error = edit_error_in(err)
        if edit_error is None:
            raise
        if isinstance(edit_error, StopRequested):
            _say(f"stopped: {edit_error}", lines)
            raise SystemExit(StopRequested.exit_code) from None
        _say(f"error: {edit_error}", lines)
        raise SystemExit(2) from None


def _say(text: str, lines: WarningLines) -> None:
    print(text, file=sys.stderr)
    if lines.log_path is not None:  # the run got far enough to have a log: it ends with why it stopped
        lines.record(text)


def _group_help(argv: list[str]) -> None:
    """`--model.sampling.help` (and mask, ito, guidance, auto_lam): that group's settings, documented."""
    for arg in argv:
        parts = arg.split(".")
        if len(parts) == 3 and parts[0] == "--model" and parts[2] == "help":
            text = settings_help(EditModule, parts[1])
            if text is not None:  # otherwise a plugin slot: `--model.conditioners.help CLASS` is jsonargparse's
                print(text)
                raise SystemExit(0)


def _finish_wandb() -> None:
    """Close the W&B run of this command, so a later run in the same process starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
