"""A checkpoint of a family the project cannot run yet (SD3, FLUX, ...) is refused in one line, before any weights load;
an SDXL one picks the SDXL backbone.

The SDXL and SD3 folders are written by diffusers' own pipeline classes (hub layout, tiny random weights), the way
a user's download would look, not hand-made configs.
"""

from __future__ import annotations

import pytest
import torch

from framework.backbones.loading import class_family
from framework.backbones.sd import StableDiffusion
from framework.core.errors import ModelLoadError
from framework.lightning.cli import main
from tests.framework.test_cli import FAST, write_config


def _clip_pair(hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from framework.toy.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37, num_hidden_layers=1,
                            num_attention_heads=4, max_position_embeddings=77, projection_dim=hidden,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return tokenizer, CLIPTextModel(config), CLIPTextModelWithProjection(config)


@pytest.fixture(scope="module")
def sdxl_dirs(tmp_path_factory):
    """An SDXL pipeline folder and a matching SDXL ControlNet (FACTS.md: 80 = 6 time ids x 8 + the pooled 32)."""
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("sdxl")
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                                attention_head_dim=8, addition_embed_type="text_time", addition_time_embed_dim=8,
                                projection_class_embeddings_input_dim=80, norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8)  # /8, as SDXL's
    tokenizer, text_encoder, _ = _clip_pair()
    _, _, text_encoder_2 = _clip_pair()
    StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                              tokenizer_2=tokenizer, unet=unet, scheduler=EulerDiscreteScheduler()
                              ).save_pretrained(root / "sd")
    ControlNetModel.from_unet(unet).save_pretrained(root / "controlnet")
    return {"sd": root / "sd", "pose": root / "controlnet"}


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    """An SD3 pipeline folder: an MMDiT transformer and no unet/, two CLIP encoders and no T5."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("sd3")
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=64,
                                        caption_projection_dim=16, pooled_projection_dim=64, out_channels=16)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=16, norm_num_groups=8,
                        shift_factor=0.06, use_quant_conv=False, use_post_quant_conv=False)
    tokenizer, _, text_encoder = _clip_pair()
    _, _, text_encoder_2 = _clip_pair()
    StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                             text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                             tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None).save_pretrained(root)
    return root


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if any diffusers or transformers weights are read."""
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    def refuse(*args, **kwargs):
        pytest.fail("weights were read")

    monkeypatch.setattr(ModelMixin, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))


def test_sd3_and_sdxl_folders_pick_their_backbones_and_a_pixart_one_is_refused_naming_its_family(
        tmp_path, sdxl_dirs, sd3_dir, no_weights):
    import json
    import shutil

    from framework.backbones.sd3 import StableDiffusion3

    backbone = StableDiffusion(str(sd3_dir))  # configs only: no weights read
    assert type(backbone) is StableDiffusion3 and backbone.family == "SD3"
    backbone = StableDiffusion(str(sdxl_dirs["sd"]))
    assert type(backbone).__name__ == "StableDiffusionXL" and backbone.family == "SDXL"
    other = tmp_path / "pixart"
    shutil.copytree(sd3_dir, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps(dict(index, _class_name="PixArtSigmaPipeline")))
    with pytest.raises(ModelLoadError) as info:
        StableDiffusion(str(other))
    message = str(info.value)
    assert f"'{other}' is PixArt (PixArtSigmaPipeline in its model_index.json)" in message, message
    assert "this project runs SD 1.x, SDXL, SD3, FLUX" in message and "incomplete" not in message and "\n" not in message


def test_the_cli_refuses_an_sd15_controlnet_on_sd3_in_one_line(tmp_path, sd3_dir, tiny_dirs, manifest, capsys,
                                                                no_weights):
    config = write_config(tmp_path / "other.yaml", {"sd": sd3_dir, "pose": tiny_dirs["pose"]}, manifest,
                          tmp_path / "out")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), *FAST])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) <= 2 and lines[-1].startswith("error: ") and "is an SD 1.x model but the backbone" in lines[-1]
    assert "is SD3: use a ControlNet for SD3 such as InstantX/SD3-Controlnet-Pose" in lines[-1], lines
    assert not (tmp_path / "out" / "text").exists()


def test_an_unseen_sd3_folder_with_its_controlnet_edits_through_sd3_pose_yaml(tmp_path, sd3_dir, manifest,
                                                                              monkeypatch):
    """A folder written by diffusers' own StableDiffusion3Pipeline (no T5, a two-block VAE, never seen by the
    project) and an SD3ControlNetModel made from its transformer edit through the shipped experiments/sd3_pose.yaml
    with only the `pretrained` values (and where the files go) changed."""
    import json

    import yaml
    from diffusers import SD3ControlNetModel

    from tests.conftest import ROOT

    torch.manual_seed(1)  # a ControlNet in the transformer's geometry, as diffusers' own tests build one
    SD3ControlNetModel(sample_size=8, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=8,
                       num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=16,
                       pooled_projection_dim=64, out_channels=16).save_pretrained(tmp_path / "cn")
    monkeypatch.chdir(ROOT)
    config = yaml.safe_load((ROOT / "experiments" / "sd3_pose.yaml").read_text())
    args = config["model"]["init_args"]
    args["backbone"]["init_args"]["pretrained"] = str(sd3_dir)
    args["conditioners"][0]["init_args"]["pretrained"] = str(tmp_path / "cn")
    args["output_dir"] = str(tmp_path / "out")
    config["trainer"]["logger"] = False
    config["data"]["init_args"]["manifest"] = str(manifest)
    (tmp_path / "sd3_pose.yaml").write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(tmp_path / "sd3_pose.yaml"), *FAST, "--data.resolution", "64", "--data.limit", "2"])
    record = json.loads((tmp_path / "out" / "pose" / "result.json").read_text())
    assert record["modalities"] == ["pose"] and record["unet_evaluations"]["final"] > 0
    assert (tmp_path / "out" / "pose" / "edit.png").exists()


def test_an_unseen_sdxl_folder_with_its_controlnet_edits_through_sdxl_pose_yaml(tmp_path, sdxl_dirs, manifest,
                                                                                monkeypatch):
    """The pair that used to load and fail mid-edit in `added_cond_kwargs`: a folder written by diffusers' own
    StableDiffusionXLPipeline (Euler scheduler, one-layer text encoders, never seen by the project) and a ControlNet made from its
    UNet edit through the shipped experiments/sdxl_pose.yaml with only the `pretrained` values (and where the files
    go) changed."""
    import json

    import yaml

    from tests.conftest import ROOT

    monkeypatch.chdir(ROOT)
    config = yaml.safe_load((ROOT / "experiments" / "sdxl_pose.yaml").read_text())
    args = config["model"]["init_args"]
    args["backbone"]["init_args"]["pretrained"] = str(sdxl_dirs["sd"])
    args["conditioners"][0]["init_args"]["pretrained"] = str(sdxl_dirs["pose"])
    args["output_dir"] = str(tmp_path / "out")
    config["trainer"]["logger"] = False
    config["data"]["init_args"]["manifest"] = str(manifest)
    (tmp_path / "sdxl_pose.yaml").write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(tmp_path / "sdxl_pose.yaml"), *FAST, "--data.resolution", "64", "--data.limit", "2"])
    record = json.loads((tmp_path / "out" / "pose" / "result.json").read_text())
    assert record["modalities"] == ["pose"] and record["unet_evaluations"]["final"] > 0
    assert (tmp_path / "out" / "pose" / "edit.png").exists()


def test_class_names_of_other_families_and_of_sd_1x():
    assert [class_family(n) for n in ("StableDiffusionXLControlNetPipeline", "StableDiffusion3Pipeline",
                                      "FluxPipeline", "SD3ControlNetModel", "IFPipeline", "PixArtSigmaPipeline")] == [
        "SDXL", "SD3", "FLUX", "SD3", "DeepFloyd IF", "PixArt"]
    assert [class_family(n) for n in ("StableDiffusionPipeline", "StableDiffusionControlNetPipeline",
                                      "ControlNetModel", "UNet2DConditionModel", None)] == [None] * 5
