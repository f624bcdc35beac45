"""Preservation loss: keep the input outside the edit region (paper Eqs. 3-4)."""

from __future__ import annotations

from typing import Optional

import torch

from losses.base import EditLoss


def masked_mse(y_t: torch.Tensor, x_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """||(1 - m) * (y_t - x_t)||^2, summed over all elements."""
    return (((1 - mask) * (y_t - x_t)) ** 2).sum()


class MaskedMSEPreservation(EditLoss):
    """L_REC = ||(1 - m) * (y_t - x_t)||_2^2, pulling y_t towards the inverted input outside the mask.

    The paper prints Eq. 4 as ||m * y_t - (1 - m) * x_t||^2, which would pull y_t to zero inside the
    edit region; its text says the loss keeps the input where m = 0 and leaves the edit region
    free, which is what this implements (m = 1: edit region, DiffEdit's convention). A squared
    norm, summed, as printed: its gradient 2 (1 - m)^2 (y_t - x_t) dominates the cosine guidance
    outside the mask, which is what separates preservation from modification.
    """

    role = "preservation"

    def forward(self, y_t: torch.Tensor, *, x_t: torch.Tensor, g_t: Optional[torch.Tensor],
                mask: torch.Tensor, t: int) -> torch.Tensor:
        return masked_mse(y_t, x_t, mask)
