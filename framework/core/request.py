"""The request and result of one edit: what goes into the procedure and what comes out (tensors in [0, 1])."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch


@dataclass
class EditRequest:
    """A loaded request: tensors in [0, 1], images (1, 3, H, W), mask (1, 1, H, W)."""

    id: str
    image: torch.Tensor
    source_prompt: str
    edit_prompt: str
    source_maps: dict[str, torch.Tensor]
    edit_maps: dict[str, torch.Tensor]
    mask: Optional[torch.Tensor]
    seed: Optional[int]
    lam: Optional[float | str]  # a number or "auto"
    extra: dict[str, Any]
    index: int = 0

    @property
    def changes_prompt(self) -> bool:
        """Whether the edit prompt differs from the source prompt (a text edit, alone or with a spatial one)."""
        return self.edit_prompt != self.source_prompt

    def to(self, device) -> "EditRequest":
        move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return EditRequest(self.id, self.image.to(device), self.source_prompt, self.edit_prompt,
                           move(self.source_maps), move(self.edit_maps),
                           None if self.mask is None else self.mask.to(device), self.seed, self.lam,
                           self.extra, self.index)


@dataclass
class EditResult:
    """What one edit produced; images (1, 3, H, W) in [0, 1] on the CPU, masks (1, 1, h, w)."""

    id: str
    edit: torch.Tensor
    input: torch.Tensor
    mask: torch.Tensor  # binary, latent resolution
    soft_mask: Optional[torch.Tensor]  # before thresholding, latent resolution
    guidance: Optional[torch.Tensor]
    source_maps: dict[str, torch.Tensor]
    edit_maps: dict[str, torch.Tensor]
    record: dict[str, Any] = field(default_factory=dict)  # prompts, parameters, seconds, UNet evaluations
