"""How a run starts and stops: SIGTERM, W&B config, no W&B run for a failed load, devices, CPU threads."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from framework.lightning.cli import EditCLI, main
from framework.lightning.strategy import ShardedEditStrategy
from framework.lightning.threads import apply_cpu_threads, default_threads
from tests.framework.test_cli import FAST, write_config

PLUGIN = '''
import json, os, signal
from lightning.pytorch import Callback


class TermDuring(Callback):
    """Sends this process SIGTERM at step `step` of the final decode of edit `edit`."""

    def __init__(self, edit: str, step: int = 1):
        self.edit, self.step = edit, step

    def on_edit_step(self, trainer, pl_module, info):
        if info["id"] == self.edit and info["stage"] == "final" and info["i"] == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class TermInUNet(Callback):
    """Sends SIGTERM from inside the first UNet call of the mask stage of edit `edit` (between two DDIM steps: the
    stage makes many calls per step); counts the UNet calls that finish afterwards in `after`."""

    after = 0

    def __init__(self, edit: str):
        self.edit, self.sent = edit, False

    def on_fit_start(self, trainer, pl_module):
        def before(unet, args):
            if not self.sent and pl_module.engine.request_id == self.edit and pl_module.denoiser.stage == "mask":
                self.sent = True
                os.kill(os.getpid(), signal.SIGTERM)

        def finished(unet, args, output):
            TermInUNet.after += self.sent

        pl_module.backbone.unet.register_forward_pre_hook(before)
        pl_module.backbone.unet.register_forward_hook(finished)


class WandbConfigProbe(Callback):
    """Writes what the run's W&B config holds at the end of the run to `path`."""

    def __init__(self, path: str):
        self.path = path

    def on_train_end(self, trainer, pl_module):
        config = dict(trainer.logger.experiment.config)
        with open(self.path, "w") as f:
            json.dump(config, f, default=str)
'''


@pytest.fixture
def plugin(tmp_path):
    (tmp_path / "run_plugin.py").write_text(PLUGIN)
    sys.path.insert(0, str(tmp_path))
    yield "run_plugin"
    sys.path.remove(str(tmp_path))
    sys.modules.pop("run_plugin", None)


def _with(config: Path, **trainer) -> Path:
    data = yaml.safe_load(config.read_text())
    data["trainer"].update(trainer)
    config.write_text(yaml.safe_dump(data))
    return config


def test_sigterm_stops_mid_edit_keeps_finished_edits_and_a_rerun_resumes(tmp_path, tiny_dirs, manifest, plugin,
                                                                          capsys):
    out = tmp_path / "out"
    config = write_config(tmp_path / "e.yaml", tiny_dirs, manifest, out)
    stopping = _with(write_config(tmp_path / "stop.yaml", tiny_dirs, manifest, out),
                     callbacks=[{"class_path": f"{plugin}.TermDuring", "init_args": {"edit": "pose"}}])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(stopping), *FAST])
    assert exit_info.value.code == 143
    assert "during edit 'pose'" in capsys.readouterr().err
    assert (out / "text" / "result.json").exists() and not (out / "pose" / "result.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert [r["id"] for r in summary["edits"]] == ["text"] and "SIGTERM" in summary["stopped"]
    main(["fit", "--config", str(config), *FAST])
    totals = json.loads((out / "summary.json").read_text())["totals"]
    assert (totals["edits"], totals["resumed"]) == (2, 1)


def test_sigterm_acts_inside_a_unet_call_not_after_the_stage(tmp_path, tiny_dirs, manifest, plugin, capsys):
    out = tmp_path / "out"
    config = _with(write_config(tmp_path / "stop.yaml", tiny_dirs, manifest, out),
                   callbacks=[{"class_path": f"{plugin}.TermInUNet", "init_args": {"edit": "text"}}])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), *FAST, "--model.mask.seeds", "4"])
    assert exit_info.value.code == 143 and "during edit 'text'" in capsys.readouterr().err
    # The guard checks at every block and attention layer: the UNet call in flight when the signal came does not
    # finish, and none begins after it (checked between DDIM steps only, 3 more calls finished here).
    assert sys.modules[plugin].TermInUNet.after == 0
    assert not (out / "text" / "result.json").exists()
    # The hooks are gone after the run: the same weights edit again without a stop.
    main(["fit", "--config", str(write_config(tmp_path / "e.yaml", tiny_dirs, manifest, out)), *FAST])
    assert (out / "text" / "result.json").exists()


def test_wandb_run_holds_the_resolved_config_and_settings_digest(tmp_path, tiny_dirs, manifest, plugin):
    out = tmp_path / "out"
    probe = tmp_path / "wandb_config.json"
    config = _with(write_config(tmp_path / "e.yaml", tiny_dirs, manifest, out),
                   logger={"class_path": "lightning.pytorch.loggers.WandbLogger",
                           "init_args": {"save_dir": str(tmp_path / "wb"), "project": "t", "offline": True}},
                   callbacks=[{"class_path": f"{plugin}.WandbConfigProbe", "init_args": {"path": str(probe)}}])
    main(["fit", "--config", str(config), *FAST, "--data.limit", "1"])
    logged = json.loads(probe.read_text())
    record = json.loads((out / "text" / "result.json").read_text())
    assert logged["settings_digest"] == record["settings"]
    model = logged["model"]["init_args"] if "init_args" in logged["model"] else logged["model"]
    assert model["lam"] == 0.6 and model["sampling"]["steps"] == 6 and model["mask"]["seeds"] == 2


def test_a_run_that_fails_to_load_leaves_no_wandb_run(tmp_path, tiny_dirs, manifest, capsys):
    wrong = tmp_path / "cn_sd21"
    shutil.copytree(tiny_dirs["pose"], wrong)
    cfg = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps(dict(cfg, cross_attention_dim=1024)))
    save_dir = tmp_path / "wb"
    config = _with(write_config(tmp_path / "e.yaml", dict(tiny_dirs, pose=wrong), manifest, tmp_path / "out"),
                   logger={"class_path": "lightning.pytorch.loggers.WandbLogger",
                           "init_args": {"save_dir": str(save_dir), "project": "t", "offline": True}})
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), *FAST])
    assert exit_info.value.code == 2
    assert "was made for SD 2.x" in capsys.readouterr().err
    assert not list(save_dir.rglob("offline-run-*"))


def test_several_devices_pick_the_sharded_strategy_and_cpu_threads_are_set(tmp_path, tiny_dirs, manifest,
                                                                           monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    try:
        config = write_config(tmp_path / "e.yaml", tiny_dirs, manifest, tmp_path / "out")
        cli = EditCLI(args=["--config", str(config), "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                            "--cpu_threads", "3"], run=False)
        assert isinstance(cli.trainer.strategy, ShardedEditStrategy)
        assert torch.get_num_threads() == 3
        cli = EditCLI(args=["--config", str(config), "--trainer.accelerator", "cpu"], run=False)
        assert not isinstance(cli.trainer.strategy, ShardedEditStrategy)
        with pytest.raises(Exception, match="cpu_threads must be >= 1"):
            apply_cpu_threads(0, on_gpu=False)
    finally:
        torch.set_num_threads(threads)


def test_default_threads_follow_the_load(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads(cores=2, load=0.1) == 2  # idle: every core
    assert default_threads(cores=2, load=1.0) == 1
    assert default_threads(cores=2, load=9.0) == 1  # saturated: one thread, not 2 fighting the others
    assert default_threads(cores=16, load=4.2) == 12
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads(cores=2, load=9.0) == 3  # the user's own setting wins
