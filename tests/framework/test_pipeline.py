"""EditPipeline, the Python API: the same pixels as `fit`, precision, short conditioner names, plugins as objects,
input checks before any model work, step callbacks without a Trainer."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw

from conditioners import ControlNetConditioner, TextConditioner
from framework.backbones.sd import StableDiffusion
from framework.core.errors import ConfigError, ManifestError
from framework.core.settings import GuidanceConfig, ITOConfig, MaskConfig, SamplingConfig
from framework.io.outputs import to_pil
from framework.lightning.cli import main
from framework.lightning.module import EditModule
from framework.pipeline import EditPipeline, controlnet_for
from losses import MaskedMSEPreservation
from losses.base import EditLoss
from tests.conftest import ROOT, draw_scene
from tests.test_experiments import EXPERIMENTS, swap_models

QUICKSTART = ROOT / "experiments" / "quickstart.yaml"
EXAMPLES = ROOT / "experiments" / "examples"
FAST = ["--model.sampling.steps", "5", "--model.mask.seeds", "2", "--model.ito.update_steps", "3",
        "--model.guidance.update_steps", "3"]
TINY = dict(sampling=SamplingConfig(steps=4), mask=MaskConfig(seeds=1),
            ito=ITOConfig(update_steps=2, inner_steps=1), guidance=GuidanceConfig(update_steps=2))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 64 px input and two pose maps, as PIL images."""
    root = tmp_path_factory.mktemp("scene")
    paths = (draw_scene(root / "input.png"),
             draw_scene(root / "a.png", box=(6, 6, 26, 26), colour=(255, 255, 255), background=(0, 0, 0)),
             draw_scene(root / "b.png", box=(36, 36, 58, 58), colour=(255, 255, 255), background=(0, 0, 0)))
    return [Image.open(p).convert("RGB") for p in paths]


def tiny_pipeline(tiny_dirs, **settings) -> EditPipeline:
    """The tiny random model with a pose ControlNet, unloaded."""
    return EditPipeline(StableDiffusion(str(tiny_dirs["sd"])), [ControlNetConditioner("pose", str(tiny_dirs["pose"]))],
                        **{**TINY, **settings})


@pytest.fixture(scope="module")
def quickstart(one_thread) -> EditPipeline:
    """The quickstart's pipeline (bundled toy model) with the FAST settings."""
    return EditPipeline.from_config(QUICKSTART, FAST)


def fit(tmp_path, rows: list[dict], *args):
    """`python -m framework fit` on the quickstart with these requests; the folder of its edits."""
    (tmp_path / "requests.yaml").write_text(yaml.safe_dump({"requests": rows}))
    main(["fit", "--config", str(QUICKSTART), *FAST, "--data.manifest", str(tmp_path / "requests.yaml"),
          "--model.output_dir", str(tmp_path / "cli"), "--trainer.logger", "false",
          "--trainer.default_root_dir", str(tmp_path), *args])
    return tmp_path / "cli"


def same_pixels(file, image: Image.Image) -> bool:
    return np.array_equal(np.asarray(Image.open(file)), np.asarray(image))


def test_pipeline_equals_fit_to_the_pixel(tmp_path, quickstart):
    """The quickstart's text + pose request through `pipe(...)` and through `python -m framework fit`."""
    row = next(r for r in yaml.safe_load((EXAMPLES / "manifest.yaml").read_text())["requests"]
               if r["id"] == "text_pose_000")
    row = {k: v for k, v in row.items() if k not in ("target", "true_mask")}
    for key in ("source", "edit"):
        row[key] = {m: str(EXAMPLES / p) for m, p in row[key].items()}
    row["image"] = str(EXAMPLES / row["image"])
    out = fit(tmp_path, [row])
    got = quickstart(Image.open(row["image"]), row["source_prompt"], row["edit_prompt"],
               source_maps={m: Image.open(p) for m, p in row["source"].items()},
               edit_maps={m: Image.open(p) for m, p in row["edit"].items()}, seed=row["seed"])
    folder = out / row["id"]
    assert same_pixels(folder / "edit.png", got.image) and same_pixels(folder / "mask.png", got.mask)
    assert same_pixels(folder / "guidance.png", got.guidance)
    record = yaml.safe_load((folder / "result.json").read_text())
    assert got.lam == record["lam"] == 0.8 and got.unet_evaluations == sum(record["unet_evaluations"].values())


def test_an_unseen_image_resized_with_its_maps_and_mask_equals_fit(tmp_path, quickstart):
    """An image the project never saw, 100 x 70 (resized to 64 x 45, cropped to 64 x 40), half-size pose maps and
    a mask: the pipeline sizes PIL images as the data module sizes files."""
    image = Image.new("RGB", (100, 70), (40, 90, 160))
    ImageDraw.Draw(image).ellipse((20, 10, 60, 50), fill=(230, 200, 30))
    poses = []
    for box in ((5, 5, 20, 25), (28, 8, 45, 30)):
        pose = Image.new("RGB", (50, 35))
        ImageDraw.Draw(pose).line(box, fill=(255, 255, 255), width=3)
        poses.append(pose)
    mask = Image.new("L", (100, 70))
    ImageDraw.Draw(mask).rectangle((10, 0, 70, 60), fill=255)
    for name, item in (("input", image), ("a", poses[0]), ("b", poses[1]), ("mask", mask)):
        item.save(tmp_path / f"{name}.png")
    row = {"id": "unseen", "image": str(tmp_path / "input.png"), "source_prompt": "a yellow circle",
           "edit_prompt": "a red circle", "source": {"pose": str(tmp_path / "a.png")},
           "edit": {"pose": str(tmp_path / "b.png")}, "mask": str(tmp_path / "mask.png"), "seed": 5, "lam": 0.7}
    out = fit(tmp_path, [row], "--data.resolution", "64") / "unseen"
    got = quickstart(image, "a yellow circle", "a red circle", source_maps={"pose": poses[0]},
                     edit_maps={"pose": poses[1]}, mask=mask, seed=5, lam=0.7, resolution=64)
    assert got.image.size == (64, 40)
    for name, pixels in (("edit.png", got.image), ("mask.png", got.mask), ("input.png", to_pil(got.result.input)),
                         ("edit_pose.png", to_pil(got.result.edit_maps["pose"]))):
        assert same_pixels(out / name, pixels), name


def test_bf16_on_the_cpu(tiny_dirs, scene, one_thread):
    image, a, b = scene
    pipe = tiny_pipeline(tiny_dirs).to("cpu", torch.bfloat16)
    out = pipe(image, "a red circle", "a blue circle", source_maps={"pose": a}, edit_maps={"pose": b}, lam=0.5)
    assert pipe.dtype == torch.bfloat16 and next(pipe.conditioners[1].parameters()).dtype == torch.bfloat16
    assert out.image.size == (64, 64) and out.guidance is not None and out.lam == 0.5
    assert torch.isfinite(out.result.edit).all()


def test_from_pretrained_takes_short_conditioner_names_and_settings(one_thread):
    pipe = EditPipeline.from_pretrained("builtin:toyworld", conditioners=["pose", "scribble"], lam=0.4,
                                        mask=MaskConfig(threshold=0.3), attention_slicing="auto")
    assert isinstance(pipe.conditioners[0], TextConditioner)
    assert [(type(c), c.modality, c.pretrained) for c in pipe.conditioners[1:]] == [
        (ControlNetConditioner, "pose", "builtin:toyworld"), (ControlNetConditioner, "scribble", "builtin:toyworld")]
    assert (pipe.lam, pipe.mask.threshold, pipe.backbone.attention_slicing) == (0.4, 0.3, "auto")
    assert pipe.backbone.loaded and pipe.modalities == ["pose", "scribble"]
    assert controlnet_for("pose", "stable-diffusion-v1-5/stable-diffusion-v1-5") == \
        "lllyasviel/control_v11p_sd15_openpose"
    with pytest.raises(ConfigError, match="no default ControlNet for modality 'normals'"):
        controlnet_for("normals", "stable-diffusion-v1-5/stable-diffusion-v1-5")


class CountingLoss(EditLoss):
    """An extra loss, passed as an object: pulls y_t towards zero inside the edit region."""

    role = "extra"

    def __init__(self, weight: float = 0.1):
        super().__init__(weight)
        self.calls = 0

    def forward(self, y_t, *, x_t, g_t, mask, t):
        self.calls += 1
        return (mask * y_t).pow(2).mean()


def test_a_custom_loss_object_takes_part_in_the_ito(tiny_dirs, scene, one_thread):
    image, a, b = scene
    loss = CountingLoss()
    pipe = tiny_pipeline(tiny_dirs, losses=[MaskedMSEPreservation(), loss], lam=1.0)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :32] = 1
    pipe(image, "a red circle", "a blue circle", mask=mask)
    assert loss.calls == 1  # the final decode's ITO: t_u = 2 steps, the first skipped, k = 1 (lam 1: no G decode)
    assert pipe.losses[1] is loss


def test_from_config_overrides_as_python_values(one_thread):
    pipe = EditPipeline.from_config(QUICKSTART, lam=0.3, mask={"seeds": 2}, losses=[CountingLoss()])
    assert (pipe.lam, pipe.mask.seeds, pipe.mask.threshold) == (0.3, 2, 0.5)  # the YAML's tau kept
    assert isinstance(pipe.losses[0], CountingLoss) and pipe.modalities == ["pose", "scribble"]
    with pytest.raises(ConfigError, match="unknown setting"):
        EditPipeline.from_config(QUICKSTART, lamda=0.3)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_shipped_experiment_loads_as_a_pipeline(path, tmp_path, tiny_dirs):
    """Any experiment YAML: its model section (models swapped for the tiny ones) and its data.resolution."""
    config = swap_models(yaml.safe_load(path.read_text()), tiny_dirs, tmp_path)
    pipe = EditPipeline.from_config(config)
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert pipe.lam == model.get("lam", 0.6) and pipe.resolution == data.get("resolution")
    assert pipe.modalities == [c["init_args"]["modality"] for c in model.get("conditioners") or []]
    assert pipe.backbone.loaded and not (tmp_path / "edits").exists()  # no run folder: the pipeline writes nothing


@pytest.mark.parametrize("change, message", [
    (dict(edit_maps={"psoe": "b"}, source_maps={"psoe": "a"}), "no conditioner reads \\['psoe'\\]"),
    (dict(image=np.zeros((64, 64, 3))), "expected a PIL image or a tensor"),
    (dict(image=torch.rand(3, 64, 64)), "expected a float tensor \\(1, 3, H, W\\)"),
    (dict(image=torch.rand(1, 3, 64, 64) * 2), "values must be in \\[0, 1\\]"),
    (dict(image=Image.new("RGB", (4, 4))), "sides under 8 pixels"),
    (dict(edit_maps={"pose": Image.new("RGB", (64, 32))}), "aspect ratios differ"),
    (dict(mask=torch.ones(1, 3, 64, 64)), "mask: expected a float tensor \\(1, 1, H, W\\)"),
    (dict(edit_prompt="a red circle", edit_maps={}), "no edit condition"),
    (dict(edit_maps={"pose": "b"}, source_maps={}), "have no source map"),
])
def test_bad_input_is_refused_before_any_model_work(tiny_dirs, scene, change, message):
    image, a, b = scene
    maps = {"a": a, "b": b}
    args = {**dict(image=image, source_prompt="a red circle", edit_prompt="a blue circle",
                   source_maps={"pose": a}, edit_maps={"pose": b}), **change}
    for side in ("source_maps", "edit_maps"):
        args[side] = {k: maps.get(v, v) if isinstance(v, str) else v for k, v in args[side].items()}
    pipe = tiny_pipeline(tiny_dirs)
    with pytest.raises(ManifestError, match=message):
        pipe(**args)
    assert not pipe.backbone.loaded and pipe.engine is None


def test_step_callback_without_a_trainer(tiny_dirs, scene, one_thread):
    image, a, b = scene
    calls = []
    pipe = tiny_pipeline(tiny_dirs)
    pipe(image, "a red circle", "a blue circle", source_maps={"pose": a}, edit_maps={"pose": b}, lam=0.6,
         callback_on_step_end=lambda p, i, t, info: calls.append((p, i, t, info["stage"], info["kind"])))
    assert all(p is pipe for p, *_ in calls)
    steps = {stage: [i for _, i, _, s, kind in calls if s == stage and kind == "step"]
             for stage in ("inversion", "guidance", "final")}
    # G's decode stops after the last g_t the final decode's ITO reads (t_u = 2: guidance.decode 'needed')
    assert steps == {"inversion": [0, 1, 2, 3], "guidance": [0, 1], "final": [0, 1, 2, 3]}
    assert [i for _, i, _, s, kind in calls if s == "final" and kind == "ito"] == [1]  # t_u = 2, first skipped


def test_tensor_inputs_at_their_size_are_used_as_they_are(tiny_dirs, scene):
    image = torch.rand(1, 3, 64, 48)
    pipe = tiny_pipeline(tiny_dirs)
    request = pipe.prepare_request(image, "a", "b", {"pose": torch.rand(1, 3, 64, 48)}, {}, None, None)
    assert torch.equal(request.image, image)  # no 8-bit rounding
    assert request.edit_maps["pose"] is request.source_maps["pose"]
    resized = pipe.prepare_request(image, "a", "b", {}, {}, torch.ones(1, 1, 128, 96), 32)
    assert resized.image.shape == (1, 3, 32, 24) and resized.mask.shape == (1, 1, 32, 24)


def test_the_module_is_a_shell_over_the_pipeline(tiny_dirs, tmp_path):
    """Every model setting of EditModule is the pipeline's; the module's names read and write the pipeline's."""
    module_params = set(inspect.signature(EditModule).parameters) - {"output_dir", "overwrite", "metrics"}
    assert module_params <= set(inspect.signature(EditPipeline).parameters)
    module = EditModule(StableDiffusion(str(tiny_dirs["sd"])), output_dir=str(tmp_path / "never"), lam=0.7)
    assert not (tmp_path / "never").exists()  # checked and made when the weights load, not before
    module.ito_cfg = ITOConfig(update_steps=3)
    module.losses = torch.nn.ModuleList([CountingLoss()])
    assert module.pipeline.ito.update_steps == 3 and isinstance(module.pipeline.losses[0], CountingLoss)
    assert module.lam == module.pipeline.lam == 0.7 and module.backbone is module.pipeline.backbone


def test_the_seed_leaves_the_digest_only_when_every_request_carries_its_own(tiny_dirs, tmp_path):
    """The pipeline's digest is told whether the run's requests seed themselves (EditModule knows its data)."""
    one, other = tiny_pipeline(tiny_dirs, seed=1), tiny_pipeline(tiny_dirs, seed=2)
    assert "seed" in one.deciding_settings() and "seed" not in one.deciding_settings(seeded_requests=True)
    assert one.settings_digest() != other.settings_digest()
    assert one.settings_digest(seeded_requests=True) == other.settings_digest(seeded_requests=True)
    assert one.weights_digest() == other.weights_digest()  # result.json's `weights`: the weights alone
    module = EditModule(StableDiffusion(str(tiny_dirs["sd"])), output_dir=str(tmp_path / "never"))
    assert module.weights_digest() == module.pipeline.weights_digest()
    assert module.settings_digest() == module.pipeline.settings_digest({"method": module.method_name(),
                                                                        "precision": None})  # no data known: kept


def test_a_transparent_input_gets_the_data_modules_note(tiny_dirs, scene):
    from framework.core.errors import EditNote

    rgba = scene[0].convert("RGBA")
    rgba.putalpha(128)
    pipe = tiny_pipeline(tiny_dirs)
    with pytest.warns(EditNote) as notes:
        pipe.prepare_request(rgba, "a", "b", {}, {}, None, None, request_id="glass")
    message = str(notes[0].message)
    assert message.startswith("request 'glass': image is transparent in 100% of its pixels")
    assert "composited onto white" in message


@pytest.mark.parametrize("steps", [5, 10])
def test_t_u_as_a_fraction_follows_the_steps(tiny_dirs, scene, one_thread, steps):
    """update_steps 0.6 is 0.6 of the decode's steps, for the final decode's ITO and G's decode alike."""
    from framework.core.settings import ITOConfig, step_count

    assert [step_count(0.6, n) for n in (20, 25, 28, 5, 10)] == [12, 15, 17, 3, 6] and step_count(7, 20) == 7
    image, a, b = scene
    pipe = tiny_pipeline(tiny_dirs, sampling={"steps": steps}, ito={"update_steps": 0.6},
                         guidance={"update_steps": 0.6})
    events = []
    out = pipe(image, "a red circle", "a blue circle", source_maps={"pose": a}, edit_maps={"pose": b}, lam=0.6,
               callback_on_step_end=lambda p, i, t, info: events.append((info["stage"], info["kind"], i)))
    t_u = round(0.6 * steps)
    assert [i for s, kind, i in events if (s, kind) == ("final", "ito")] == list(range(1, t_u))  # the first skipped
    assert [i for s, kind, i in events if (s, kind) == ("guidance", "ito")] == list(range(t_u))
    assert out.result.record["unet_evaluations"]["guidance"] == 2 * t_u + 2 * min(2, steps - t_u)
    for bad in (1.5, -1, True, "half"):
        with pytest.raises(ConfigError, match="a count of steps .* or a fraction of them"):
            ITOConfig(update_steps=bad)
