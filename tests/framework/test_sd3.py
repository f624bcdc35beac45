"""SD3 on the tiny SD3-geometry model: the family by its model_index.json, parity with diffusers, the flow versions
of the method's steps (inversion, Eq. 7, lam = 1's preservation), and the flow plugins."""

from __future__ import annotations

import pytest
import torch

from framework.core.errors import ConfigError
from framework.core.procedure import EditEngine
from framework.core.request import EditRequest
from framework.core.settings import ITOConfig, MaskConfig, SamplingConfig
from framework.stages import (
    DirectInversion,
    FlowEditDecode,
    GivenMask,
    MidpointInversion,
    NoiseEncodedDecode,
    NoMask,
    NullTextInversion,
    PromptToPrompt,
    method_slots,
)


@pytest.fixture(scope="module")
def sd3(tiny_sd3_dirs):
    from framework.backbones import StableDiffusion

    return StableDiffusion(str(tiny_sd3_dirs["sd"])).load()


@pytest.fixture(scope="module")
def pose(tiny_sd3_dirs, sd3):
    from conditioners import ControlNetConditioner

    conditioner = ControlNetConditioner("pose", str(tiny_sd3_dirs["pose"]))
    conditioner.load(sd3)
    return conditioner


def request(maps: bool = False, mask=None, edit_prompt: str = "a blue square") -> EditRequest:
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    source, edit = {}, {}
    if maps:
        source["pose"], edit["pose"] = torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64)
        source["pose"][..., 8:24, 8:24] = 1
        edit["pose"][..., 40:56, 40:56] = 1
    return EditRequest("r", image, "a red square", edit_prompt, source, edit, mask, 0, None, {})


def engine(backbone, conditioners=(), steps: int = 8, cfg: float = 5.0, **slots) -> EditEngine:
    from conditioners.text import TextConditioner
    from losses import CosineGuidance, MaskedMSEPreservation

    return EditEngine(backbone, [TextConditioner(), *conditioners], [MaskedMSEPreservation(), CosineGuidance()],
                      sampling=SamplingConfig(steps=steps, guidance_scale=cfg), 
                      **method_slots(**slots, mask=MaskConfig(seeds=2, steps=None), ito=ITOConfig(update_steps=4)))


def started(e: EditEngine, req: EditRequest, lam: float = 1.0):
    state = e.start(req, lam, 0)
    e.encode(state)
    return state


@pytest.mark.parametrize("t5", [True, False])
def test_the_family_and_the_text_encoding_are_diffusers_sd3s(tiny_sd3_dirs, t5):
    from diffusers import StableDiffusion3Pipeline

    from framework.backbones import StableDiffusion
    from framework.backbones.sd3 import StableDiffusion3

    backbone = StableDiffusion(str(tiny_sd3_dirs["sd"]), t5=t5).load()
    assert type(backbone) is StableDiffusion3 and backbone.family == "SD3"
    pipe = StableDiffusion3Pipeline.from_pretrained(str(tiny_sd3_dirs["sd"]))
    if not t5:
        pipe.text_encoder_3 = pipe.tokenizer_3 = None
    embeds, _, pooled, _ = pipe.encode_prompt("a red photo", "a red photo", "a red photo",
                                              do_classifier_free_guidance=False)
    mine = backbone.encode_prompt("a red photo")
    assert mine.hidden.shape == embeds.shape == (1, 77 + 256, 64)
    assert torch.allclose(mine.hidden, embeds, atol=1e-5)
    assert torch.equal(mine.extras["pooled_projections"], pooled)
    assert t5 or mine.hidden[:, 77:].abs().max() == 0  # no T5: zeros in its place


def test_zero_velocity_makes_inversion_and_decode_exact(tiny_sd3_dirs):
    from framework.backbones import StableDiffusion

    backbone = StableDiffusion(str(tiny_sd3_dirs["sd"])).load()
    with torch.no_grad():
        backbone.unet.proj_out.weight.zero_()
        backbone.unet.proj_out.bias.zero_()
    e = engine(backbone, steps=10)
    state = started(e, request())
    e.invert(state)
    assert all(torch.equal(x, state.x0) for x in state.x_traj.values())  # v = 0: the latents never move
    from framework.core.sampling import decode

    top = state.x_traj[max(state.x_traj)]
    assert torch.equal(decode(top, e.eps(state.sides.edit, 5.0), state.schedule, 10), state.x0)


def test_euler_inversion_and_decode_reconstruct_the_latents(sd3):
    """Invert under C_0 and decode under C_0 at CFG 1 (25 steps): the flow ODE is retraced to a small error, and
    more steps retrace it better."""
    errors = {}
    for steps in (10, 25):
        e = engine(sd3, steps=steps, cfg=1.0)
        state = started(e, request())
        e.invert(state)
        from framework.core.sampling import decode

        top = state.x_traj[max(state.x_traj)]
        y0 = decode(top, e.eps(state.sides.source, 1.0), state.schedule, steps)
        errors[steps] = float((y0 - state.x0).abs().mean() / state.x0.abs().mean())
    assert errors[25] < errors[10] and errors[25] < 0.05, errors


def test_sdedit_equals_diffusers_sd3_from_the_same_noise(tiny_sd3_dirs, sd3):
    """The SDEdit baseline at encode ratio 1 is text-to-image from its noise: diffusers' SD3 pipeline given the same
    latents gives the same result."""
    from diffusers import StableDiffusion3Pipeline

    from framework.core.sampling import seeded_noise

    e = engine(sd3, steps=4, cfg=5.0)
    state = started(e, request())
    state.n_final = 4  # encode ratio 1
    ours = NoiseEncodedDecode().decode(e.tools, state)
    pipe = StableDiffusion3Pipeline.from_pretrained(str(tiny_sd3_dirs["sd"]))
    noise = seeded_noise(tuple(state.x0.shape), state.seed + 1)
    theirs = pipe("a blue square", negative_prompt="", latents=noise, num_inference_steps=4, guidance_scale=5.0,
                  height=64, width=64, output_type="latent").images
    assert torch.allclose(ours, theirs, atol=1e-4), float((ours - theirs).abs().max())


def test_the_flow_mask_lies_where_the_pose_maps_differ(sd3, pose):
    e = engine(sd3, [pose], steps=10)
    state = started(e, request(maps=True, edit_prompt="a red square"))
    _, soft, source = e.mask_estimator.estimate(e.tools, state)
    changed = torch.zeros(8, 8, dtype=torch.bool)
    changed[1:3, 1:3] = changed[5:7, 5:7] = True  # the two squares, on the latent grid
    soft = soft[0, 0]
    assert source == "estimated" and float(soft[changed].mean()) > float(soft[~changed].mean()) + 0.1


def test_lam_1_keeps_the_latents_outside_the_mask(sd3):
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    e = engine(sd3, steps=8, mask_estimator=GivenMask())
    state = started(e, request(mask=mask))
    e.invert(state)
    e.estimate_mask(state)
    y0 = e.final(state)
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[1:7, 1:7] = False  # the mask (2:6) grown by the blend's one-pixel margin
    assert torch.allclose(y0[..., outside], state.x0[..., outside], atol=1e-5)
    assert not torch.allclose(y0[..., 2:6, 2:6], state.x0[..., 2:6, 2:6], atol=1e-2)  # the edit region changed


@pytest.mark.parametrize("name", ["null_text", "direct", "midpoint", "flowedit"])
def test_the_inversions_and_flowedit_run_on_sd3(sd3, name):
    slots = {"null_text": dict(inversion=NullTextInversion(inner_steps=2)), "direct": dict(inversion=DirectInversion()),
             "midpoint": dict(inversion=MidpointInversion()),
             "flowedit": dict(decoder=FlowEditDecode(averages=2), mask_estimator=NoMask())}[name]
    e = engine(sd3, steps=6, **slots)
    result = e.edit(request(), 0.6 if name != "flowedit" else 1.0, 0, auto_lam=None)
    assert torch.isfinite(result.edit).all() and result.edit.shape == (1, 3, 64, 64)
    counts = result.record["unet_evaluations"]
    if name == "flowedit":  # no inversion; each of the 6 steps: 2 noises x (edit + source) x CFG 2
        assert "inversion" not in counts and counts["final"] == 6 * 2 * 2 * 2
    if name == "midpoint":  # two velocity evaluations per inversion step
        assert counts["inversion"] == 2 * 6


def test_prompt_to_prompt_refuses_a_transformer_in_one_line(sd3):
    e = engine(sd3, steps=4, decoder=PromptToPrompt(), mask_estimator=NoMask())
    state = started(e, request())
    e.invert(state)
    with pytest.raises(ConfigError, match="FlowEditDecode"):
        e.final(state)


def test_a_batch_of_sd3_edits_equals_its_edits_one_at_a_time(tiny_sd3_dirs):
    """Batched edits join the transformer calls of several edits (their TextEncodings and pooled projections)."""
    from dataclasses import replace

    from framework import EditPipeline

    pipe = EditPipeline.from_pretrained(str(tiny_sd3_dirs["sd"]), sampling={"steps": 6},
                                        ito={"update_steps": 3}, guidance={"update_steps": 3}, mask={"seeds": 2})
    requests = [request(), replace(request(), id="r2", lam=0.6, seed=5)]
    with torch.no_grad():
        alone = [pipe.edit(r) for r in requests]
        batched = pipe.edit_batch(requests)
    for a, b in zip(alone, batched):
        assert torch.equal(a.mask, b.mask) and (a.edit - b.edit).abs().max() <= 1e-4
        assert a.record["unet_evaluations"] == b.record["unet_evaluations"]
