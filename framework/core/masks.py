"""Edit-mask estimation from noise-prediction differences (paper Eq. 7, after DiffEdit)."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from framework.core.denoiser import Conditioning, Denoiser
from framework.core.sampling import Sampler, seeded_noise
from framework.core.settings import MaskConfig


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
                     edit: tuple[Conditioning, Conditioning], schedule: Sampler, cfg: MaskConfig,
                     seed: int, guidance_scale: float, group: Optional[slice] = None) -> torch.Tensor:
    """(1/n) sum_i |eps(x_1, C_EDIT, s_i) - eps(x_1, C_0, s_i)|, averaged over channels: (h, w).

    x0 is encoded with random noise (seeds s_i) to `cfg.strength`, then decoded under C_0 and
    C_EDIT (compare_at 'last') or compared at once (compare_at 'first', DiffEdit). All n seeds
    and both conditions go through the UNet as one batch per step. `group` restricts the mean to
    those of the n seeds (their noise is the same as in the full draw).
    """
    timesteps = schedule.decode_timesteps(schedule.encode_level(cfg.strength))
    noise = seeded_noise((cfg.seeds, *x0.shape[1:]), seed, x0.device)[group or slice(None)]
    n = noise.shape[0]
    x = schedule.encode(x0, noise, timesteps[0])  # (n, 4, h, w)
    latents = torch.cat([x, x])  # source half, then edit half
    cond = Conditioning.cat([source[0].repeat(n), edit[0].repeat(n)])
    uncond = Conditioning.cat([source[1].repeat(n), edit[1].repeat(n)])
    if cfg.compare_at == "first":
        timesteps = timesteps[:1]
    for i, t in enumerate(timesteps):
        eps = denoiser(latents, t, cond, uncond, guidance_scale)
        if i < len(timesteps) - 1:
            latents = schedule.step(latents, eps, t)
    eps_source, eps_edit = eps.chunk(2)
    return (eps_edit - eps_source).abs().mean(dim=(0, 1))


def soft_mask(difference: torch.Tensor, cfg: MaskConfig) -> torch.Tensor:
    """Smoothed, normalised difference map in [0, 1], (h, w)."""
    return normalise(gaussian_blur(difference, cfg.smoothing), cfg)


def binary_mask(soft: torch.Tensor, threshold: float) -> torch.Tensor:
    """Threshold tau -> (1, 1, h, w) float mask, 1 = edit region."""
    return (soft > threshold).float()[None, None]


def mask_iou(a, b) -> float:
    """Intersection over union of two binary masks (tensors or arrays); 1.0 when both are empty."""
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    union = float(torch.logical_or(a > 0.5, b > 0.5).sum())
    return 1.0 if union == 0 else float(torch.logical_and(a > 0.5, b > 0.5).sum()) / union


def seed_groups(cfg: MaskConfig) -> list[slice]:
    """The seed batches of one mask: all n at once, or groups of `seed_group` with the early stop."""
    if cfg.early_stop_iou is None:
        return [slice(0, cfg.seeds)]
    return [slice(i, min(i + cfg.seed_group, cfg.seeds)) for i in range(0, cfg.seeds, cfg.seed_group)]


def mask_schedule(schedule: Sampler, cfg: MaskConfig) -> Sampler:
    """The mask's grid: the edit's, or a coarser one of `cfg.steps` steps (never a finer one)."""
    if cfg.steps is None or cfg.steps >= len(schedule.timesteps):
        return schedule
    return schedule.with_steps(cfg.steps)


def mask_image_size(height: int, width: int, resolution: float) -> tuple[int, int]:
    """Pixel size of the mask's input at `resolution`: each side scaled, to a multiple of 8 (at least 8)."""
    return tuple(max(8, int(round(side * resolution / 8)) * 8) for side in (height, width))


@torch.no_grad()
def estimate_soft_mask(x0: torch.Tensor, denoiser: Denoiser, source: tuple[Conditioning, Conditioning],
                       edit: tuple[Conditioning, Conditioning], schedule: Sampler, cfg: MaskConfig, seed: int,
                       guidance_scale: float, size: Optional[tuple[int, int]] = None) -> tuple[torch.Tensor, int]:
    """Soft mask (h, w) on the latent grid `size` (default: x0's) and the number of seeds it used.

    Eq. 7 with the cost options: x0 may be a lower-resolution encoding (the difference map is
    upsampled before smoothing) and, with `early_stop_iou`, seed groups are added until the binary
    mask of the running mean stops changing (IoU with the previous group's above the threshold).
    """
    size = size or tuple(x0.shape[-2:])
    total, used, previous = None, 0, None
    for group in seed_groups(cfg):
        count = group.stop - group.start
        part = noise_difference(x0, denoiser, source, edit, schedule, cfg, seed, guidance_scale, group) * count
        total, used = (part if total is None else total + part), used + count
        soft = soft_mask(resize_map(total / used, size), cfg)
        current = binary_mask(soft, cfg.threshold)
        if previous is not None and mask_iou(previous, current) > cfg.early_stop_iou:
            break
        previous = current
    return soft, used


def resize_map(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (h, w) map to `size` (a no-op at that size)."""
    if tuple(m.shape) == tuple(size):
        return m
    return F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


def mask_area_hint(area: float, given: bool, given_mode: str) -> str:
    """Why an edit mask is empty (area 0) or full (area 1), and what to change: the request's own mask file
    or the estimate's threshold."""
    if given and area == 0.0:
        thin = (" (or its white region is too thin for the latent grid under mask.given: area; use mask.given: "
                "cover)") if given_mode == "area" else ""
        return (f"the given mask has no edit region: it is all black{thin}, so only what the guidance loss "
                f"reaches can change. White marks the edit region; or leave out `mask` to estimate one.")
    if given:
        return ("the given mask is all white, so the whole image may change and nothing is preserved. Paint the "
                "parts to keep black; or leave out `mask` to estimate one.")
    if area == 0.0:
        return ("the edit mask is empty, so the edit can only change what the guidance loss reaches. Lower "
                "mask.threshold or give a mask.")
    return "the edit mask covers the whole image, so nothing is preserved. Raise mask.threshold or give a mask."
