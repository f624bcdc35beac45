"""The demo page's engine (no browser): the same edit as the CLI, to the pixel; the CLI's errors; progress."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

from framework.cli.demo import DemoEngine, flatten_map
from framework.core.errors import ConfigError, EditError, ManifestError
from framework.io.outputs import to_pil
from framework.lightning.cli import main
from tests.conftest import ROOT
from tests.test_experiments import swap_models

FAST = ["--model.sampling.steps", "5", "--model.mask.seeds", "2", "--model.ito.update_steps", "3",
        "--model.guidance.update_steps", "3"]


@pytest.fixture(scope="module")
def engine(tiny_dirs, tmp_path_factory, one_thread):
    """The quickstart experiment with the tiny models swapped in, over the 2-request test manifest."""
    from tests.conftest import draw_scene

    root = tmp_path_factory.mktemp("demo")
    draw_scene(root / "input.png")
    draw_scene(root / "pose_a.png", box=(6, 6, 26, 26), colour=(255, 255, 255), background=(0, 0, 0))
    draw_scene(root / "pose_b.png", box=(36, 36, 58, 58), colour=(255, 255, 255), background=(0, 0, 0))
    (root / "manifest.yaml").write_text(yaml.safe_dump({"requests": [
        {"id": "pose", "image": "input.png", "source_prompt": "a red circle", "edit_prompt": "a red circle",
         "source": {"pose": "pose_a.png"}, "edit": {"pose": "pose_b.png"}, "seed": 3, "lam": 0.8}]}))
    config = swap_models(yaml.safe_load((ROOT / "experiments" / "quickstart.yaml").read_text()), tiny_dirs, root)
    config["data"]["init_args"]["manifest"] = str(root / "manifest.yaml")
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return DemoEngine(str(root / "config.yaml"), FAST, out=str(root / "page"))


def _page_request(engine, **changes):
    files = engine.example_files("pose")
    args = dict(image=files["image"], source_prompt="a red circle", edit_prompt="a red circle",
                maps={"source": files["source"], "edit": files["edit"]}, mask=None, seed=3, lam=0.8)
    return engine.write_request(**{**args, **changes})


def test_page_edit_equals_the_cli_edit_of_its_command(engine, tmp_path):
    """The page's edit and the printed command's edit (the CLI, through Lightning) agree to the pixel."""
    engine.set_options(update_steps=2, threshold=0.3)
    manifest = _page_request(engine)
    reports = []
    result, _ = engine.edit(manifest, lambda stage, i, n: reports.append((stage, i, n)))
    command = engine.cli_command(manifest, 2, 0.3).split()
    assert command[:4] == ["python", "-m", "framework", "fit"]
    main([*command[3:], "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)])
    cli = manifest.parent / "cli" / result.record["id"]
    for name, image in (("edit.png", result.edit), ("input.png", result.input)):
        assert np.array_equal(np.asarray(Image.open(cli / name)), np.asarray(to_pil(image))), name
    assert result.record["lam"] == 0.8 and result.record["seed"] == 3 and result.record["guidance_image"]
    # progress: every step of inversion, guidance image and final decode, each stage counted to its end
    stages = [s for s, _, _ in reports]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == ["inversion", "mask", "guidance",
                                                                               "final"]
    assert all(i == n for (s, i, n), nxt in zip(reports, stages[1:] + [None]) if nxt != s and s != "mask")
    assert reports[-1] == ("final", 5, 5)


def test_page_options_change_the_edit_as_the_cli_would(engine):
    engine.set_options(update_steps=3, threshold=0.3)
    a, _ = engine.edit(_page_request(engine))
    engine.set_options(update_steps=0, threshold=0.3)
    b, _ = engine.edit(_page_request(engine, lam=1.0))
    assert b.guidance is None and a.guidance is not None  # lam = 1: no guidance image (Sec. 3.2)
    assert float((a.edit - b.edit).abs().max()) > 1e-3
    assert a.record["settings"] != b.record["settings"]  # result.json's digest follows t_u


def test_page_errors_are_the_cli_errors(engine, tmp_path, capsys):
    with pytest.raises(EditError, match="no input image"):
        engine.write_request(None, "a", "b", {}, None, 0, 0.6)
    with pytest.raises(ConfigError) as page_error:
        engine.set_options(update_steps=99, threshold=0.3)
    wide = tmp_path / "wide.png"
    Image.new("RGB", (128, 32)).save(wide)
    manifest = _page_request(engine, maps={"source": {"pose": str(wide)}, "edit": {"pose": str(wide)}})
    with pytest.raises(ManifestError, match="aspect ratios differ") as map_error:
        engine.edit(manifest)
    with pytest.raises(SystemExit):
        main(["fit", "--config", engine.config, *FAST, "--model.ito.update_steps", "99"])
    assert f"error: {page_error.value}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit", "--config", engine.config, *FAST, "--data.manifest", str(manifest)])
    assert str(map_error.value).split("'")[0] in capsys.readouterr().err


def test_strokes_on_the_transparent_canvas_become_a_map_on_black(tmp_path):
    drawn = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    drawn.putpixel((3, 4), (255, 255, 255, 255))
    drawn.save(tmp_path / "drawn.png")
    flatten_map(str(tmp_path / "drawn.png"), tmp_path / "map.png")
    pixels = np.asarray(Image.open(tmp_path / "map.png"))
    assert pixels.shape == (16, 16, 3) and pixels[4, 3].tolist() == [255, 255, 255] and pixels.sum() == 3 * 255


def test_a_new_session_numbers_its_edits_after_the_folder_s_earlier_ones(tmp_path):
    from framework.cli.demo import last_edit_number

    assert last_edit_number(tmp_path / "none") == 0
    for name in ("0001", "0007", "examples"):
        (tmp_path / name).mkdir()
    (tmp_path / "0009").with_suffix(".yaml").write_text("")  # not an edit folder
    assert last_edit_number(tmp_path) == 7
