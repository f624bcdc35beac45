"""FLUX.1: a rectified-flow transformer on 2 x 2-packed latents, CLIP-L pooled + T5 text, guidance distillation.

What differs from SD3 (sd3.py), and nothing else:
- the transformer reads the 16-channel latents packed into 2 x 2 patches, (b, h/2 x w/2, 64), with position ids;
  `predict` packs, calls and unpacks, so the procedure, the masks and ITO see ordinary (b, 16, h, w) latents;
- text: T5's states (1, L, 4096) for attention and CLIP-L's pooled output (1, 768) as `pooled_projections`;
- FLUX.1-dev and -schnell are guidance-distilled: they have no unconditional branch to subtract. dev takes the
  guidance strength as an input (`distilled_guidance`, 3.5 by default); the run's `sampling.guidance_scale`
  should then be 1 (one pass per step). Eq. 7 still differences the conditional velocities under C_0 and C_EDIT, which is all it
  needs; null-text and negative-prompt inversion tune the unconditional branch, so they have nothing to act on;
- the schedule's shift depends on the image size (`mu` from the number of packed tokens), and the sigmas are
  linspace(1, 1/steps) before shifting, as diffusers' FLUX pipelines.
"""

from __future__ import annotations

from typing import Optional

import torch

from framework.backbones.loading import FLUX, load_component
from framework.backbones.sd3 import StableDiffusion3, _timestep
from framework.core.backbone import TextEncoding
from framework.core.conditioning import UNetInputs
from framework.core.flow import FlowSchedule

_FLUX_PARTS = {"transformer": "config.json", "vae": "config.json", "text_encoder": "config.json",
               "text_encoder_2": "config.json", "tokenizer": "tokenizer_config.json",
               "scheduler": "scheduler_config.json"}


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(b, c, h, w) -> (b, h/2 x w/2, 4c): 2 x 2 patches as tokens, row by row."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack` for latents of height x width."""
    b, _, d = tokens.shape
    c = d // 4
    return tokens.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


def position_ids(height: int, width: int, device=None) -> torch.Tensor:
    """(h/2 x w/2, 3): (0, row, column) of each packed token."""
    ids = torch.zeros(height // 2, width // 2, 3, device=device)
    ids[..., 1] = torch.arange(height // 2, device=device)[:, None]
    ids[..., 2] = torch.arange(width // 2, device=device)[None, :]
    return ids.reshape(-1, 3)


class Flux(StableDiffusion3):
    """FLUX.1 components: VAE, FluxTransformer2DModel (`unet`), CLIP-L and T5 text encoders, the flow sampler.

    The VAE convention ((z - shift) x scale) is SD3's, whose backbone this extends.

    `StableDiffusion(pretrained=<a FLUX checkpoint>)` builds this class; naming it in `class_path` also works and
    adds the guidance and T5 settings.
    """

    family = FLUX
    label = "FLUX.1"
    parts = _FLUX_PARTS
    network = "transformer"

    def __init__(self, pretrained: str = "black-forest-labs/FLUX.1-dev", revision: Optional[str] = None,
                 variant: Optional[str] = None, allow_pickle: bool = False, attention_slicing=None,
                 vae_tiling: bool = False, vae_tile_size: Optional[int] = None, vae: Optional[str] = None,
                 distilled_guidance: float = 3.5, max_sequence_length: int = 512):
        """
        Args:
            pretrained: Hub id or local folder of a diffusers FLUX.1 checkpoint (e.g. 'black-forest-labs/FLUX.1-dev').
            revision, variant, allow_pickle, vae_tiling, vae_tile_size, vae: As StableDiffusion's.
            attention_slicing: Not available for the FLUX transformer (leave it null).
            distilled_guidance: The distilled guidance strength given to models with a guidance embedding (FLUX.1-dev);
                ignored by models without one (schnell). Set `sampling.guidance_scale: 1` with these models.
            max_sequence_length: T5 tokens per prompt (512 for dev, 256 for schnell).
        """
        super().__init__(pretrained, revision, variant, allow_pickle, attention_slicing, vae_tiling, vae_tile_size,
                         vae, True, max_sequence_length)
        self.distilled_guidance = distilled_guidance

    @staticmethod
    def _transformer_class():
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel

    def _load_text(self, source: str, common: dict) -> None:
        """CLIP-L (its pooled output) and T5 with their tokenizers."""
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        self.text_encoder = load_component(CLIPTextModel, source, "text encoder (CLIP)", "text_encoder",
                                           variant=self.variant, **common)
        self.tokenizer = load_component(CLIPTokenizer, source, "tokenizer", "tokenizer", revision=self.revision)
        self.text_encoder_2 = load_component(T5EncoderModel, source, "text encoder 2 (T5)", "text_encoder_2",
                                             variant=self.variant, **common)
        self.tokenizer_2 = load_component(T5TokenizerFast, source, "tokenizer 2", "tokenizer_2",
                                          revision=self.revision)

    def sampler(self, steps: int, size: Optional[tuple[int, int]] = None) -> FlowSchedule:
        """The flow sampler with FLUX's size-dependent shift: mu grows linearly with the packed tokens
        (scheduler config: base_image_seq_len / max_image_seq_len, base_shift / max_shift)."""
        config, f = self.scheduler.config, 2 * self.vae_scale_factor
        tokens = (size[0] // f) * (size[1] // f) if size is not None else config.get("base_image_seq_len", 256)
        low, high = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
        slope = (config.get("max_shift", 1.15) - config.get("base_shift", 0.5)) / (high - low)
        mu = config.get("base_shift", 0.5) + slope * (tokens - low)
        return FlowSchedule.from_scheduler(self.scheduler, steps, mu, linear_sigmas=True)

    # ------------------------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> TextEncoding:
        """Prompt -> T5's states (1, L, D) and CLIP-L's pooled output `pooled_projections` (1, 768)."""
        ids = self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
                             return_tensors="pt").input_ids
        pooled = self.text_encoder(ids.to(next(self.text_encoder.parameters()).device)).pooler_output
        ids = self.tokenizer_2(prompt, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                               return_tensors="pt").input_ids
        states = self.text_encoder_2(ids.to(next(self.text_encoder_2.parameters()).device))[0]
        return TextEncoding(states.to(pooled.dtype), {"pooled_projections": pooled})

    # -------------------------------------------------------------------------------- network
    def predict(self, latents: torch.Tensor, t, inputs: UNetInputs) -> torch.Tensor:
        """The transformer's velocity for (b, 16, h, w) latents at timestep t (sigma x 1000), packed and unpacked."""
        b, _, h, w = latents.shape
        out = self.unet(hidden_states=pack(latents), **self._common(latents, t, inputs),
                        controlnet_block_samples=inputs.block_controlnet_hidden_states,
                        controlnet_single_block_samples=inputs.single_block_controlnet_hidden_states,
                        return_dict=False)[0]
        return unpack(out, h, w)

    def _common(self, latents: torch.Tensor, t, inputs: UNetInputs, model=None) -> dict:
        """The keywords the transformer and its ControlNets share: timestep / 1000, the distilled guidance (for
        models with a guidance embedding), the text, and the text and image position ids."""
        b, _, h, w = latents.shape
        text = inputs.encoder_hidden_states
        guided = (model or self.unet).config.guidance_embeds
        return dict(timestep=_timestep(latents, t, 1000),
                    guidance=torch.full((b,), self.distilled_guidance, device=latents.device, dtype=torch.float32)
                    if guided else None,
                    pooled_projections=(inputs.added_cond_kwargs or {})["pooled_projections"],
                    encoder_hidden_states=text,
                    txt_ids=torch.zeros(text.shape[1], 3, device=latents.device, dtype=latents.dtype),
                    img_ids=position_ids(h, w, latents.device).to(latents.dtype))

    def control(self, controlnet, latents: torch.Tensor, t, inputs: UNetInputs, cond: torch.Tensor, scale: float,
                mode: Optional[int]) -> None:
        """Add a FluxControlNetModel's block samples for map latents `cond` (b, 16, h, w) to `inputs`."""
        modes = None if mode is None else torch.full((latents.shape[0], 1), mode, device=latents.device)
        blocks, single = controlnet(hidden_states=pack(latents), controlnet_cond=pack(cond.to(latents.dtype)),
                                    controlnet_mode=modes, conditioning_scale=scale,
                                    **self._common(latents, t, inputs, controlnet), return_dict=False)
        inputs.add_blocks(blocks, single)

