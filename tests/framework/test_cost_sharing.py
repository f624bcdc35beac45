"""Shared computations give what was computed apart, and the sample counters count every UNet and ControlNet sample.

- guidance.invert 'missing' (default): G's trajectory g_t is the latents its own decode visited, with no
  inversion of G when that decode visited every timestep of t_E; 'always' inverts G as before and then
  overwrites the visited timesteps, so both give the same G, the same g_t and the same edit, and 'missing'
  costs t_E UNet samples less.
- guidance.decode 'needed' (default): G's decode stops after the step from the last g_t the edit's decode reads
  (ITO's t_u steps) and G's picture is finished in `finish_steps` coarse steps: the same g_t there and the same
  edit, bit for bit, with (t_E - t_u - finish_steps) CFG steps fewer.
- controlnet_evaluations: each ControlNet counts its batch at each UNet call it conditions.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from framework.core.settings import GuidanceConfig, ITOConfig, SamplingConfig
from framework.io.manifests import load_manifest, load_request

pytestmark = pytest.mark.usefixtures("one_thread")


def _module(tiny_dirs, tmp_path, conditioners=("pose",), **settings):
    from conditioners.controlnet import ControlNetConditioner
    from framework.backbones.sd import StableDiffusion
    from framework.lightning.module import EditModule

    settings = {"sampling": SamplingConfig(steps=8), "ito": ITOConfig(update_steps=4), **settings}
    settings.setdefault("guidance", GuidanceConfig(update_steps=4))
    module = EditModule(StableDiffusion(str(tiny_dirs["sd"])),
                        [ControlNetConditioner(m, str(tiny_dirs[m])) for m in conditioners],
                        output_dir=str(tmp_path), **settings)
    module.setup("fit")
    return module


def _requests(manifest):
    return {spec.id: load_request(spec, None) for spec in load_manifest(manifest)}


def test_guidance_trajectory_from_its_decode_equals_the_inverted_one_and_saves_t_E(tiny_dirs, tmp_path, manifest):
    requests = _requests(manifest)
    results = {}
    for invert in ("missing", "always"):
        module = _module(tiny_dirs, tmp_path / invert,
                         guidance=GuidanceConfig(invert=invert, update_steps=4, decode="full"), lam=0.6)
        engine = module.pipeline.engine
        captured = {}
        make = engine.make_guidance

        def spy(state, make=make, captured=captured):
            make(state)
            captured["g0"], captured["g_traj"] = state.g0.clone(), {t: g.clone() for t, g in state.g_traj.items()}
        engine.make_guidance = spy
        with torch.no_grad():
            result = module.edit(requests["text"])
        results[invert] = (result, captured)
    (new, g_new), (old, g_old) = results["missing"], results["always"]
    assert torch.equal(g_new["g0"], g_old["g0"])
    assert list(g_new["g_traj"]) == list(g_old["g_traj"]) and len(g_new["g_traj"]) == 8
    assert all(torch.equal(g_new["g_traj"][t], g_old["g_traj"][t]) for t in g_old["g_traj"])
    assert torch.equal(new.edit, old.edit) and torch.equal(new.guidance, old.guidance)
    # G's decode: 8 steps x 2 CFG halves; 'always' adds its 8-step inversion (conditional only)
    assert new.record["unet_evaluations"]["guidance"] == 16
    assert old.record["unet_evaluations"]["guidance"] == 16 + 8


def _guided_edit(module, request):
    engine, captured = module.pipeline.engine, {}
    make = engine.make_guidance

    def spy(state):
        make(state)
        captured["g0"], captured["g_traj"] = state.g0.clone(), {t: g.clone() for t, g in state.g_traj.items()}
    engine.make_guidance = spy
    with torch.no_grad():
        return module.edit(request), captured


def test_guidance_decode_stops_at_the_last_g_t_the_edit_reads(tiny_dirs, tmp_path, manifest):
    request = _requests(manifest)["text"]
    runs = {decode: _guided_edit(_module(tiny_dirs, tmp_path / decode, lam=0.6, ito=ITOConfig(update_steps=3),
                                         guidance=GuidanceConfig(update_steps=4, decode=decode)), request)
            for decode in ("needed", "full")}
    (short, g_short), (full, g_full) = runs["needed"], runs["full"]
    read = list(g_full["g_traj"])[-3:]  # the 3 noisiest timesteps of t_E: ITO's t_u = 3 steps read them
    assert sorted(g_short["g_traj"]) == sorted(read)
    assert all(torch.equal(g_short["g_traj"][t], g_full["g_traj"][t]) for t in read)
    assert torch.equal(short.edit, full.edit) and torch.equal(short.mask, full.mask)
    # 3 of G's 8 CFG steps and 2 coarse ones instead of 8; the other stages alike
    assert short.record["unet_evaluations"]["guidance"] == 3 * 2 + 2 * 2
    assert full.record["unet_evaluations"]["guidance"] == 16
    assert {k: v for k, v in short.record["unet_evaluations"].items() if k != "guidance"} == \
        {k: v for k, v in full.record["unet_evaluations"].items() if k != "guidance"}
    # G's picture, finished in 2 coarse steps from 5 levels above the clean latents: near the whole decode's
    assert float((short.guidance - full.guidance).abs().mean()) < 0.05


def test_sampler_clean_inverts_the_noise_encoding():
    """Sampler.clean(x_t, prediction, t) is x_0 when the prediction is the true one (DDIM: eps; flow: noise - x_0)."""
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    from framework.core.ddim import Schedule
    from framework.core.flow import FlowSchedule

    x0, noise = torch.randn(1, 4, 8, 8, dtype=torch.float64), torch.randn(1, 4, 8, 8, dtype=torch.float64)
    ddim = Schedule.from_scheduler(DDIMScheduler(), 10)
    t = ddim.timesteps[3]
    assert torch.allclose(ddim.clean(ddim.encode(x0, noise, t), noise, t), x0, atol=1e-10)
    # a jump to any lower level lands where that level's encoding of x_0 with the same noise is (DDIM's identity)
    to = ddim.timesteps[7]
    assert torch.allclose(ddim.jump(ddim.encode(x0, noise, t), noise, t, to), ddim.encode(x0, noise, to), atol=1e-10)
    assert torch.equal(ddim.jump(x0, noise, t, ddim.below(t)), ddim.step(x0, noise, t))
    flow = FlowSchedule.from_scheduler(FlowMatchEulerDiscreteScheduler(), 10)
    t = flow.timesteps[3]
    assert torch.allclose(flow.clean(flow.encode(x0, noise, t), noise - x0, t), x0, atol=1e-10)
    to = flow.timesteps[7]
    assert torch.allclose(flow.jump(flow.encode(x0, noise, t), noise - x0, t, to), flow.encode(x0, noise, to),
                          atol=1e-10)
    assert torch.equal(flow.jump(x0, noise, t, flow.below(t)), flow.step(x0, noise, t))


def test_a_shallower_guidance_image_is_still_inverted(tiny_dirs, tmp_path, manifest):
    # encoded to 0.5 of the schedule, G's decode never visits the top half of t_E: the inversion fills it
    module = _module(tiny_dirs, tmp_path, guidance=GuidanceConfig(encode_ratio=0.5, update_steps=4), lam=0.6)
    with torch.no_grad():
        result = module.edit(_requests(manifest)["text"])
    assert result.record["unet_evaluations"]["guidance"] == 4 * 2 + 8


@pytest.mark.parametrize("names", [("pose",), ("pose", "scribble")])
def test_every_controlnet_sample_is_counted(tiny_dirs, tmp_path, manifest, names):
    module = _module(tiny_dirs, tmp_path, conditioners=names, lam=0.6)
    request = _requests(manifest)["pose"]
    if "scribble" in names:  # both ControlNets condition every UNet sample
        request = replace(request, source_maps={**request.source_maps, "scribble": request.source_maps["pose"]},
                          edit_maps={**request.edit_maps, "scribble": request.edit_maps["pose"]})
    with torch.no_grad():
        record = module.edit(request).record
    unet, control = record["unet_evaluations"], record["controlnet_evaluations"]
    # inversion 8 (conditional only); mask: the 10-step grid capped at the edit's 8, strength 0.5 -> 4 steps x
    # 3 seeds x 2 conditions x 2 CFG halves; guidance decode 4 x 2 (to ITO's t_u = 4; no inversion of G) and
    # 2 x 2 to finish its picture; final 8 x 2
    assert unet == {"inversion": 8, "mask": 4 * 3 * 2 * 2, "guidance": 4 * 2 + 2 * 2, "final": 16}
    assert control == {stage: n * len(names) for stage, n in unet.items()}
