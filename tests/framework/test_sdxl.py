"""SDXL as one backbone file: parity with diffusers' SDXL pipelines on the tiny SDXL model, and the method on it.

The tiny model (framework.toy.tiny_sdxl) is written by StableDiffusionXLPipeline.save_pretrained, so it has the hub
layout (text_encoder_2/, tokenizer_2/, an Euler scheduler) and loads through the same code as a hub id.
"""

from __future__ import annotations

import pytest
import torch

from conditioners.controlnet import ControlNetConditioner
from conditioners.t2i_adapter import T2IAdapterConditioner
from conditioners.text import TextConditioner
from framework.backbones import StableDiffusion, StableDiffusionXL
from framework.core.backbone import TextEncoding
from framework.core.ddim import Schedule, ddim_invert
from framework.core.errors import ModelLoadError
from framework.core.settings import GuidanceConfig, ITOConfig, MaskConfig, SamplingConfig
from framework.pipeline import EditPipeline
from tests.conftest import zero_unet_output


@pytest.fixture(scope="module")
def xl(tiny_sdxl_dirs, one_thread):
    return StableDiffusion(str(tiny_sdxl_dirs["sd"])).load()


@pytest.fixture(scope="module")
def reference(tiny_sdxl_dirs, xl):
    """diffusers' own StableDiffusionXLPipeline on the same folder, with the backbone's DDIM scheduler."""
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dirs["sd"], scheduler=xl.scheduler)


def _maps(size=64):
    a, b = torch.zeros(1, 3, size, size), torch.zeros(1, 3, size, size)
    a[..., 8:28, 8:28] = 1
    b[..., 36:60, 36:60] = 1
    return a, b


def test_the_checkpoint_picks_the_sdxl_backbone_and_its_schedule(xl, tiny_sdxl_dirs):
    assert type(xl) is StableDiffusionXL and xl.family == "SDXL" and isinstance(xl, StableDiffusion)
    assert type(StableDiffusion("builtin:tiny-random-sdxl")) is StableDiffusionXL
    assert type(StableDiffusion("builtin:tiny-random")) is StableDiffusion
    # the hub scheduler is Euler; read as DDIM with SD 1.5's convention (alpha_0 = alphas_cumprod[0])
    schedule = Schedule.from_scheduler(xl.scheduler, 25)
    assert type(xl.scheduler).__name__ == "DDIMScheduler" and not xl.scheduler.config.set_alpha_to_one
    assert schedule.timesteps[0] == 961 and schedule.timesteps[-1] == 1
    assert schedule.final_alpha == pytest.approx(0.99915, abs=1e-5)
    assert xl.vae.config.scaling_factor == 0.13025 and xl.vae_scale_factor == 8


def test_text_encoding_and_time_ids_equal_diffusers(xl, reference):
    prompt_embeds, negative_embeds, pooled, negative_pooled = reference.encode_prompt(
        "a red circle", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    ours = xl.encode_prompt("a red circle")
    assert ours.hidden.shape == (1, 77, 64) and set(ours.extras) == {"text_embeds"}
    assert torch.equal(ours.hidden, prompt_embeds) and torch.equal(ours.extras["text_embeds"], pooled)
    empty = xl.encode_prompt("")  # the default negative prompt: zeros, as force_zeros_for_empty_prompt says
    assert torch.equal(empty.hidden, negative_embeds) and torch.equal(empty.extras["text_embeds"], negative_pooled)
    assert float(negative_embeds.abs().max()) == 0 and float(prompt_embeds.detach().abs().max()) > 0.1
    _, negative_embeds, _, negative_pooled = reference.encode_prompt(
        "a red circle", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
        negative_prompt="a blue square")
    other = xl.encode_prompt("a blue square")
    assert torch.equal(other.hidden, negative_embeds) and torch.equal(other.extras["text_embeds"], negative_pooled)
    expected = reference._get_add_time_ids((48, 80), (0, 0), (48, 80), dtype=torch.float32,
                                           text_encoder_projection_dim=32)
    inputs = xl.unet_inputs(torch.zeros(2, 4, 6, 10))  # 48 x 80 px
    assert torch.equal(inputs.added_cond_kwargs["time_ids"], expected.repeat(2, 1))
    assert expected.tolist() == [[48.0, 80.0, 0.0, 0.0, 48.0, 80.0]]


def _eps(xl, text: TextEncoding):
    def eps(x, t):
        inputs = xl.unet_inputs(x)
        text.apply(inputs)
        return xl.unet(x, t, **inputs.as_kwargs()).sample
    return eps


def test_ddim_inversion_matches_diffusers_inverse_scheduler(xl):
    from diffusers import DDIMInverseScheduler

    text = xl.encode_prompt("a red circle")
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    inverse = DDIMInverseScheduler.from_config(xl.scheduler.config)
    inverse.set_timesteps(25)
    added = {"text_embeds": text.extras["text_embeds"], "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    reference, x = [], x0.clone()
    with torch.no_grad():
        for t in inverse.timesteps:
            eps = xl.unet(x, t, encoder_hidden_states=text.hidden, added_cond_kwargs=added).sample
            x = inverse.step(eps, t, x).prev_sample
            reference.append(x)
        ours = ddim_invert(x0, _eps(xl, text), Schedule.from_scheduler(xl.scheduler, 25), 25)
    assert list(ours) == [int(t) for t in inverse.timesteps]
    difference = max(float((ours[int(t)] - r).abs().max()) for t, r in zip(inverse.timesteps, reference))
    assert difference <= 1e-5, difference
    assert float((reference[-1] - x0).abs().max()) > 0.5


def test_invert_then_decode_is_exact_with_zero_eps(tiny_sdxl_dirs):
    from framework.core.ddim import ddim_decode

    xl = StableDiffusion(str(tiny_sdxl_dirs["sd"])).load()
    zero_unet_output(xl.unet)
    text = xl.encode_prompt("")
    schedule = Schedule.from_scheduler(xl.scheduler, 25)
    x0 = xl.encode_image(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        trajectory = ddim_invert(x0, _eps(xl, text), schedule, 25)
        decoded = ddim_decode(trajectory[schedule.timesteps[0]], _eps(xl, text), schedule, 25)
    assert float((decoded - x0).abs().max()) <= 1e-5


def test_sdedit_matches_diffusers_sdxl_controlnet_img2img(tiny_sdxl_dirs, xl):
    """ControlNet-SDEdit (NoiseEncodedDecode) against StableDiffusionXLControlNetImg2ImgPipeline, same x_0 (given
    as latents), same noise (seed + 1), 6 DDIM steps at strength 0.5, CFG 7.5 with the zero negative prompt."""
    from diffusers import ControlNetModel, StableDiffusionXLControlNetImg2ImgPipeline

    from framework.core.request import EditRequest
    from framework.stages import NoiseEncodedDecode, NoMask

    _, pose = _maps()
    pipe = EditPipeline(xl, [ControlNetConditioner("pose", str(tiny_sdxl_dirs["pose"]))], lam=1.0,
                        sampling=SamplingConfig(steps=6, encode_ratio=0.5), decoder=NoiseEncodedDecode(),
                        mask_estimator=NoMask()).load()
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    request = EditRequest("sdedit", image, "a red circle", "a blue square", {"pose": pose}, {"pose": pose}, None, 5, 1.0, {})
    engine = pipe.engine
    state = engine.start(request, 1.0, 5)
    engine.encode(state)
    with torch.no_grad():
        ours = engine.final(state)
    controlnet = ControlNetModel.from_pretrained(tiny_sdxl_dirs["pose"])
    reference = StableDiffusionXLControlNetImg2ImgPipeline.from_pretrained(
        tiny_sdxl_dirs["sd"], controlnet=controlnet, scheduler=xl.scheduler)
    theirs = reference("a blue square", image=state.x0, control_image=pose, strength=0.5, num_inference_steps=6,
                       guidance_scale=7.5, controlnet_conditioning_scale=1.0,  # its default is 0.8
                       generator=torch.Generator().manual_seed(5 + 1), output_type="latent",
                       height=64, width=64).images
    assert state.n_final == 3 and sum(engine.denoiser.samples.values()) == 3 * 2  # 3 steps x CFG halves
    difference = float((ours - theirs).abs().max())
    assert difference <= 1e-4, difference
    assert float((ours - state.x0).abs().max()) > 0.1


def test_a_default_edit_with_mask_guidance_and_ito_on_sdxl(tiny_sdxl_dirs):
    """The method's default stages with lam 0.6 (so a guidance image is made): the Eq. 7 mask lies where the
    two pose maps differ; every stage ran on the SDXL UNet + SDXL ControlNet."""
    p0, p1 = torch.zeros(1, 3, 128, 128), torch.zeros(1, 3, 128, 128)
    p0[..., 8:40, 8:40], p1[..., 80:120, 80:120] = 1, 1
    pipe = EditPipeline.from_pretrained(
        str(tiny_sdxl_dirs["sd"]), [ControlNetConditioner("pose", str(tiny_sdxl_dirs["pose"]), scale=4.0)],
        lam=0.6, sampling=SamplingConfig(steps=6), mask=MaskConfig(seeds=2), ito=ITOConfig(update_steps=3),
        guidance=GuidanceConfig(update_steps=3))
    out = pipe(torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(3)), source_prompt="a figure",
               edit_prompt="a figure", source_maps={"pose": p0}, edit_maps={"pose": p1}, seed=0)
    record = out.result.record
    assert out.image.size == (128, 128) and out.guidance is not None and record["guidance_image"] is True
    assert set(record["unet_evaluations"]) >= {"inversion", "mask", "guidance", "final"}
    soft = out.result.soft_mask[0, 0]  # (16, 16) latent cells
    changed = (p0 != p1).any(1)[0].reshape(16, 8, 16, 8).any(-1).any(1)
    inside, outside = float(soft[changed].mean()), float(soft[~changed].mean())
    print(f"soft mask: {inside:.3f} where the maps differ, {outside:.3f} elsewhere")
    assert inside > outside + 0.1
    assert torch.isfinite(out.result.edit).all()


def test_null_text_inversion_on_sdxl_optimises_the_pooled_part_and_beats_ddim(xl):
    from dataclasses import replace

    from framework.core.procedure import EditEngine
    from framework.core.request import EditRequest
    from framework.stages import ITODecode, method_slots
    from framework.stages.inversions import DDIMInversion, NullTextInversion

    request = EditRequest("nt", torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4)),
                          "a red circle", "a red circle", {}, {}, None, 0, 1.0, {})

    def source_decode(inversion):
        engine = EditEngine(xl, [TextConditioner()], [], sampling=SamplingConfig(steps=6, guidance_scale=7.5),
                            **method_slots(inversion, decoder=ITODecode(update_steps=0, blend="none")))
        state = engine.start(replace(request), 1.0, 0)
        engine.encode(state)
        state.mask = torch.zeros_like(state.x0[:, :1])
        engine.invert(state)
        return state, engine.final(state)

    state, y0 = source_decode(NullTextInversion(inner_steps=5, lr=0.01))
    _, ddim = source_decode(DDIMInversion())
    first = state.inverted.uncond_text[state.schedule.decode_timesteps(state.n_final)[0]]
    assert isinstance(first, TextEncoding) and float(first.extras["text_embeds"].abs().max()) > 0  # moved from zeros
    err = lambda y: float(((y - state.x0) ** 2).mean())  # noqa: E731
    print(f"null-text {err(y0):.3e} vs DDIM {err(ddim):.3e}")
    assert err(y0) < err(ddim)


def test_sdxl_t2i_adapter_and_two_controlnets_condition_the_unet(tiny_sdxl_dirs, xl):
    from framework.core.conditioning import ConditionSide
    from framework.core.denoiser import Denoiser

    p0, _ = _maps()
    side = ConditionSide("a figure", {"pose": p0, "scribble": p0, "sketch": p0})
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    text_only = Denoiser(xl.unet, [TextConditioner()], 1000, unet_inputs=xl.unet_inputs)
    plain = text_only(x, 501, text_only.encode(side, xl))
    conditioners = [TextConditioner(), ControlNetConditioner("pose", str(tiny_sdxl_dirs["pose"])),
                    ControlNetConditioner("scribble", str(tiny_sdxl_dirs["scribble"])),
                    T2IAdapterConditioner("sketch", str(tiny_sdxl_dirs["adapter"]))]
    for conditioner in conditioners:
        conditioner.load(xl)
    for used in (conditioners[:2], conditioners[:3], [conditioners[0], conditioners[3]]):
        denoiser = Denoiser(xl.unet, used, 1000, unet_inputs=xl.unet_inputs)
        assert float((denoiser(x, 501, denoiser.encode(side, xl)) - plain).abs().max()) > 1e-3


@pytest.mark.parametrize("pairing", ["sd15 ControlNet on SDXL", "SDXL ControlNet on SD 1.5",
                                     "SDXL adapter on SD 1.5"])
def test_the_wrong_family_pairing_is_refused_in_one_line_before_weights_load(pairing, tiny_dirs, tiny_sdxl_dirs,
                                                                               monkeypatch):
    from diffusers import ModelMixin

    monkeypatch.setattr(ModelMixin, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("weights were read")))
    if pairing == "sd15 ControlNet on SDXL":
        backbone, conditioner, fits = tiny_sdxl_dirs["sd"], ControlNetConditioner("pose", str(tiny_dirs["pose"])), "SDXL"
    elif pairing == "SDXL ControlNet on SD 1.5":
        backbone, conditioner = tiny_dirs["sd"], ControlNetConditioner("pose", str(tiny_sdxl_dirs["pose"]))
        fits = "SD 1.x"
    else:
        backbone, conditioner = tiny_dirs["sd"], T2IAdapterConditioner("sketch", str(tiny_sdxl_dirs["adapter"]))
        fits = "SD 1.x"
    with pytest.raises(ModelLoadError) as info:
        EditPipeline(StableDiffusion(str(backbone)), [conditioner])
    message = str(info.value)
    assert "\n" not in message and f"but the backbone ({backbone}) is {fits}: use a" in message, message
    assert f"for {fits} such as" in message


def test_a_family_the_project_lacks_and_an_sd_folder_given_to_the_sdxl_class_are_refused(tiny_dirs):
    with pytest.raises(ModelLoadError) as info:
        StableDiffusionXL(str(tiny_dirs["sd"]))
    message = str(info.value)
    assert "is SD 1.x (StableDiffusionPipeline in its model_index.json), not SDXL" in message and "\n" not in message


def test_sdxl_from_pretrained_with_a_builtin_name_and_short_conditioner_names():
    pipe = EditPipeline.from_pretrained("builtin:tiny-random-sdxl", conditioners=["pose"],
                                        sampling=SamplingConfig(steps=4), mask=MaskConfig(seeds=1),
                                        ito=ITOConfig(update_steps=2), guidance=GuidanceConfig(update_steps=2),
                                        original_size=(128, 128))
    assert pipe.backbone.family == "SDXL" and pipe.backbone.original_size == (128, 128)
    assert pipe.conditioners[1].controlnet.config.addition_embed_type == "text_time"
    p0, p1 = _maps()
    out = pipe(torch.rand(1, 3, 64, 64), source_prompt="a figure", edit_prompt="a figure",
               source_maps={"pose": p0}, edit_maps={"pose": p1}, lam=1.0, seed=1)
    assert out.lam == 1.0 and out.guidance is None and out.unet_evaluations > 0


@pytest.mark.parametrize("method", ["diffedit", "prompt_to_prompt", "null_text+p2p", "negative_prompt", "direct"])
def test_the_baselines_and_inversions_run_on_sdxl(method, xl):
    """DiffEdit's blend, prompt-to-prompt (attention exchange in SDXL's transformer blocks) and the other
    inversions through the pipeline on the tiny SDXL model: finite edits, and DiffEdit keeps x_0 outside its
    mask exactly where the blend applies."""
    from framework.stages import MaskBlendDecode, PromptToPrompt
    from framework.stages.inversions import DirectInversion, NegativePromptInversion, NullTextInversion

    slots = {"diffedit": dict(decoder=MaskBlendDecode()),
             "prompt_to_prompt": dict(decoder=PromptToPrompt()),
             "null_text+p2p": dict(decoder=PromptToPrompt(), inversion=NullTextInversion(inner_steps=2)),
             "negative_prompt": dict(inversion=NegativePromptInversion()),
             "direct": dict(inversion=DirectInversion())}[method]
    pipe = EditPipeline(xl, [TextConditioner()], lam=1.0, sampling=SamplingConfig(steps=4),
                        mask=MaskConfig(seeds=1), ito=ITOConfig(update_steps=2), guidance=GuidanceConfig(update_steps=2),
                        **slots).load()
    out = pipe(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(7)), source_prompt="a red circle",
               edit_prompt="a blue circle", seed=0)
    assert torch.isfinite(out.result.edit).all() and out.image.size == (64, 64)
    if method == "prompt_to_prompt":  # the source branch of the same batch retraces the input's inversion
        assert pipe.decoder.last_source is not None and torch.isfinite(pipe.decoder.last_source).all()


def test_the_sdxl_vae_is_upcast_in_fp16_and_a_replacement_vae_loads(tiny_sdxl_dirs):
    """force_upcast (the SDXL VAE's config): an fp16 VAE runs in fp32 instead of overflowing; `vae` takes an
    AutoencoderKL of the same latent space (here the tiny model's own folder, which has vae/)."""
    xl = StableDiffusion(str(tiny_sdxl_dirs["sd"]), vae=str(tiny_sdxl_dirs["sd"])).load()
    assert xl.vae.config.force_upcast
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    reference = xl.encode_image(image)
    xl.vae.to(torch.float16)
    latents = xl.encode_image(image)
    assert next(xl.vae.parameters()).dtype == torch.float32 and latents.dtype == torch.float32
    assert float((latents - reference).abs().max()) < 1e-2  # only the weights' fp16 rounding differs


def test_memory_options_reach_the_sdxl_unet_its_controlnet_and_vae(tiny_sdxl_dirs):
    """attention_slicing reaches the UNet and the SDXL ControlNet; vae_tiling sets 64 px tiles (8 latent cells) on
    the SDXL VAE; a 128 px edit runs through both."""
    backbone = StableDiffusion(str(tiny_sdxl_dirs["sd"]), attention_slicing="max", vae_tiling=True, vae_tile_size=64)
    pipe = EditPipeline(backbone, [ControlNetConditioner("pose", str(tiny_sdxl_dirs["pose"]))], lam=1.0,
                        sampling=SamplingConfig(steps=4), mask=MaskConfig(seeds=1), ito=ITOConfig(update_steps=2),
                        guidance=GuidanceConfig(update_steps=2)).load()
    processors = {type(p).__name__ for p in pipe.backbone.unet.attn_processors.values()}
    processors |= {type(p).__name__ for p in pipe.conditioners[1].controlnet.attn_processors.values()}
    assert processors == {"SlicedAttnProcessor"} and backbone.vae.use_tiling
    assert backbone.vae.tile_sample_min_size == 64 and backbone.vae.tile_latent_min_size == 8
    p0, p1 = torch.zeros(1, 3, 128, 128), torch.zeros(1, 3, 128, 128)
    p0[..., 8:40, 8:40], p1[..., 80:120, 80:120] = 1, 1
    out = pipe(torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(9)), source_prompt="a figure",
               edit_prompt="a figure", source_maps={"pose": p0}, edit_maps={"pose": p1}, seed=0)
    assert out.image.size == (128, 128) and torch.isfinite(out.result.edit).all()


def test_lam_auto_and_the_mask_cache_on_sdxl(tiny_sdxl_dirs, tmp_path):
    """lam 'auto' is set from the SDXL mask; the second edit of the same request reads its soft mask from the cache
    (the key holds the SDXL backbone's settings and weights) and gives the same pixels."""
    p0, p1 = _maps()
    pipe = EditPipeline(StableDiffusion(str(tiny_sdxl_dirs["sd"])),
                        [ControlNetConditioner("pose", str(tiny_sdxl_dirs["pose"]))], lam="auto",
                        sampling=SamplingConfig(steps=4), mask=MaskConfig(seeds=1, cache_dir=str(tmp_path / "masks")),
                        ito=ITOConfig(update_steps=2), guidance=GuidanceConfig(update_steps=2)).load()
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(10))
    runs = [pipe(image, source_prompt="a figure", edit_prompt="a figure", source_maps={"pose": p0},
                 edit_maps={"pose": p1}, seed=2) for _ in range(2)]
    assert [r.result.record["mask_source"] for r in runs] == ["estimated", "cached"]
    assert 0 <= runs[0].lam <= 1 and runs[0].result.record["lam_rule"]["rule"] == "auto"
    assert torch.equal(runs[0].result.edit, runs[1].result.edit)
    assert len(list((tmp_path / "masks").glob("*.pt"))) == 1
