"""DDIM step, inversion and decoding against diffusers' schedulers and exact identities."""

import copy

import pytest
import torch

from framework.core.ddim import Schedule, ddim_decode, ddim_invert, ddim_step, noise_encode, seeded_noise
from tests.conftest import zero_unet_output


def _eps_fn(unet, emb):
    return lambda x, t: unet(x, t, encoder_hidden_states=emb).sample


def test_schedule_matches_sd15_timesteps(backbone):
    schedule = Schedule.from_scheduler(backbone.scheduler, 25)
    assert schedule.timesteps[0] == 961 and schedule.timesteps[-1] == 1 and schedule.stride == 40
    assert schedule.final_alpha == pytest.approx(float(backbone.scheduler.alphas_cumprod[0]))  # 0.99915
    assert schedule.decode_timesteps(5) == (161, 121, 81, 41, 1)
    assert schedule.encode_level(0.5) == 12 and schedule.encode_level(1.0) == 25


def test_ddim_step_equals_diffusers_scheduler_step(backbone):
    scheduler = copy.deepcopy(backbone.scheduler)
    scheduler.set_timesteps(25)
    schedule = Schedule.from_scheduler(copy.deepcopy(backbone.scheduler), 25)
    x, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    for t in (961, 481, 41, 1):
        expected = scheduler.step(eps, t, x).prev_sample
        ours = ddim_step(x.double(), eps.double(), schedule.alpha(t), schedule.alpha(t - schedule.stride)).float()
        assert (ours - expected).abs().max() < 1e-5


def test_inversion_matches_diffusers_inverse_scheduler(backbone):
    """Eq. 2 with diffusers' DDIMInverseScheduler conventions: max latent difference <= 1e-5."""
    from diffusers import DDIMInverseScheduler

    unet, emb = backbone.unet, backbone.encode_prompt("a red circle").hidden
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    inverse = DDIMInverseScheduler.from_config(backbone.scheduler.config)
    inverse.set_timesteps(25)
    reference, x = [], x0.clone()
    with torch.no_grad():
        for t in inverse.timesteps:
            x = inverse.step(unet(x, t, encoder_hidden_states=emb).sample, t, x).prev_sample
            reference.append(x)
        ours = ddim_invert(x0, _eps_fn(unet, emb), Schedule.from_scheduler(backbone.scheduler, 25), 25)
    assert list(ours) == [int(t) for t in inverse.timesteps]
    difference = max(float((ours[int(t)] - r).abs().max()) for t, r in zip(inverse.timesteps, reference))
    assert difference <= 1e-5
    assert float((reference[-1] - x0).abs().max()) > 0.5  # the comparison is not trivially of x0 with itself


@pytest.mark.parametrize("ratio", [1.0, 0.6])
def test_invert_then_decode_is_identity_with_zero_eps(tiny_dirs, ratio):
    from diffusers import UNet2DConditionModel

    from framework.backbones.sd import StableDiffusion

    sd = StableDiffusion(str(tiny_dirs["sd"])).load()
    unet = zero_unet_output(UNet2DConditionModel.from_pretrained(tiny_dirs["sd"] / "unet"))
    emb = sd.encode_prompt("").hidden
    schedule = Schedule.from_scheduler(sd.scheduler, 25)
    n = schedule.encode_level(ratio)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        trajectory = ddim_invert(x0, _eps_fn(unet, emb), schedule, n)
        decoded = ddim_decode(trajectory[schedule.decode_timesteps(n)[0]], _eps_fn(unet, emb), schedule, n)
    assert float((decoded - x0).abs().max()) <= 1e-5
    # with eps = 0 the inversion only rescales: x_t = sqrt(alpha_t / alpha_0) x0
    t = schedule.decode_timesteps(n)[0]
    expected = x0 * (schedule.alpha(t) / schedule.final_alpha) ** 0.5
    assert float((trajectory[t] - expected).abs().max()) <= 1e-5


def test_noise_encode_and_seeded_noise():
    x0 = torch.ones(1, 4, 8, 8)
    a = seeded_noise((1, 4, 8, 8), 7)
    assert torch.equal(a, seeded_noise((1, 4, 8, 8), 7)) and not torch.equal(a, seeded_noise((1, 4, 8, 8), 8))
    x = noise_encode(x0, a, 0.36)
    assert torch.allclose(x, 0.6 * x0 + 0.8 * a)
