"""Layout conditions through ControlNet: pose, scribble, MLSD lines, canny, depth ... (any SD 1.5 ControlNet)."""

from __future__ import annotations

from typing import Optional

import torch

from conditioners.base import ConditionSide, Encoding, LayoutConditioner, UNetInputs, in_window


class ControlNetConditioner(LayoutConditioner):
    """Adds a ControlNet's residuals for the request's `modality` map (diffusers ControlNetModel).

    Several of these in the conditioner list sum their residuals (multi-condition editing).
    A request without a map for this modality on either side is edited without it.
    """

    kind = "ControlNet"
    def load(self, backbone) -> None:
        from diffusers import ControlNetModel

        if "controlnet" not in self._modules:  # loaded once (or given already)
            self.controlnet = self._load_model(ControlNetModel, "controlnet")

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
