"""`python -m framework fit|test|predict --config exp.yaml`: LightningCLI with the project's defaults."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch.cli import LightningCLI

from framework.callbacks import WandbEditLogger
from framework.data import EditDataModule
from framework.errors import ConfigError, edit_error_in
from framework.module import EditModule

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
TRAINER_DEFAULTS["callbacks"] = [WandbEditLogger()]  # does nothing unless the run logs to W&B

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


class EditCLI(LightningCLI):
    """LightningCLI whose model is an `EditModule` (or subclass) and whose data is a manifest."""

    def __init__(self, args=None, run: bool = True):
        super().__init__(
            EditModule, EditDataModule, subclass_mode_model=True, subclass_mode_data=True,
            trainer_defaults=TRAINER_DEFAULTS, auto_configure_optimizers=False, args=args, run=run,
            save_config_kwargs={"overwrite": True}, seed_everything_default=0,
            parser_kwargs={"default_env": False},
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--sweep", type=Optional[dict], default=None,
                            help="Several runs of this config: read by `python -m framework.sweep FILE`.")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("sweep") is not None:
            raise ConfigError("this config has a `sweep:` section (several runs); run it with "
                              "`python -m framework.sweep <file>` (see its --help).")
        trainer = config.trainer
        if trainer.precision is None:
            on_gpu = torch.cuda.is_available() and trainer.accelerator not in ("cpu",)
            trainer.precision = "16-mixed" if on_gpu else "32-true"
        launchers = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}
        if isinstance(trainer.strategy, str) and trainer.strategy in launchers:
            # No weights are trained: each process edits its share, nothing to synchronise.
            trainer.strategy = {"class_path": "framework.strategy.ShardedEditStrategy",
                                "init_args": {"start_method": launchers[trainer.strategy]}}
        logger = trainer.logger
        if _uses_wandb(logger):
            if not os.environ.get("WANDB_MODE") and not _wandb_key_available():
                os.environ["WANDB_MODE"] = "offline"
                print("W&B: no API key found, logging offline (sync later with `wandb sync`). "
                      "Set WANDB_API_KEY to log online, WANDB_MODE=disabled to turn it off.", file=sys.stderr)
            for item in logger if isinstance(logger, list) else [logger]:
                save_dir = getattr(item, "init_args", None) and item.init_args.get("save_dir")
                if save_dir:
                    Path(save_dir).mkdir(parents=True, exist_ok=True)


def _uses_wandb(logger) -> bool:
    items = logger if isinstance(logger, list) else [logger]
    return any("WandbLogger" in str(getattr(item, "class_path", "")) for item in items)


def main(args=None) -> None:
    """Run the CLI; the project's errors end the run with one clear line and exit status 2."""
    quiet_libraries()
    try:
        EditCLI(args=args)
    except Exception as err:  # noqa: BLE001 - re-raised unless it is one of ours
        edit_error = edit_error_in(err)
        if edit_error is None:
            raise
        print(f"error: {edit_error}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        _finish_wandb()


def _finish_wandb() -> None:
    """Close the W&B run of this command, so a later run in the same process starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
