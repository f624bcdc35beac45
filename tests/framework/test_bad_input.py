"""Bad input stops before any model work, with one line; help shows every setting; silent surprises are said."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import yaml
from PIL import Image

from framework.backbones.sd import StableDiffusion
from framework.core.errors import ManifestError
from framework.io.outputs import save_json
from framework.io.report import write_report
from framework.lightning.cli import main
from framework.lightning.data import EditDataModule
from tests.conftest import draw_scene
from tests.framework.test_cli import FAST, write_config


def _rows(manifest):
    return yaml.safe_load(manifest.read_text())["requests"]


def _write(manifest, rows, name="m.yaml"):
    path = manifest.parent / name
    path.write_text(yaml.safe_dump({"requests": rows}))
    return path


def test_every_request_file_is_opened_before_any_weights_load(tmp_path, tiny_dirs, manifest, capsys, monkeypatch):
    folder = manifest.parent
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    draw_scene(folder / "whole.png")
    (folder / "truncated.png").write_bytes((folder / "whole.png").read_bytes()[:200])
    Image.new("L", (64, 32), 255).save(folder / "wide_mask.png")
    good = _rows(manifest)[0]
    rows = [good] + [dict(good, id=f"bad_{n}", image=f"{n}.png") for n in ("empty", "text", "truncated")]
    rows.append(dict(good, id="bad_mask", mask="wide_mask.png"))
    loads = []
    monkeypatch.setattr(StableDiffusion, "load", lambda self: loads.append(self) or self)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(write_config(tmp_path / "e.yaml", tiny_dirs, _write(manifest, rows), out))])
    assert exit_info.value.code == 2 and loads == []  # refused before the weights were read
    err = capsys.readouterr().err
    assert "4 requests cannot be used" in err and "nothing was edited" in err
    for name in ("empty.png", "text.png", "truncated.png", "wide_mask.png"):
        assert name in err
    assert "64x32" in err and "aspect" in err
    assert not (out / "text").exists()


def test_a_run_that_stops_keeps_its_summary_and_page_true(tmp_path, tiny_dirs, manifest, capsys, monkeypatch):
    import torch

    from framework.lightning.module import EditModule

    edit = EditModule.edit

    def out_of_memory_on_pose(self, request):
        if request.id == "pose":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return edit(self, request)

    monkeypatch.setattr(EditModule, "edit", out_of_memory_on_pose)
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(write_config(tmp_path / "e.yaml", tiny_dirs, manifest, out)), *FAST])
    summary = json.loads((out / "summary.json").read_text())
    assert [r["id"] for r in summary["edits"]] == ["text"] and summary["totals"]["edits"] == 1
    assert "Out of GPU memory" in summary["stopped"]
    page = (out / "index.html").read_text()
    assert "text/edit.png" in page and "pose/edit.png" not in page


@pytest.mark.parametrize("mistake, expected", [
    ("class", ["model.losses: no class 'losses.MaskedMSEPreservaton'", "did you mean losses.MaskedMSEPreservation?",
               "e.yaml:"]),
    ("key", ["model.lamda: framework.EditModule has no setting 'lamda'", "did you mean model.lam?", "(command line)"]),
    ("group", ["model.sampling.stepz", "did you mean model.sampling.steps?"]),
    ("yaml", ["e.yaml:4:4: not valid YAML", "while parsing a flow sequence started at line 3"]),
    ("value", ["model.lam: 'abc' is not a valid value"]),
])
def test_config_mistakes_are_one_line_naming_key_place_and_nearest_names(tmp_path, tiny_dirs, manifest, capsys,
                                                                         mistake, expected):
    config = write_config(tmp_path / "e.yaml", tiny_dirs, manifest, tmp_path / "out")
    extra = []
    if mistake == "class":
        data = yaml.safe_load(config.read_text())
        data["model"]["init_args"]["losses"] = [{"class_path": "losses.MaskedMSEPreservaton"}]
        config.write_text(yaml.safe_dump(data))
    elif mistake == "yaml":
        config.write_text("model:\n  init_args:\n    lam: [0.5\n  x: 1\n")
    else:
        extra = {"key": ["--model.lamda", "0.5"], "group": ["--model.sampling.stepz", "3"],
                 "value": ["--model.lam", "abc"]}[mistake]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # no usage dump
    for text in expected:
        assert text in err


def test_help_and_print_config_show_every_nested_setting(tmp_path, tiny_dirs, manifest, capsys):
    config = write_config(tmp_path / "e.yaml", tiny_dirs, manifest, tmp_path / "out")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert printed["sampling"]["steps"] == 20 and printed["ito"]["update_steps"] == 0.6
    assert printed["guidance"]["refine_update_steps"] == 6 and printed["mask"]["threshold"] == 0.1
    assert printed["auto_lam"]["low"] == 0.3
    for args in (["fit", "--help"], ["fit", "--model.help", "EditModule"], ["fit", "--model.sampling.help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        # `fit --help` names a group's settings after `--model.` (sampling.steps); the other helps in full.
        assert "sampling.steps" in text and "Number of DDIM steps of the full schedule" in text
        if args[1] != "--model.sampling.help":
            assert "ito.update_steps" in text and "t_u: ITO at each of the first t_u decoding steps" in text
            assert "mask.threshold" in text and "tau: threshold on the normalised difference map" in text


def test_a_request_with_no_edit_condition_is_refused(tmp_path, manifest):
    rows = _rows(manifest)
    rows[0]["edit_prompt"] = rows[0]["source_prompt"]
    with pytest.raises(ManifestError, match="request 'text' has no edit condition"):
        EditDataModule(str(_write(manifest, rows)))
    rows[0]["source"], rows[0]["edit"] = {"pose": "pose_a.png"}, {"pose": "pose_b.png"}
    assert len(EditDataModule(str(_write(manifest, rows))).specs) == 2  # a new pose is an edit condition


def test_long_prompts_warn_and_result_records_the_text_used_and_seed_notice(tmp_path, tiny_dirs, manifest, capsys):
    rows = _rows(manifest)[:1]
    rows[0]["edit_prompt"] = " ".join(["a blue circle"] * 40)  # 120 words: over CLIP's 77 tokens
    rows[0]["seed"] = 4
    out = tmp_path / "out"
    config = write_config(tmp_path / "e.yaml", tiny_dirs, _write(manifest, rows), out)
    main(["fit", "--config", str(config), *FAST, "--model.seed", "5"])
    err = capsys.readouterr().err
    assert any(line.startswith("warning: Request 'text': its edit_prompt is longer") for line in err.splitlines())
    record = json.loads((out / "text" / "result.json").read_text())
    used = record["prompts_used"]["edit_prompt"]
    assert record["edit_prompt"] == rows[0]["edit_prompt"] and "source_prompt" not in record["prompts_used"]
    assert 60 <= len(used.split()) <= 77 and rows[0]["edit_prompt"].startswith(used)
    assert record["seed"] == 4
    assert "note: model.seed 5 has no effect: every request of the manifest sets its own `seed`" in err


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_output_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_json({"a": 1}, tmp_path / "x.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == mode


def test_the_page_keeps_edits_of_an_earlier_manifest_in_the_same_folder(tmp_path):
    for name in ("old", "new"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name / "edit.png")
    save_json({"id": "old", "source_prompt": "a cat", "edit_prompt": "a dog"}, tmp_path / "old" / "result.json")
    write_report(tmp_path, [{"id": "new", "source_prompt": "a box", "edit_prompt": "a ball"}])
    page = (tmp_path / "index.html").read_text()
    assert "new/edit.png" in page and "old/edit.png" in page and page.index("new/") < page.index("old/")
