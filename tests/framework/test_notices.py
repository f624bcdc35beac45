"""What a run says about input it uses differently from what was written: far-off sizes, transparency, variants,
unreadable masks, seeds, malformed manifests, and where its files go."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from framework.core.errors import EditNote
from framework.io.manifests import RequestSpec
from framework.lightning.cli import main
from framework.lightning.preflight import native_size, size_notice
from tests.conftest import draw_scene
from tests.framework.test_cli import FAST, write_config


def _spec(path: Path, request_id: str) -> RequestSpec:
    return RequestSpec(id=request_id, image=path, source_prompt="a", edit_prompt="b", source={}, edit={})


def test_a_request_far_from_the_models_size_gets_one_note_with_the_size_and_the_setting(tmp_path, backbone):
    assert native_size(backbone) == 64  # the tiny model: UNet sample_size 8 x VAE factor 8
    specs = [_spec(draw_scene(tmp_path / f"{side}.png", size=side), f"s{side}") for side in (24, 40, 64, 128, 144)]
    with pytest.warns(EditNote) as notes:
        far = size_notice(backbone, specs, resolution=None)
    assert far == ["s24", "s144"]  # 32..128 px is within 2x of 64 px
    assert len(notes) == 1
    text = str(notes[0].message)
    assert "'s24' at 24x24 px" in text and "'s144' at 144x144 px" in text and "--data.resolution 64" in text
    assert "data.resolution unset" in text
    # data.resolution decides the size used: 512 is far from 64 even for a 64 px input, 100 is not.
    shown = r"data.resolution 512\): 's24' at 512x512 px, 's40' at 512x512 px, 's64' at 512x512 px and 2 more"
    with pytest.warns(EditNote, match=shown):
        assert "s64" in size_notice(backbone, specs, resolution=512)
    assert size_notice(backbone, specs, resolution=100) == []


def test_the_quickstart_runs_at_the_toy_models_native_size():
    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "experiments" / "quickstart.yaml").read_text())
    assert config["data"]["init_args"]["resolution"] == 64


def test_a_transparent_input_gets_a_note_saying_what_it_was_composited_onto(tmp_path):
    from framework.io.manifests import check_requests

    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128  # 50 % alpha everywhere
    Image.fromarray(rgba, "RGBA").save(tmp_path / "glass.png")
    with pytest.warns(EditNote) as notes:
        check_requests([_spec(tmp_path / "glass.png", "glass")], None)
    (message,) = [str(n.message) for n in notes]
    assert message.startswith("request 'glass': image") and "transparent in 100% of its pixels" in message
    assert "mean alpha 0.50" in message and "composited onto white" in message


def test_an_unreadable_mask_is_called_a_mask_and_names_its_request(tmp_path):
    from framework.core.errors import ManifestError
    from framework.io.manifests import check_requests

    draw_scene(tmp_path / "in.png")
    (tmp_path / "m.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(100)))
    spec = RequestSpec(id="masked", image=tmp_path / "in.png", source_prompt="a", edit_prompt="b", source={},
                       edit={}, mask=tmp_path / "m.png")
    with pytest.raises(ManifestError) as err:
        check_requests([spec], None)
    assert str(err.value).startswith(f"request 'masked': mask '{tmp_path / 'm.png'}' cannot be read")


def test_a_variant_the_folder_does_not_have_is_named_with_the_fix(tiny_dirs):
    from conditioners import ControlNetConditioner
    from framework.backbones.sd import StableDiffusion
    from framework.core.errors import ModelLoadError

    with pytest.raises(ModelLoadError) as err:
        StableDiffusion(str(tiny_dirs["sd"]), variant="fp16")
    assert "has no 'fp16' variant of its weights" in str(err.value) and "drop `variant: fp16`" in str(err.value)
    with pytest.raises(ModelLoadError, match="drop `variant: fp16`"):
        ControlNetConditioner("pose", str(tiny_dirs["pose"]), variant="fp16")


def test_model_seed_on_requests_with_their_own_seeds_resumes_and_no_logger_writes_nothing_here(
        tmp_path, tiny_dirs, manifest, capsys, monkeypatch):
    rows = yaml.safe_load(manifest.read_text())["requests"]
    rows[0]["seed"] = 4  # both requests carry a seed: model.seed changes no pixel
    seeded = manifest.parent / "seeded.yaml"
    seeded.write_text(yaml.safe_dump({"requests": rows}))
    out = tmp_path / "out"
    config = write_config(tmp_path / "e.yaml", tiny_dirs, seeded, out)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    main(["fit", "--config", str(config), *FAST, "--trainer.logger", "false"])
    assert os.listdir(cwd) == [] and (out / "config.yaml").is_file()  # the config is kept with the edits
    main(["fit", "--config", str(config), *FAST, "--trainer.logger", "false", "--model.seed", "5"])
    totals = json.loads((out / "summary.json").read_text())["totals"]
    assert (totals["edits"], totals["resumed"]) == (2, 2)
    assert "note: model.seed 5 has no effect" in capsys.readouterr().err
    # A request's own seed changed in the manifest: another edit, named as such.
    rows[0]["seed"] = 6
    seeded.write_text(yaml.safe_dump({"requests": rows}))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), *FAST, "--trainer.logger", "false"])
    assert "(seed 4 there, 6 here" in capsys.readouterr().err
    # A request without a seed of its own is edited with model.seed: then model.seed is a setting like any other.
    rows[0].pop("seed")
    seeded.write_text(yaml.safe_dump({"requests": rows}))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), *FAST, "--trainer.logger", "false", "--model.seed", "5"])
    assert "other settings" in capsys.readouterr().err
    assert os.listdir(cwd) == []


def test_a_malformed_manifest_is_one_line_with_its_line_and_column(tmp_path, tiny_dirs, manifest, capsys):
    bad = manifest.parent / "bad.yaml"
    bad.write_text("requests:\n  - id: a\n    image: [input.png\n    source_prompt: x\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(write_config(tmp_path / "e.yaml", tiny_dirs, bad, tmp_path / "out"))])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: manifest {bad}:4:18: not valid YAML"), lines


def test_a_runs_warnings_are_one_line_each_in_the_clis_form_and_in_its_log(tmp_path, tiny_dirs, manifest, capsys):
    from tests.conftest import ROOT

    rgba = np.asarray(Image.open(manifest.parent / "input.png").convert("RGBA")).copy()
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(manifest.parent / "glass.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(manifest.parent / "black.png")
    rows = [{"id": "glass", "image": "glass.png", "source_prompt": "a red circle", "mask": "black.png",
             "edit_prompt": "a " + "黄色い" * 40}]  # cut by the tokenizer, inside a character
    (manifest.parent / "w.yaml").write_text(yaml.safe_dump({"requests": rows}, allow_unicode=True))
    out = tmp_path / "out"
    main(["fit", "--config", str(write_config(tmp_path / "e.yaml", tiny_dirs, manifest.parent / "w.yaml", out)),
          *FAST])
    lines = capsys.readouterr().err.splitlines()
    ours = [line for line in lines if "'glass'" in line]
    assert len(ours) == 3, lines  # the alpha note, the truncated prompt, the empty given mask
    assert {line.split(":", 1)[0] for line in ours} == {"note", "warning"}
    assert not [line for line in lines if line.lstrip().startswith(str(ROOT)) or "warnings.warn" in line]
    assert "\ufffd" not in "\n".join(lines) and "黄色い'" in next(line for line in ours if "longer than" in line)
    log = (out / "run.log").read_text(encoding="utf-8")
    assert all(line in log for line in ours)
