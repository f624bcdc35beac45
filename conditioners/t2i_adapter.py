"""Layout conditions through a T2I-Adapter (features computed once per map, added inside the UNet)."""

from __future__ import annotations

from typing import Optional

import torch

from conditioners.base import ConditionSide, Encoding, LayoutConditioner, UNetInputs, in_window
from conditioners.compat import check_adapter


class T2IAdapterConditioner(LayoutConditioner):
    """Adds T2I-Adapter features for the request's `modality` map (diffusers T2IAdapter,
    e.g. 'TencentARC/t2iadapter_openpose_sd14v1').

    Unlike ControlNet, the adapter does not look at the latents: its features are computed once
    per map in `encode` and reused at every step.
    """

    kind = "T2I-Adapter"

    def load(self, backbone) -> None:
        from diffusers import T2IAdapter

        if "adapter" not in self._modules:  # loaded once (or given already)
            self.adapter = self._load_model(T2IAdapter, "t2i_adapter", check_adapter, backbone)
        else:
            self._check_loaded(self.adapter, check_adapter, backbone)

    @torch.no_grad()
    def encode(self, side: ConditionSide, backbone) -> Optional[Encoding]:
        image = self.map_for(side)
        if image is None:
            return None
        dtype = next(self.adapter.parameters()).dtype
        return tuple(f * self.scale for f in self.adapter(image.to(dtype)))

    def apply(self, inputs: UNetInputs, latents: torch.Tensor, t: int, encoding: Encoding,
              progress: float) -> None:
        if in_window(progress, self.start, self.end):
            inputs.add_adapter(tuple(f.to(latents.dtype) for f in encoding))
