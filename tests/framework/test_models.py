"""Model loading: local folders, built-in tiny models, pickle weights refused unless allowed."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from framework.errors import ModelLoadError
from framework.models import StableDiffusion, load_component


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

    from framework import models

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
