"""Layout conditions through ControlNet: pose, scribble, lines, canny, depth ... (SD 1.x, SDXL, SD3, FLUX)."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Optional

import torch
from torch import nn

from conditioners.base import ConditionSide, Encoding, LayoutConditioner, UNetInputs, in_window
from conditioners.compat import check_controlnet
from framework.core.errors import ConfigError

UNION_MODES = {"canny": 0, "tile": 1, "depth": 2, "blur": 3, "pose": 4, "gray": 5, "lq": 6}
"""The control modes of InstantX's FLUX.1-dev union ControlNet, by modality (its model card)."""


class ControlNetConditioner(LayoutConditioner):
    """Adds a ControlNet's residuals for the request's `modality` map (diffusers ControlNetModel).

    Several of these in the conditioner list sum their residuals (multi-condition editing).
    A request without a map for this modality on either side is edited without it.

    The map's conditioning embedding (the ControlNet's full-resolution convolutions that bring the
    map to the latent grid) does not depend on the timestep or the latents, so `encode` computes it
    once per request side and every UNet call reuses it (`precompute_embedding`).
    """

    kind = "ControlNet"

    def __init__(self, modality: str, pretrained: str, scale: float = 1.0, start: float = 0.0,
                 end: float = 1.0, revision: Optional[str] = None, variant: Optional[str] = None,
                 allow_pickle: bool = False, precompute_embedding: bool = True, mode: Optional[int] = None):
        """
        Args:
            modality: Key of this condition's maps in the manifest ('pose', 'scribble', 'lines', 'depth' ...).
            pretrained: Hub id or local folder of the ControlNet (e.g. 'lllyasviel/control_v11p_sd15_openpose'),
                or 'builtin:tiny-random'.
            scale: Conditioning scale: multiplies the residuals the ControlNet adds to the UNet.
            start: Fraction of the noise schedule (0 = pure noise) where the condition starts acting.
            end: Fraction where it stops.
            revision: Hub revision.
            variant: Weight variant such as 'fp16'.
            allow_pickle: Also load pickle weights (they can run code; off by default).
            precompute_embedding: Embed each map once per request side (the ControlNet's own
                `controlnet_cond_embedding`) instead of at every UNet call; the same result, less work.
            mode: A FLUX union ControlNet's control mode (None: from the modality, InstantX's numbering).
        """
        super().__init__(modality, pretrained, scale, start, end, revision, variant, allow_pickle)
        self.precompute_embedding = precompute_embedding
        self.mode = mode

    def load(self, backbone) -> None:
        from diffusers import ControlNetModel, SD3ControlNetModel

        if "controlnet" not in self._modules:  # loaded once (or given already)
            kind = self._checkpoint_class(backbone)
            if kind == "SD3ControlNetModel":  # a transformer's ControlNet (SD3)
                self.controlnet = self._load_model(SD3ControlNetModel, "controlnet")
            elif kind == "FluxControlNetModel":
                self.controlnet = self._load_flux()
            else:
                self.controlnet = self._load_model(ControlNetModel, "controlnet", check_controlnet, backbone)
        elif not self._transformer():
            self._check_loaded(self.controlnet, check_controlnet, backbone)
        if self._transformer():  # the backbone makes the call (its timestep, packing); a tuple: not a submodule
            self._backbone = (backbone,)

    def _checkpoint_class(self, backbone) -> Optional[str]:
        from diffusers import ControlNetModel

        from framework.backbones.loading import load_config

        config = load_config(ControlNetModel, self._folder("controlnet"), f"{self.kind} '{self.modality}'",
                             revision=self.revision)
        return config.get("_class_name")

    def _transformer(self) -> bool:
        """An SD3 or FLUX ControlNet: it reads the map as VAE latents and adds block samples to the transformer."""
        return type(self.controlnet).__name__ in ("SD3ControlNetModel", "FluxControlNetModel")

    def _load_flux(self):
        from diffusers import FluxControlNetModel

        controlnet = self._load_model(FluxControlNetModel, "controlnet")
        if controlnet.input_hint_block is not None:
            raise ConfigError(f"ControlNet '{self.modality}' ({self.pretrained}) reads the map in pixels (an XLabs "
                              "FLUX ControlNet), which this project does not run: use one that reads VAE latents, "
                              "e.g. Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro-2.0.")
        if controlnet.config.num_mode and self.mode is None:
            self.mode = UNION_MODES.get(self.modality)
            if self.mode is None:
                raise ConfigError(f"ControlNet '{self.modality}' ({self.pretrained}) is a union ControlNet with "
                                  f"{controlnet.config.num_mode} modes and '{self.modality}' is none of "
                                  f"{', '.join(UNION_MODES)}: set its `mode` (the checkpoint's card lists them).")
        return controlnet

    def _embeds_ahead(self) -> bool:
        """Precompute only where the map goes straight into the embedding (RGB channel order)."""
        return self.precompute_embedding and self.controlnet.config.controlnet_conditioning_channel_order == "rgb"

    @torch.no_grad()
    def encode(self, side: ConditionSide, backbone) -> Optional[Encoding]:
        # ControlNet takes the map as is, in [0, 1] (no [-1, 1] normalisation).
        control = self.map_for(side)
        if control is not None and self._transformer():
            return self._map_latents(control, backbone)
        if control is None or not self._embeds_ahead():
            return control
        dtype = next(self.controlnet.parameters()).dtype
        return self.controlnet.controlnet_cond_embedding(control.to(dtype))  # (1, c, H/8, W/8)

    def apply(self, inputs: UNetInputs, latents: torch.Tensor, t: int, encoding: Encoding,
              progress: float) -> None:
        """`encoding` is a map batch (b, 3, H, W) or, from `encode`, its embedding batch (b, c, H/8, W/8)."""
        if not in_window(progress, self.start, self.end):
            return
        if self._transformer():
            return self._backbone[0].control(self.controlnet, latents, t, inputs, encoding, self.scale, self.mode)
        embedded = encoding.shape[1] != self.controlnet.config.conditioning_channels
        with _embedding_given(self.controlnet) if embedded else nullcontext():
            down, mid = self.controlnet(
                latents, t, encoder_hidden_states=inputs.encoder_hidden_states,
                controlnet_cond=encoding.to(latents.dtype), conditioning_scale=self.scale,
                added_cond_kwargs=inputs.added_cond_kwargs, return_dict=False,  # SDXL's text_embeds, time_ids
            )
        inputs.add_control(down, mid)

    def _map_latents(self, control: torch.Tensor, backbone) -> torch.Tensor:
        """A transformer ControlNet's map input: the map encoded as the backbone encodes images; InstantX's SD3
        ControlNets (zero pooled projections) were trained without the VAE's shift, as diffusers' pipeline applies."""
        latents = backbone.encode_image(control)
        if getattr(self.controlnet.config, "force_zeros_for_pooled_projection", False):
            latents = latents + (backbone.vae.config.shift_factor or 0.0) * backbone.vae.config.scaling_factor
        return latents


@contextmanager
def _embedding_given(controlnet):
    """Within: the ControlNet's conditioning-embedding module passes its input through (it is precomputed)."""
    embedding = controlnet.controlnet_cond_embedding
    controlnet.controlnet_cond_embedding = nn.Identity()
    try:
        yield
    finally:
        controlnet.controlnet_cond_embedding = embedding
