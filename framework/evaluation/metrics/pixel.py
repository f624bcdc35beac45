"""Pixel metrics: Table 1's L1 distance and, where the answer is known (toy world), L1 against it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from framework.evaluation.metrics.base import EditMetric, resize_centre_crop
from framework.io.manifests import load_image, open_image, read_image, target_size
from framework.io.outputs import EditResult
from framework.stages import grown


class L1Distance(EditMetric):
    """Mean |input - edit| over pixels and channels in [0, 1] (Table 1's 'L1 distance', DiffEdit protocol).

    Both images are resized so the shorter side is `crop` pixels, then centre-cropped to crop x crop,
    as DiffEdit evaluates ImageNet edits at 256 px; an image already crop x crop is used as it is.
    """

    def __init__(self, crop: int = 256):
        """
        Args:
            crop: Side of the square centre crop compared (pixels); 256 as in DiffEdit.
        """
        super().__init__()
        self.crop = crop

    @torch.no_grad()
    def update(self, result: EditResult, request) -> dict[str, float]:
        pair = resize_centre_crop(torch.cat([result.input, result.edit]).float(), self.crop)  # (2, 3, crop, crop)
        return self.record({"edit/l1": float((pair[0] - pair[1]).abs().mean())})


def load_like(path: str | Path, size: tuple[int, int], resolution: Optional[int] = None) -> torch.Tensor:
    """An image file sized like the input (framework.io.manifests's rule at `resolution`) if that gives `size`, else resized."""
    h, w = size
    with open_image(Path(path)) as img:
        original = img.size
    # Unknown resolution: the edit's longer side is it when it is a multiple of 8 (else off by < 8 px).
    for guess in ((resolution,) if resolution else (None, max(h, w))):
        if target_size(*original, guess)[1] == (w, h):
            return load_image(Path(path), guess)
    return read_image(path, size)


class GroundTruthL1(EditMetric):
    """L1 against a known answer, for requests with `target` (and `true_mask`), e.g. the toy world.

    `gt/l1`: mean |edit - target| over the image; `gt/background_l1`: mean |edit - input| outside the
    true mask (what should not change); `gt/target_l1`: mean |edit - target| inside it (what should
    change). Target and mask are loaded at the edit's size; requests without a target give {}.
    """

    def __init__(self, resolution: Optional[int] = None):
        """
        Args:
            resolution: The data module's `resolution`, so target and mask are sized exactly like the
                input; None: inferred from the edit's size (exact when unset or a multiple of 8).
        """
        super().__init__()
        self.resolution = resolution

    @torch.no_grad()
    def update(self, result: EditResult, request) -> dict[str, float]:
        extra = request.extra or {}
        if "target" not in extra:
            return {}
        edit = result.edit.float()
        target = load_like(extra["target"], tuple(edit.shape[-2:]), self.resolution)
        values = {"gt/l1": float((edit - target).abs().mean())}
        if "true_mask" in extra:
            inside = load_like(extra["true_mask"], tuple(edit.shape[-2:]), self.resolution)[:, :1] > 0.5
            inside = inside.expand_as(edit)
            if (~inside).any():
                values["gt/background_l1"] = float((edit - result.input.float()).abs()[~inside].mean())
            if inside.any():
                values["gt/target_l1"] = float((edit - target).abs()[inside].mean())
        return self.record(values)


class BackgroundShift(EditMetric):
    """What a viewer sees of the background, for requests with a `true_mask`: `bg/l1`, mean |edit - input|
    outside the true mask grown by `margin` pixels (the edit's own border aside), and `bg/shift_r`,
    `bg/shift_g`, `bg/shift_b`, the signed mean change per channel there: a colour cast reads as one sign.
    """

    def __init__(self, margin: int = 4, resolution: Optional[int] = None):
        """
        Args:
            margin: Pixels the true mask is grown by (a square of side 2 margin + 1) before the background
                is read; 4 is one latent pixel of the toy model's /4 VAE.
            resolution: As GroundTruthL1's.
        """
        super().__init__()
        self.margin, self.resolution = margin, resolution

    @torch.no_grad()
    def update(self, result: EditResult, request) -> dict[str, float]:
        extra = request.extra or {}
        if "true_mask" not in extra:
            return {}
        edit = result.edit.float()
        inside = load_like(extra["true_mask"], tuple(edit.shape[-2:]), self.resolution)[:, :1] > 0.5
        outside = grown(inside.float(), self.margin)[0, 0] == 0  # (h, w)
        if not outside.any():
            return {}
        change = (edit - result.input.float())[0][:, outside]  # (3, pixels)
        values = {"bg/l1": float(change.abs().mean())}
        values.update({f"bg/shift_{c}": float(v) for c, v in zip("rgb", change.mean(dim=1))})
        return self.record(values)


class GuidanceL1(EditMetric):
    """How close the edit came to its guidance image G (paper Fig. 5: lam = 0 is "very close to G").

    `guide/edit_l1`: mean |edit - G|; `guide/input_l1`: mean |input - G|, the distance the edit starts
    from. Edits made without a guidance image (lam = 1, baselines) give {}.
    """

    @torch.no_grad()
    def update(self, result: EditResult, request) -> dict[str, float]:
        if result.guidance is None:
            return {}
        guide = result.guidance.float()
        return self.record({"guide/edit_l1": float((result.edit.float() - guide).abs().mean()),
                            "guide/input_l1": float((result.input.float() - guide).abs().mean())})
