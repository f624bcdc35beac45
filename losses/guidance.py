"""Guidance loss: steer the edit towards the guidance image's latents (paper Eq. 5)."""

from __future__ import annotations

from typing import Optional

import torch

from framework.errors import ConfigError
from losses.base import EditLoss


def cosine_distance(y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """1 - y.g / (|y| |g|) over the flattened latents."""
    y, g = y.flatten(), g.flatten()
    return 1 - (y @ g) / (y.norm() * g.norm()).clamp_min(1e-12)


class CosineGuidance(EditLoss):
    """L_G = 1 - (y_t . g_t) / (|y_t| |g_t|), the cosine distance to the guidance latents.

    `region: all` (the paper) compares whole latents; `region: edit` compares m * y_t with m * g_t,
    so the guidance acts on the edit region only.
    """

    role = "guidance"

    def __init__(self, weight: float = 1.0, region: str = "all"):
        """
        Args:
            weight: Multiplies (1 - lam).
            region: 'all' (whole latent, Eq. 5) or 'edit' (inside the mask only).
        """
        super().__init__(weight)
        if region not in ("all", "edit"):
            raise ConfigError(f"CosineGuidance.region must be 'all' or 'edit', got '{region}'.")
        self.region = region

    def forward(self, y_t: torch.Tensor, *, x_t: torch.Tensor, g_t: Optional[torch.Tensor],
                mask: torch.Tensor, t: int) -> torch.Tensor:
        if g_t is None:
            return y_t.new_zeros(())
        if self.region == "edit":
            return cosine_distance(mask * y_t, mask * g_t)
        return cosine_distance(y_t, g_t)
