"""Tiny seeded models in SDXL's geometry, for tests and dry runs: `builtin:tiny-random-sdxl`.

SDXL's structure at a few MB: a /8 VAE with SDXL's scaling factor (0.13025) and `force_upcast`, a UNet with
`addition_embed_type="text_time"` (micro-conditioning), two text encoders (`CLIPTextModel` and
`CLIPTextModelWithProjection`, whose penultimate states are concatenated and whose second one gives the pooled
embedding), two tokenizers (the second pads with '!', as SDXL's), and SDXL's hub scheduler (Euler). Written with
`StableDiffusionXLPipeline.save_pretrained` (the hub layout: text_encoder_2/, tokenizer_2/, model_index.json) and
read back through the same code as a hub id. A ControlNet made from the UNet (`text_time` too) and an
XL T2I-Adapter (`full_adapter_xl`) fit it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from framework.backbones.loading import TINY_SDXL, cache_dir  # noqa: F401  (TINY_SDXL: the name tests use)
from framework.toy.tiny import _build_once, _randomise_zero_convs, build_tokenizer

HIDDEN = (32, 32)  # the two text encoders' widths: cross-attention 64 (SDXL: 768 + 1280 = 2048)
POOLED = 32  # text_encoder_2's projection (SDXL: 1280)
TIME_DIM = 8  # addition_time_embed_dim (SDXL: 256); 6 time ids x 8 + 32 pooled = 80 (SDXL: 2816)
UNET_CHANNELS = (32, 64)


def _text_encoder(cls, hidden: int, tokenizer, seed: int):
    from transformers import CLIPTextConfig

    torch.manual_seed(seed)
    return cls(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=POOLED, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))


def build_tiny_sdxl(seed: int = 0):
    """A StableDiffusionXLPipeline of seeded random parts (not saved)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=UNET_CHANNELS, layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),  # SDXL: no attention in the first block
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
        cross_attention_dim=sum(HIDDEN), attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=6 * TIME_DIM + POOLED, norm_num_groups=32)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=64, scaling_factor=0.13025, force_upcast=True)
    tokenizer = build_tokenizer()
    tokenizer_2 = build_tokenizer()
    tokenizer_2.pad_token = "!"  # SDXL's second tokenizer pads with '!' (id 0), the first with the end token
    text_encoder = _text_encoder(CLIPTextModel, HIDDEN[0], tokenizer, seed + 2)
    text_encoder_2 = _text_encoder(CLIPTextModelWithProjection, HIDDEN[1], tokenizer_2, seed + 3)
    scheduler = EulerDiscreteScheduler(  # SDXL's hub scheduler config; the backbone converts it to DDIM
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading", interpolation_type="linear", use_karras_sigmas=False)
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)


def save_tiny_sdxl(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write the tiny SDXL model in the hub layout (safetensors) to `path` and return it."""
    build_tiny_sdxl(seed).save_pretrained(path)
    return Path(path)


def save_tiny_sdxl_controlnet(path: str | os.PathLike, sdxl_path: str | os.PathLike, seed: int = 0) -> Path:
    """Write an SDXL ControlNet made from the tiny SDXL UNet at `sdxl_path` (addition_embed_type text_time)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(sdxl_path) / "unet")
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 32))
    _randomise_zero_convs(controlnet, torch.Generator().manual_seed(seed))
    controlnet.save_pretrained(path)
    return Path(path)


def save_tiny_sdxl_adapter(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write an SDXL T2I-Adapter (`full_adapter_xl`) whose features fit the tiny SDXL UNet."""
    from diffusers import T2IAdapter

    torch.manual_seed(seed)
    T2IAdapter(in_channels=3, channels=list(UNET_CHANNELS), num_res_blocks=1, downscale_factor=16,
               adapter_type="full_adapter_xl").save_pretrained(path)
    return Path(path)


def tiny_sdxl_dir(seed: int = 0) -> Path:
    """The tiny SDXL folder, built on first use."""
    return _build_once(cache_dir() / f"tiny-random-sdxl-seed{seed}", lambda p: save_tiny_sdxl(p, seed))


def tiny_sdxl_controlnet_dir(seed: int = 0) -> Path:
    """A tiny SDXL ControlNet folder for the tiny SDXL model, built on first use."""
    sdxl = tiny_sdxl_dir()
    return _build_once(cache_dir() / f"tiny-random-sdxl-controlnet-seed{seed}",
                       lambda p: save_tiny_sdxl_controlnet(p, sdxl, seed))


def tiny_sdxl_adapter_dir(seed: int = 0) -> Path:
    """A tiny SDXL T2I-Adapter folder, built on first use."""
    return _build_once(cache_dir() / f"tiny-random-sdxl-t2i-adapter-seed{seed}", lambda p: save_tiny_sdxl_adapter(p, seed))
