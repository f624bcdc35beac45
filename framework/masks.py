"""Edit-mask estimation from noise-prediction differences (paper Eq. 7, after DiffEdit)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from framework.config import MaskConfig
from framework.ddim import Schedule, ddim_step, noise_encode, seeded_noise
from framework.denoiser import Conditioning, Denoiser


def gaussian_blur(m: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of (h, w) with reflect padding; sigma in pixels."""
    if sigma <= 0:
        return m
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=m.dtype, device=m.device)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    img = m[None, None]
    pad_h, pad_w = min(radius, m.shape[0] - 1), min(radius, m.shape[1] - 1)
    img = F.pad(img, (pad_w, pad_w, 0, 0), mode="reflect") if pad_w else img
    img = F.conv2d(img, kernel[None, None, None, radius - pad_w: radius + pad_w + 1])
    img = F.pad(img, (0, 0, pad_h, pad_h), mode="reflect") if pad_h else img
    img = F.conv2d(img, kernel[None, None, radius - pad_h: radius + pad_h + 1, None])
    return img[0, 0]


def normalise(m: torch.Tensor, cfg: MaskConfig) -> torch.Tensor:
    """Bring the difference map to [0, 1]: min-max (paper) or clipped at a multiple of the mean (DiffEdit)."""
    if cfg.normalize == "mean_ratio":
        clip = (m.mean() * cfg.mean_ratio).clamp_min(1e-12)
        return m.clamp(0, float(clip)) / clip
    low, high = m.min(), m.max()
    return (m - low) / (high - low).clamp_min(1e-12)


@torch.no_grad()
def noise_difference(x0: torch.Tensor, denoiser: Denoiser, source: tuple[Conditioning, Conditioning],
                     edit: tuple[Conditioning, Conditioning], schedule: Schedule, cfg: MaskConfig,
                     seed: int, guidance_scale: float) -> torch.Tensor:
    """(1/n) sum_i |eps(x_1, C_EDIT, s_i) - eps(x_1, C_0, s_i)|, averaged over channels: (h, w).

    x0 is encoded with random noise (seeds s_i) to `cfg.strength`, then decoded under C_0 and
    C_EDIT (compare_at 'last') or compared at once (compare_at 'first', DiffEdit). All n seeds
    and both conditions go through the UNet as one batch per step.
    """
    n = cfg.seeds
    timesteps = schedule.decode_timesteps(schedule.encode_level(cfg.strength))
    noise = seeded_noise((n, *x0.shape[1:]), seed, x0.device)
    x = noise_encode(x0, noise, schedule.alpha(timesteps[0]))  # (n, 4, h, w)
    latents = torch.cat([x, x])  # source half, then edit half
    cond = Conditioning.cat([source[0].repeat(n), edit[0].repeat(n)])
    uncond = Conditioning.cat([source[1].repeat(n), edit[1].repeat(n)])
    if cfg.compare_at == "first":
        timesteps = timesteps[:1]
    for i, t in enumerate(timesteps):
        eps = denoiser(latents, t, cond, uncond, guidance_scale)
        if i < len(timesteps) - 1:
            latents = ddim_step(latents, eps, schedule.alpha(t), schedule.alpha(t - schedule.stride))
    eps_source, eps_edit = eps.chunk(2)
    return (eps_edit - eps_source).abs().mean(dim=(0, 1))


def soft_mask(difference: torch.Tensor, cfg: MaskConfig) -> torch.Tensor:
    """Smoothed, normalised difference map in [0, 1], (h, w)."""
    return normalise(gaussian_blur(difference, cfg.smoothing), cfg)


def binary_mask(soft: torch.Tensor, threshold: float) -> torch.Tensor:
    """Threshold tau -> (1, 1, h, w) float mask, 1 = edit region."""
    return (soft > threshold).float()[None, None]
