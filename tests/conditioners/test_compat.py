"""A ControlNet or T2I-Adapter of another model family is refused at load, from its config, naming one that fits."""

from __future__ import annotations

import json
import shutil

import pytest

from conditioners import ControlNetConditioner, T2IAdapterConditioner
from conditioners.compat import adapter_mismatch, controlnet_mismatch, family
from framework.core.errors import ModelLoadError


def _variant(tmp_path, folder, name, **changes):
    """A copy of a model folder whose config.json differs by `changes` (the weights stay: they are never read)."""
    copy = tmp_path / name
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, **changes}))
    return copy


@pytest.mark.parametrize("changes, made_for, differs", [
    ({"cross_attention_dim": 1024}, "SD 2.x", "cross_attention_dim 1024 vs the UNet's 32"),
    ({"block_out_channels": [32, 128]}, "a model with cross-attention 32", "block_out_channels [32, 128]"),
])
def test_a_controlnet_of_another_family_is_refused_before_its_weights_load(tmp_path, tiny_dirs, backbone, changes,
                                                                         made_for, differs):
    folder = _variant(tmp_path, tiny_dirs["pose"], "cn", **changes)
    with pytest.raises(ModelLoadError) as info:
        ControlNetConditioner("pose", str(folder)).load(backbone)
    message = str(info.value)
    assert f"was made for {made_for}" in message and differs in message
    assert str(folder) in message and "use a ControlNet for a model with cross-attention 32" in message
    ControlNetConditioner("pose", str(tiny_dirs["pose"])).load(backbone)  # the matching one loads


@pytest.mark.parametrize("cls, name, changes, family_name", [  # SDXL ones: tests/framework/test_sdxl.py (pairing)
    (ControlNetConditioner, "pose", {"_class_name": "HunyuanDiT2DControlNetModel"}, "Hunyuan-DiT"),
    (ControlNetConditioner, "pose", {"_class_name": "PixArtControlNetModel"}, "PixArt"),
])
def test_a_model_of_a_family_the_project_cannot_run_is_refused_when_configured(tmp_path, tiny_dirs, monkeypatch, cls,
                                                                              name, changes, family_name):
    from diffusers import ModelMixin

    monkeypatch.setattr(ModelMixin, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("weights read")))
    folder = _variant(tmp_path, tiny_dirs[name], "other", **changes)
    with pytest.raises(ModelLoadError) as info:
        cls("pose", str(folder))  # at construction: before the backbone's weights, let alone its own
    message = str(info.value)
    assert f"'{folder}' is {family_name} (" in message and "this project runs SD 1.x, SDXL, SD3, FLUX" in message
    assert "\n" not in message


def test_family_names_and_the_checkpoint_that_fits():
    sd15 = {"cross_attention_dim": 768, "block_out_channels": [320, 640, 1280, 1280], "addition_embed_type": None}
    sd21 = dict(sd15, cross_attention_dim=1024)
    assert (family(sd15), family(sd21), family(dict(sd15, addition_embed_type="text_time"))) == (
        "SD 1.x", "SD 2.x", "SDXL")
    assert controlnet_mismatch(sd15, sd15) is None
    assert controlnet_mismatch(sd21, sd15) == "cross_attention_dim 1024 vs the UNet's 768"
    assert adapter_mismatch({"channels": [320, 640, 1280, 1280], "adapter_type": "full_adapter"}, sd15) is None
    assert "SDXL" in adapter_mismatch({"channels": [320, 640, 1280], "adapter_type": "full_adapter_xl"}, sd15)


@pytest.mark.parametrize("changes, differs", [
    ({"channels": [64, 128]}, "channels [64, 128] vs the UNet's block_out_channels [32, 64]"),
])
def test_a_t2i_adapter_that_does_not_fit_is_refused(tmp_path, tiny_dirs, backbone, changes, differs):
    folder = _variant(tmp_path, tiny_dirs["adapter"], "adapter", **changes)
    with pytest.raises(ModelLoadError, match="use a T2I-Adapter for") as info:
        T2IAdapterConditioner("pose", str(folder)).load(backbone)
    assert differs in str(info.value)
