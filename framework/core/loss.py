"""The loss-plugin contract of the inference-time optimisation (ITO)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def role_factor(role: str, lam: float) -> float:
    """The paper's balance (Eq. 6): lam for preservation, 1 - lam for guidance, 1 for anything else."""
    return {"preservation": lam, "guidance": 1.0 - lam}.get(role, 1.0)


class EditLoss(nn.Module):
    """Base class of ITO losses on the latents being decoded (select one in YAML by `class_path`).

    `forward(y_t, *, x_t, g_t, mask, t)` returns a scalar. Pure maths on latents: no model calls,
    so no backward pass ever goes through the UNet.

    `role` says how the paper's balance lam weighs it (Eq. 6): 'preservation' losses get lam,
    'guidance' losses get 1 - lam, 'extra' losses get 1. `weight` multiplies on top. A loss whose
    total weight is 0 is not evaluated.
    """

    role: str = "extra"

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def forward(self, y_t: torch.Tensor, *, x_t: torch.Tensor, g_t: Optional[torch.Tensor],
                mask: torch.Tensor, t: int) -> torch.Tensor:
        """
        Args:
            y_t: Latents being optimised, (1, 4, h, w).
            x_t: DDIM-inverted input latents at the same timestep (the reference to keep).
            g_t: DDIM-inverted guidance latents (None where there is no guidance image).
            mask: Edit mask (1, 1, h, w): 1 = edit region, 0 = keep.
            t: The timestep.
        """
        raise NotImplementedError

    def role_weight(self, lam: float) -> float:
        """This loss's factor in `lam * L_pres + (1 - lam) * L_guid` (+ extras)."""
        return role_factor(self.role, lam) * self.weight
