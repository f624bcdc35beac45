"""Edit masks (Eq. 7): where conditions differ, one UNet batch per step, smoothing and normalisation."""

import pytest
import torch

from conditioners import ConditionSide, ControlNetConditioner, TextConditioner
from framework.core.ddim import Schedule
from framework.core.denoiser import Denoiser
from framework.core.masks import binary_mask, gaussian_blur, mask_iou, noise_difference, normalise, soft_mask
from framework.core.settings import MaskConfig

SIZE = 128  # 16 x 16 latents


@pytest.fixture(scope="module")
def setup(backbone, tiny_dirs):
    controlnet = ControlNetConditioner("pose", str(tiny_dirs["pose"]))
    controlnet.load(backbone)
    denoiser = Denoiser(backbone.unet, [TextConditioner(), controlnet], 1000)
    x0 = backbone.encode_image(torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)))
    return backbone, denoiser, x0


def _sides(backbone, denoiser, source, edit):
    enc = lambda s: (denoiser.encode(s, backbone), denoiser.encode(s.unconditional(""), backbone))  # noqa: E731
    return enc(source), enc(edit)


def _square(box):
    image = torch.zeros(1, 3, SIZE, SIZE)
    image[..., box[0]:box[1], box[0]:box[1]] = 1
    return image


def test_mask_is_larger_where_conditions_differ(setup):
    backbone, denoiser, x0 = setup
    source = ConditionSide("a figure", {"pose": _square((8, 40))})
    edit = ConditionSide("a figure", {"pose": _square((80, 120))})
    cfg = MaskConfig(seeds=4)
    difference = noise_difference(x0, denoiser, *_sides(backbone, denoiser, source, edit),
                                  Schedule.from_scheduler(backbone.scheduler, 10), cfg, 0, 7.5)
    mask = soft_mask(difference, cfg)
    changed = torch.zeros(16, 16, dtype=torch.bool)
    changed[1:5, 1:5] = changed[10:15, 10:15] = True  # latent cells of the two squares
    inside, outside = float(mask[changed].mean()), float(mask[~changed].mean())
    assert inside > 1.3 * outside, (inside, outside)


def test_identical_conditions_give_zero_difference(setup):
    backbone, denoiser, x0 = setup
    side = ConditionSide("a figure", {"pose": _square((8, 40))})
    difference = noise_difference(x0, denoiser, *_sides(backbone, denoiser, side, side),
                                  Schedule.from_scheduler(backbone.scheduler, 10), MaskConfig(seeds=2), 0, 7.5)
    assert float(difference.abs().max()) < 1e-5


@pytest.mark.parametrize("compare_at, steps", [("last", 5), ("first", 1)])
def test_all_seeds_and_both_conditions_in_one_batch_per_step(setup, compare_at, steps):
    backbone, denoiser, x0 = setup
    denoiser.reset_counts()
    source, edit = ConditionSide("a red circle"), ConditionSide("a blue square")
    cfg = MaskConfig(seeds=3, compare_at=compare_at)
    noise_difference(x0, denoiser, *_sides(backbone, denoiser, source, edit),
                     Schedule.from_scheduler(backbone.scheduler, 10), cfg, 0, 7.5)
    assert sum(denoiser.calls.values()) == steps  # strength 0.5 of 10 steps = 5 decode steps
    assert sum(denoiser.samples.values()) == steps * 3 * 2 * 2  # n seeds x 2 conditions x CFG halves


def test_diffedit_variant_equals_single_step_difference(setup):
    """compare_at 'first', n = 1: |eps(x_t, C_EDIT) - eps(x_t, C_0)| at the encoded step, by hand."""
    from framework.core.ddim import noise_encode, seeded_noise

    backbone, denoiser, x0 = setup
    source, edit = ConditionSide("a red circle"), ConditionSide("a blue square")
    (src, src_u), (ed, ed_u) = _sides(backbone, denoiser, source, edit)
    schedule = Schedule.from_scheduler(backbone.scheduler, 10)
    cfg = MaskConfig(seeds=1, compare_at="first")
    ours = noise_difference(x0, denoiser, (src, src_u), (ed, ed_u), schedule, cfg, 4, 5.0)
    t = schedule.decode_timesteps(5)[0]
    x_t = noise_encode(x0, seeded_noise(tuple(x0.shape), 4), schedule.alpha(t))
    by_hand = (denoiser(x_t, t, ed, ed_u, 5.0) - denoiser(x_t, t, src, src_u, 5.0)).abs().mean(dim=(0, 1))
    assert torch.allclose(ours, by_hand, atol=1e-5)


def test_gaussian_blur_keeps_constants_and_mass():
    assert torch.allclose(gaussian_blur(torch.full((9, 9), 0.3), 1.5), torch.full((9, 9), 0.3), atol=1e-6)
    spike = torch.zeros(21, 21)
    spike[10, 10] = 1
    blurred = gaussian_blur(spike, 1.0)
    assert abs(float(blurred.sum()) - 1) < 1e-5 and float(blurred[10, 10]) < 0.2
    assert torch.allclose(blurred, blurred.T, atol=1e-7) and torch.equal(gaussian_blur(spike, 0), spike)


def test_normalise_and_threshold():
    m = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    assert torch.allclose(normalise(m, MaskConfig()), m / 4)
    ratio = normalise(m, MaskConfig(normalize="mean_ratio", mean_ratio=1.0))  # clip at mean 1.75
    assert torch.allclose(ratio, (m.clamp(max=1.75) / 1.75))
    assert torch.equal(binary_mask(m / 4, 0.1), torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]]))
    assert float(soft_mask(m, MaskConfig(smoothing=0)).max()) == 1.0


# ------------------------------------------------------------------------ cost options (issue 6)
def _counted(denoiser, fn):
    denoiser.reset_counts()
    out = fn()
    return out, sum(denoiser.samples.values()), sum(denoiser.calls.values())


def _estimate(setup, cfg, schedule_steps=10, edit_prompt="a blue square"):
    from framework.core.masks import estimate_soft_mask, mask_schedule

    backbone, denoiser, x0 = setup
    sides = _sides(backbone, denoiser, ConditionSide("a red circle"), ConditionSide(edit_prompt))
    schedule = mask_schedule(Schedule.from_scheduler(backbone.scheduler, schedule_steps), cfg)
    return _counted(denoiser, lambda: estimate_soft_mask(x0, denoiser, *sides, schedule, cfg, 0, 7.5))


def test_default_estimate_is_the_unreduced_eq7_mask(setup):
    backbone, denoiser, x0 = setup
    cfg = MaskConfig(seeds=3)
    (soft, used), samples, calls = _estimate(setup, cfg)
    sides = _sides(backbone, denoiser, ConditionSide("a red circle"), ConditionSide("a blue square"))
    direct = soft_mask(noise_difference(x0, denoiser, *sides, Schedule.from_scheduler(backbone.scheduler, 10),
                                        cfg, 0, 7.5), cfg)
    assert used == 3 and torch.equal(soft, direct)
    assert (samples, calls) == (5 * 3 * 2 * 2, 5)  # 5 decode steps, one batch of n x 2 conditions x CFG each


@pytest.mark.parametrize("options, calls, samples", [
    ({}, 5, 5 * 4 * 4),  # 10-step grid, strength 0.5: 5 steps of 4 seeds x 2 conditions x 2 CFG halves
    ({"seeds": 2}, 5, 5 * 2 * 4),  # fewer seeds: fewer samples per call
    ({"steps": 4}, 2, 2 * 4 * 4),  # a coarser grid for the mask only: 2 decode steps
    ({"steps": 4, "seeds": 2}, 2, 2 * 2 * 4),
    ({"compare_at": "first", "steps": 4}, 1, 1 * 4 * 4),
])
def test_cost_options_change_unet_evaluations_as_expected(setup, options, calls, samples):
    (soft, used), n_samples, n_calls = _estimate(setup, MaskConfig(**{"seeds": 4, **options}))
    assert (n_calls, n_samples) == (calls, samples)
    assert soft.shape == (16, 16)


def test_early_stop_never_fires_at_iou_one_and_gives_the_unreduced_mask(setup):
    """early_stop_iou 1.0 is unreachable (the IoU must exceed it): every seed group runs, in groups."""
    (reference, _), ref_samples, ref_calls = _estimate(setup, MaskConfig(seeds=6))
    (soft, used), samples, calls = _estimate(setup, MaskConfig(seeds=6, early_stop_iou=1.0, seed_group=2))
    assert used == 6 and samples == ref_samples == 5 * 6 * 4 and calls == 3 * ref_calls  # 3 groups of 2 seeds
    assert mask_iou(binary_mask(soft, 0.1), binary_mask(reference, 0.1)) == 1.0
    # The same mean over the same seeds; UNet batches of 8 rather than 24 round differently (float32),
    # amplified by 5 DDIM steps at CFG 7.5: measured 4.1e-5 on the [0, 1] map.
    assert float((soft - reference).abs().max()) < 2e-4


def test_early_stop_stops_after_two_groups_once_the_mask_settles(setup):
    (soft, used), samples, calls = _estimate(setup, MaskConfig(seeds=10, early_stop_iou=0.01, seed_group=3))
    assert used == 6 and samples == 5 * 6 * 4 and calls == 2 * 5  # the second group is the first chance to stop


def test_mask_iou():
    a = torch.zeros(4, 4)
    a[:2] = 1
    b = torch.zeros(4, 4)
    b[1:3] = 1
    assert mask_iou(a, b) == pytest.approx(4 / 12) and mask_iou(a, a) == 1.0
    assert mask_iou(torch.zeros(3, 3), torch.zeros(3, 3)) == 1.0


def test_mask_image_size_is_a_multiple_of_8():
    from framework.core.masks import mask_image_size

    assert mask_image_size(512, 768, 0.5) == (256, 384)
    assert mask_image_size(128, 120, 0.3) == (40, 32) and mask_image_size(64, 64, 0.01) == (8, 8)


def test_lower_resolution_mask_runs_the_unet_on_smaller_latents(tiny_dirs, tmp_path):
    """mask.resolution 0.5: the input and its maps are resized, the UNet sees 8x8 latents in the mask
    stage only, and the soft mask comes back on the full 16x16 latent grid."""
    from conditioners import ControlNetConditioner
    from framework.backbones.sd import StableDiffusion
    from framework.core.settings import GuidanceConfig, ITOConfig, SamplingConfig
    from framework.io.manifests import load_manifest, load_request
    from framework.lightning.module import EditModule
    from tests.conftest import ROOT

    request = load_request(load_manifest(ROOT / "experiments/examples/manifest.yaml")[3], 128)  # text + pose
    module = EditModule(StableDiffusion(str(tiny_dirs["sd"])), [ControlNetConditioner("pose", str(tiny_dirs["pose"]))],
                        sampling=SamplingConfig(steps=6), mask=MaskConfig(seeds=2, resolution=0.5),
                        ito=ITOConfig(update_steps=2), guidance=GuidanceConfig(update_steps=2),
                        output_dir=str(tmp_path))
    module.setup("fit")
    shapes = {}
    module.backbone.unet.register_forward_pre_hook(
        lambda m, args: shapes.setdefault(module.denoiser.stage, set()).add(tuple(args[0].shape[-2:])))
    result = module.edit(request)
    assert shapes["mask"] == {(8, 8)} and shapes["final"] == {(16, 16)}
    assert result.soft_mask.shape == result.mask.shape == (1, 1, 16, 16)
    assert result.record["unet_evaluations"]["mask"] == 3 * 2 * 4  # 3 steps, 2 seeds x 2 conditions x 2 halves
