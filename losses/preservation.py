"""Preservation loss: keep the input outside the edit region (paper Eqs. 3-4)."""

from __future__ import annotations

from typing import Optional

import torch

from framework.core.errors import ConfigError
from losses.base import EditLoss

REDUCTIONS = ("sum", "mean")


def masked_mse(y_t: torch.Tensor, x_t: torch.Tensor, mask: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """||(1 - m) * (y_t - x_t)||^2: summed over all elements (Eq. 4 as printed), or their mean.

    The mean divides the sum by the number of latent elements (c x h x w), so the loss, and its
    gradient per latent, does not grow with the latent's size.
    """
    squared = ((1 - mask) * (y_t - x_t)) ** 2  # (1, 4, h, w)
    return squared.sum() if reduction == "sum" else squared.mean()


class MaskedMSEPreservation(EditLoss):
    """L_REC = ||(1 - m) * (y_t - x_t)||_2^2, pulling y_t towards the inverted input outside the mask.

    The paper prints Eq. 4 as ||m * y_t - (1 - m) * x_t||^2, which would pull y_t to zero inside the
    edit region; its text says the loss keeps the input where m = 0 and leaves the edit region
    free, which is what this implements (m = 1: edit region, DiffEdit's convention).

    `reduction` decides the loss's scale against the guidance loss, and so what lam does (Eq. 6):
    'sum' (the paper's squared norm) has a gradient hundreds to thousands of times the cosine's, more on
    larger latents, so any lam in (0, 1) gives the same edit under Adam; 'mean' (the default) brings it
    to the cosine's scale at any latent size, so lam weighs the two pulls (docs/procedure-and-choices.md,
    "lam").
    """

    role = "preservation"

    def __init__(self, weight: float = 1.0, reduction: str = "mean"):
        """
        Args:
            weight: Multiplies lam.
            reduction: 'mean' over the latent's elements (default) or 'sum' (Eq. 4 as printed).
        """
        super().__init__(weight)
        if reduction not in REDUCTIONS:
            raise ConfigError(f"MaskedMSEPreservation.reduction must be 'sum' or 'mean', got '{reduction}'.")
        self.reduction = reduction

    def forward(self, y_t: torch.Tensor, *, x_t: torch.Tensor, g_t: Optional[torch.Tensor],
                mask: torch.Tensor, t: int) -> torch.Tensor:
        return masked_mse(y_t, x_t, mask, self.reduction)
