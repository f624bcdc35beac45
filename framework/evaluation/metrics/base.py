"""Bases and shared helpers of the metric plugins: `EditMetric`, `FeatureExtractor`, weight loading, labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from framework.core.errors import ModelLoadError
from framework.core.metric import EditMetric, MetricError  # noqa: F401  (the contract; re-exported)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# ---------------------------------------------------------------- helpers


def resize_centre_crop(images: torch.Tensor, size: int, mode: str = "bilinear", crop_pct: float = 1.0) -> torch.Tensor:
    """(b, 3, H, W) -> (b, 3, size, size): shorter side resized to size / crop_pct, then centre-cropped."""
    short = int(size / crop_pct)
    h, w = images.shape[-2:]
    if min(h, w) != short:
        scale = short / min(h, w)
        new = (max(short, round(h * scale)), max(short, round(w * scale)))
        images = F.interpolate(images, size=new, mode=mode, antialias=True, align_corners=False).clamp(0, 1)
    top, left = (images.shape[-2] - size) // 2, (images.shape[-1] - size) // 2
    return images[..., top:top + size, left:left + size]


def read_state_dict(path: str | Path, allow_pickle: bool, what: str, how_to_get: str) -> dict[str, torch.Tensor]:
    """A state dict from a local .safetensors file (or a pickle .pth/.pt/.bin when allowed)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"{what}: weights file '{path}' does not exist. {how_to_get}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if not allow_pickle:
        raise ModelLoadError(f"{what}: '{path}' is a pickle file; convert it to .safetensors "
                             f"(safetensors.torch.save_file(state_dict, ...)) or set allow_pickle: true.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    # Training checkpoints wrap the weights; a plain state dict has tensors at the top.
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], what: str, path: Any) -> None:
    """Strict `load_state_dict` whose mismatch names the first offending keys."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelLoadError(f"{what}: '{path}' does not fit the network: {str(err)[:600]}") from err


def meta_of(request) -> dict[str, Any]:
    """The request's free-form `meta` mapping ({} when absent or not a mapping)."""
    meta = request.extra.get("meta") if request.extra else None
    return meta if isinstance(meta, dict) else {}


def class_label(request, side: str) -> Optional[str]:
    """`meta.<side>_class` (a name), else `meta.<side>_id`, as a string; None when neither is given."""
    meta = meta_of(request)
    value = meta.get(f"{side}_class", meta.get(f"{side}_id"))
    return None if value is None else str(value)


# ---------------------------------------------------------------- plugin bases


class FeatureExtractor(nn.Module):
    """Base of image feature plugins: `forward(images in [0, 1], (b, 3, H, W)) -> (b, d)`."""

    def load(self, device: str | torch.device = "cpu") -> "FeatureExtractor":
        """Read the weights (once) and move to `device`; features without weights just move."""
        return self.to(device)


def image_features(features: FeatureExtractor, images: torch.Tensor, device: torch.device) -> np.ndarray:
    """Features of (b, 3, H, W) images as float64 numpy (b, d)."""
    with torch.no_grad():
        return features(images.to(device)).double().cpu().numpy()


