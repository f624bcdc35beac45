"""`python -m framework fit --config ...` end to end, in process, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from framework.lightning.cli import main

FAST = ["--model.sampling.steps", "6", "--model.mask.seeds", "2", "--model.ito.update_steps", "4",
        "--model.guidance.update_steps", "4"]


def write_config(path: Path, tiny_dirs, manifest: Path, out: Path, **model) -> Path:
    config = {
        "model": {"class_path": "framework.EditModule", "init_args": {
            "backbone": {"class_path": "framework.StableDiffusion", "init_args": {"pretrained": str(tiny_dirs["sd"])}},
            "conditioners": [{"class_path": "conditioners.ControlNetConditioner",
                              "init_args": {"modality": "pose", "pretrained": str(tiny_dirs["pose"])}}],
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.1}},
            # lam 0.6 (the paper's), not the default 1: these runs exercise every stage, the guidance image included
            "lam": 0.6, "output_dir": str(out), **model}},
        "data": {"class_path": "framework.EditDataModule", "init_args": {"manifest": str(manifest)}},
        "trainer": {"logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(out / "logs")}}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run(*args) -> None:
    main(["fit", *map(str, args)])


def test_fit_end_to_end_writes_every_output(tmp_path, tiny_dirs, manifest):
    out = tmp_path / "out"
    run("--config", write_config(tmp_path / "exp.yaml", tiny_dirs, manifest, out), *FAST)
    for edit_id, maps in (("text", []), ("pose", ["source_pose.png", "edit_pose.png"])):
        folder = out / edit_id
        expected = {"input.png", "edit.png", "mask.png", "mask_soft.png", "guidance.png", "strip.png", "result.json", *maps}
        assert expected <= {p.name for p in folder.iterdir()}
        assert Image.open(folder / "edit.png").size == (64, 64)
        assert set(np.unique(np.asarray(Image.open(folder / "mask.png")))) <= {0, 255}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["totals"]["edits"] == 2 and summary["parameters"]["lam"] == 0.6
    assert summary["parameters"]["sampling"]["steps"] == 6 and summary["parameters"]["mask"]["seeds"] == 2
    text, pose = summary["edits"]
    assert pose["lam"] == 0.8 and pose["seed"] == 3  # per-request overrides
    # UNet sample-evaluations per stage: inversion 6; mask 3 steps (its 10-step grid is capped at the edit's 6)
    # x (2 seeds x 2 conditions x 2 CFG halves); guidance decode 4 x 2 (to the last g_t the final decode's t_u = 4
    # ITO steps read; g_t from it, no inversion of G) and 2 x 2 finishing its picture; final 6 x 2.
    assert text["unet_evaluations"] == {"inversion": 6, "mask": 24, "guidance": 4 * 2 + 2 * 2, "final": 12}
    assert text["unet_calls"]["mask"] == 3
    assert set(text["seconds"]) >= {"inversion", "mask", "guidance", "final", "total"}
    assert (out / "logs").exists()


def test_same_config_and_seed_give_same_pixels(tmp_path, tiny_dirs, manifest):
    images = []
    for name in ("a", "b"):
        out = tmp_path / name
        run("--config", write_config(tmp_path / f"{name}.yaml", tiny_dirs, manifest, out), *FAST,
            "--data.limit", "1")
        images.append(np.asarray(Image.open(out / "text" / "edit.png")))
    assert np.array_equal(*images)
    out = tmp_path / "c"
    run("--config", write_config(tmp_path / "c.yaml", tiny_dirs, manifest, out), *FAST, "--data.limit", "1",
        "--model.seed", "1")
    assert not np.array_equal(images[0], np.asarray(Image.open(out / "text" / "edit.png")))


def test_lam_one_skips_guidance_and_mask_file_overrides(tmp_path, tiny_dirs, manifest):
    mask = np.zeros((64, 64), np.uint8)
    mask[:32] = 255
    Image.fromarray(mask).save(manifest.parent / "mask.png")
    rows = yaml.safe_load(manifest.read_text())["requests"][:1]
    rows[0]["mask"] = "mask.png"
    (manifest.parent / "masked.yaml").write_text(yaml.safe_dump({"requests": rows}))
    out = tmp_path / "out"
    run("--config", write_config(tmp_path / "exp.yaml", tiny_dirs, manifest.parent / "masked.yaml", out), *FAST,
        "--model.lam", "1.0")
    record = json.loads((out / "text" / "result.json").read_text())
    assert record["guidance_image"] is False and "guidance" not in record["unet_evaluations"]
    assert "mask" not in record["unet_evaluations"] and record["mask_source"] == "given"
    assert record["mask_area"] == 0.5
    assert not (out / "text" / "guidance.png").exists()


@pytest.mark.parametrize("override, message", [
    (["--model.lam", "1.5"], "lam must be in [0, 1]"),
    (["--model.ito.update_steps", "30"], "exceeds the"),
    (["--model.sampling.encode_ratio", "0"], "encode_ratio"),
    (["--model.mask.threshold", "2"], "mask.threshold"),
])
def test_bad_values_fail_before_model_work(tmp_path, tiny_dirs, manifest, capsys, override, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run("--config", write_config(tmp_path / "exp.yaml", tiny_dirs, manifest, out), *override)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing ran


def test_unknown_class_path_names_it(tmp_path, tiny_dirs, manifest, capsys):
    config = write_config(tmp_path / "exp.yaml", tiny_dirs, manifest, tmp_path / "out")
    data = yaml.safe_load(config.read_text())
    data["model"]["init_args"]["losses"] = [{"class_path": "losses.MaskedMSEPreservaton"}]
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit):
        run("--config", config)
    assert "MaskedMSEPreservaton" in capsys.readouterr().err


def test_missing_image_and_missing_model_folder(tmp_path, tiny_dirs, manifest, capsys):
    (manifest.parent / "bad.yaml").write_text("- {image: nowhere.png, source_prompt: a cat}\n")
    with pytest.raises(SystemExit):
        run("--config", write_config(tmp_path / "exp.yaml", tiny_dirs, manifest.parent / "bad.yaml", tmp_path / "o"))
    assert "nowhere.png" in capsys.readouterr().err
    dirs = dict(tiny_dirs, sd=tmp_path / "no-such-model")
    with pytest.raises(SystemExit):
        run("--config", write_config(tmp_path / "exp2.yaml", dirs, manifest, tmp_path / "o"))
    assert "no-such-model" in capsys.readouterr().err


def test_hub_id_offline_fails_at_once_with_hint(tmp_path, tiny_dirs, manifest, capsys):
    import time

    config = write_config(tmp_path / "exp.yaml", tiny_dirs, manifest, tmp_path / "o")
    start = time.perf_counter()
    with pytest.raises(SystemExit):
        run("--config", config, "--model.backbone.init_args.pretrained", "some-org/not-cached-model")
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert "some-org/not-cached-model" in err and "offline" in err


def test_help_print_config_and_overrides(tmp_path, tiny_dirs, manifest, capsys):
    config = write_config(tmp_path / "exp.yaml", tiny_dirs, manifest, tmp_path / "o")
    with pytest.raises(SystemExit) as exit_info:
        run("--config", config, "--model.lam", "0.8", "--model.sampling.steps", "12", "--print_config")
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["lam"] == 0.8
    assert printed["model"]["init_args"]["sampling"]["steps"] == 12
    assert printed["trainer"]["max_epochs"] == 1
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    assert "--model.help" in text and "--data.help" in text and "--trainer.NAME" in text
    assert any(line.split()[:1] == ["precision"] for line in text.splitlines())  # a Trainer option, one line
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.help", "EditModule"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--model.lam" in text and "lambda of Eq. 6" in text
    with pytest.raises(SystemExit):
        main(["fit", "--model.conditioners.help", "ControlNetConditioner"])
    assert "Conditioning scale" in capsys.readouterr().out


def test_memory_and_mask_cost_options_from_yaml(tmp_path, tiny_dirs, manifest, capsys):
    config = write_config(tmp_path / "exp.yaml", tiny_dirs, manifest, tmp_path / "o")
    with pytest.raises(SystemExit) as exit_info:
        run("--config", config, "--model.backbone.init_args.attention_slicing", "4",
            "--model.backbone.init_args.vae_tiling", "true", "--model.mask.steps", "10",
            "--model.mask.resolution", "0.5", "--model.mask.early_stop_iou", "0.9", "--print_config")
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    backbone = printed["backbone"]["init_args"]
    assert (backbone["attention_slicing"], backbone["vae_tiling"], backbone["vae_tile_size"]) == (4, True, None)
    mask = printed["mask"]
    assert (mask["steps"], mask["resolution"], mask["early_stop_iou"]) == (10, 0.5, 0.9)
    for override, message in ((["--model.mask.resolution", "0"], "mask.resolution"),
                              (["--model.backbone.init_args.attention_slicing", "half"], "attention_slicing")):
        with pytest.raises(SystemExit):
            run("--config", config, *override)
        assert message in capsys.readouterr().err
