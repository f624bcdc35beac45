"""Stable Diffusion 3 / 3.5: an MMDiT transformer on a rectified flow, three text encoders, a 16-channel VAE.

What differs from SD 1.x (sd.py), and nothing else:
- the network is `SD3Transformer2DModel`, predicting a velocity; the sampler is the flow ODE's Euler steps
  (framework.core.flow.FlowSchedule, the checkpoint's FlowMatchEulerDiscreteScheduler with its shift), so Eq. 7
  differences velocities and the inversion runs the flow ODE backwards;
- text: the penultimate states of CLIP-L (`text_encoder`) and OpenCLIP-bigG (`text_encoder_2`) concatenated and
  zero-padded to T5's width, followed by T5's states (`text_encoder_3`; zeros when the checkpoint has none or
  `t5: false`, as diffusers does), and the two pooled projections concatenated as `pooled_projections`;
- the VAE has 16 latent channels and a `shift_factor`: latents are (z - shift) x scale.
"""

from __future__ import annotations

from typing import Optional

import torch

from framework.backbones.loading import SD3, load_component
from framework.backbones.sd import StableDiffusion
from framework.core.backbone import TextEncoding
from framework.core.conditioning import UNetInputs
from framework.core.errors import ConfigError
from framework.core.flow import FlowSchedule

_SD3_PARTS = {"transformer": "config.json", "vae": "config.json", "text_encoder": "config.json",
              "text_encoder_2": "config.json", "tokenizer": "tokenizer_config.json",
              "tokenizer_2": "tokenizer_config.json", "scheduler": "scheduler_config.json"}


class StableDiffusion3(StableDiffusion):
    """SD3 components: VAE, MMDiT transformer (`unet`), CLIP-L + OpenCLIP-bigG (+ T5) text encoders, the flow sampler.

    `StableDiffusion(pretrained=<an SD3 checkpoint>)` builds this class; naming it in `class_path` also works
    and adds the T5 settings.
    """

    family = SD3
    label = "Stable Diffusion 3"
    parts = _SD3_PARTS
    network = "transformer"

    def __init__(self, pretrained: str = "stabilityai/stable-diffusion-3.5-medium", revision: Optional[str] = None,
                 variant: Optional[str] = None, allow_pickle: bool = False, attention_slicing=None,
                 vae_tiling: bool = False, vae_tile_size: Optional[int] = None, vae: Optional[str] = None,
                 t5: bool = True, max_sequence_length: int = 256):
        """
        Args:
            pretrained: Hub id or local folder of a diffusers SD3 / SD3.5 checkpoint (e.g.
                'stabilityai/stable-diffusion-3.5-medium'), or 'builtin:tiny-random-sd3'.
            revision, variant, allow_pickle, vae_tiling, vae_tile_size, vae: As StableDiffusion's.
            attention_slicing: Not available for the SD3 transformer (leave it null).
            t5: Load and use the T5 text encoder when the checkpoint has one; False saves its memory (~9 GB in
                fp16 for T5-XXL) and puts zeros in its place, as diffusers does without `text_encoder_3`.
            max_sequence_length: T5 tokens per prompt (diffusers' default 256).
        """
        if attention_slicing is not None:
            raise ConfigError("attention_slicing is for UNets; the SD3 transformer uses torch's SDPA attention: "
                              "set backbone attention_slicing to null (VAE tiling still bounds the VAE's memory).")
        super().__init__(pretrained, revision, variant, allow_pickle, None, vae_tiling, vae_tile_size, vae)
        self.t5, self.max_sequence_length = t5, max_sequence_length
        self.text_encoder_2 = self.tokenizer_2 = self.text_encoder_3 = self.tokenizer_3 = None

    def load(self) -> "StableDiffusion3":
        """Read the weights (once): the transformer, the VAE and the scheduler here, the text encoders in
        `_load_text` (the part FLUX does its own way)."""
        if self.loaded:
            return self
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

        source = self._folder()
        common = dict(revision=self.revision, allow_pickle=self.allow_pickle)
        self.unet = load_component(self._transformer_class(), source, f"{self.label} transformer", "transformer",
                                   variant=self.variant, **common)
        self.vae = load_component(AutoencoderKL, source, "VAE", "vae", variant=self.variant, **common)
        if self.vae_source is not None:
            self.vae = self._replacement_vae(AutoencoderKL, common)
        self._load_text(source, common)
        self.scheduler = load_component(FlowMatchEulerDiscreteScheduler, source, "scheduler", "scheduler",
                                        revision=self.revision)
        for module in self.children():
            module.requires_grad_(False).eval()
        self.configure_memory()
        return self

    @staticmethod
    def _transformer_class():
        from diffusers import SD3Transformer2DModel

        return SD3Transformer2DModel

    def _load_text(self, source: str, common: dict) -> None:
        """CLIP-L and OpenCLIP-bigG with their tokenizers, and T5 when the checkpoint has it and `t5` is on."""
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        from framework.backbones.loading import checkpoint_index

        for n, suffix in ((1, ""), (2, "_2")):
            setattr(self, f"text_encoder{suffix}", load_component(
                CLIPTextModelWithProjection, source, f"text encoder {n}", f"text_encoder{suffix}",
                variant=self.variant, **common))
            setattr(self, f"tokenizer{suffix}", load_component(CLIPTokenizer, source, f"tokenizer {n}",
                                                               f"tokenizer{suffix}", revision=self.revision))
        index = checkpoint_index(source, self.revision)
        if self.t5 and (index.get("text_encoder_3") or [None])[0] is not None:
            self.text_encoder_3 = load_component(T5EncoderModel, source, "text encoder 3 (T5)", "text_encoder_3",
                                                 variant=self.variant, **common)
            self.tokenizer_3 = load_component(T5TokenizerFast, source, "tokenizer 3", "tokenizer_3",
                                              revision=self.revision)

    def sampler(self, steps: int, size: Optional[tuple[int, int]] = None) -> FlowSchedule:
        """The flow ODE's Euler sampler on `steps` steps of the checkpoint's shifted schedule."""
        return FlowSchedule.from_scheduler(self.scheduler, steps)

    # ------------------------------------------------------------------------------------ VAE
    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Image in [0, 1] -> (posterior mean - shift_factor) x scaling_factor, (b, 16, H/8, W/8)."""
        config, dtype = self.vae.config, next(self.vae.parameters()).dtype
        mean = self.vae.encode((image * 2 - 1).to(dtype)).latent_dist.mean.float()
        return (mean - (config.shift_factor or 0.0)) * config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        config, dtype = self.vae.config, next(self.vae.parameters()).dtype
        image = self.vae.decode((latents / config.scaling_factor + (config.shift_factor or 0.0)).to(dtype)).sample
        return (image.float() / 2 + 0.5).clamp(0, 1)

    # ------------------------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> TextEncoding:
        """Prompt -> [CLIP-L | bigG penultimate states, zero-padded to T5's width ; T5 states] (1, 77 + L, D) and
        `pooled_projections` (1, P): the two CLIP pooled projections concatenated."""
        states, pooled = [], []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids
            out = encoder(ids.to(next(encoder.parameters()).device), output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled.append(out.text_embeds)
        clip = torch.cat(states, dim=-1)
        width = self.unet.config.joint_attention_dim
        clip = torch.nn.functional.pad(clip, (0, width - clip.shape[-1])) if clip.shape[-1] < width else clip
        return TextEncoding(torch.cat([clip, self._t5_states(prompt, clip)], dim=1),
                            {"pooled_projections": torch.cat(pooled, dim=-1)})

    def _t5_states(self, prompt: str, clip: torch.Tensor) -> torch.Tensor:
        if self.text_encoder_3 is None:
            return clip.new_zeros(1, self.max_sequence_length, self.unet.config.joint_attention_dim)
        ids = self.tokenizer_3(prompt, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                               add_special_tokens=True, return_tensors="pt").input_ids
        return self.text_encoder_3(ids.to(next(self.text_encoder_3.parameters()).device))[0].to(clip.dtype)

    # -------------------------------------------------------------------------------- network
    def predict(self, latents: torch.Tensor, t, inputs: UNetInputs) -> torch.Tensor:
        """The transformer's velocity for `latents` at timestep t (sigma x 1000)."""
        return self.unet(hidden_states=latents, timestep=_timestep(latents, t),
                         encoder_hidden_states=inputs.encoder_hidden_states,
                         pooled_projections=(inputs.added_cond_kwargs or {})["pooled_projections"],
                         block_controlnet_hidden_states=inputs.block_controlnet_hidden_states, return_dict=False)[0]

    def control(self, controlnet, latents: torch.Tensor, t, inputs: UNetInputs, cond: torch.Tensor, scale: float,
                mode: Optional[int] = None) -> None:
        """Add an SD3ControlNetModel's block samples for map latents `cond` to `inputs`. InstantX's ControlNets
        see zero pooled projections; SD3.5's (no joint attention) see no text, as diffusers' pipeline runs them."""
        config = controlnet.config
        pooled = (inputs.added_cond_kwargs or {})["pooled_projections"]
        inputs.add_blocks(controlnet(
            hidden_states=latents, timestep=_timestep(latents, t),
            encoder_hidden_states=inputs.encoder_hidden_states if config.joint_attention_dim is not None else None,
            pooled_projections=torch.zeros_like(pooled) if config.force_zeros_for_pooled_projection else pooled,
            controlnet_cond=cond.to(latents.dtype), conditioning_scale=scale, return_dict=False)[0])


def _timestep(latents: torch.Tensor, t, scale: float = 1.0) -> torch.Tensor:
    """t / scale for every sample of the batch, in the latents' dtype (the transformers' timestep input)."""
    return torch.full((latents.shape[0],), float(t) / scale, device=latents.device, dtype=latents.dtype)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)
