"""Stable Diffusion 1.x: the first backbone (VAE, UNet, CLIP text encoder, DDIM schedule).

`StableDiffusion(pretrained)` builds the backbone of the checkpoint's family: its model_index.json decides
(framework.backbones.loading.backbone_class), so an SDXL folder or hub id gives a `StableDiffusionXL`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Literal, Optional, Union

import torch
from torch import nn

from framework.backbones.loading import (
    BUILTIN_PREFIX,
    SD1,
    _looks_like_hub_id,
    backbone_class,
    builtin_folder,
    check_family,
    check_variant,
    load_component,
    resolve_pretrained,
)
from framework.core.backbone import Backbone, TextEncoding
from framework.core.ddim import Schedule
from framework.core.errors import ConfigError, ModelLoadError

DEFAULT_PRETRAINED = "stable-diffusion-v1-5/stable-diffusion-v1-5"

_SD_PARTS = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
             "tokenizer": "tokenizer_config.json", "scheduler": "scheduler_config.json"}


def _check_sd_folder(source: str, parts: Optional[dict[str, str]] = None) -> None:
    """A local SD folder must hold every component, so an incomplete copy fails before loading."""
    folder = Path(source).expanduser()
    parts = parts or _SD_PARTS
    if source.startswith(BUILTIN_PREFIX) or not folder.is_dir():
        return
    missing = [f"{part}/{name}" for part, name in parts.items() if not (folder / part / name).is_file()]
    if len(missing) == len(parts) and not (folder / "model_index.json").is_file():
        raise ModelLoadError(
            f"Stable Diffusion: '{folder}' is not a diffusers Stable Diffusion folder: it has none of "
            f"{', '.join(missing)} nor model_index.json. Point `pretrained` at a folder written by "
            f"`save_pretrained` (or a hub snapshot).")
    if missing:
        raise ModelLoadError(
            f"Stable Diffusion folder '{folder}' is incomplete: missing {', '.join(missing)}. Copy the "
            f"whole diffusers checkpoint ({', '.join(parts)}).")


def _check_slicing(value: Union[str, int, None]) -> Union[str, int, None]:
    """attention_slicing: None, 'auto', 'max' or a positive int."""
    if value is None or value in ("auto", "max"):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigError(f"attention_slicing must be 'auto', 'max', a positive int or null, got {value!r}.")


def _sliceable(module: nn.Module) -> bool:
    """A whole diffusers model that supports sliced attention (UNet, ControlNet), not one of its layers."""
    from diffusers import ModelMixin

    return isinstance(module, ModelMixin) and hasattr(module, "set_attention_slice")


def _init_signature(cls) -> inspect.Signature:
    """The class's __init__ parameters as its signature (the metaclass's __call__ takes *args, **kwargs)."""
    signature = inspect.signature(cls.__init__)
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def _vae_sample_size(vae) -> int:
    size = vae.config.sample_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)


class _PicksFamily(type):
    """Metaclass: `StableDiffusion(pretrained, ...)` builds the backbone class of the checkpoint's family (its
    model_index.json decides); subclasses named directly are built as themselves. Copies and unpickling do not
    call it."""

    def __call__(cls, *args, **kwargs):
        target = cls
        if cls is StableDiffusion and (args or "pretrained" in kwargs):
            pretrained = args[0] if args else kwargs["pretrained"]
            revision = args[1] if len(args) > 1 else kwargs.get("revision")
            if isinstance(pretrained, str):
                target = backbone_class(pretrained, revision)
        return type.__call__(target, *args, **kwargs)


class StableDiffusion(Backbone, metaclass=_PicksFamily):
    """Stable Diffusion 1.x components (VAE, UNet, CLIP text encoder, tokenizer, DDIM scheduler).

    Loaded lazily by `load()` so that configuration errors surface before any weights are read.
    `StableDiffusion(pretrained=...)` returns the backbone of the checkpoint's family (an SDXL checkpoint gives
    a `StableDiffusionXL`, a subclass); a family this project does not run is refused in one line.
    """

    family = SD1
    label = "Stable Diffusion"  # names the model in messages
    parts = _SD_PARTS  # the folder's components (subfolder -> the file each must hold)
    network = "unet"  # the subfolder of the denoising network

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__signature__ = _init_signature(cls)

    def __init__(self, pretrained: str = DEFAULT_PRETRAINED,
                 revision: Optional[str] = None, variant: Optional[str] = None,
                 allow_pickle: bool = False, attention_slicing: Union[int, Literal["auto", "max"], None] = None,
                 vae_tiling: bool = False, vae_tile_size: Optional[int] = None, vae: Optional[str] = None):
        """
        Args:
            pretrained: Hub id or local folder of a diffusers SD 1.x or SDXL checkpoint (its model_index.json
                picks the backbone), or 'builtin:tiny-random' / 'builtin:tiny-random-sdxl' for the tiny random
                models used by tests and the quickstart.
            revision: Hub revision (branch, tag or commit).
            variant: Weight variant such as 'fp16'.
            allow_pickle: Also load `.bin`/`.ckpt` pickle weights (they can run code; off by default).
            attention_slicing: Sliced attention in the UNet and every ControlNet (diffusers'
                `set_attention_slice`): 'auto' (heads in two halves), 'max' (one at a time), an int
                (heads per slice), or None (off: torch's SDPA, already memory-efficient on torch 2;
                slicing only saves memory against the classic attention processor).
            vae_tiling: Encode and decode images larger than `vae_tile_size` in overlapping tiles
                (diffusers' VAE tiling): bounded VAE memory for large images; each tile is normalised
                on its own, so the result differs from untiled near seams. Smaller images are unaffected.
            vae_tile_size: Tile side in pixels (a multiple of 8); None = the VAE's sample_size (512 for SD 1.5).
            vae: Hub id or folder of an AutoencoderKL that replaces the checkpoint's own (a folder with a `vae/`
                subfolder works too), e.g. a decoder fine-tune such as `stabilityai/sd-vae-ft-mse`; its latent
                space must be the checkpoint's. None: the checkpoint's VAE.
        """
        super().__init__()
        self.pretrained = pretrained
        self.revision = revision
        self.variant = variant
        self.allow_pickle = allow_pickle
        self.attention_slicing = _check_slicing(attention_slicing)
        self.vae_tiling = vae_tiling
        if vae_tile_size is not None and (vae_tile_size < 8 or vae_tile_size % 8):
            raise ConfigError(f"vae_tile_size must be a multiple of 8 pixels (>= 8), got {vae_tile_size}; "
                              f"use e.g. 512, or null for the VAE's own sample size.")
        self.vae_tile_size = vae_tile_size
        what = self.label
        check_family(pretrained, what, revision, self.network, runs=self.family)  # first: an SD3 folder has no unet/
        _check_sd_folder(pretrained, self.parts)  # then: a missing unet/ is an incomplete folder, like a missing vae/
        check_variant(pretrained, variant, what, tuple(p for p in self.parts if p.startswith((self.network, "vae", "text"))))
        self._source = resolve_pretrained(pretrained, what, self.network, revision)
        self.vae_source = vae
        if vae is not None and not vae.startswith(BUILTIN_PREFIX) and not _looks_like_hub_id(vae) \
                and not Path(vae).expanduser().is_dir():
            raise ConfigError(f"backbone vae '{vae}' is neither a folder nor a hub id: give the folder of an "
                              "AutoencoderKL (its config.json and weights) or null for the checkpoint's own VAE.")
        self.vae = self.unet = self.text_encoder = None
        self.tokenizer = self.scheduler = None

    def load(self) -> "StableDiffusion":
        """Read the weights (once)."""
        if self.loaded:
            return self
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        source = self._folder()
        common = dict(revision=self.revision, allow_pickle=self.allow_pickle)
        self.unet = load_component(UNet2DConditionModel, source, "UNet", "unet", variant=self.variant, **common)
        self.vae = load_component(AutoencoderKL, source, "VAE", "vae", variant=self.variant, **common)
        if self.vae_source is not None:
            self.vae = self._replacement_vae(AutoencoderKL, common)
        self.text_encoder = load_component(CLIPTextModel, source, "text encoder", "text_encoder",
                                           variant=self.variant, **common)
        self.tokenizer = load_component(CLIPTokenizer, source, "tokenizer", "tokenizer", revision=self.revision)
        self.scheduler = load_component(DDIMScheduler, source, "scheduler", "scheduler", revision=self.revision)
        self._load_extra(source, common)
        for module in self.children():
            module.requires_grad_(False).eval()
        self.configure_memory()
        return self

    def _folder(self) -> str:
        """What to load from: the folder of a built-in name, else the hub id or folder."""
        source = self._source
        return str(builtin_folder(source, "sd")) if source.startswith(BUILTIN_PREFIX) else source

    def _load_extra(self, source: str, common: dict) -> None:
        """A family's further components (SDXL: the second text encoder); SD 1.x has none."""

    def _replacement_vae(self, cls, common: dict):
        """The `vae` setting's AutoencoderKL, checked against the checkpoint's latent space."""
        source = self.vae_source
        if source.startswith(BUILTIN_PREFIX):
            source = str(builtin_folder(source, "vae"))
        subfolder = "vae" if Path(source, "vae", "config.json").is_file() else None
        vae = load_component(cls, source, "VAE", subfolder, **common)
        own, theirs = self.vae.config, vae.config
        if (own.latent_channels, own.block_out_channels) != (theirs.latent_channels, theirs.block_out_channels):
            raise ConfigError(f"backbone vae '{self.vae_source}' has {theirs.latent_channels} latent channels at "
                              f"/{2 ** (len(theirs.block_out_channels) - 1)}, the checkpoint's VAE "
                              f"{own.latent_channels} at /{2 ** (len(own.block_out_channels) - 1)}: it belongs to "
                              "another model; give a VAE of this checkpoint's latent space or null.")
        return vae

    def configure_memory(self, *extra: nn.Module) -> None:
        """Apply the memory options: attention slicing to the UNet and to every diffusers model inside
        `extra` (the conditioners' ControlNets), VAE tiling to the VAE. Idempotent."""
        models = [self.unet] + [m for module in extra for m in module.modules() if _sliceable(m)]
        if self.attention_slicing is not None:
            for model in models:
                try:
                    model.set_attention_slice(self.attention_slicing)
                except ValueError as err:
                    raise ConfigError(f"attention_slicing {self.attention_slicing!r} does not fit "
                                      f"{type(model).__name__}: {err} Use 'auto', 'max' or a smaller int.") from err
        if self.vae_tiling:
            tile = self.vae_tile_size or _vae_sample_size(self.vae)
            self.vae.tile_sample_min_size = tile
            self.vae.tile_latent_min_size = tile // self.vae_scale_factor
            self.vae.enable_tiling()

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def sampler(self, steps: int, size: Optional[tuple[int, int]] = None) -> Schedule:
        """The DDIM sampler on `steps` steps of this checkpoint's schedule (its scheduler converted to DDIM)."""
        return Schedule.from_scheduler(self.scheduler, steps)

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Image in [0, 1], (b, 3, H, W) -> scaled latents (b, 4, H/8, W/8); the posterior mean, so it is
        deterministic."""
        vae_dtype = next(self.vae.parameters()).dtype
        posterior = self.vae.encode((image * 2 - 1).to(vae_dtype)).latent_dist
        return posterior.mean.float() * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> image in [0, 1], (b, 3, H, W)."""
        vae_dtype = next(self.vae.parameters()).dtype
        image = self.vae.decode((latents / self.vae.config.scaling_factor).to(vae_dtype)).sample
        return (image.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> TextEncoding:
        """Prompt -> CLIP last hidden states (1, 77, d), as SD 1.x's UNet expects; no extras."""
        ids = self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        device = next(self.text_encoder.parameters()).device
        return TextEncoding(self.text_encoder(ids.to(device))[0])

    def prompt_used(self, prompt: str) -> Optional[str]:
        """The part of `prompt` the text encoder sees when it is longer than the tokenizer's limit (CLIP: 77
        tokens with the start and end tokens); None when the whole prompt fits."""
        ids = self.tokenizer(prompt, truncation=False).input_ids
        limit = self.tokenizer.model_max_length
        if len(ids) <= limit:
            return None
        kept = ids[1:limit - 1]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        # CLIP's tokens are bytes: the cut can split a character of several bytes (Japanese, accents, emoji),
        # which decodes to U+FFFD; drop the tokens of that partial character (at most 3 bytes).
        for _ in range(3):
            if not text.endswith("\ufffd") or "\ufffd" in prompt or not kept:
                break
            kept = kept[:-1]
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return text


StableDiffusion.__signature__ = _init_signature(StableDiffusion)
