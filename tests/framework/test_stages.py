"""Stage plugins alone, and stages written outside the packages selected in YAML by class_path."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from framework.core.errors import EditError
from framework.core.procedure import EditEngine
from framework.core.settings import MaskConfig, SamplingConfig
from framework.io.manifests import load_manifest, load_request
from framework.stages import GivenMask, NoiseDifferenceMask, NoMask, given_mask, method_slots
from tests.conftest import ROOT


def user_stages() -> str:
    """The `my_stages.py` block of docs/stages.md: a user's inversion and mask estimator, from the page alone."""
    page = (ROOT / "docs" / "stages.md").read_text()
    blocks = re.findall(r"```python\n(# my_stages.py\n.*?)```", page, flags=re.S)
    assert len(blocks) == 1, "docs/stages.md must show one `# my_stages.py` block"
    return blocks[0]


def test_user_stages_by_class_path(tmp_path, tiny_dirs, manifest):
    from framework.lightning.cli import main
    from tests.framework.test_cli import FAST, write_config

    (tmp_path / "my_stages.py").write_text(user_stages())
    sys.path.insert(0, str(tmp_path))
    try:
        out = tmp_path / "out"
        config = write_config(tmp_path / "exp.yaml", tiny_dirs, manifest, out,
                              inversion={"class_path": "my_stages.PlainDDIMInversion"},
                              mask_estimator={"class_path": "my_stages.LeftColumns", "init_args": {"columns": 2}})
        main(["fit", "--config", str(config), *FAST, "--data.limit", "1"])
        import my_stages

        # the input's inversion (the guidance image is not refined, so G only needs its trajectory)
        assert my_stages.CALLS["inversion"] == 1
        mask = np.asarray(Image.open(out / "text" / "mask.png")) > 127  # 64 px: 8 px per latent column
        assert mask[:, :16].all() and not mask[:, 16:].any()
        summary = json.loads((out / "summary.json").read_text())
        assert summary["parameters"]["stages"]["mask_estimator"] == {"class": "my_stages.LeftColumns", "columns": 2}
        assert summary["parameters"]["stages"]["inversion"]["class"] == "my_stages.PlainDDIMInversion"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_stages", None)


def test_shipped_compositions_parse_in_yaml(tmp_path, tiny_dirs, manifest):
    """A baseline as YAML: EditModule with the DiffEdit decoder gives DiffEdit's edit."""
    from framework.lightning.cli import main
    from tests.framework.test_cli import FAST, write_config

    runs = {"yaml": {"decoder": {"class_path": "framework.stages.MaskBlendDecode"}}, "class": {}}
    for name, slots in runs.items():
        config = write_config(tmp_path / f"{name}.yaml", tiny_dirs, manifest, tmp_path / name, **slots)
        if name == "class":
            data = yaml.safe_load(config.read_text())
            data["model"]["class_path"] = "framework.lightning.baselines.DiffEdit"
            config.write_text(yaml.safe_dump(data))
        main(["fit", "--config", str(config), *FAST, "--data.limit", "1"])
    a, b = (np.asarray(Image.open(tmp_path / n / "text" / "edit.png")) for n in runs)
    assert np.array_equal(a, b)
    record = json.loads((tmp_path / "yaml" / "text" / "result.json").read_text())
    assert record["guidance_image"] is False and "guidance" not in record["unet_evaluations"]


@pytest.fixture
def state(backbone, manifest):
    from conditioners.text import TextConditioner

    engine = EditEngine(backbone, [TextConditioner()], [], sampling=SamplingConfig(steps=6),
                        **method_slots(mask=MaskConfig(seeds=2)))
    request = load_request(load_manifest(manifest)[0], None)
    s = engine.start(request, 1.0, 0)
    engine.encode(s)
    return engine, s


def test_the_pages_inversion_is_the_shipped_ddim_inversion(state, tmp_path):
    """The inversion written from docs/stages.md alone gives the shipped DDIMInversion's trajectory exactly."""
    from framework.stages import DDIMInversion

    engine, s = state
    (tmp_path / "my_stages.py").write_text(user_stages())
    sys.path.insert(0, str(tmp_path))
    try:
        import my_stages

        job = engine.inversion_job(s.sides.inversion, s.sides.source, s.schedule, s.n_final, s.n_final)
        mine, shipped = my_stages.PlainDDIMInversion().invert(s.x0, job), DDIMInversion().invert(s.x0, job)
        assert list(mine.trajectory) == list(shipped.trajectory) and len(mine.trajectory) == s.n_final
        assert all(torch.equal(mine.trajectory[t], shipped.trajectory[t]) for t in shipped.trajectory)
        mask, soft, source = my_stages.LeftColumns(columns=3).estimate(engine.tools, s)
        assert mask.shape == (1, 1, 8, 8) and mask[..., :3].all() and not mask[..., 3:].any() and source == "estimated"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_stages", None)


def test_given_and_no_mask_alone(state):
    engine, s = state
    with pytest.raises(EditError, match="has no mask"):
        GivenMask().estimate(engine.tools, s)
    s.request.mask = torch.zeros(1, 1, 64, 64)
    s.request.mask[..., :20, :9] = 1
    mask, soft, source = GivenMask().estimate(engine.tools, s)
    expected = torch.zeros(1, 1, 8, 8)
    expected[..., :3, :2] = 1  # 'cover': every 8 px block touched by the marked pixels
    assert torch.equal(mask, expected) and soft is None and source == "given"
    area = torch.zeros(1, 1, 8, 8)
    area[..., :2, :1] = 1  # 'area': only blocks more than half marked (row block 2 is half, column block 1 1/8)
    assert torch.equal(given_mask(s.request.mask, (8, 8), "area"), area)
    empty, _, source = NoMask().estimate(engine.tools, s)
    assert float(empty.sum()) == 0 and empty.shape == (1, 1, 8, 8) and source == "none"


def test_noise_difference_mask_alone_matches_eq7(state):
    """The estimator's soft map is estimate_soft_mask's (Eq. 7), thresholded at tau."""
    from framework.core.masks import binary_mask, estimate_soft_mask

    engine, s = state
    mask, soft, source = NoiseDifferenceMask(seeds=2).estimate(engine.tools, s)
    expected, _ = estimate_soft_mask(s.x0, engine.denoiser, s.sides.source, s.sides.edit, s.schedule,
                                     engine.mask_estimator, 0, 7.5)
    assert torch.equal(soft[0, 0], expected) and torch.equal(mask, binary_mask(expected, 0.1))
    assert source == "estimated" and 0 < float(mask.mean()) < 1


def test_noise_encoded_guidance_alone(state):
    """G decoded from the random-noise encoding with lam = 1 ITO; g_t is G's DDIM inversion under C_EDIT
    (guidance.reference: inversion, the paper's)."""
    from framework.core.ddim import ddim_invert
    from framework.stages import NoiseEncodedGuidance
    from losses.preservation import MaskedMSEPreservation

    engine, s = state
    engine.losses = [MaskedMSEPreservation()]
    guidance = NoiseEncodedGuidance(update_steps=3, reference="inversion")
    engine.invert(s)
    s.mask = torch.zeros_like(s.x0[:, :1])
    s.mask[..., :4, :] = 1
    g0, g_traj = guidance.generate(engine.tools, s, s.n_final)
    assert g0.shape == s.x0.shape and list(g_traj) == list(s.x_traj)
    expected = ddim_invert(g0, engine.eps(s.sides.edit, 1.0), s.schedule, s.n_final)
    assert all(torch.equal(expected[t], g_traj[t]) for t in expected)
    engine.losses = []  # no ITO: the guidance decode is the plain CFG decode from the noise encoding
    plain, _ = guidance.generate(engine.tools, s, s.n_final)
    assert float((plain - g0).abs().max()) > 1e-3  # preservation ITO pulled G towards the input


def test_decode_reference_is_the_latents_g_own_decode_passed(state):
    """guidance.reference: decode (the default): g_t at each timestep G's decode visited is the latents the
    UNet saw there; here without ITO, so exactly the plain CFG decode's trajectory from the noise encoding."""
    from framework.core.ddim import ddim_decode, noise_encode, seeded_noise
    from framework.core.settings import GuidanceConfig
    from framework.stages import NoiseEncodedGuidance

    engine, s = state
    engine.losses, guidance = [], NoiseEncodedGuidance(update_steps=3, decode="full")  # 'needed': test_cost_sharing
    assert guidance.reference == "decode" and GuidanceConfig().reference == "decode"
    engine.invert(s)
    s.mask = torch.zeros_like(s.x0[:, :1])
    g0, g_traj = guidance.generate(engine.tools, s, s.n_final)
    start = noise_encode(s.x0, seeded_noise(tuple(s.x0.shape), s.seed + 1, s.x0.device),
                         s.schedule.alpha(s.schedule.decode_timesteps(s.n_final)[0]))
    seen = {}

    def record(i, t, y):
        seen[t] = y.clone()
        return y
    plain = ddim_decode(start, engine.eps(s.sides.edit, engine.sampling.guidance_scale), s.schedule, s.n_final, record)
    assert torch.equal(plain, g0) and seen and set(seen) <= set(g_traj)
    assert all(torch.equal(seen[t], g_traj[t]) for t in seen)


# ------------------------------------------------------------------------------ a stage's own settings
SLOW_GROUPS = ["--model.sampling.steps", "6"]  # FAST less the groups: each run below sets them its own way


def test_a_group_and_the_stage_init_args_are_one_edit(tmp_path, tiny_dirs, manifest):
    """`model.mask` / `model.ito` / `model.guidance` are the init_args of the method's stages: naming the stages
    with those init_args gives the same edit, byte for byte, and records the same settings."""
    from framework.lightning.cli import main
    from tests.framework.test_cli import write_config

    mask, ito, guidance = {"seeds": 2, "threshold": 0.3}, {"update_steps": 4, "balance": "none"}, {"update_steps": 3}
    runs = {
        "groups": {"mask": mask, "ito": ito, "guidance": guidance},
        "stages": {"mask_estimator": {"class_path": "framework.stages.NoiseDifferenceMask", "init_args": mask},
                   "decoder": {"class_path": "framework.stages.ITODecode", "init_args": ito},
                   "guidance_generator": {"class_path": "framework.stages.NoiseEncodedGuidance",
                                          "init_args": {**guidance, "balance": "none"}}},
    }
    for name, model in runs.items():
        config = write_config(tmp_path / f"{name}.yaml", tiny_dirs, manifest, tmp_path / name, **model)
        main(["fit", "--config", str(config), *SLOW_GROUPS, "--data.limit", "2"])
    for edit in ("text", "pose"):
        a, b = (np.asarray(Image.open(tmp_path / run / edit / "edit.png")) for run in runs)
        assert np.array_equal(a, b), edit
    settings = [json.loads((tmp_path / run / "summary.json").read_text())["parameters"] for run in runs]
    assert settings[0]["mask"] == settings[1]["mask"] and settings[0]["mask"]["threshold"] == 0.3
    assert settings[0]["stages"] == settings[1]["stages"]
    assert settings[0]["stages"]["guidance_generator"]["balance"] == "none"  # the default G follows model.ito


def test_a_setting_in_two_places_is_refused_before_any_model_work(tiny_dirs):
    from functools import partial

    from framework.backbones.sd import StableDiffusion
    from framework.core.errors import ConfigError
    from framework.pipeline import EditPipeline
    from framework.stages import ITODecode

    EditPipeline = partial(EditPipeline, StableDiffusion(str(tiny_dirs["sd"])))  # noqa: N806 - never loaded

    with pytest.raises(ConfigError, match=r"model.mask and model.mask_estimator .*both set"):
        EditPipeline(mask={"threshold": 0.3}, mask_estimator=NoiseDifferenceMask(seeds=2))
    with pytest.raises(ConfigError, match=r"ito.update_steps \(t_u = 30\) exceeds the 20 decoding steps"):
        EditPipeline(decoder=ITODecode(update_steps=30))
    # the group's defaults beside a named stage are no conflict (a YAML lists every group)
    pipe = EditPipeline(mask=MaskConfig(), mask_estimator=NoiseDifferenceMask(seeds=2))
    assert pipe.mask.seeds == 2 and pipe.mask is pipe.mask_estimator


def test_assigning_a_group_rebuilds_its_stage(tiny_dirs):
    from dataclasses import replace
    from functools import partial

    from framework.backbones.sd import StableDiffusion
    from framework.core.errors import ConfigError
    from framework.pipeline import EditPipeline
    from framework.stages import ITODecode, NoiseEncodedGuidance

    EditPipeline = partial(EditPipeline, StableDiffusion(str(tiny_dirs["sd"])))  # noqa: N806 - never loaded

    pipe = EditPipeline()
    pipe.mask = replace(pipe.mask, threshold=0.3)
    assert isinstance(pipe.mask_estimator, NoiseDifferenceMask) and pipe.mask_estimator.threshold == 0.3
    pipe.ito = {"update_steps": 5, "loss_mask": "soft"}
    assert isinstance(pipe.decoder, ITODecode) and pipe.decoder.update_steps == 5
    assert isinstance(pipe.guidance_generator, NoiseEncodedGuidance) and pipe.guidance_generator.loss_mask == "soft"
    pipe.guidance = {"update_steps": 2}
    assert pipe.guidance_generator.update_steps == 2 and pipe.guidance_generator.loss_mask == "soft"
    with pytest.raises(ConfigError, match="exceeds"):
        pipe.ito = {"update_steps": 50}
    assert pipe.decoder.update_steps == 5 and pipe.ito.update_steps == 5  # a refused value changes nothing
    # a guidance stage named with its own objective keeps it when model.ito changes
    own = EditPipeline(guidance_generator=NoiseEncodedGuidance(balance="none"))
    own.ito = {"balance": "gradient", "update_steps": 3}
    assert own.guidance_generator.balance == "none" and own.decoder.update_steps == 3
