"""The cost default pinned in UNet sample-evaluations per stage, and the paper's procedure one setting away."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import yaml

from framework.core.settings import (
    PAPER_MASK,
    GuidanceConfig,
    ITOConfig,
    MaskConfig,
    SamplingConfig,
    paper_literal_mask,
)
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def text_request():
    from framework.io.manifests import load_manifest, load_request

    specs = load_manifest(ROOT / "experiments/examples/manifest.yaml")
    return load_request(next(s for s in specs if s.id == "text_000"), 64)


def _counts(tiny_dirs, tmp_path, request, **settings) -> dict[str, int]:
    from framework.backbones.sd import StableDiffusion
    from framework.lightning.module import EditModule

    module = EditModule(StableDiffusion(str(tiny_dirs["sd"])), output_dir=str(tmp_path), **settings)
    module.setup("fit")
    return module.edit(request).record["unet_evaluations"]


def test_default_text_edit_costs_120_unet_samples_and_148_with_a_guidance_image(tiny_dirs, tmp_path, text_request):
    # inversion: 20 steps, conditional only; mask: 5 decode steps (strength 0.5 of the 10-step grid) x
    # 3 seeds x 2 conditions x 2 CFG halves; final: 20 steps x 2 halves. lam 1 (the default) makes no guidance
    # image: 120 (DiffEdit: 115). With one (lam < 1): its decode as far as the last g_t the final decode's ITO reads
    # (t_u = 12 steps x 2 halves; guidance.decode 'needed') and 2 coarse CFG steps that finish G's picture, g_t its
    # latents (guidance.invert 'missing'), no inversion of G: 148. 'full' decodes G to the end (20 x 2); invert
    # 'always' inverts it too (+ 20).
    counts = _counts(tiny_dirs, tmp_path, text_request)
    assert counts == {"inversion": 20, "mask": 5 * 3 * 2 * 2, "final": 20 * 2}
    assert sum(counts.values()) == 120
    counts = _counts(tiny_dirs, tmp_path, text_request, lam=0.6)
    assert counts == {"inversion": 20, "mask": 60, "guidance": 12 * 2 + 2 * 2, "final": 20 * 2}
    assert sum(counts.values()) == 148
    counts = _counts(tiny_dirs, tmp_path, text_request, lam=0.6, guidance=GuidanceConfig(decode="full"))
    assert counts["guidance"] == 20 * 2
    counts = _counts(tiny_dirs, tmp_path, text_request, lam=0.6, guidance=GuidanceConfig(invert="always"))
    assert counts["guidance"] == 20 * 2 + 20


def test_the_defaults_before_issue_33_cost_155_and_230(tiny_dirs, tmp_path, text_request):
    before = dict(sampling=SamplingConfig(steps=25), ito=ITOConfig(update_steps=15), mask=MaskConfig(seeds=4))
    assert sum(_counts(tiny_dirs, tmp_path, text_request, **before).values()) == 155
    counts = _counts(tiny_dirs, tmp_path, text_request, lam=0.6, **before,
                     guidance=GuidanceConfig(update_steps=15, invert="always"))
    assert counts == {"inversion": 25, "mask": 80, "guidance": 75, "final": 50}


@pytest.mark.parametrize("mask, lam1, lam06", [
    ({}, 120, 148), ({"seeds": 4}, 140, 168), ({"seeds": 2}, 100, 128), ({"seeds": 4, "steps": 6}, 108, 136),
    ({"strength": 0.4}, 108, 136), ({"seeds": 4, "strength": 0.4}, 124, 152)])
def test_the_measured_20_step_settings_cost_what_the_cost_page_says(tiny_dirs, tmp_path, text_request, mask, lam1,
                                                                    lam06):
    # experiments/eval/cost150.yaml's candidates: 20 DDIM steps, t_u 12 (0.6 of them), the mask as given
    steps = dict(sampling=SamplingConfig(steps=20), ito=ITOConfig(update_steps=12),
                 guidance=GuidanceConfig(update_steps=12), mask=MaskConfig(**mask))
    counts = _counts(tiny_dirs, tmp_path, text_request, **steps)
    assert (counts["inversion"], counts["final"], sum(counts.values())) == (20, 40, lam1)
    counts = _counts(tiny_dirs, tmp_path, text_request, lam=0.6, **steps)
    assert (counts["guidance"], sum(counts.values())) == (28, lam06)


def test_paper_literal_text_edit_costs_630_unet_samples(tiny_dirs, tmp_path, text_request):
    # mask: 12 decode steps (strength 0.5 of 25) x 10 seeds x 2 conditions x 2 CFG halves; lam 0.6, 25 steps, t_u 15,
    # G inverted (guidance.reference 'inversion'): the paper's.
    counts = _counts(tiny_dirs, tmp_path, text_request, mask=paper_literal_mask(), lam=0.6,
                     sampling=SamplingConfig(steps=25), ito=ITOConfig(update_steps=15),
                     guidance=GuidanceConfig(reference="inversion", update_steps=15))
    assert counts == {"inversion": 25, "mask": 12 * 10 * 2 * 2, "guidance": 75, "final": 50}


def test_paper_literal_yaml_holds_the_paper_mask_and_guidance():
    args = yaml.safe_load((ROOT / "experiments/paper_literal.yaml").read_text())["model"]["init_args"]
    assert asdict(MaskConfig(**args["mask"])) == asdict(paper_literal_mask())
    assert {k: args["mask"][k] for k in PAPER_MASK} == PAPER_MASK
    guidance = GuidanceConfig(**args["guidance"])
    assert (guidance.encode_ratio, guidance.update_steps, guidance.inner_steps) == (None, 15, 1)
    # the defaults differ from it in the mask only
    assert {k for k, v in asdict(MaskConfig()).items() if v != asdict(paper_literal_mask())[k]} == {
        "seeds", "steps"}


def test_the_mask_grid_is_never_finer_than_the_edits(backbone):
    from framework.core.ddim import Schedule
    from framework.core.masks import mask_schedule

    six = Schedule.from_scheduler(backbone.scheduler, 6)
    assert mask_schedule(six, MaskConfig()) is six  # default 10 steps > 6: the edit's grid
    coarse = mask_schedule(Schedule.from_scheduler(backbone.scheduler, 25), MaskConfig())
    assert len(coarse.timesteps) == 10 and coarse.encode_level(0.5) == 5  # 5 decode steps from strength 0.5
