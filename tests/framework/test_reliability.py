"""Long runs and bad input: resume, kill -9, sharding over processes, NaN, OOM, unwritable output."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from framework.evaluation.metrics import FeatureExtractor
from framework.lightning.cli import main
from tests.conftest import ROOT
from tests.framework.test_cli import FAST, write_config


def _three_requests(manifest: Path) -> Path:
    rows = yaml.safe_load(manifest.read_text())["requests"]
    rows.append(dict(rows[0], id="third", edit_prompt="a green circle"))
    path = manifest.parent / "three.yaml"
    path.write_text(yaml.safe_dump({"requests": rows}))
    return path


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_rerun_skips_finished_edits_and_overwrite_redoes_them(tmp_path, tiny_dirs, manifest, capsys):
    out = tmp_path / "out"
    config = write_config(tmp_path / "exp.yaml", tiny_dirs, manifest, out)
    main(["fit", "--config", str(config), *FAST])
    stamp = (out / "pose" / "edit.png").stat().st_mtime_ns
    capsys.readouterr()
    main(["fit", "--config", str(config), *FAST])
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: resuming")]
    assert len(notes) == 1 and "(first: 'text')" in notes[0]  # one line per run, not one per edit
    assert notes[0] in (out / "run.log").read_text()
    summary = _summary(out)
    assert summary["totals"]["resumed"] == 2 and summary["totals"]["edits"] == 2
    assert (out / "pose" / "edit.png").stat().st_mtime_ns == stamp
    main(["fit", "--config", str(config), *FAST, "--model.overwrite", "true"])
    assert _summary(out)["totals"]["resumed"] == 0
    assert (out / "pose" / "edit.png").stat().st_mtime_ns != stamp


def test_the_settings_digest_ignores_the_settings_of_stages_a_method_does_not_run(tiny_dirs):
    from framework.backbones.sd import StableDiffusion
    from framework.core.settings import GuidanceConfig, ITOConfig, MaskConfig, SamplingConfig
    from framework.lightning.baselines import DiffEdit, SDEdit
    from framework.lightning.module import EditModule

    def digest(cls, **settings):
        return cls(StableDiffusion(str(tiny_dirs["sd"])), **settings).settings_digest()

    # DiffEdit runs no ITO and makes no guidance image: their settings (and lam) do not decide its edits,
    # so a DiffEdit run resumes after ITO's defaults change; its own encode ratio and mask do decide them.
    base = digest(DiffEdit)
    assert digest(DiffEdit, ito=ITOConfig(update_steps=3, inner_steps=1), lam=0.2,
                  guidance=GuidanceConfig(update_steps=4)) == base
    assert digest(DiffEdit, sampling=SamplingConfig(encode_ratio=0.7)) != base
    assert digest(DiffEdit, mask=MaskConfig(threshold=0.3)) != base
    # SDEdit has no mask either; the full method is decided by all of them.
    assert digest(SDEdit, mask=MaskConfig(threshold=0.3)) == digest(SDEdit)
    full = digest(EditModule)
    assert digest(EditModule, ito=ITOConfig(inner_steps=1)) != full and digest(EditModule, lam=0.2) != full
    assert digest(EditModule, guidance=GuidanceConfig(update_steps=4)) != full


def test_a_rerun_with_other_settings_or_inputs_refuses_to_count_the_old_edits(tmp_path, tiny_dirs, manifest, capsys):
    out = tmp_path / "out"
    config = write_config(tmp_path / "exp.yaml", tiny_dirs, manifest, out)
    main(["fit", "--config", str(config), *FAST])
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    records = [json.loads((out / i / "result.json").read_text()) for i in ("text", "pose")]
    assert len({r["settings"] for r in records}) == 1 and len({r["inputs"] for r in records}) == 2
    # Another lam, or other weights at the same path: the old edits are not this run's.
    for change in (["--model.lam", "0.3"], ["--model.seed", "7"]):
        with pytest.raises(SystemExit):
            main(["fit", "--config", str(config), *FAST, *change])
        err = capsys.readouterr().err
        assert "other settings" in err and str(out) in err and "model.overwrite" in err
    # The same id now names another image: refused too.
    image = np.asarray(Image.open(manifest.parent / "input.png")).copy()
    image[:8] = 255 - image[:8]
    Image.fromarray(image).save(manifest.parent / "input.png")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), *FAST])
    assert "other inputs" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before  # nothing written was touched
    main(["fit", "--config", str(config), *FAST, "--model.overwrite", "true"])
    assert _summary(out)["totals"]["resumed"] == 0
    # A record written before the digests existed cannot be vouched for either.
    path = out / "text" / "result.json"
    record = json.loads(path.read_text())
    del record["settings"], record["inputs"]
    path.write_text(json.dumps(record))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), *FAST])
    assert "does not record the settings" in capsys.readouterr().err


def test_weights_retrained_at_the_same_path_count_as_other_settings(tmp_path, tiny_dirs, manifest, capsys):
    from diffusers import ControlNetModel

    folder = tmp_path / "pose-net"
    shutil.copytree(tiny_dirs["pose"], folder)
    out = tmp_path / "out"
    config = write_config(tmp_path / "exp.yaml", dict(tiny_dirs, pose=folder), manifest, out)
    main(["fit", "--config", str(config), *FAST])
    net = ControlNetModel.from_pretrained(folder)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01)
    net.save_pretrained(folder)  # same folder, other weights
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), *FAST])
    err = capsys.readouterr().err
    assert "other settings" in err
    assert "the model weights changed since (a checkpoint at the same path was retrained or replaced)" in err


class MeanColour(FeatureExtractor):
    """A weightless feature extractor for the tests: each image's mean colour and its spread."""

    def forward(self, images):
        return torch.cat([images.mean(dim=(2, 3)), images.std(dim=(2, 3))], 1)


def test_a_resumed_run_scores_every_edit_as_an_uninterrupted_one(tmp_path, tiny_dirs, manifest):
    out = tmp_path / "out"
    metrics = [{"class_path": "framework.evaluation.metrics.L1Distance", "init_args": {"crop": 64}},
               {"class_path": "framework.evaluation.metrics.FID",
                "init_args": {"features": {"class_path": "tests.framework.test_reliability.MeanColour"}}}]
    config = write_config(tmp_path / "exp.yaml", tiny_dirs, manifest, out, metrics=metrics)
    main(["fit", "--config", str(config), *FAST])
    first = _summary(out)
    main(["fit", "--config", str(config), *FAST])  # every edit resumed; FID needs both to be counted
    second = _summary(out)
    assert second["totals"]["resumed"] == 2
    assert second["metrics"]["edit/l1"] == first["metrics"]["edit/l1"] > 0  # the stored per-edit values
    assert second["metrics"]["fid/count"] == first["metrics"]["fid/count"] == 2
    # FID is scored again from the written (8-bit) images: close to the first run's value.
    assert second["metrics"]["fid/edit_vs_input"] == pytest.approx(first["metrics"]["fid/edit_vs_input"], rel=0.05,
                                                                  abs=1e-4)
    assert [r["metrics"] for r in second["edits"]] == [r["metrics"] for r in first["edits"]]
    (out / "pose" / "edit.png").unlink()  # an edit whose image is gone is edited again, not counted blind
    main(["fit", "--config", str(config), *FAST])
    assert _summary(out)["totals"]["resumed"] == 1 and (out / "pose" / "edit.png").exists()


def test_read_edit_gives_back_what_write_edit_wrote(tmp_path):
    from framework.io.outputs import EditResult, read_edit, to_pil, write_edit

    g = torch.Generator().manual_seed(0)
    image = lambda: torch.rand(1, 3, 32, 32, generator=g)  # noqa: E731
    mask = (torch.rand(1, 1, 8, 8, generator=g) > 0.5).float()
    result = EditResult(id="e", edit=image(), input=image(), mask=mask, soft_mask=torch.rand(1, 1, 8, 8, generator=g),
                        guidance=image(), source_maps={"pose": image()}, edit_maps={"pose": image()},
                        record={"id": "e", "lam": 0.6})
    write_edit(result, tmp_path / "e")
    back = read_edit(tmp_path / "e", json.loads((tmp_path / "e" / "result.json").read_text()))
    rounded = lambda t: torch.from_numpy(np.asarray(to_pil(t), np.float32) / 255).permute(2, 0, 1)[None]  # noqa: E731
    for a, b in ((back.edit, result.edit), (back.input, result.input), (back.guidance, result.guidance),
                 (back.source_maps["pose"], result.source_maps["pose"]), (back.edit_maps["pose"], result.edit_maps["pose"])):
        assert torch.equal(a, rounded(b)) and (a - b).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.equal(back.mask, torch.nn.functional.interpolate(mask, size=(32, 32), mode="nearest"))
    assert back.soft_mask.shape == (1, 1, 32, 32) and back.record["lam"] == 0.6


def _cli(*args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "framework", "fit", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def test_kill_9_loses_only_the_edit_in_flight(tmp_path, tiny_dirs, manifest):
    out = tmp_path / "out"
    config = write_config(tmp_path / "exp.yaml", tiny_dirs, _three_requests(manifest), out)
    process = _cli("--config", config, *FAST)
    deadline = time.time() + 240
    while not (out / "text" / "result.json").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (out / "text" / "result.json").exists(), process.stdout.read().decode()[-2000:]
    finished = {p.parent.name for p in out.glob("*/result.json")}
    assert "third" not in finished  # it had not started
    for folder in out.iterdir():  # every finished edit is whole
        if (folder / "result.json").exists():
            record = json.loads((folder / "result.json").read_text())
            assert all((folder / name).exists() for name in record["files"])
    main(["fit", "--config", str(config), *FAST])
    summary = _summary(out)
    assert summary["totals"]["edits"] == 3 and summary["totals"]["resumed"] == len(finished)
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no half-written temporaries left


def test_two_processes_shard_the_manifest_and_merge_one_summary(tmp_path, tiny_dirs, manifest):
    out = tmp_path / "out"
    config = write_config(tmp_path / "exp.yaml", tiny_dirs, _three_requests(manifest), out)
    # No --trainer.strategy: several devices choose the sharded strategy by themselves.
    process = _cli("--config", config, *FAST, "--trainer.accelerator", "cpu", "--trainer.devices", "2")
    output = process.communicate(timeout=400)[0].decode()
    assert process.returncode == 0, output[-3000:]
    summary = _summary(out)
    assert summary["totals"]["processes"] == 2
    assert sorted(r["id"] for r in summary["edits"]) == ["pose", "text", "third"]  # each once
    assert not list(out.glob("summary.rank*.json"))
    assert all((out / i / "edit.png").exists() for i in ("pose", "text", "third"))


def test_unwritable_output_dir_fails_before_model_work(tmp_path, tiny_dirs, manifest, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(write_config(tmp_path / "exp.yaml", tiny_dirs, manifest, blocker / "out"))])
    assert "not writable" in capsys.readouterr().err


def test_incomplete_model_folder_names_what_is_missing(tmp_path, tiny_dirs, manifest, capsys):
    partial = tmp_path / "partial-sd"
    shutil.copytree(tiny_dirs["sd"], partial)
    shutil.rmtree(partial / "vae")
    dirs = dict(tiny_dirs, sd=partial)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(write_config(tmp_path / "exp.yaml", dirs, manifest, tmp_path / "out"))])
    assert "incomplete: missing vae/config.json" in capsys.readouterr().err


POISON = '''
import torch
from conditioners import Conditioner


class Poison(Conditioner):
    """Makes the text embeddings infinite for prompts that contain 'poison'."""

    def encode(self, side, backbone):
        return torch.tensor([float("inf") if "poison" in side.prompt else 1.0])

    def apply(self, inputs, latents, t, encoding, progress):
        inputs.encoder_hidden_states = inputs.encoder_hidden_states * encoding[:, None, None]
'''


def test_non_finite_latents_stop_that_edit_and_the_rest_continue(tmp_path, tiny_dirs, manifest, capsys):
    (tmp_path / "poison_plugin.py").write_text(POISON)
    sys.path.insert(0, str(tmp_path))
    rows = yaml.safe_load(manifest.read_text())["requests"]
    rows[0]["edit_prompt"] = "a poison circle"
    (manifest.parent / "poison.yaml").write_text(yaml.safe_dump({"requests": rows}))
    out = tmp_path / "out"
    config = write_config(tmp_path / "exp.yaml", tiny_dirs, manifest.parent / "poison.yaml", out)
    data = yaml.safe_load(config.read_text())
    data["model"]["init_args"]["conditioners"].append({"class_path": "poison_plugin.Poison"})
    config.write_text(yaml.safe_dump(data))
    try:
        main(["fit", "--config", str(config), *FAST])
    finally:
        sys.path.remove(str(tmp_path))
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("warning: ") and "NaN/inf latents" in line for line in err)
    assert "NaN/inf" in json.loads((out / "text" / "error.json").read_text())["error"]
    assert (out / "pose" / "edit.png").exists()
    totals = _summary(out)["totals"]
    assert (totals["edits"], totals["failed"]) == (1, 1)


def test_out_of_memory_names_the_knobs(tmp_path, tiny_dirs, manifest, capsys, monkeypatch):
    from framework.lightning.module import EditModule

    def no_memory(self, request):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(EditModule, "edit", no_memory)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(write_config(tmp_path / "exp.yaml", tiny_dirs, manifest, tmp_path / "o")), *FAST])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Out of GPU memory" in err and "--model.unet_chunk_size" in err and "--data.resolution" in err


@pytest.mark.parametrize("value, message", [(0, "the given mask has no edit region: it is all black"),
                                            (255, "the given mask is all white")])
def test_empty_or_full_given_mask_warns_with_a_hint_for_the_file_and_the_edit_proceeds(tmp_path, tiny_dirs, manifest,
                                                                                       value, message, capsys):
    Image.fromarray(np.full((64, 64), value, np.uint8)).save(manifest.parent / "m.png")
    rows = yaml.safe_load(manifest.read_text())["requests"][:1]
    rows[0]["mask"] = "m.png"
    (manifest.parent / "m.yaml").write_text(yaml.safe_dump({"requests": rows}))
    out = tmp_path / "out"
    main(["fit", "--config", str(write_config(tmp_path / "e.yaml", tiny_dirs, manifest.parent / "m.yaml", out)),
          *FAST])
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and message in warned[0]  # one line, in the CLI's form
    assert "mask.threshold" not in warned[0]  # the threshold plays no part in a given mask
    assert message in (out / "run.log").read_text()
    assert (out / "text" / "edit.png").exists()
    assert json.loads((out / "text" / "result.json").read_text())["mask_area"] == value / 255
