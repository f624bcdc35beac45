"""Layout conditions through ControlNet: pose, scribble, MLSD lines, canny, depth ... (any SD 1.5 ControlNet)."""

from __future__ import annotations

from typing import Optional

import torch

from conditioners.base import Conditioner, ConditionSide, Encoding, UNetInputs, in_window
from framework.models import BUILTIN_PREFIX, builtin_folder, load_component, resolve_pretrained


class ControlNetConditioner(Conditioner):
    """Adds a ControlNet's residuals for the request's `modality` map.

    Several of these in the conditioner list sum their residuals (multi-condition editing).
    A request without a map for this modality on either side is edited without it.
    """

    def __init__(self, modality: str, pretrained: str, scale: float = 1.0, start: float = 0.0,
                 end: float = 1.0, revision: Optional[str] = None, variant: Optional[str] = None,
                 allow_pickle: bool = False):
        """
        Args:
            modality: Key of this condition's maps in the manifest ('pose', 'scribble', 'lines' ...).
            pretrained: Hub id or local folder of a diffusers ControlNet, e.g.
                'lllyasviel/control_v11p_sd15_openpose'.
            scale: controlnet_conditioning_scale: multiplies the residuals.
            start: Fraction of the noise schedule (0 = pure noise) where the control starts acting.
            end: Fraction where it stops.
            revision: Hub revision.
            variant: Weight variant such as 'fp16'.
            allow_pickle: Also load pickle weights.
        """
        super().__init__()
        from framework.errors import ConfigError

        if not 0 <= start <= end <= 1:
            raise ConfigError(f"ControlNet '{modality}': need 0 <= start <= end <= 1, got start={start}, end={end}.")
        self.modality = modality
        self.pretrained = pretrained
        self.scale = scale
        self.start, self.end = start, end
        self.revision, self.variant, self.allow_pickle = revision, variant, allow_pickle
        self._source = resolve_pretrained(pretrained, f"ControlNet '{modality}'", None, revision)
        self.controlnet = None

    def load(self, backbone) -> None:
        if self.controlnet is not None:
            return
        from diffusers import ControlNetModel

        source = self._source
        if source.startswith(BUILTIN_PREFIX):
            source = str(builtin_folder(source, "controlnet"))
        self.controlnet = load_component(ControlNetModel, source, f"ControlNet '{self.modality}'",
                                         revision=self.revision, variant=self.variant,
                                         allow_pickle=self.allow_pickle)
        self.controlnet.requires_grad_(False).eval()

    def encode(self, side: ConditionSide, backbone) -> Optional[Encoding]:
        # ControlNet takes the map as is, in [0, 1] (no [-1, 1] normalisation).
        return self.map_for(side)

    def apply(self, inputs: UNetInputs, latents: torch.Tensor, t: int, encoding: Encoding,
              progress: float) -> None:
        if not in_window(progress, self.start, self.end):
            return
        down, mid = self.controlnet(
            latents, t, encoder_hidden_states=inputs.encoder_hidden_states,
            controlnet_cond=encoding.to(latents.dtype), conditioning_scale=self.scale, return_dict=False,
        )
        inputs.add_control(down, mid)
