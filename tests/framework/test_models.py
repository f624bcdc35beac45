"""Model loading: local folders, built-in tiny models, pickle weights refused unless allowed."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from framework.backbones.loading import load_component
from framework.backbones.sd import StableDiffusion
from framework.core.errors import ModelLoadError


def _to_pickle(folder, safetensors_name, pickle_name):
    """Replace a folder's safetensors weights by a pickle file of the same tensors."""
    state = load_file(folder / safetensors_name)
    (folder / safetensors_name).unlink()
    torch.save(state, folder / pickle_name)


@pytest.mark.parametrize("part, cls_name, weights, pickle_name", [
    ("unet", "UNet2DConditionModel", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    ("text_encoder", "CLIPTextModel", "model.safetensors", "pytorch_model.bin"),
])
def test_pickle_weights_load_only_when_allowed(tmp_path, tiny_dirs, part, cls_name, weights, pickle_name):
    import diffusers
    import transformers

    cls = getattr(diffusers, cls_name, None) or getattr(transformers, cls_name)
    folder = tmp_path / part
    shutil.copytree(tiny_dirs["sd"] / part, folder)
    _to_pickle(folder, weights, pickle_name)
    with pytest.raises(ModelLoadError, match="allow_pickle"):
        load_component(cls, str(folder), part)
    reference = cls.from_pretrained(tiny_dirs["sd"] / part)
    loaded = load_component(cls, str(folder), part, allow_pickle=True)
    name, tensor = next(iter(reference.state_dict().items()))
    assert torch.equal(loaded.state_dict()[name], tensor)


def test_round_trip_through_the_loader_is_bit_identical(tiny_dirs, backbone):
    from diffusers import UNet2DConditionModel

    direct = UNet2DConditionModel.from_pretrained(tiny_dirs["sd"] / "unet")
    for (name, a), b in zip(direct.state_dict().items(), backbone.unet.state_dict().values()):
        assert torch.equal(a, b), name
    assert backbone.vae_scale_factor == 8 and backbone.unet.config.cross_attention_dim == 32


def test_builtin_tiny_model_is_built_once_and_announced(caplog):
    import logging

    from framework.backbones import loading as models

    models._announced.clear()
    with caplog.at_level(logging.WARNING, logger="framework"):
        first = StableDiffusion("builtin:tiny-random").load()
        StableDiffusion("builtin:tiny-random").load()
    assert sum("tiny random weights" in r.message for r in caplog.records) == 1
    image = torch.rand(1, 3, 64, 64)
    assert first.decode_latents(first.encode_image(image)).shape == (1, 3, 64, 64)


def test_not_a_model_folder(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        StableDiffusion(str(tmp_path))


# ------------------------------------------------------------------------ memory options (large images)
def _periodic(size: int, period: int = 32) -> torch.Tensor:
    """A stationary image: one random cell repeated, so every tile has the whole image's statistics."""
    cell = torch.rand(1, 3, period, period, generator=torch.Generator().manual_seed(0))
    return cell.repeat(1, 1, size // period, size // period)


def _calls(module) -> list:
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


@pytest.mark.parametrize("kwargs, match", [({"attention_slicing": "half"}, "attention_slicing"),
                                           ({"attention_slicing": 0}, "attention_slicing"),
                                           ({"vae_tile_size": 100}, "multiple of 8")])
def test_memory_options_are_checked(tiny_dirs, kwargs, match):
    from framework.core.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        StableDiffusion(str(tiny_dirs["sd"]), **kwargs)


def test_attention_slicing_reaches_unet_and_controlnets(tiny_dirs, tmp_path):
    from diffusers.models.attention_processor import AttnProcessor2_0, SlicedAttnProcessor

    from conditioners import ControlNetConditioner
    from framework.lightning.module import EditModule

    module = EditModule(StableDiffusion(str(tiny_dirs["sd"]), attention_slicing="max"),
                        [ControlNetConditioner("pose", str(tiny_dirs["pose"]))], output_dir=str(tmp_path))
    module.setup("fit")
    for model in (module.backbone.unet, module.conditioners[1].controlnet):
        processors = set(map(type, model.attn_processors.values()))
        assert processors == {SlicedAttnProcessor}, processors
    plain = StableDiffusion(str(tiny_dirs["sd"])).load()  # off by default: torch's SDPA stays
    assert set(map(type, plain.unet.attn_processors.values())) == {AttnProcessor2_0}


def test_vae_tiling_leaves_images_up_to_the_tile_unchanged(tiny_dirs, backbone):
    tiled = StableDiffusion(str(tiny_dirs["sd"]), vae_tiling=True).load()  # tile = sample_size = 64 px
    assert tiled.vae.use_tiling and not backbone.vae.use_tiling
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    latents = backbone.encode_image(image)
    assert torch.equal(tiled.encode_image(image), latents)
    assert torch.equal(tiled.decode_latents(latents), backbone.decode_latents(latents))


def test_tiled_vae_runs_per_tile_and_approaches_untiled_as_tiles_grow(tiny_dirs, backbone):
    """diffusers encodes/decodes each tile on its own: its GroupNorm statistics and zero-padded borders
    differ from the whole image's, so tiled != untiled; on the random tiny VAE the gap is large (relative
    mean error 0.7-1.4 for toy scenes at its 64 px default tile). On a stationary image (every tile has
    the image's statistics) only border effects remain, and they shrink as the tile grows. Measured on
    a 512 px periodic image: encode 0.264 (128 px tiles) -> 0.088 (256 px); decode 0.755 -> 0.355."""
    image = _periodic(512)
    x0 = backbone.encode_image(image)
    reference = backbone.decode_latents(x0)
    rel = lambda a, b: float((a - b).abs().mean() / b.abs().mean())  # noqa: E731
    errors = {}
    for tile in (128, 256):
        tiled = StableDiffusion(str(tiny_dirs["sd"]), vae_tiling=True, vae_tile_size=tile).load()
        encoder, decoder = _calls(tiled.vae.encoder), _calls(tiled.vae.decoder)
        errors[tile] = rel(tiled.encode_image(image), x0), rel(tiled.decode_latents(x0), reference)
        stride = int(tile * 0.75)  # diffusers' overlap factor 0.25
        assert len(encoder) == len(decoder) == len(range(0, 512, stride)) ** 2
    assert errors[256][0] <= 0.12 and errors[256][1] <= 0.45, errors
    assert errors[256][0] <= 0.5 * errors[128][0] and errors[256][1] <= 0.6 * errors[128][1], errors


def test_edit_with_memory_options_matches_edit_without_on_a_small_image(tiny_dirs, tmp_path):
    """64 px: VAE tiling does not act (image <= tile) and sliced attention only reorders sums; measured
    max difference of the edited image 4.3e-5 (6 DDIM steps, CFG 7.5, ITO on)."""
    from conditioners import ControlNetConditioner
    from framework.core.settings import GuidanceConfig, ITOConfig, MaskConfig, SamplingConfig
    from framework.io.manifests import load_manifest, load_request
    from framework.lightning.module import EditModule
    from tests.conftest import ROOT

    request = load_request(load_manifest(ROOT / "experiments/examples/manifest.yaml")[3], 64)  # text + pose
    results = []
    for options in ({}, {"attention_slicing": "max", "vae_tiling": True}):
        module = EditModule(StableDiffusion(str(tiny_dirs["sd"]), **options),
                            [ControlNetConditioner("pose", str(tiny_dirs["pose"]))],
                            sampling=SamplingConfig(steps=6), mask=MaskConfig(seeds=2), ito=ITOConfig(update_steps=4),
                            guidance=GuidanceConfig(update_steps=4), output_dir=str(tmp_path / str(len(results))))
        module.setup("fit")
        results.append(module.edit(request))
    off, on = results
    assert torch.equal(on.mask, off.mask)
    assert float((on.edit - off.edit).abs().max()) <= 1e-3


def _hub_cache(tmp_path, folder, repo="some-org/tiny-sd"):
    """A Hugging Face cache holding `folder` as the snapshot of `repo` (the hub's own layout)."""
    cache = tmp_path / "hub"
    root = cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef" * 2 + "01234567"  # 40 hex digits, as the Hub's commit hashes
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    return cache, repo


def test_a_cached_hub_id_loads_offline_at_once_when_the_hub_is_unreachable(tmp_path, tiny_dirs, monkeypatch):
    import time

    import huggingface_hub.constants as hub
    from diffusers import UNet2DConditionModel

    cache, repo = _hub_cache(tmp_path, tiny_dirs["sd"])
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # no offline switch set by the user...
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # ...and a Hub that cannot be reached
    seen = []
    original = UNet2DConditionModel.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get("local_files_only"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", classmethod(spy))
    start = time.perf_counter()
    model = StableDiffusion(repo).load()
    assert time.perf_counter() - start < 30 and seen == [True]  # from the cache, no retries
    reference = StableDiffusion(str(tiny_dirs["sd"])).load()
    name, tensor = next(iter(reference.unet.state_dict().items()))
    assert torch.equal(model.unet.state_dict()[name], tensor)


def test_load_errors_give_the_hint_that_fits_the_cause(tmp_path, tiny_dirs):
    import json

    from diffusers import UNet2DConditionModel

    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_dirs["sd"] / "unet", mixed)
    config = json.loads((mixed / "config.json").read_text())
    (mixed / "config.json").write_text(json.dumps(dict(config, cross_attention_dim=64)))
    with pytest.raises(ModelLoadError) as info:
        load_component(UNet2DConditionModel, str(mixed), "UNet")
    message = str(info.value)
    assert "expected shape" in message and "mixes files of different checkpoints" in message
    assert "ignore_mismatched_sizes" not in message and "safetensors" not in message
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(mixed / "config.json", empty / "config.json")
    with pytest.raises(ModelLoadError, match="no weights file") as info:
        load_component(UNet2DConditionModel, str(empty), "UNet")
    assert "allow_pickle" not in str(info.value)


@pytest.mark.parametrize("part", ["unet", "vae"])
def test_a_folder_missing_a_part_is_incomplete(tmp_path, tiny_dirs, part):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_dirs["sd"], partial)
    shutil.rmtree(partial / part)
    with pytest.raises(ModelLoadError, match=f"is incomplete: missing {part}/config.json"):
        StableDiffusion(str(partial))
