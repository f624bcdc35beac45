"""FLUX.1 on the tiny FLUX.1-dev-geometry model: the family, parity with diffusers' FluxPipeline (text, packing,
the size-dependent schedule and the distilled guidance), and the method's steps on packed latents."""

from __future__ import annotations

import pytest
import torch

from framework.core.errors import ConfigError
from framework.core.procedure import EditEngine
from framework.core.request import EditRequest
from framework.core.settings import ITOConfig, MaskConfig, SamplingConfig
from framework.stages import GivenMask, NoiseEncodedDecode, NullTextInversion, method_slots


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    from framework.toy.tiny_flow import save_tiny_flux

    return save_tiny_flux(tmp_path_factory.mktemp("flux") / "sd", seed=0, guidance_embeds=True)


@pytest.fixture(scope="module")
def flux(flux_dir):
    from framework.backbones import StableDiffusion

    return StableDiffusion(str(flux_dir)).load()


def request(mask=None) -> EditRequest:
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return EditRequest("r", image, "a red square", "a blue square", {}, {}, mask, 0, None, {})


def engine(backbone, steps: int = 8, **slots) -> EditEngine:
    from conditioners.text import TextConditioner
    from losses import CosineGuidance, MaskedMSEPreservation

    return EditEngine(backbone, [TextConditioner()], [MaskedMSEPreservation(), CosineGuidance()],
                      sampling=SamplingConfig(steps=steps, guidance_scale=1.0), 
                      **method_slots(**slots, mask=MaskConfig(seeds=2, steps=None), ito=ITOConfig(update_steps=4)))


def test_the_family_text_and_packing_are_diffusers_fluxs(flux_dir, flux):
    from diffusers import FluxPipeline

    from framework.backbones.flux import Flux, pack, position_ids, unpack

    assert type(flux) is Flux and flux.family == "FLUX"
    pipe = FluxPipeline.from_pretrained(str(flux_dir))
    embeds, pooled, _ = pipe.encode_prompt("a red photo", "a red photo", max_sequence_length=512)
    mine = flux.encode_prompt("a red photo")
    assert torch.allclose(mine.hidden, embeds, atol=1e-5) and torch.equal(mine.extras["pooled_projections"], pooled)
    latents = torch.randn(2, 16, 8, 6)
    assert torch.equal(pack(latents), pipe._pack_latents(latents, 2, 16, 8, 6))
    assert torch.equal(unpack(pack(latents), 8, 6), latents)
    assert torch.equal(position_ids(8, 6), pipe._prepare_latent_image_ids(1, 4, 3, "cpu", torch.float32))


def test_sdedit_equals_diffusers_flux_from_the_same_noise(flux_dir, flux):
    """Encode ratio 1, one pass per step with the distilled guidance 3.5: diffusers' FluxPipeline given the same
    (packed) noise takes the same steps, with the same size-dependent shift of the schedule."""
    from diffusers import FluxPipeline

    from framework.backbones.flux import pack
    from framework.core.sampling import seeded_noise

    e = engine(flux, steps=4)
    state = e.start(request(), 1.0, 0)
    e.encode(state)
    state.n_final = 4
    ours = NoiseEncodedDecode().decode(e.tools, state)
    pipe = FluxPipeline.from_pretrained(str(flux_dir))
    noise = seeded_noise(tuple(state.x0.shape), state.seed + 1)
    theirs = pipe("a blue square", latents=pack(noise), num_inference_steps=4, guidance_scale=3.5, height=64,
                  width=64, output_type="latent", max_sequence_length=512).images
    assert state.schedule.timesteps == tuple(float(t) for t in pipe.scheduler.timesteps)
    assert torch.allclose(pack(ours), theirs, atol=1e-4), float((pack(ours) - theirs).abs().max())


def test_an_edit_keeps_the_latents_outside_the_mask_at_lam_1(flux):
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    e = engine(flux, mask_estimator=GivenMask())
    state = e.start(request(mask), 1.0, 0)
    e.encode(state)
    e.invert(state)
    e.estimate_mask(state)
    y0 = e.final(state)
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[1:7, 1:7] = False
    assert torch.allclose(y0[..., outside], state.x0[..., outside], atol=1e-5)
    result = engine(flux).edit(request(), 0.6, 0, auto_lam=None)  # the whole method: mask, G, ITO
    assert torch.isfinite(result.edit).all() and result.record["guidance_image"]


def test_null_text_inversion_has_nothing_to_tune_without_cfg(flux):
    e = engine(flux, inversion=NullTextInversion(inner_steps=1))
    state = e.start(request(), 1.0, 0)
    e.encode(state)
    with pytest.raises(ConfigError, match="no.*unconditional|there is none"):
        e.invert(state)


def test_a_flux_controlnet_steers_the_mask_to_where_the_pose_maps_differ(tiny_flux_dirs):
    from conditioners import ControlNetConditioner
    from framework.backbones import StableDiffusion

    backbone = StableDiffusion(str(tiny_flux_dirs["sd"])).load()
    pose = ControlNetConditioner("pose", str(tiny_flux_dirs["pose"]))
    pose.load(backbone)
    req = request()
    req.edit_prompt = req.source_prompt
    req.source_maps, req.edit_maps = {"pose": torch.zeros(1, 3, 64, 64)}, {"pose": torch.zeros(1, 3, 64, 64)}
    req.source_maps["pose"][..., 8:24, 8:24] = 1
    req.edit_maps["pose"][..., 40:56, 40:56] = 1
    from conditioners.text import TextConditioner
    from losses import MaskedMSEPreservation

    e = EditEngine(backbone, [TextConditioner(), pose], [MaskedMSEPreservation()],
                   sampling=SamplingConfig(steps=8, guidance_scale=1.0),
                   **method_slots(mask=MaskConfig(seeds=2, steps=None)))
    state = e.start(req, 1.0, 0)
    e.encode(state)
    _, soft, _ = e.mask_estimator.estimate(e.tools, state)
    changed = torch.zeros(8, 8, dtype=torch.bool)
    changed[1:3, 1:3] = changed[5:7, 5:7] = True
    assert float(soft[0, 0][changed].mean()) > float(soft[0, 0][~changed].mean()) + 0.1
    assert sum(e.denoiser.samples.values()) == 2 * 2 * 4  # 2 seeds x 2 sides x 4 steps at strength 0.5, no CFG


@pytest.mark.parametrize("name, cfg", [("builtin:tiny-random-sd3", 5.0), ("builtin:tiny-random-flux", 1.0)])
def test_from_pretrained_takes_a_flow_checkpoint_and_short_conditioner_names(name, cfg):
    from framework import EditPipeline

    pipe = EditPipeline.from_pretrained(name, conditioners=["pose"], sampling={"steps": 4, "guidance_scale": cfg},
                                        ito={"update_steps": 2}, guidance={"update_steps": 2}, mask={"seeds": 2})
    pose = [torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64)]
    pose[0][..., :32, :32], pose[1][..., 32:, 32:] = 1, 1
    out = pipe(torch.rand(1, 3, 64, 64), source_prompt="a figure", source_maps={"pose": pose[0]},
               edit_maps={"pose": pose[1]}, lam=0.6, seed=0)
    assert out.image.size == (64, 64) and out.guidance is not None
    assert type(pipe.backbone).__name__ == ("Flux" if "flux" in name else "StableDiffusion3")
    assert type(pipe.conditioners[-1].controlnet).__name__.endswith("ControlNetModel")
