"""Callbacks: W&B images and tables, latent previews, within-edit progress; and the CLI's defaults."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch.utils.data import DataLoader

from framework.io.outputs import EditResult
from framework.lightning.callbacks import LatentPreview, RichStageProgress, StageProgress, WandbEditLogger, edit_result
from framework.lightning.cli import TRAINER_DEFAULTS, main
from tests.conftest import ROOT
from tests.framework.test_cli import FAST, write_config

STEPS = 6  # FAST's sampling.steps; encode ratio 1: the final decode makes 6 DDIM steps


def wandb_config(tmp_path: Path, tiny_dirs, manifest: Path, out: Path) -> Path:
    """The test config with a W&B logger (offline: conftest) and the preview and progress callbacks."""
    path = write_config(tmp_path / "exp.yaml", tiny_dirs, manifest, out)
    config = yaml.safe_load(path.read_text())
    config["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.WandbLogger",
                                   "init_args": {"save_dir": str(tmp_path / "wb"), "project": "ito-test"}}
    config["trainer"]["callbacks"] = [
        {"class_path": "framework.lightning.callbacks.LatentPreview", "init_args": {"every_n_steps": 2}},
        {"class_path": "framework.lightning.callbacks.StageProgress", "init_args": {"min_interval_s": 0.0}},
    ]
    path.write_text(yaml.safe_dump(config))
    return path


def run_log_payload(path: Path) -> bytes:
    """The records of a `.wandb` file joined, without the LevelDB-log chunk headers that may split a key."""
    data, block, pos, chunks = path.read_bytes(), 32768, 7, []  # 7: the ':W&B' file header
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")  # header: crc32 (4), length (2), type (1)
        chunks.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
    return b"".join(chunks)


def missing_from_run_log(path: Path, keys, timeout_s: float = 60.0) -> list[bytes]:
    """The keys not (yet) in the run's log; wandb-core may still be writing it when `finish()` returns."""
    deadline = time.monotonic() + timeout_s
    while True:
        payload = run_log_payload(path)
        missing = [key for key in keys if key not in payload]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.5)


def test_wandb_fit_logs_images_table_config_previews_and_progress(tmp_path, tiny_dirs, manifest, capsys,
                                                                 monkeypatch):
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # the table's artifact is staged there
    out = tmp_path / "out"
    main(["fit", "--config", str(wandb_config(tmp_path, tiny_dirs, manifest, out)), *FAST])
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = runs[0] / "files"
    media = [p.relative_to(files / "media").as_posix() for p in (files / "media").rglob("*") if p.is_file()]
    for edit_id in ("text", "pose"):
        # input, [source and edit pose maps], mask overlay, guidance, edit; and the strip under its own key
        assert sum(m.startswith(f"images/edits/{edit_id}_") for m in media) == (6 if edit_id == "pose" else 4)
        assert sum(m.startswith(f"images/strips/{edit_id}_") for m in media) == 1
        assert any(m.startswith(f"images/previews/{edit_id}/final_") for m in media)
    tables = [m for m in media if m.startswith("table/edits/table_") and m.endswith(".table.json")]
    assert len(tables) == 1
    table = json.loads((files / "media" / tables[0]).read_text())
    assert [row[0] for row in table["data"]] == ["text", "pose"]
    assert table["columns"][-1] == "edit" and table["data"][1][table["columns"].index("lam")] == 0.8
    # the keys, the table's edit images (in its run artifact) and the resolved parameters in the run config
    keys = (b"edits/text", b"edits/pose", b"strips/pose", b"edits/table", b"/edit.png", b"inversion_guidance_scale")
    assert missing_from_run_log(next(runs[0].glob("*.wandb")), keys) == []
    # LatentPreview: steps 0, 2, 4 of the final decode, per edit
    for edit_id in ("text", "pose"):
        previews = sorted(p.name for p in (out / edit_id / "previews").iterdir())
        assert [p.split("_t")[0] for p in previews] == [f"final_{i:03d}" for i in range(0, STEPS, 2)], previews
    # StageProgress: the bar's postfix names the stage, redrawn in place (no lines of its own)
    printed = capsys.readouterr().out
    assert "stage=final" in printed and "stage=inversion" in printed
    assert all("Epoch 0" in line for line in printed.replace("\r", "\n").splitlines() if "stage=" in line)


def test_cli_adds_the_wandb_logger_by_default_once(tmp_path):
    assert any(isinstance(cb, WandbEditLogger) for cb in TRAINER_DEFAULTS["callbacks"])
    # A second one (e.g. also listed in the config) stays silent: only the first logs.
    first, second = WandbEditLogger(), WandbEditLogger()
    trainer = SimpleNamespace(callbacks=[first, second], loggers=[WandbLogger(save_dir=str(tmp_path))])
    for cb in (first, second):
        cb.setup(trainer, None, "fit")
    assert first._active and not second._active


def test_without_wandb_logger_nothing_is_logged_and_wandb_is_not_imported(tmp_path):
    script = f"""
import sys
from types import SimpleNamespace
from lightning.pytorch.loggers import CSVLogger
from framework.lightning.callbacks import WandbEditLogger, LatentPreview
cb = WandbEditLogger()
trainer = SimpleNamespace(callbacks=[cb], loggers=[CSVLogger({str(tmp_path)!r})])
cb.setup(trainer, None, "fit")
cb.on_train_batch_end(trainer, None, {{}}, None, 0)
cb.on_train_end(trainer, None)
assert not cb._active
assert "wandb" not in sys.modules, "wandb was imported"
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_edit_result_of_each_step_kind():
    result = EditResult("a", torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 1, 1), None, None,
                        {}, {}, {"id": "a"})
    assert edit_result({"result": result}) is result  # fit / test
    assert edit_result(result) is result  # predict
    assert edit_result({}) is None and edit_result(None) is None  # failed, resumed or padding


class _Backbone:
    def decode_latents(self, latents):
        assert not torch.is_grad_enabled()
        return torch.full((latents.shape[0], 3, 16, 16), 0.5)


def test_latent_preview_picks_every_nth_step_of_chosen_stages(tmp_path):
    module = SimpleNamespace(backbone=_Backbone(), output_dir=tmp_path)
    trainer = SimpleNamespace(loggers=[CSVLogger(tmp_path)])
    preview = LatentPreview(every_n_steps=5, stages=["final", "guidance"])
    latents = torch.zeros(1, 4, 2, 2, requires_grad=True)
    for stage in ("inversion", "guidance", "final"):
        for i in range(12):
            t = 1000 - 80 * i
            preview.on_edit_step(trainer, module, {"id": "e", "stage": stage, "kind": "ito", "i": i, "t": t,
                                                   "latents": latents, "loss": 1.0})
            preview.on_edit_step(trainer, module, {"id": "e", "stage": stage, "kind": "step", "i": i, "t": t,
                                                   "latents": latents})
    names = sorted(p.name for p in (tmp_path / "e" / "previews").iterdir())
    assert names == ["final_000_t1000.png", "final_005_t600.png", "final_010_t200.png",
                     "guidance_000_t1000.png", "guidance_005_t600.png", "guidance_010_t200.png"]
    with pytest.raises(ValueError):
        LatentPreview(every_n_steps=0)


class _EditSteps(LightningModule):
    """Emits the edit-step events of two model-free 'edits', as EditModule does, and records the bar's metrics."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.shown: list[dict] = []

    def training_step(self, batch, batch_idx):
        for stage in ("inversion", "final"):
            for i in range(3):
                info = {"id": str(batch_idx), "stage": stage, "kind": "step", "i": i, "t": 900 - 300 * i,
                        "latents": torch.zeros(1)}
                for callback in self.trainer.callbacks:
                    if hasattr(callback, "on_edit_step"):
                        callback.on_edit_step(self.trainer, self, info)
                self.shown.append(self.trainer.progress_bar_callback.get_metrics(self.trainer, self))

    def configure_optimizers(self):
        return None

    def train_dataloader(self):
        return DataLoader(range(2), batch_size=1)


@pytest.mark.parametrize("bar_class, shown", [(StageProgress, "stage=final, step=2"), (RichStageProgress, "stage:")])
def test_stage_progress_bars_show_the_stage_in_a_real_trainer(tmp_path, capsys, bar_class, shown):
    bar = bar_class(min_interval_s=0.0)
    module = _EditSteps()
    Trainer(max_epochs=1, callbacks=[bar], logger=False, enable_checkpointing=False, enable_model_summary=False,
            accelerator="cpu", default_root_dir=tmp_path).fit(module)
    assert module.trainer.progress_bar_callback is bar  # it replaces Lightning's default bar
    assert {"stage": "inversion", "step": 1}.items() <= module.shown[1].items()
    assert {"stage": "final", "step": 2}.items() <= module.shown[-1].items()
    assert shown in capsys.readouterr().out


def test_stage_progress_keeps_the_latest_stage_without_a_bar():
    bar = StageProgress()
    trainer = SimpleNamespace(state=SimpleNamespace(fn=None), loggers=[], progress_bar_metrics={})
    bar.on_edit_step(trainer, None, {"id": "e", "stage": "guidance", "kind": "step", "i": 3, "t": 500,
                                     "latents": torch.zeros(1)})
    assert bar.get_metrics(trainer, None) == {"stage": "guidance", "step": 3}


def test_wandb_table_has_a_column_per_metric(tmp_path):
    records = [{"id": "a", "lam": 0.6, "seconds": {"total": 1.0}, "unet_evaluations": {"final": 4},
                "metrics": {"edit/l1": 0.25, "gt/background_l1": 0.125}},
               {"id": "b", "lam": 1.0, "seconds": {}, "unet_evaluations": {"final": 2}, "metrics": {"edit/l1": 0.5}},
               {"id": "c", "error": "NaN latents"}]
    names = WandbEditLogger.metric_names(records)
    assert names == ["edit/l1", "gt/background_l1"]
    columns = WandbEditLogger.columns(names)
    assert columns[-3:] == ["edit/l1", "gt/background_l1", "edit"] and columns[:-3] == WandbEditLogger.COLUMNS[:-1]
    rows = [WandbEditLogger.table_row(r, tmp_path, tuple(names)) for r in records]
    assert all(len(row) == len(columns) for row in rows)
    assert [row[-3:-1] for row in rows] == [[0.25, 0.125], [0.5, None], [None, None]]
    assert rows[0][columns.index("unet_evaluations")] == 4 and rows[2][columns.index("error")] == "NaN latents"
