"""Decoder plugins (`model.decoder`): the final decode y_0 under C_EDIT.

- ITODecode: the method's decode, k ITO steps on y_t at each of the first t_u steps (Eq. 6), then the
  blend outside the mask after t_u (`model.ito.blend`).
- MaskBlendDecode: DiffEdit's decode, the inversion's x_t pasted outside the mask at every step.
- NoiseEncodedDecode: SDEdit's decode, from random-noise encoding of x_0 without inversion or mask.
Each has its own settings as init_args (ITODecode: ITOConfig's fields, which `model.ito` sets for the default
decoder) and reads the run's sampling from `tools.sampling`; the contract they fulfil, `Decoder`, and what
`tools` holds are in framework.core.stages and docs/stages.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from framework.core.errors import ConfigError
from framework.core.masks import gaussian_blur
from framework.core.sampling import decode, seeded_noise
from framework.core.settings import ITOConfig, SamplingConfig, check_update_steps, decode_steps, step_count
from framework.core.stages import Decoder

if TYPE_CHECKING:
    from framework.core.procedure import EditState
    from framework.core.stages import StageTools


@dataclass
class ITODecode(Decoder, ITOConfig):
    """The method (Eq. 6): decode from x_{t_E} under C_EDIT; at each of the first t_u steps, k optimiser
    steps on y_t with lam * L_pres + (1 - lam) * L_guid. Its init_args are ITOConfig's fields (`model.ito` sets
    those of the default decoder): lam may follow a schedule over the ITO steps (`lam_end`); the steps after t_u
    may blend the background back onto the inversion (`blend`, `feather`) and use another CFG scale outside the
    mask (`outside_guidance_scale`)."""

    uses_guidance = True
    uses_ito = True

    def check(self, sampling: SamplingConfig) -> None:
        check_update_steps(self.update_steps, decode_steps(sampling), "ito.update_steps",
                           "sampling.steps x encode_ratio", "lower t_u or raise steps")

    def t_u(self, n_final: int) -> int:
        """t_u in steps of a decode of `n_final` steps (`update_steps` may be a fraction of them)."""
        return step_count(self.update_steps, n_final)

    def guidance_steps(self, n_final: int) -> int:
        return min(self.t_u(n_final), n_final)  # ITO reads g_t at its t_u steps only

    def least_lam(self, lam: float) -> float:
        return lam if self.lam_end is None else min(lam, self.lam_end)

    def decode(self, tools: "StageTools", state: "EditState") -> torch.Tensor:
        inverted = state.inverted
        x_traj, t_u = inverted.trajectory, self.t_u(state.n_final)
        optimizer = tools.optimizer(state.lam, self.inner_steps, self)
        start = x_traj[state.schedule.decode_timesteps(state.n_final)[0]]
        first = 1 if self.first_step == "skip" else 0  # y_t = x_t at step 0: nothing to preserve yet
        lam_at = None if self.lam_end is None else linear_lam(state.lam, self.lam_end, first, t_u - 1)
        ito = tools.ito_hook(optimizer, t_u, x_traj, state.g_traj, tools.loss_mask(state, self), first=first,
                              lam_at=lam_at)
        keep = feathered(grown(state.mask, self.blend_margin), self.feather)  # (1, 1, h, w): 0 = the input's latents
        blend = self.blend == "after"
        if blend:  # the blend's weight: lam where ITO left off, unless set (outside the mask: w x_t + (1 - w) y_t)
            weight = self.blend_weight
            if weight is None:
                weight = state.lam if lam_at is None else lam_at(t_u - 1)
            keep = 1 - weight * (1 - keep)

        def before_step(i: int, t: int, y_t: torch.Tensor) -> torch.Tensor:
            y_t = ito(i, t, y_t)
            return blend_outside(y_t, x_traj[t], keep) if blend and i >= t_u else y_t

        eps = tools.eps(state.sides.edit, tools.sampling.guidance_scale, inverted)
        if self.outside_guidance_scale is not None:
            eps = self.outside_guidance(tools, state, feathered(state.mask, self.feather), eps)
        y0 = decode(start, eps, state.schedule, state.n_final, before_step, tools.step_callback("final"),
                         tools.corrections(inverted))
        return blend_outside(y0, state.x0, keep) if blend else y0

    def outside_guidance(self, tools: "StageTools", state: "EditState", keep: torch.Tensor, eps):
        """eps with CFG scale `outside_guidance_scale` outside the mask in the steps after t_u (one UNet batch:
        the scale is a map)."""
        inside = tools.sampling.guidance_scale
        scale = keep * inside + (1 - keep) * self.outside_guidance_scale  # (1, 1, h, w)
        after = set(state.schedule.decode_timesteps(state.n_final)[self.t_u(state.n_final):])
        mapped = tools.eps(state.sides.edit, scale, state.inverted)
        return lambda x, t: mapped(x, t) if t in after else eps(x, t)


def linear_lam(lam: float, lam_end: float, first: int, last: int):
    """lam_at(i): lam at step `first`, lam_end at step `last`, linear between (ito.lam_end)."""
    span = max(1, last - first)
    return lambda i: lam + (lam_end - lam) * min(1.0, max(0.0, (i - first) / span))


def grown(mask: torch.Tensor, margin: int) -> torch.Tensor:
    """A binary mask (1, 1, h, w) dilated by `margin` pixels (a square of side 2 margin + 1)."""
    return F.max_pool2d(mask, 2 * margin + 1, stride=1, padding=margin) if margin > 0 else mask


def feathered(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """m * blur(m, sigma) for a binary mask (1, 1, h, w): a soft edge inside the edit region only, 0 outside it."""
    if sigma <= 0:
        return mask
    return mask * gaussian_blur(mask[0, 0], sigma)[None, None]


def blend_outside(y: torch.Tensor, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """keep * y + (1 - keep) * x: the decode inside the mask, the input's latents outside (DiffEdit's blend)."""
    return keep * y + (1 - keep) * x.to(y.dtype)


class MaskBlendDecode(Decoder):
    """DiffEdit's decode (Couairon et al. 2022): after each step, outside the mask the latents are replaced by
    the inversion at the same noise level, y_{t-1} <- m y_{t-1} + (1 - m) x_{t-1}, and by x_0 at the end.

    `alignment: diffusers` reproduces diffusers' StableDiffusionDiffEditPipeline, which blends the result of
    the step from t with the inverted latents at t (one level noisier), and with x_1 instead of x_0 at the end;
    kept for cross-checking against that implementation."""

    def __init__(self, alignment: str = "exact"):
        """
        Args:
            alignment: 'exact' (blend with the same noise level) or 'diffusers' (as diffusers' pipeline).
        """
        if alignment not in ("exact", "diffusers"):
            raise ConfigError(f"DiffEdit.alignment must be 'exact' or 'diffusers', got '{alignment}'.")
        self.alignment = alignment

    def decode(self, tools: "StageTools", state: "EditState") -> torch.Tensor:
        schedule, mask, inverted = state.schedule, state.mask, state.inverted
        x_traj = inverted.trajectory
        timesteps = schedule.decode_timesteps(state.n_final)
        lag = 1 if self.alignment == "diffusers" else 0

        def blend(i: int, t: int, y: torch.Tensor) -> torch.Tensor:
            return y if i == 0 else blend_outside(y, x_traj[timesteps[i - lag]], mask)

        eps = tools.eps(state.sides.edit, tools.sampling.guidance_scale, inverted)
        y0 = decode(x_traj[timesteps[0]], eps, schedule, state.n_final, blend, tools.step_callback("final"),
                         tools.corrections(inverted))
        last = x_traj[timesteps[-1]] if lag else state.x0
        return blend_outside(y0, last, mask)


class NoiseEncodedDecode(Decoder):
    """ControlNet-SDEdit's decode (Meng et al. 2021): random-noise encoding of x_0 to the encode ratio, then
    DDIM decoding under the edit condition (ControlNets included). No inversion, mask or ITO."""

    uses_inversion = False

    def decode(self, tools: "StageTools", state: "EditState") -> torch.Tensor:
        schedule, x0 = state.schedule, state.x0
        noise = seeded_noise(tuple(x0.shape), state.seed + 1, x0.device)
        start = schedule.encode(x0, noise, schedule.decode_timesteps(state.n_final)[0])
        eps = tools.eps(state.sides.edit, tools.sampling.guidance_scale)
        return decode(start, eps, schedule, state.n_final, None, tools.step_callback("final"))
