"""Baselines on the same engine, settings and mask: DiffEdit and ControlNet-SDEdit (paper Sec. 4).

Select one as the model's class_path; every other setting (backbone, conditioners, sampling,
mask) is shared with EditModule, so comparisons differ only in the method. ITO with lam = 1 and
the full method are EditModule itself.
"""

from __future__ import annotations

import torch

from framework.ddim import ddim_decode, noise_encode, seeded_noise
from framework.errors import ConfigError
from framework.module import EditModule, EditState


class DiffEdit(EditModule):
    """DiffEdit (Couairon et al. 2022): DDIM inversion, then decoding with mask blending.

    After each DDIM step the latents outside the mask are replaced by the inversion trajectory
    at the same noise level: y_{t-1} <- m * y_{t-1} + (1 - m) * x_{t-1}, and x_0 after the last
    step. No ITO and no guidance image. Set `sampling.encode_ratio` to 0.7 (DiffEdit's default)
    or 1.0 (the paper's layout setting).

    `alignment: diffusers` reproduces diffusers' StableDiffusionDiffEditPipeline, which blends
    the result of the step from t with the inverted latents at t (one level noisier), and with
    x_1 instead of x_0 at the end; kept for cross-checking against that implementation.
    """

    uses_guidance = False
    uses_ito = False

    def __init__(self, *args, alignment: str = "exact", **kwargs):
        """
        Args:
            alignment: 'exact' (blend with the same noise level) or 'diffusers' (as diffusers' pipeline).
        """
        if alignment not in ("exact", "diffusers"):
            raise ConfigError(f"DiffEdit.alignment must be 'exact' or 'diffusers', got '{alignment}'.")
        super().__init__(*args, **kwargs)
        self.alignment = alignment

    def final_decode(self, state: EditState) -> torch.Tensor:
        schedule, mask, x_traj = state.schedule, state.mask, state.x_traj
        timesteps = schedule.decode_timesteps(state.n_final)
        lag = 1 if self.alignment == "diffusers" else 0

        def blend(i: int, t: int, y: torch.Tensor) -> torch.Tensor:
            if i == 0:
                return y
            return mask * y + (1 - mask) * x_traj[timesteps[i - lag]]

        eps = self._eps(state.sides.edit, self.sampling.guidance_scale)
        y0 = ddim_decode(x_traj[timesteps[0]], eps, schedule, state.n_final, blend, self._callback("final"))
        last = x_traj[timesteps[-1]] if lag else state.x0
        return mask * y0 + (1 - mask) * last


class SDEdit(EditModule):
    """ControlNet-SDEdit (Meng et al. 2021): random-noise encoding to the encode ratio, then
    decoding under the edit condition (ControlNets included). No inversion, mask or ITO."""

    uses_inversion = False
    uses_mask = False
    uses_guidance = False
    uses_ito = False

    def final_decode(self, state: EditState) -> torch.Tensor:
        schedule, x0 = state.schedule, state.x0
        noise = seeded_noise(tuple(x0.shape), state.seed + 1, x0.device)
        start = noise_encode(x0, noise, schedule.alpha(schedule.decode_timesteps(state.n_final)[0]))
        eps = self._eps(state.sides.edit, self.sampling.guidance_scale)
        return ddim_decode(start, eps, schedule, state.n_final, None, self._callback("final"))
