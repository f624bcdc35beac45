"""experiments/studies/toymodel_gpu_run.py: its dry run trains every stage of the GPU configs on the CPU, packs tars
that would come back, and unpacks them into a model folder the engine loads."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("toymodel_gpu_run", ROOT / "experiments/studies/toymodel_gpu_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dry_run_trains_packs_and_unpacks_a_loadable_model(script, tmp_path, monkeypatch):
    from diffusers import ControlNetModel

    from framework.backbones.sd import StableDiffusion
    from framework.toy.model.classifier import ToyClassifier

    monkeypatch.chdir(tmp_path)  # nothing may be written outside --work and --out
    out, work = tmp_path / "out", tmp_path / "work"
    assert script.main(["--dry-run", "--out", str(out), "--work", str(work)]) == 0
    tars = {p.name: p.stat().st_size for p in out.glob("*.tar")}
    assert set(tars) == {"sd.tar", "unet.tar", "controlnet-pose.tar", "controlnet-scribble.tar", "classifier.tar",
                         "logs.tar"}
    assert len(list(out.iterdir())) <= 8 and max(tars.values()) < script.FILE_LIMIT
    timings = json.loads((out / "timings.json").read_text())
    assert timings["failed"] == []
    for stage in ("vae", "diffusion"):
        assert timings["stages"][stage]["steps"] == 3
        assert timings["stages"][stage]["flops_per_step"] > 0 and timings["stages"][stage]["ops_per_step"] > 100
    # The full-size nets were built and fit: each tar under 16 MiB, the bundle under 40 MB.
    sizes = timings["full_size_bytes"]
    assert script.check_sizes(sizes) == [] and sizes["unet"] > 10 * 2**20

    model = script.unpack(out, tmp_path / "model")
    assert sorted(p.name for p in model.iterdir()) == ["classifier", "controlnet-pose", "controlnet-scribble", "logs",
                                                        "sd"]
    sd = StableDiffusion(str(model / "sd")).load()
    assert sd.vae_scale_factor == 2  # the /2 VAE of h200/vae.yaml: 32 x 32 latents at 64 px
    assert sd.encode_image(torch.rand(1, 3, 64, 64)).shape == (1, 4, 32, 32)
    assert sd.encode_prompt("a red circle and a blue square on a striped background").hidden.shape[-1] == 16  # dry width
    assert list(ControlNetModel.from_pretrained(model / "controlnet-pose").config.block_out_channels) == [8, 16, 16]
    ToyClassifier.from_pretrained(model / "classifier")
    assert (model / "logs" / "diffusion" / "metrics.csv").is_file()


def test_a_stage_that_would_not_come_back_is_named(script):
    problems = script.check_sizes({"unet": 20 * 2**20, "sd": 30 * 2**20})
    assert any("unet.tar" in p for p in problems) and any("bundle" in p for p in problems)


def test_the_clock_schedule_follows_elapsed_time_and_stops_the_stage(monkeypatch):
    import time
    from types import SimpleNamespace

    from framework.toy.model.stage import TrainingStage

    class Stage(TrainingStage):
        def __init__(self, **hparams):
            super().__init__()
            self.save_hyperparameters(hparams)

    by_steps = Stage(total_steps=100, schedule_seconds=None, export_every=0)
    assert by_steps.schedule_step(37) == 37
    stage = Stage(total_steps=100, schedule_seconds=10.0, export_every=0)
    assert stage.schedule_step(37) == 0.0  # before training starts
    now = [1000.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    stage.on_train_start()
    now[0] += 2.5
    assert stage.schedule_step(37) == pytest.approx(25.0)  # a quarter of the seconds: a quarter of the schedule
    fake = SimpleNamespace(should_stop=False)
    monkeypatch.setattr(Stage, "trainer", property(lambda self: fake))
    stage.on_train_batch_end(None, None, 0)
    assert not fake.should_stop
    now[0] += 7.5
    stage.on_train_batch_end(None, None, 0)
    assert fake.should_stop and stage.schedule_step(37) == 100


def test_device_pool_batches_equal_the_dataset_items(tmp_path, monkeypatch):
    from torch.utils.data import default_collate

    from framework.toy.model.data import DevicePool, PoolDataset, render_pool

    pool = render_pool(5, size=32, seed_offset=70)
    index = torch.tensor([3, 0, 4])
    items = default_collate([PoolDataset(pool)[int(i)] for i in index])
    gathered = DevicePool(pool, "cpu").gather(index)
    assert set(gathered) == {"image", "foreground", "pose", "scribble"}
    for key, value in gathered.items():
        assert torch.equal(value, items[key]), key
    assert PoolDataset(pool, index_only=True)[2] == {"index": 2, "caption": pool.captions[2]}


def test_a_failed_stage_is_reported_and_what_exists_is_still_packed(script, tmp_path, monkeypatch):
    def broken(args, cost=None):
        raise RuntimeError("no VAE today")

    monkeypatch.setattr(script, "run_stage", broken)
    out, work = tmp_path / "out", tmp_path / "work"
    assert script.main(["--dry-run", "--out", str(out), "--work", str(work)]) == 1
    timings = json.loads((out / "timings.json").read_text())
    assert timings["failed"] == ["vae"] and "diffusion" not in timings["stages"]  # it needs the VAE
    assert sorted(p.name for p in out.glob("*.tar")) == ["classifier.tar", "logs.tar"]  # the classifier still ran
    log = (work / "logs" / "log.txt").read_text()
    assert "vae: FAILED: RuntimeError: no VAE today" in log and "Traceback" in log
