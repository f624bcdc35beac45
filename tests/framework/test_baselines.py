"""Baselines on the same engine: DiffEdit agrees with diffusers' pipeline; SDEdit skips what it must."""

from __future__ import annotations

import pytest
import torch

from framework.backbones.sd import StableDiffusion
from framework.core.settings import SamplingConfig
from framework.io.manifests import load_manifest, load_request
from framework.lightning.baselines import DiffEdit, SDEdit


def _request(manifest, with_mask=True):
    spec = load_manifest(manifest)[0]
    request = load_request(spec, None)
    if with_mask:
        mask = torch.zeros(1, 1, 64, 64)
        mask[..., 16:48, 8:40] = 1
        request.mask = mask
    return request


@pytest.mark.parametrize("ratio, scale, bound", [(1.0, 1.0, 1e-4), (0.7, 1.0, 1e-4), (1.0, 7.5, 1e-4), (0.7, 7.5, 1e-4)])
def test_diffedit_matches_diffusers_pipeline(tiny_dirs, manifest, ratio, scale, bound):
    """Same model, mask, steps and prompts: max latent difference to StableDiffusionDiffEditPipeline."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionDiffEditPipeline

    steps = 10
    module = DiffEdit(StableDiffusion(str(tiny_dirs["sd"])), sampling=SamplingConfig(steps=steps, encode_ratio=ratio, guidance_scale=scale),
                      alignment="diffusers", output_dir=str(manifest.parent / "o"))
    module.setup("fit")
    request = _request(manifest)
    captured = {}
    original = module.decoder.decode

    def keep(engine, state):
        captured["y0"] = original(engine, state)
        captured["x0"] = state.x0
        captured["mask"] = state.mask
        captured["x_traj"] = state.x_traj
        return captured["y0"]
    module.decoder.decode = keep
    module.edit(request)
    sd = module.backbone
    pipe = StableDiffusionDiffEditPipeline(
        vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
        scheduler=DDIMScheduler.from_config(sd.scheduler.config),
        inverse_scheduler=DDIMInverseScheduler.from_config(sd.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    inverted = pipe.invert(prompt=request.source_prompt, image=captured["x0"], num_inference_steps=steps,
                           inpaint_strength=ratio, guidance_scale=1.0).latents
    ours_inverted = torch.stack([captured["x_traj"][t] for t in sorted(captured["x_traj"], reverse=True)], 1)
    assert float((ours_inverted - inverted).abs().max()) <= 1e-5
    theirs = pipe(prompt=request.edit_prompt, mask_image=captured["mask"][0], image_latents=inverted,
                  inpaint_strength=ratio, num_inference_steps=steps, guidance_scale=scale, negative_prompt="",
                  output_type="latent").images
    difference = float((captured["y0"] - theirs).abs().max())
    size = float(theirs.abs().max())
    print(f"encode ratio {ratio}, CFG {scale}: max latent difference to diffusers' DiffEdit {difference:.2e} "
          f"(latents up to {size:.1f})")
    assert difference <= bound * size  # float32 rounding, amplified by the CFG scale through a random UNet
    assert float((captured["y0"] - captured["x0"]).abs().max()) > 0.1  # the edit did something


def test_exact_alignment_keeps_the_input_outside_the_mask(tiny_dirs, manifest):
    """With blending at the same noise level, y_0 equals x_0 outside the mask, to float precision."""
    module = DiffEdit(StableDiffusion(str(tiny_dirs["sd"])), sampling=SamplingConfig(steps=6),
                      output_dir=str(manifest.parent / "o"))
    module.setup("fit")
    captured = {}
    original = module.decoder.decode

    def keep(engine, state):
        captured.update(x0=state.x0, mask=state.mask, y0=original(engine, state))
        return captured["y0"]
    module.decoder.decode = keep
    result = module.edit(_request(manifest))
    outside = captured["mask"].expand_as(captured["x0"]) == 0
    assert torch.equal(captured["y0"][outside], captured["x0"][outside])
    assert result.record["guidance_image"] is False and "guidance" not in result.record["unet_evaluations"]


def test_sdedit_uses_no_inversion_mask_or_ito(tiny_dirs, manifest):
    module = SDEdit(StableDiffusion(str(tiny_dirs["sd"])), sampling=SamplingConfig(steps=6, encode_ratio=0.5),
                    output_dir=str(manifest.parent / "o"))
    module.setup("fit")
    result = module.edit(_request(manifest, with_mask=False))
    assert result.record["unet_evaluations"] == {"final": 3 * 2}  # 3 decode steps x CFG halves
    assert result.record["mask_source"] == "none" and result.record["method"] == "framework.lightning.baselines.SDEdit"


def test_metrics_score_each_edit_and_the_run(tmp_path, tiny_dirs, manifest):
    """`test` with metrics: per-edit scores in result.json, run scores in summary.json and results.md/.csv."""
    import json

    import yaml

    from framework.lightning.cli import main
    from tests.framework.test_cli import FAST, write_config

    out = tmp_path / "out"
    config = write_config(tmp_path / "exp.yaml", tiny_dirs, manifest, out)
    data = yaml.safe_load(config.read_text())
    data["model"]["init_args"]["metrics"] = [{"class_path": "framework.evaluation.metrics.L1Distance", "init_args": {"crop": 32}}]
    config.write_text(yaml.safe_dump(data))
    main(["test", "--config", str(config), *FAST])
    records = [json.loads((out / i / "result.json").read_text()) for i in ("text", "pose")]
    values = [r["metrics"]["edit/l1"] for r in records]
    assert all(0 < v < 1 for v in values)
    summary = json.loads((out / "summary.json").read_text())
    assert abs(summary["metrics"]["edit/l1"] - sum(values) / 2) < 1e-6
    csv = (out / "results.csv").read_text().splitlines()
    assert csv[0] == "id,method,lam,edit/l1" and csv[-1].startswith("mean,") and len(csv) == 4
    assert "| edit/l1 |" in (out / "results.md").read_text()


def test_a_given_mask_reaches_the_latent_grid_covering_what_was_marked(tiny_dirs, manifest):
    """mask.given 'cover': every latent pixel whose block holds a marked pixel may change; 'area': only
    blocks more than half marked, so a 3 px stroke (under half of an 8 px block) vanishes."""
    from framework.core.settings import MaskConfig

    request = _request(manifest)
    stroke = torch.zeros(1, 1, 64, 64)
    stroke[..., 20:23, 4:60] = 1  # rows 20-22: inside latent row 2 (pixels 16-23), 3 of its 8 rows
    request.mask = stroke
    from framework.stages import given_mask

    masks = {rule: given_mask(request.mask, (8, 8), rule)[0, 0] for rule in ("cover", "area")}
    expected = torch.zeros(8, 8)
    expected[2, 0:8] = 1  # columns 4-59 touch every 8 px block
    assert torch.equal(masks["cover"], expected)
    assert float(masks["area"].sum()) == 0
    with pytest.raises(Exception, match="mask.given must be 'cover' or 'area'"):
        MaskConfig(given="nearest")
