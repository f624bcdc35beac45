"""Edit masks (Eq. 7): where conditions differ, one UNet batch per step, smoothing and normalisation."""

import pytest
import torch

from conditioners import ConditionSide, ControlNetConditioner, TextConditioner
from framework.config import MaskConfig
from framework.ddim import Schedule
from framework.denoiser import Denoiser
from framework.masks import binary_mask, gaussian_blur, noise_difference, normalise, soft_mask

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
    from framework.ddim import noise_encode, seeded_noise

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
