"""Mask-estimator plugins: the edit region m (1 = edit) on the latent grid: given, none, or Eq. 7."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F

from framework.core.errors import EditError, warn
from framework.core.mask_cache import MaskCache, mask_key
from framework.core.masks import binary_mask, estimate_soft_mask, mask_image_size, mask_schedule
from framework.core.settings import GivenMaskConfig, MaskConfig
from framework.core.stages import MaskEstimator, MaskResult

if TYPE_CHECKING:
    from framework.core.procedure import EditState
    from framework.core.stages import StageTools


def given_mask(request_mask: torch.Tensor, size: tuple[int, int], rule: str) -> torch.Tensor:
    """A user's mask (1, 1, H, W) on the latent grid (1, 1, h, w): 'cover' (any marked pixel) or 'area' (> half)."""
    if rule == "cover":
        return (F.adaptive_max_pool2d((request_mask.float() > 0.5).float(), size) > 0).float()
    return (F.interpolate(request_mask.float(), size=size, mode="area") > 0.5).float()


def warn_degenerate(mask: torch.Tensor, request_id: str, given: bool = False, rule: str = "cover") -> None:
    """Warn about an empty or full edit mask, with the hint that fits where it came from."""
    from framework.core.masks import mask_area_hint

    area = float(mask.mean())
    if area in (0.0, 1.0):
        warn(f"Edit '{request_id}': {mask_area_hint(area, given, rule)}")


@dataclass
class GivenMask(MaskEstimator, GivenMaskConfig):
    """Only the request's own mask (manifest `mask:`); a request without one is an error. Its setting: `given`,
    how the mask is put on the latent grid."""

    def estimate(self, tools: "StageTools", state: "EditState") -> MaskResult:
        request = state.request
        if request.mask is None:
            raise EditError(f"Edit '{request.id}' has no mask, but the mask estimator is GivenMask: add a `mask:` "
                            "to the request or use framework.stages.NoiseDifferenceMask.")
        mask = given_mask(request.mask, tuple(state.x0.shape[-2:]), self.given)
        warn_degenerate(mask, request.id, given=True, rule=self.given)
        return mask, None, "given"


class NoMask(MaskEstimator):
    """An empty mask (nothing marked): for methods that do not use one (SDEdit, prompt-to-prompt)."""

    def estimate(self, tools: "StageTools", state: "EditState") -> MaskResult:
        return torch.zeros_like(state.x0[:, :1]), None, "none"


@dataclass
class NoiseDifferenceMask(MaskEstimator, MaskConfig):
    """Eq. 7 (or DiffEdit's variant) from noise-prediction differences; a given mask wins.

    Its init_args are MaskConfig's fields (seeds, strength, threshold, smoothing, compare_at and normalize for
    the DiffEdit variant, the cost options, the cache); `model.mask` sets those of the default mask estimator."""

    def estimate(self, tools: "StageTools", state: "EditState") -> MaskResult:
        request, x0 = state.request, state.x0
        if request.mask is not None:
            return GivenMask(self.given).estimate(tools, state)
        cache = key = soft = None
        source = "estimated"
        if self.cache_dir:
            store: Optional[MaskCache] = self.__dict__.get("_store")  # opened on first use, once per run
            if store is None or store.folder != Path(self.cache_dir):
                store = self.__dict__["_store"] = MaskCache(self.cache_dir)  # it creates the folder
            cache = store
            key = mask_key(request, tools.backbone, tools.conditioners, tools.sampling, self, state.seed,
                           x0.dtype, x0.device)
            soft = cache.get(key)
            if soft is not None:
                soft, source = soft.to(x0.device, x0.dtype), "cached"
        if soft is None:
            scale = tools.sampling.guidance_scale if self.guidance_scale is None else self.guidance_scale
            x_mask, sides = self.inputs(tools, state)
            grid = mask_schedule(state.schedule, self)
            soft, _ = estimate_soft_mask(x_mask, tools.denoiser, sides.source, sides.edit, grid, self, state.seed,
                                         scale, tuple(x0.shape[-2:]))
            if cache is not None:
                cache.put(key, soft)
        mask = binary_mask(soft, self.threshold)
        warn_degenerate(mask, request.id)
        return mask, soft[None, None], source

    def inputs(self, tools: "StageTools", state: "EditState"):
        """x_0 and the condition sides at `resolution`: the input and its maps resized, re-encoded."""
        request = state.request
        size = mask_image_size(*request.image.shape[-2:], self.resolution)
        if size == tuple(request.image.shape[-2:]):
            return state.x0, state.sides
        small = lambda image: F.interpolate(image.float(), size=size, mode="area")  # noqa: E731
        low = replace(request, image=small(request.image),
                      source_maps={k: small(v) for k, v in request.source_maps.items()},
                      edit_maps={k: small(v) for k, v in request.edit_maps.items()})
        return tools.backbone.encode_image(low.image), tools.sides(low)
