"""Tiny seeded models in Stable Diffusion 1.5's geometry, for tests and the quickstart.

They have SD 1.5's structure (a /8 VAE with 4 latent channels, a cross-attention UNet, a CLIP
text encoder and tokenizer, ControlNets and a T2I-Adapter that fit the UNet) at a few MB, with
random weights from a fixed seed. They are written with `save_pretrained` into a diffusers folder
layout and read back by the same `from_pretrained` code as real checkpoints.

Their edits are coloured noise: they check the plumbing, not the quality of an edit.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from framework.backbones.loading import TINY_SD, cache_dir  # noqa: F401  (TINY_SD: the name tests use)

"""The `pretrained` value that selects the tiny random model (built on first use)."""

CROSS_ATTENTION_DIM = 32
UNET_CHANNELS = (32, 64)
# Words that become single tokens; everything else is spelt out in characters.
_WORDS = (
    "a an and the of on in with photo picture figure person man woman dog cat red green blue "
    "yellow white black grey gray orange purple circle square triangle background striped flat "
    "stripes raised arm arms leg legs left right up down"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible map from bytes to printable characters (byte-level BPE base symbols)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def build_tokenizer(words=_WORDS, max_length: int = 77):
    """A CLIP tokenizer with byte-level base symbols plus whole-word merges for a small vocabulary.

    Words in `words` become single tokens; anything else is spelt out character by character.
    """
    from transformers import CLIPTokenizer

    base = list(_bytes_to_unicode().values())
    vocab_list = base + [c + "</w>" for c in base]
    merges: list[tuple[str, str]] = []
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            if pair not in merges:
                merges.append(pair)
                vocab_list.append(pair[0] + pair[1])
            symbols = [pair[0] + pair[1]] + symbols[2:]
    vocab_list = list(dict.fromkeys(vocab_list)) + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def _randomise_zero_convs(controlnet: torch.nn.Module, generator: torch.Generator) -> None:
    """ControlNet's zero convolutions start at zero; give them weights so a map changes the output."""
    with torch.no_grad():
        for name, param in controlnet.named_parameters():
            if "zero_conv" in name or "controlnet_mid_block" in name or "conv_out" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def build_tiny_models(seed: int = 0):
    """Build (vae, unet, text_encoder, tokenizer, scheduler) with seeded random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=UNET_CHANNELS,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),  # SD 1.5 order, in two blocks
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    tokenizer = build_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=CROSS_ATTENTION_DIM,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return vae, unet, text_encoder, tokenizer, sd15_scheduler()


def build_tiny_controlnet(unet, seed: int = 0):
    """A ControlNet that fits `unet`, with non-zero output convolutions."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 32))
    _randomise_zero_convs(controlnet, torch.Generator().manual_seed(seed))
    return controlnet


def build_tiny_adapter(seed: int = 0):
    """A full T2I-Adapter whose features match the tiny UNet's down blocks."""
    from diffusers import T2IAdapter

    torch.manual_seed(seed)
    return T2IAdapter(
        in_channels=3, channels=list(UNET_CHANNELS), num_res_blocks=1, downscale_factor=8,
        adapter_type="full_adapter",
    )


def sd15_scheduler():
    """A DDIM scheduler with SD 1.5's settings."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def save_tiny_pipeline(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write the tiny SD model (diffusers folder layout, safetensors) to `path` and return it."""
    return save_sd_folder(path, *build_tiny_models(seed))


def save_sd_folder(path: str | os.PathLike, vae, unet, text_encoder, tokenizer, scheduler) -> Path:
    """Write SD components into a diffusers pipeline folder (safetensors) that `from_pretrained` reads."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(path / "unet")
    vae.save_pretrained(path / "vae")
    text_encoder.save_pretrained(path / "text_encoder")
    tokenizer.save_pretrained(path / "tokenizer")
    scheduler.save_pretrained(path / "scheduler")
    (path / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }, indent=2))
    return path


def save_tiny_controlnet(path: str | os.PathLike, sd_path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny ControlNet for the tiny UNet at `sd_path`."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(sd_path) / "unet")
    build_tiny_controlnet(unet, seed).save_pretrained(path)
    return Path(path)


def save_tiny_adapter(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny T2I-Adapter."""
    build_tiny_adapter(seed).save_pretrained(path)
    return Path(path)


def _build_once(target: Path, build) -> Path:
    """Build into a temporary sibling and rename, so that concurrent or killed runs never see half a model."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        build(Path(tmp) / "model")
        try:
            os.replace(Path(tmp) / "model", target)
        except OSError:
            if not target.exists():
                raise
    return target


def tiny_pipeline_dir(seed: int = 0) -> Path:
    """The tiny SD folder, built on first use."""
    return _build_once(cache_dir() / f"tiny-random-sd15-seed{seed}", lambda p: save_tiny_pipeline(p, seed))


def tiny_controlnet_dir(seed: int = 0) -> Path:
    """A tiny ControlNet folder for the tiny SD model, built on first use."""
    sd = tiny_pipeline_dir()
    return _build_once(cache_dir() / f"tiny-random-controlnet-seed{seed}", lambda p: save_tiny_controlnet(p, sd, seed))


def tiny_adapter_dir(seed: int = 0) -> Path:
    """A tiny T2I-Adapter folder, built on first use."""
    return _build_once(cache_dir() / f"tiny-random-t2i-adapter-seed{seed}", lambda p: save_tiny_adapter(p, seed))
