"""Shared fixtures: tiny seeded SD-geometry models written with save_pretrained, loaded by the project's loader."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _offline_and_isolated(tmp_path_factory):
    """No network in tests; built-in models go to a per-session cache."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["WANDB_MODE"] = "offline"
    os.environ["ITO_EDIT_CACHE"] = str(tmp_path_factory.mktemp("builtin-cache"))
    from framework.lightning.cli import quiet_libraries

    quiet_libraries()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: on a shared 2-core runner, thread hand-offs make tiny ops 10-50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Folders of a tiny SD model, two ControlNets (pose, scribble) and a T2I-Adapter."""
    from framework.toy.tiny import save_tiny_adapter, save_tiny_controlnet, save_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny")
    sd = save_tiny_pipeline(root / "sd", seed=0)
    return {
        "sd": sd,
        "pose": save_tiny_controlnet(root / "cn_pose", sd, seed=1),
        "scribble": save_tiny_controlnet(root / "cn_scribble", sd, seed=2),
        "adapter": save_tiny_adapter(root / "adapter", seed=3),
    }


@pytest.fixture(scope="session")
def tiny_sdxl_dirs(tmp_path_factory) -> dict[str, Path]:
    """Folders of a tiny SDXL model (StableDiffusionXLPipeline's hub layout), an SDXL ControlNet (pose, scribble)
    and an SDXL T2I-Adapter."""
    from framework.toy.tiny_sdxl import save_tiny_sdxl, save_tiny_sdxl_adapter, save_tiny_sdxl_controlnet

    root = tmp_path_factory.mktemp("tiny_sdxl")
    sd = save_tiny_sdxl(root / "sd", seed=0)
    return {
        "sd": sd,
        "pose": save_tiny_sdxl_controlnet(root / "cn_pose", sd, seed=1),
        "scribble": save_tiny_sdxl_controlnet(root / "cn_scribble", sd, seed=2),
        "adapter": save_tiny_sdxl_adapter(root / "adapter", seed=3),
    }


@pytest.fixture(scope="session")
def tiny_sd3_dirs(tmp_path_factory) -> dict[str, Path]:
    """Folders of a tiny SD3 model (StableDiffusion3Pipeline's hub layout, T5 included) and an SD3 ControlNet."""
    from framework.toy.tiny_flow import save_tiny_sd3, save_tiny_sd3_controlnet

    root = tmp_path_factory.mktemp("tiny_sd3")
    sd = save_tiny_sd3(root / "sd", seed=0)
    cn = save_tiny_sd3_controlnet(root / "cn_pose", sd, seed=1)
    return {"sd": sd, "pose": cn, "scribble": cn}


@pytest.fixture(scope="session")
def tiny_flux_dirs(tmp_path_factory) -> dict[str, Path]:
    """Folders of a tiny FLUX.1-dev-geometry model (FluxPipeline's hub layout) and a FLUX ControlNet."""
    from framework.toy.tiny_flow import save_tiny_flux, save_tiny_flux_controlnet

    root = tmp_path_factory.mktemp("tiny_flux")
    sd = save_tiny_flux(root / "sd", seed=0, guidance_embeds=True)
    cn = save_tiny_flux_controlnet(root / "cn_pose", sd, seed=1)
    return {"sd": sd, "pose": cn, "scribble": cn}


@pytest.fixture(scope="session")
def backbone(tiny_dirs):
    from framework.backbones.sd import StableDiffusion

    return StableDiffusion(str(tiny_dirs["sd"])).load()


def draw_scene(path: Path, size: int = 64, box=(8, 8, 30, 30), colour=(220, 40, 40), background=(120, 120, 120)):
    """A flat background with one disc: enough structure for masks and maps."""
    image = Image.new("RGB", (size, size), background)
    ImageDraw.Draw(image).ellipse(box, fill=colour)
    image.save(path)
    return path


@pytest.fixture
def manifest(tmp_path) -> Path:
    """A 2-request manifest: a text edit and a pose (layout) edit, 64 px."""
    draw_scene(tmp_path / "input.png")
    draw_scene(tmp_path / "pose_a.png", box=(6, 6, 26, 26), colour=(255, 255, 255), background=(0, 0, 0))
    draw_scene(tmp_path / "pose_b.png", box=(36, 36, 58, 58), colour=(255, 255, 255), background=(0, 0, 0))
    (tmp_path / "manifest.yaml").write_text(
        "requests:\n"
        "  - id: text\n    image: input.png\n    source_prompt: a red circle\n    edit_prompt: a blue circle\n"
        "  - id: pose\n    image: input.png\n    source_prompt: a red circle\n"
        "    source: {pose: pose_a.png}\n    edit: {pose: pose_b.png}\n    lam: 0.8\n    seed: 3\n"
    )
    return tmp_path / "manifest.yaml"


def zero_unet_output(unet):
    """Make eps = 0 everywhere (conv_out weights and bias zero): DDIM then moves latents by scaling only."""
    with torch.no_grad():
        unet.conv_out.weight.zero_()
        unet.conv_out.bias.zero_()
    return unet
