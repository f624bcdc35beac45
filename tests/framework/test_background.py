"""The background levers of docs/background.md: blending after t_u, a lam schedule, CFG outside the mask,
guidance rescale, and the paired study's reading of a sweep."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from framework.core.denoiser import rescale_guidance
from framework.core.errors import ConfigError
from framework.core.procedure import EditEngine
from framework.core.settings import ITOConfig, MaskConfig, SamplingConfig
from framework.io.manifests import load_manifest, load_request
from framework.stages import MaskBlendDecode, blend_outside, feathered, linear_lam, method_slots
from losses.guidance import CosineGuidance
from losses.preservation import MaskedMSEPreservation


@pytest.fixture
def state(backbone, manifest, one_thread):
    """An inverted text edit on the tiny model, 6 steps, with a mask over the top half of the latents."""
    from conditioners.text import TextConditioner

    engine = EditEngine(backbone, [TextConditioner()], [MaskedMSEPreservation(reduction="mean"),
                                                       CosineGuidance(granularity="pixel", norm_weight=1.0)],
                        sampling=SamplingConfig(steps=6),
                        **method_slots(mask=MaskConfig(seeds=2), ito=ITOConfig(update_steps=6, blend="none",
                                                                               blend_margin=0)))
    s = engine.start(load_request(load_manifest(manifest)[0], None), 0.6, 0)
    engine.encode(s)
    engine.invert(s)
    s.mask = torch.zeros_like(s.x0[:, :1])
    s.mask[..., :4, :] = 1
    return engine, s


def with_ito(engine, **changes):
    """The engine's ITO decoder with some settings changed (kept for the next change)."""
    engine.decoder = replace(engine.decoder, **changes)
    return engine.decoder


def test_blend_outside_keeps_the_inside_and_takes_the_input_outside():
    y, x = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    out = blend_outside(y, x, mask)
    inside = mask.bool().expand_as(y)
    assert torch.equal(out[inside], y[inside]) and torch.equal(out[~inside], x[~inside])
    soft = feathered(mask, 1.0)
    assert float(soft[mask == 0].abs().max()) == 0  # the feather never reaches past the mask ...
    assert 0 < float(soft[mask == 1].min()) < float(soft[mask == 1].max()) <= 1  # ... and softens its edge
    assert torch.equal(feathered(mask, 0.0), mask)


def test_blend_with_no_ito_steps_is_diffedit(state):
    """t_u = 0 and blend 'after': every step blends outside the mask onto the inversion, as DiffEdit does."""
    engine, s = state
    with_ito(engine, update_steps=0, blend="after", blend_weight=1.0)
    assert torch.equal(engine.decoder.decode(engine.tools, s), MaskBlendDecode().decode(engine.tools, s))


def test_blend_after_t_u_ends_on_the_input_outside_the_mask_and_leaves_the_ito_steps(state):
    engine, s = state
    s.g_traj = {t: x + 0.5 * torch.randn_like(x) for t, x in s.x_traj.items()}
    seen = {}
    engine.emit = lambda stage, kind, i, t, y, **_: seen.setdefault((kind, i), y.clone())
    free = with_ito(engine, update_steps=3).decode(engine.tools, s)
    free_ito = {k: v for k, v in seen.items() if k[0] == "ito"}
    seen.clear()
    y0 = with_ito(engine, blend="after", blend_weight=1.0).decode(engine.tools, s)
    outside = (s.mask == 0).expand_as(y0)
    assert torch.equal(y0[outside], s.x0[outside])  # y_0 <- m y_0 + (1 - m) x_0
    assert float((free - s.x0)[outside].abs().mean()) > 1e-3  # without it the background drifts
    # the ITO steps before t_u are the same decode: the blend acts only after them
    assert all(torch.equal(free_ito[k], seen[k]) for k in free_ito)
    assert not torch.equal(y0[~outside], free[~outside])  # inside, the decode runs on (the UNet sees the blend)


def test_the_blend_follows_lam_unless_its_weight_is_set(state):
    """blend_weight None: w = lam, so lam 0 blends nothing (the edit may land on G) and lam 1 blends fully."""
    engine, s = state
    s.g_traj = {t: x + 0.5 * torch.randn_like(x) for t, x in s.x_traj.items()}
    decode = lambda lam, **ito: (setattr(s, "lam", lam), with_ito(engine, **ito).decode(engine.tools, s))[1]  # noqa
    assert torch.equal(decode(0.0, update_steps=3, blend="after"), decode(0.0, blend="none"))
    assert torch.equal(decode(1.0, blend="after"), decode(1.0, blend_weight=1.0))
    free, full = decode(0.6, blend="none"), decode(0.6, blend="after", blend_weight=1.0)
    half = decode(0.6, blend_weight=None)
    outside = (s.mask == 0).expand_as(half)
    gap = lambda y: float((y - s.x0)[outside].abs().mean())  # noqa: E731
    assert gap(full) == 0 < gap(half) < gap(free)


def test_lam_schedule_ending_at_one_brings_the_background_back_onto_the_inversion(state):
    """lam from 0 to 1 over the ITO steps: the last steps pull y_t outside the mask back onto x_t, where a
    constant lam 0 leaves it on the guidance trajectory. Adam's fresh steps move a latent by about lr per
    inner step, so the pull per timestep is bounded by k * lr: k = 8 here lets it close the gap."""
    engine, s = state
    s.lam = 0.0
    s.g_traj = {t: x + 0.5 * torch.randn_like(x, generator=torch.Generator().manual_seed(t))
                for t, x in s.x_traj.items()}
    errors = {}
    for name, lam_end in (("constant", None), ("schedule", 1.0)):
        seen = {}
        engine.emit = lambda stage, kind, i, t, y, **_: seen.update({(kind, i): (t, y.clone())})
        with_ito(engine, lam_end=lam_end, inner_steps=8).decode(engine.tools, s)
        t, y = seen[("ito", 5)]
        outside = (s.mask == 0).expand_as(y)
        errors[name] = float((y - s.x_traj[t])[outside].abs().mean())
    assert errors["schedule"] < 0.5 * errors["constant"], errors
    lam_at = linear_lam(0.2, 1.0, 1, 5)
    assert [round(lam_at(i), 6) for i in range(1, 6)] == [0.2, 0.4, 0.6, 0.8, 1.0] and lam_at(0) == 0.2


def test_a_schedule_to_a_lower_lam_makes_the_guidance_image(state):
    engine, _ = state
    assert not engine.guided(1.0)
    with_ito(engine, lam_end=0.5)
    assert engine.guided(1.0)


def test_outside_guidance_scale_is_a_cfg_map(state):
    """Outside the mask the steps after t_u use ito.outside_guidance_scale, inside sampling.guidance_scale:
    one UNet batch whose CFG mix is a map."""
    engine, s = state
    x, t = s.x_traj[max(s.x_traj)], max(s.x_traj)
    cond, uncond = s.sides.edit
    scale = s.mask * 7.5 + (1 - s.mask) * 1.0
    mixed = engine.denoiser(x, t, cond, uncond, scale)
    inside = s.mask.bool().expand_as(x)
    assert torch.allclose(mixed[inside], engine.denoiser(x, t, cond, uncond, 7.5)[inside], atol=1e-4)
    assert torch.allclose(mixed[~inside], engine.denoiser(x, t, cond, None)[~inside], atol=1e-4)
    same = with_ito(engine, update_steps=2, outside_guidance_scale=7.5).decode(engine.tools, s)
    plain = with_ito(engine, outside_guidance_scale=None).decode(engine.tools, s)
    assert torch.allclose(same, plain, atol=1e-5)


def test_guidance_rescale_matches_the_conditional_std():
    eps_cond = torch.randn(2, 4, 8, 8)
    eps = 3.0 * torch.randn(2, 4, 8, 8)
    full = rescale_guidance(eps, eps_cond, 1.0)
    assert torch.allclose(full.std(dim=(1, 2, 3)), eps_cond.std(dim=(1, 2, 3)), rtol=1e-5)
    assert torch.equal(rescale_guidance(eps, eps_cond, 0.0), eps)
    with pytest.raises(ConfigError, match="guidance_rescale"):
        SamplingConfig(guidance_rescale=1.5)
    with pytest.raises(ConfigError, match="ito.blend"):
        ITOConfig(blend="always")


def test_seed_shift_changes_the_edit_seed_not_the_scene(tmp_path):
    from framework.toy.datasets import toy_requests

    base = toy_requests(2, ("pose",), "val", 0, 32, tmp_path)
    shifted = toy_requests(2, ("pose",), "val", 0, 32, tmp_path, seed_shift=1000)
    assert [a.seed + 1000 for a in base] == [b.seed for b in shifted]
    assert [a.image for a in base] == [b.image for b in shifted]


def write_run(folder, values: dict[str, dict[str, float]], unet: int):
    """A finished run folder as the sweep writes it: summary.json, results.csv, one result.json per edit."""
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"parameters": {"method": "framework.lightning.module.EditModule",
                                                                    "lam": 0.6, "ito": {"update_steps": 15}}}))
    edits = sorted(next(iter(values.values())))
    rows = ["id," + ",".join(values)] + [e + "," + ",".join(str(values[m][e]) for m in values) for e in edits]
    (folder / "results.csv").write_text("\n".join(rows) + "\n")
    for e in edits:
        (folder / e).mkdir()
        (folder / e / "result.json").write_text(json.dumps({"unet_evaluations": {"final": unet, "mask": 10}}))


def test_paired_study_groups_seeds_and_reads_the_difference(tmp_path):
    from framework.evaluation.paired import compare, read_settings

    edits = [f"e{i}" for i in range(40)]
    base = {e: 0.05 + 0.001 * i for i, e in enumerate(edits)}
    write_run(tmp_path / "default_s0", {"gt/background_l1": base}, 50)
    write_run(tmp_path / "default_s1", {"gt/background_l1": {e: v + 0.002 for e, v in base.items()}}, 50)
    write_run(tmp_path / "blend_s0", {"gt/background_l1": {e: v - 0.01 for e, v in base.items()}}, 30)
    settings = read_settings(tmp_path)
    assert sorted(settings) == ["blend", "default"] and len(settings["default"].seeds) == 2
    rows = {r["setting"]: r for r in compare(settings, "default", ["gt/background_l1"])}
    blend = rows["blend"]["gt/background_l1"]
    diff, low, high = blend["diff"]
    assert diff == pytest.approx(-0.011) and low == pytest.approx(-0.011) and high == pytest.approx(-0.011)
    assert blend["floor"] is None and rows["blend"]["unet"] == 30  # the mask stage aside (shared by a cache)
    assert rows["default"]["gt/background_l1"]["floor"] == pytest.approx(0.002 / 2 ** 0.5)


def test_the_blend_margin_frees_a_ring_around_the_mask(state):
    """blend_margin 1: the latents in the ring one latent pixel around the mask decode freely after t_u (the edit
    may finish what the mask missed there); farther out they end on x_0 as with no margin."""
    from framework.stages import grown

    engine, s = state
    ring = grown(s.mask, 1) - s.mask
    assert float(ring.sum()) == 8  # the row below the top-half mask
    y0 = with_ito(engine, update_steps=3, blend="after", blend_weight=1.0, blend_margin=1).decode(engine.tools, s)
    far = (grown(s.mask, 1) == 0).expand_as(y0)
    assert torch.equal(y0[far], s.x0[far])
    assert float((y0 - s.x0)[ring.bool().expand_as(y0)].abs().mean()) > 1e-3
