"""`lam: auto`: lam per edit from the mask area, by a documented rule; end to end on the tiny model."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from framework.backbones.sd import StableDiffusion
from framework.core.errors import ConfigError
from framework.core.settings import AutoLam, check_lam_setting
from framework.io.manifests import load_manifest, load_request
from framework.lightning.cli import main
from framework.lightning.module import EditModule
from tests.conftest import draw_scene
from tests.framework.test_cli import FAST, write_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rule_by_hand():
    rule = AutoLam()  # lam = clip(1 - 4 * area + 0.6 * [the prompt changes], 0.3, 1)
    areas = (0.0, 0.05, 0.1, 0.15, 0.25, 0.5)
    assert [rule(a) for a in areas] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.3, 0.3])  # pose or scribble edits
    assert [rule(a, prompt_changed=True) for a in areas] == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.6, 0.3])
    custom = AutoLam(intercept=0.9, slope=-1.0, prompt_change=0.0, low=0.2, high=0.8)
    assert [custom(a) for a in (0.0, 0.25, 0.5, 0.8)] == pytest.approx([0.8, 0.65, 0.4, 0.2])
    with pytest.raises(ConfigError, match="0 <= low <= high <= 1"):
        AutoLam(low=0.7, high=0.5)
    assert check_lam_setting("auto") == "auto" and check_lam_setting(1) == 1.0
    with pytest.raises(ConfigError, match="or 'auto'"):
        check_lam_setting("automatic")


def masked_manifest(folder, rows: dict[str, tuple[int, str]]):
    """64 px requests whose given masks are white squares of `side` pixels at the top left (8 px = 1 latent px)."""
    draw_scene(folder / "input.png")
    lines = ["requests:"]
    for name, (side, lam) in rows.items():
        mask = Image.new("L", (64, 64), 0)
        if side:
            mask.paste(255, (0, 0, side, side))
        mask.save(folder / f"{name}.png")
        lines.append(f"  - {{id: {name}, image: input.png, source_prompt: a red circle, edit_prompt: a blue circle, "
                     f"mask: {name}.png{', lam: ' + lam if lam else ''}}}")
    (folder / "manifest.yaml").write_text("\n".join(lines) + "\n")
    return folder / "manifest.yaml"


def test_lam_auto_end_to_end_records_the_rule(tmp_path, tiny_dirs, capsys):
    # Latent masks (8 x 8): a 32 px square is 16 of 64 latent pixels (area 0.25); none; a fixed-lam row.
    manifest = masked_manifest(tmp_path, {"quarter": (32, ""), "empty": (0, ""), "fixed": (32, "0.8")})
    out = tmp_path / "out"
    config = write_config(tmp_path / "exp.yaml", tiny_dirs, manifest, out, lam="auto")
    main(["fit", "--config", str(config), *FAST])
    assert "warning: Edit 'empty': the given mask has no edit region" in capsys.readouterr().err
    records = {i: json.loads((out / i / "result.json").read_text()) for i in ("quarter", "empty", "fixed")}
    quarter, empty, fixed = records["quarter"], records["empty"], records["fixed"]
    # The prompt changes (red -> blue circle): lam = 1 - 4 x 0.25 + 0.6.
    assert quarter["mask_area"] == 0.25 and quarter["lam"] == pytest.approx(0.6)
    assert quarter["lam_rule"] == {"rule": "auto", "mask_area": 0.25, "prompt_changed": True, "intercept": 1.0,
                                   "slope": -4.0, "prompt_change": 0.6, "low": 0.3, "high": 1.0}
    assert quarter["guidance_image"] is True and quarter["unet_evaluations"]["guidance"] == 12  # 4 x 2 to ITO's t_u + 2 x 2
    # An empty mask: lam = high = 1, so no guidance image is made (Sec. 3.2), and no UNet work for it.
    assert empty["lam"] == 1.0 and empty["guidance_image"] is False and "guidance" not in empty["unet_evaluations"]
    # A request's own number wins over the module's auto.
    assert fixed["lam"] == 0.8 and "lam_rule" not in fixed and fixed["guidance_image"] is True
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parameters"]["lam"] == "auto" and summary["parameters"]["auto_lam"]["slope"] == -4.0


def test_request_lam_auto_with_custom_constants(tmp_path, tiny_dirs):
    manifest = masked_manifest(tmp_path, {"quarter": (32, "auto"), "small": (8, "auto")})
    assert [s.lam for s in load_manifest(manifest)] == ["auto", "auto"]
    module = EditModule(StableDiffusion(str(tiny_dirs["sd"])), lam=0.6, output_dir=str(tmp_path / "o"),
                        auto_lam=AutoLam(intercept=0.9, slope=-1.0, prompt_change=0.0, low=0.2, high=0.8))
    module.sampling.steps, module.mask_cfg.seeds, module.ito_cfg.update_steps = 4, 1, 2
    module.guidance_cfg.update_steps = 2
    module.setup("fit")
    quarter, small = (module.edit(load_request(spec, None)).record for spec in load_manifest(manifest))
    assert quarter["lam"] == pytest.approx(0.65) and quarter["lam_rule"]["mask_area"] == 0.25
    assert small["mask_area"] == pytest.approx(1 / 64, abs=1e-4) and small["lam"] == 0.8  # 0.884 clipped to high
