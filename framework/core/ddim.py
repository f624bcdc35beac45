"""DDIM sampling, DDIM inversion and random-noise encoding (paper Sec. 3.1, Eqs. 1-2).

Glossary: `alpha(t)` is the cumulative product of (1 - beta) at timestep t (the paper's alpha_t);
`x` are latents (b, 4, h, w); `eps_fn(x, t)` is the noise prediction of the conditioned UNet.
Timestep conventions follow diffusers' `DDIMScheduler` / `DDIMInverseScheduler` exactly, so an
inversion here agrees with theirs on the same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]
StepCallback = Callable[[int, int, torch.Tensor], None]  # (step index, timestep, latents)


@dataclass(frozen=True)
class Schedule:
    """The DDIM timesteps of one sampling run and the noise levels they map to."""

    alphas_cumprod: torch.Tensor  # (num_train_timesteps,), float64 on CPU
    final_alpha: float  # alpha used past t = 0 (alphas_cumprod[0] for SD: set_alpha_to_one=False)
    timesteps: tuple[int, ...]  # decreasing, e.g. 961, 921, ..., 1 for 25 steps
    stride: int  # num_train_timesteps // steps

    @classmethod
    def from_scheduler(cls, scheduler, steps: int) -> "Schedule":
        """Timesteps as `scheduler.set_timesteps(steps)` gives them (SD 1.5: 'leading', offset 1)."""
        scheduler.set_timesteps(steps)
        alphas = scheduler.alphas_cumprod.to(torch.float64)
        final = 1.0 if scheduler.config.set_alpha_to_one else float(alphas[0])
        stride = scheduler.config.num_train_timesteps // steps
        return cls(alphas, final, tuple(int(t) for t in scheduler.timesteps), stride)

    def alpha(self, t: int) -> float:
        return float(self.alphas_cumprod[t]) if t >= 0 else self.final_alpha

    def decode_timesteps(self, num: int) -> tuple[int, ...]:
        """The last `num` denoising timesteps: decoding from encode level num/steps down to 0."""
        return self.timesteps[len(self.timesteps) - num:] if num > 0 else ()

    def encode_level(self, ratio: float) -> int:
        """Number of steps for an encode ratio (t_E / steps): floor(ratio x steps), at least 1, as diffusers'
        strength."""
        return max(1, min(len(self.timesteps), int(ratio * len(self.timesteps) + 1e-9)))


def ddim_step(x: torch.Tensor, eps: torch.Tensor, alpha_t: float, alpha_next: float) -> torch.Tensor:
    """One deterministic DDIM move from noise level alpha_t to alpha_next (Eq. 1 and, reversed, Eq. 2)."""
    x0_pred = (x - (1 - alpha_t) ** 0.5 * eps) / alpha_t ** 0.5
    return alpha_next ** 0.5 * x0_pred + (1 - alpha_next) ** 0.5 * eps


def ddim_invert(x0: torch.Tensor, eps_fn: EpsFn, schedule: Schedule, num: int,
                callback: Optional[StepCallback] = None) -> dict[int, torch.Tensor]:
    """DDIM inversion of x0 through the first `num` timesteps (Eq. 2).

    As diffusers' DDIMInverseScheduler: the step into timestep t evaluates the UNet at t on the
    latents of the previous level (t - stride, or alpha_0 = final_alpha before the first step).
    Returns {t: x_t} for every visited t, the trajectory the ITO preservation loss compares to.
    """
    trajectory = {}
    x = x0
    for i, t in enumerate(reversed(schedule.decode_timesteps(num))):
        eps = eps_fn(x, t)
        x = ddim_step(x, eps.to(x.dtype), schedule.alpha(t - schedule.stride), schedule.alpha(t))
        trajectory[t] = x
        if callback is not None:
            callback(i, t, x)
    return trajectory


def ddim_decode(x: torch.Tensor, eps_fn: EpsFn, schedule: Schedule, num: int,
                before_step: Optional[Callable[[int, int, torch.Tensor], torch.Tensor]] = None,
                callback: Optional[StepCallback] = None,
                after_step: Optional[Callable[[int, int, torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """Decode latents at encode level `num` down to x_0 (Eq. 1).

    `before_step(i, t, y_t) -> y_t'` may replace the latents before the UNet sees them: that is
    where the inference-time optimisation acts. `after_step(i, t, y_{t-1}) -> y_{t-1}'` may replace
    the result of the step from t (direct inversion adds its per-step correction there).
    """
    for i, t in enumerate(schedule.decode_timesteps(num)):
        if before_step is not None:
            x = before_step(i, t, x)
        eps = eps_fn(x, t)
        x = ddim_step(x, eps.to(x.dtype), schedule.alpha(t), schedule.alpha(t - schedule.stride))
        if after_step is not None:
            x = after_step(i, t, x)
        if callback is not None:
            callback(i, t, x)
    return x


def noise_encode(x0: torch.Tensor, noise: torch.Tensor, alpha_t: float) -> torch.Tensor:
    """Random-noise (SDEdit) encoding: x_t = sqrt(alpha_t) x0 + sqrt(1 - alpha_t) noise."""
    return alpha_t ** 0.5 * x0 + (1 - alpha_t) ** 0.5 * noise


def seeded_noise(shape: tuple[int, ...], seed: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Gaussian noise drawn on the CPU from `seed`, so the same seed gives the same noise on any device."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
