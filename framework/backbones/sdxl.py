"""Stable Diffusion XL: two text encoders, a pooled embedding, micro-conditioning, the SDXL VAE.

What differs from SD 1.x (sd.py), and nothing else:
- text (Podell et al. 2023, Sec. 2.1): the penultimate hidden states of CLIP ViT-L (`text_encoder`) and OpenCLIP
  bigG (`text_encoder_2`) concatenated, (1, 77, 768 + 1280), plus bigG's pooled projection `text_embeds` (1, 1280),
  which the UNet takes in `added_cond_kwargs`; the empty prompt (the default negative prompt) encodes to zeros
  when the checkpoint says `force_zeros_for_empty_prompt`, as diffusers' SDXL pipelines do;
- micro-conditioning (Sec. 2.2): `time_ids` = original_size + crops_coords_top_left + target_size, by default
  the image's own size and no crop, added to every UNet (and ControlNet) call;
- the VAE (scaling 0.13025) overflows in fp16: with `force_upcast` in its config it decodes and encodes in fp32;
  a VAE fine-tuned for fp16 (`vae: madebyollin/sdxl-vae-fp16-fix`, `force_upcast: false`) stays in fp16;
- the hub scheduler is Euler: its config is read as DDIM with SD's convention where it says nothing
  (`set_alpha_to_one: false`), so inversion and decoding follow the SD 1.5 path exactly.
Default resolution 1024 (any multiple of 8 runs).
"""

from __future__ import annotations

from typing import Literal, Optional, Union

import torch

from framework.backbones.loading import SDXL, checkpoint_index, load_component, load_config
from framework.backbones.sd import StableDiffusion
from framework.core.backbone import TextEncoding
from framework.core.conditioning import UNetInputs
from framework.core.errors import ConfigError

_SDXL_PARTS = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
               "text_encoder_2": "config.json", "tokenizer": "tokenizer_config.json",
               "tokenizer_2": "tokenizer_config.json", "scheduler": "scheduler_config.json"}
Size = tuple[int, int]


def _check_size(value: Optional[Size], name: str) -> Optional[Size]:
    if value is None:
        return None
    if len(value) != 2 or any(not isinstance(v, int) or v < 0 for v in value):
        raise ConfigError(f"{name} must be two non-negative integers (height, width), got {value!r}.")
    return tuple(value)


class StableDiffusionXL(StableDiffusion):
    """SDXL components: VAE, UNet with text-time embeddings, two CLIP text encoders and tokenizers, DDIM.

    `StableDiffusion(pretrained=<an SDXL checkpoint>)` builds this class; naming it in `class_path` also works
    and adds the micro-conditioning settings.
    """

    family = SDXL
    label = "Stable Diffusion XL"
    parts = _SDXL_PARTS

    def __init__(self, pretrained: str = "stabilityai/stable-diffusion-xl-base-1.0",
                 revision: Optional[str] = None, variant: Optional[str] = None,
                 allow_pickle: bool = False, attention_slicing: Union[int, Literal["auto", "max"], None] = None,
                 vae_tiling: bool = False, vae_tile_size: Optional[int] = None, vae: Optional[str] = None,
                 original_size: Optional[Size] = None, crops_coords_top_left: Size = (0, 0),
                 target_size: Optional[Size] = None, zero_empty_prompt: Optional[bool] = None):
        """
        Args:
            pretrained: Hub id or local folder of a diffusers SDXL checkpoint (e.g.
                'stabilityai/stable-diffusion-xl-base-1.0'), or 'builtin:tiny-random-sdxl'.
            revision, variant, allow_pickle, attention_slicing, vae_tiling, vae_tile_size: As StableDiffusion's.
            vae: An AutoencoderKL replacing the checkpoint's, e.g. 'madebyollin/sdxl-vae-fp16-fix' (runs in fp16
                without overflow, so it is not upcast); None: the checkpoint's VAE (upcast to fp32 in fp16 runs).
            original_size: SDXL micro-conditioning, (height, width) in pixels; None: the image's size.
            crops_coords_top_left: SDXL micro-conditioning, (top, left) of the crop; (0, 0): uncropped.
            target_size: SDXL micro-conditioning, (height, width); None: the image's size.
            zero_empty_prompt: The empty prompt encodes to zeros; None: the checkpoint's
                `force_zeros_for_empty_prompt` (True for SDXL base), as diffusers' SDXL pipelines.
        """
        super().__init__(pretrained, revision, variant, allow_pickle, attention_slicing, vae_tiling, vae_tile_size,
                         vae)
        self.original_size = _check_size(original_size, "original_size")
        self.crops_coords_top_left = _check_size(crops_coords_top_left, "crops_coords_top_left")
        self.target_size = _check_size(target_size, "target_size")
        self.zero_empty_prompt = zero_empty_prompt
        self.text_encoder_2 = self.tokenizer_2 = None

    def _load_extra(self, source: str, common: dict) -> None:
        from diffusers import DDIMScheduler
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        self.text_encoder_2 = load_component(CLIPTextModelWithProjection, source, "text encoder 2", "text_encoder_2",
                                             variant=self.variant, **common)
        self.tokenizer_2 = load_component(CLIPTokenizer, source, "tokenizer 2", "tokenizer_2", revision=self.revision)
        raw = load_config(DDIMScheduler, source, "scheduler", "scheduler", self.revision)
        # The hub config is Euler's, which has no DDIM keys: SD's convention where it says nothing.
        self.scheduler = DDIMScheduler.from_config(raw, set_alpha_to_one=raw.get("set_alpha_to_one", False),
                                                   clip_sample=raw.get("clip_sample", False))
        if self.zero_empty_prompt is None:
            index = checkpoint_index(source, self.revision)
            self.zero_empty_prompt = bool(index.get("force_zeros_for_empty_prompt", True))

    # ------------------------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> TextEncoding:
        """Prompt -> penultimate states of both encoders, concatenated (1, 77, d1 + d2), and the second's pooled
        projection `text_embeds` (1, p)."""
        states, out = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids
            out = encoder(ids.to(next(encoder.parameters()).device), output_hidden_states=True)
            states.append(out.hidden_states[-2])
        encoding = TextEncoding(torch.cat(states, dim=-1), {"text_embeds": out.text_embeds})
        if prompt == "" and self.zero_empty_prompt:
            encoding = encoding.map(torch.zeros_like)
        return encoding

    # ------------------------------------------------------------------------ micro-conditioning
    def time_ids(self, height: int, width: int) -> torch.Tensor:
        """SDXL's add_time_ids (1, 6) for an image of height x width pixels."""
        original = self.original_size or (height, width)
        target = self.target_size or (height, width)
        return torch.tensor([[*original, *self.crops_coords_top_left, *target]], dtype=torch.float32)

    def unet_inputs(self, latents: torch.Tensor) -> UNetInputs:
        """`time_ids` for the latents' image size, one row per sample (text_embeds come with the text)."""
        f = self.vae_scale_factor
        ids = self.time_ids(latents.shape[-2] * f, latents.shape[-1] * f).to(latents.device)
        dtype = latents.dtype if torch.is_floating_point(latents) else ids.dtype
        return UNetInputs(added_cond_kwargs={"time_ids": ids.to(dtype).repeat(latents.shape[0], 1)})

    # ------------------------------------------------------------------------------------ VAE
    def _upcast_vae(self) -> None:
        """The SDXL VAE overflows in fp16 (NaN images): run it in fp32 when its config says `force_upcast`."""
        if self.vae.config.get("force_upcast", False) and next(self.vae.parameters()).dtype == torch.float16:
            self.vae.to(torch.float32)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        self._upcast_vae()
        return super().encode_image(image)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        self._upcast_vae()
        return super().decode_latents(latents)
