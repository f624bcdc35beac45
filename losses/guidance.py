"""Guidance loss: steer the edit towards the guidance image's latents (paper Eq. 5)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from framework.core.errors import ConfigError
from losses.base import EditLoss


def cosine_distance(y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """1 - y.g / (|y| |g|) over the flattened latents (Eq. 5)."""
    y, g = y.flatten(), g.flatten()
    return 1 - (y @ g) / (y.norm() * g.norm()).clamp_min(1e-12)


def pixel_cosine_distance(y: torch.Tensor, g: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over latent pixels of 1 - cos(y[:, :, i, j], g[:, :, i, j]), the cosine across channels.

    `weight` (1, 1, h, w) makes it a weighted mean (e.g. the edit mask); None: every pixel counts.
    """
    per_pixel = 1 - F.cosine_similarity(y, g, dim=1, eps=1e-12)  # (1, h, w)
    if weight is None:
        return per_pixel.mean()
    weight = weight[:, 0]
    return (weight * per_pixel).sum() / weight.sum().clamp_min(1e-12)


def norm_mismatch(y: torch.Tensor, g: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over latent pixels of ((|y_ij| - |g_ij|) / |g_ij|)^2, the channel vectors' relative norm gap."""
    gap = ((y.norm(dim=1) - g.norm(dim=1)) / g.norm(dim=1).clamp_min(1e-6)) ** 2  # (1, h, w)
    if weight is None:
        return gap.mean()
    weight = weight[:, 0]
    return (weight * gap).sum() / weight.sum().clamp_min(1e-12)


class CosineGuidance(EditLoss):
    """L_G = 1 - (y_t . g_t) / (|y_t| |g_t|), the cosine distance to the guidance latents.

    `granularity: latent` (Eq. 5 as printed) takes one cosine of the whole flattened latents;
    `granularity: pixel` (the default) averages the cosine of each latent pixel's channel vector, so
    each pixel is pulled towards G's direction at that pixel whatever the norms elsewhere. Both
    gradients scale per element as 1 / (c h w), as the mean masked MSE's does (so with
    `reduction: mean` their ratio, which is what lam weighs in Eq. 6, does not depend on the latent's
    size; against the summed MSE it grows with it: about 20x at 4 x 8 x 8, 1300x at 4 x 64 x 64).
    `region: all` (the paper) compares whole latents; `region: edit` compares inside the mask only.
    `norm_weight` (default 1) adds a per-pixel norm term, so the loss is zero only at y_t = g_t.
    """

    role = "guidance"

    def __init__(self, weight: float = 1.0, region: str = "all", granularity: str = "pixel", norm_weight: float = 1.0):
        """
        Args:
            weight: Multiplies (1 - lam).
            region: 'all' (whole latent, Eq. 5) or 'edit' (inside the mask only).
            granularity: 'pixel' (mean of per-latent-pixel cosines, default) or 'latent' (one cosine, Eq. 5).
            norm_weight: Adds this times `norm_mismatch` (per-pixel relative norm difference to g_t, squared).
                The cosine alone is blind to the latent's norm: at lam = 0 it turns y_t towards g_t but leaves
                it a third longer, and the decode then misses G (docs/lam.md). 1 (default); 0: the paper's loss.
        """
        super().__init__(weight)
        if norm_weight < 0:
            raise ConfigError(f"CosineGuidance.norm_weight must be >= 0, got {norm_weight}.")
        self.norm_weight = norm_weight
        if region not in ("all", "edit"):
            raise ConfigError(f"CosineGuidance.region must be 'all' or 'edit', got '{region}'.")
        if granularity not in ("pixel", "latent"):
            raise ConfigError(f"CosineGuidance.granularity must be 'pixel' or 'latent', got '{granularity}'.")
        self.region = region
        self.granularity = granularity

    def forward(self, y_t: torch.Tensor, *, x_t: torch.Tensor, g_t: Optional[torch.Tensor],
                mask: torch.Tensor, t: int) -> torch.Tensor:
        if g_t is None:
            return y_t.new_zeros(())
        if self.norm_weight:
            weight = mask if self.region == "edit" else None
            return self.cosine(y_t, g_t, mask) + self.norm_weight * norm_mismatch(y_t, g_t, weight)
        return self.cosine(y_t, g_t, mask)

    def cosine(self, y_t: torch.Tensor, g_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Eq. 5 at the configured granularity and region."""
        if self.granularity == "pixel":
            return pixel_cosine_distance(y_t, g_t, mask if self.region == "edit" else None)
        if self.region == "edit":
            return cosine_distance(mask * y_t, mask * g_t)
        return cosine_distance(y_t, g_t)
