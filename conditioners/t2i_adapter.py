"""Layout conditions through a T2I-Adapter (features computed once per map, added inside the UNet)."""

from __future__ import annotations

from typing import Optional

import torch

from conditioners.base import Conditioner, ConditionSide, Encoding, UNetInputs, in_window
from framework.models import BUILTIN_PREFIX, builtin_folder, load_component, resolve_pretrained


class T2IAdapterConditioner(Conditioner):
    """Adds T2I-Adapter features for the request's `modality` map.

    Unlike ControlNet, the adapter does not look at the latents: its features are computed once
    per map in `encode` and reused at every step.
    """

    def __init__(self, modality: str, pretrained: str, scale: float = 1.0, start: float = 0.0,
                 end: float = 1.0, revision: Optional[str] = None, variant: Optional[str] = None,
                 allow_pickle: bool = False):
        """
        Args:
            modality: Key of this condition's maps in the manifest ('pose', 'sketch', 'depth' ...).
            pretrained: Hub id or local folder of a diffusers T2IAdapter, e.g. 'TencentARC/t2iadapter_openpose_sd14v1'.
            scale: adapter_conditioning_scale: multiplies the features.
            start: Fraction of the noise schedule (0 = pure noise) where the adapter starts acting.
            end: Fraction where it stops.
            revision: Hub revision.
            variant: Weight variant.
            allow_pickle: Also load pickle weights.
        """
        super().__init__()
        from framework.errors import ConfigError

        if not 0 <= start <= end <= 1:
            raise ConfigError(f"T2I-Adapter '{modality}': need 0 <= start <= end <= 1, got {start}, {end}.")
        self.modality = modality
        self.pretrained = pretrained
        self.scale = scale
        self.start, self.end = start, end
        self.revision, self.variant, self.allow_pickle = revision, variant, allow_pickle
        self._source = resolve_pretrained(pretrained, f"T2I-Adapter '{modality}'", None, revision)
        self.adapter = None

    def load(self, backbone) -> None:
        if self.adapter is not None:
            return
        from diffusers import T2IAdapter

        source = self._source
        if source.startswith(BUILTIN_PREFIX):
            source = str(builtin_folder(source, "t2i_adapter"))
        self.adapter = load_component(T2IAdapter, source, f"T2I-Adapter '{self.modality}'",
                                      revision=self.revision, variant=self.variant,
                                      allow_pickle=self.allow_pickle)
        self.adapter.requires_grad_(False).eval()

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
