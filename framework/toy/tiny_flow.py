"""Tiny seeded rectified-flow models in SD3's and FLUX.1's geometry, for tests: the flow families' plumbing.

Like framework.toy.tiny for SD 1.5: each family's own diffusers classes at a few MB (a 16-channel VAE with
SD3's or FLUX's scaling and shift, the two CLIP encoders and T5 of SD3, CLIP-L and T5 of FLUX, an MMDiT or FLUX
transformer, their ControlNets), random weights from a fixed seed, written with `save_pretrained` in the hub
layout (`model_index.json`) and read back by the same `from_pretrained` code as real checkpoints. The T5
tokenizer is a small Unigram model built in code (no download). Their edits are noise.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import torch

from framework.backbones.loading import cache_dir
from framework.toy.tiny import build_tokenizer

T5_DIM = 64  # T5 d_model = the transformers' joint_attention_dim
CLIP_DIM = 32
LATENT_CHANNELS = 16
_T5_WORDS = ("a an the of on in with photo picture figure person man woman dog cat red green blue yellow white "
             "black grey orange purple circle square triangle background striped flat raised arm arms left right "
             "up down").split()


def build_t5_tokenizer(words=_T5_WORDS):
    """A T5 tokenizer (sentencepiece-style Unigram): known words are one piece, others are spelt out."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -1.0) for w in words] + [(c, -5.0) for c in string.ascii_lowercase + string.digits]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           extra_ids=0)


def _t5(seed: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(_T5_WORDS) + 64, d_model=T5_DIM, d_kv=16, d_ff=64, num_layers=1, num_heads=4,
                      relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(config).eval()


def _clip(seed: int, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    config = CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, vocab_size=len(tokenizer), hidden_size=CLIP_DIM,
                            intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                            max_position_embeddings=77, projection_dim=CLIP_DIM, hidden_act="gelu")
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()
    return model, tokenizer


def _vae(seed: int, scaling: float, shift: float):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16),
                         latent_channels=LATENT_CHANNELS, norm_num_groups=8, layers_per_block=1, sample_size=64,
                         use_quant_conv=False, use_post_quant_conv=False, scaling_factor=scaling,
                         shift_factor=shift).eval()


def build_tiny_sd3(seed: int = 0, t5: bool = True):
    """The parts of a tiny StableDiffusion3Pipeline (a /8 VAE, 16 latent channels, patch 2); no T5 when `t5` is
    False (SD3 then reads zeros in T5's place, as diffusers does)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=LATENT_CHANNELS, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=T5_DIM,
                                        caption_projection_dim=32, pooled_projection_dim=2 * CLIP_DIM,
                                        out_channels=LATENT_CHANNELS, pos_embed_max_size=16).eval()
    text_encoder, tokenizer = _clip(seed + 1, projection=True)
    text_encoder_2, tokenizer_2 = _clip(seed + 2, projection=True)
    return dict(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                vae=_vae(seed + 3, 1.5305, 0.0609), text_encoder=text_encoder, tokenizer=tokenizer,
                text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                text_encoder_3=_t5(seed + 4) if t5 else None, tokenizer_3=build_t5_tokenizer() if t5 else None)


def build_tiny_flux(seed: int = 0, guidance_embeds: bool = False):
    """The parts of a tiny FluxPipeline (latents packed 2 x 2 into 64 channels); `guidance_embeds` as the
    guidance-distilled FLUX.1-dev."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1,
                                         num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                         joint_attention_dim=T5_DIM, pooled_projection_dim=CLIP_DIM,
                                         guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6)).eval()
    text_encoder, tokenizer = _clip(seed + 1, projection=False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return dict(transformer=transformer, scheduler=scheduler, vae=_vae(seed + 3, 0.3611, 0.1159),
                text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=_t5(seed + 4),
                tokenizer_2=build_t5_tokenizer())


def save_tiny_sd3(path: str | os.PathLike, seed: int = 0, t5: bool = True) -> Path:
    from diffusers import StableDiffusion3Pipeline

    StableDiffusion3Pipeline(**build_tiny_sd3(seed, t5)).save_pretrained(path)
    return Path(path)


def save_tiny_flux(path: str | os.PathLike, seed: int = 0, guidance_embeds: bool = False) -> Path:
    from diffusers import FluxPipeline

    FluxPipeline(**build_tiny_flux(seed, guidance_embeds)).save_pretrained(path)
    return Path(path)


def save_tiny_sd3_controlnet(path: str | os.PathLike, sd3_path: str | os.PathLike, seed: int = 0) -> Path:
    """An SD3ControlNetModel of one block from the tiny SD3 transformer (random output projections, so it acts)."""
    from diffusers import SD3ControlNetModel, SD3Transformer2DModel

    transformer = SD3Transformer2DModel.from_pretrained(sd3_path, subfolder="transformer")
    controlnet = SD3ControlNetModel.from_transformer(transformer, num_layers=1, num_extra_conditioning_channels=0)
    _randomise_zero_projections(controlnet, seed)
    controlnet.save_pretrained(path)
    return Path(path)


def save_tiny_flux_controlnet(path: str | os.PathLike, flux_path: str | os.PathLike, seed: int = 0) -> Path:
    from diffusers import FluxControlNetModel, FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(flux_path, subfolder="transformer")
    controlnet = FluxControlNetModel.from_transformer(transformer, num_layers=1, num_single_layers=1,
                                                      attention_head_dim=16, num_attention_heads=2)
    _randomise_zero_projections(controlnet, seed)
    controlnet.save_pretrained(path)
    return Path(path)


def _randomise_zero_projections(controlnet: torch.nn.Module, seed: int) -> None:
    """ControlNets start with zero output layers; random ones make a tiny ControlNet change the prediction."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if parameter.abs().sum() == 0 and parameter.dim() >= 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


def tiny_sd3_dir(seed: int = 0) -> Path:
    """The tiny SD3 folder in the cache (`builtin:tiny-random-sd3`), built once."""
    from framework.toy.tiny import _build_once

    return _build_once(cache_dir() / f"tiny-random-sd3-seed{seed}", lambda p: save_tiny_sd3(p, seed))


def tiny_sd3_controlnet_dir(seed: int = 0) -> Path:
    from framework.toy.tiny import _build_once

    sd3 = tiny_sd3_dir(seed)
    return _build_once(cache_dir() / f"tiny-random-sd3-controlnet-seed{seed}",
                       lambda p: save_tiny_sd3_controlnet(p, sd3, seed))


def tiny_flux_dir(seed: int = 0) -> Path:
    """The tiny FLUX.1-dev-geometry folder in the cache (`builtin:tiny-random-flux`), built once."""
    from framework.toy.tiny import _build_once

    return _build_once(cache_dir() / f"tiny-random-flux-seed{seed}", lambda p: save_tiny_flux(p, seed, True))


def tiny_flux_controlnet_dir(seed: int = 0) -> Path:
    from framework.toy.tiny import _build_once

    flux = tiny_flux_dir(seed)
    return _build_once(cache_dir() / f"tiny-random-flux-controlnet-seed{seed}",
                       lambda p: save_tiny_flux_controlnet(p, flux, seed))
