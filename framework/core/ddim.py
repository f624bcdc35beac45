"""The DDIM sampler of the SD families: DDIM steps, inversion and random-noise encoding (paper Sec. 3.1, Eqs. 1-2).

Glossary: `alpha(t)` is the cumulative product of (1 - beta) at timestep t (the paper's alpha_t);
`x` are latents (b, 4, h, w); `eps_fn(x, t)` is the noise prediction of the conditioned UNet. `Schedule`
fulfils the sampler contract (framework.core.sampling), through which the procedure and stages use it.
Timestep conventions follow diffusers' `DDIMScheduler` / `DDIMInverseScheduler` exactly, so an
inversion here agrees with theirs on the same model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from framework.core.sampling import Sampler, StepCallback, decode, invert, seeded_noise  # noqa: F401

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class Schedule(Sampler):
    """The DDIM timesteps of one sampling run and the noise levels they map to."""

    alphas_cumprod: torch.Tensor  # (num_train_timesteps,), float64 on CPU
    final_alpha: float  # alpha used past t = 0 (alphas_cumprod[0] for SD: set_alpha_to_one=False)
    timesteps: tuple[int, ...]  # decreasing, e.g. 961, 921, ..., 1 for 25 steps
    stride: int  # num_train_timesteps // steps
    scheduler: Any = field(default=None, compare=False, repr=False)  # the diffusers scheduler it came from

    @classmethod
    def from_scheduler(cls, scheduler, steps: int) -> "Schedule":
        """Timesteps as `scheduler.set_timesteps(steps)` gives them (SD 1.5: 'leading', offset 1)."""
        scheduler.set_timesteps(steps)
        alphas = scheduler.alphas_cumprod.to(torch.float64)
        final = 1.0 if scheduler.config.set_alpha_to_one else float(alphas[0])
        stride = scheduler.config.num_train_timesteps // steps
        return cls(alphas, final, tuple(int(t) for t in scheduler.timesteps), stride, scheduler)

    def alpha(self, t: int) -> float:
        return float(self.alphas_cumprod[t]) if t >= 0 else self.final_alpha

    # the sampler contract
    def below(self, t: int) -> int:
        return t - self.stride

    def step(self, x: torch.Tensor, prediction: torch.Tensor, t: int) -> torch.Tensor:
        return ddim_step(x, prediction, self.alpha(t), self.alpha(t - self.stride))

    def inverse_step(self, x: torch.Tensor, prediction: torch.Tensor, t: int) -> torch.Tensor:
        return ddim_step(x, prediction, self.alpha(t - self.stride), self.alpha(t))

    def jump(self, x: torch.Tensor, prediction: torch.Tensor, t: int, to: int) -> torch.Tensor:
        return ddim_step(x, prediction, self.alpha(t), self.alpha(to))

    def clean(self, x: torch.Tensor, prediction: torch.Tensor, t: int) -> torch.Tensor:
        alpha = self.alpha(t)
        return (x - (1 - alpha) ** 0.5 * prediction) / alpha ** 0.5

    def encode(self, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
        return noise_encode(x0, noise, self.alpha(t))

    def with_steps(self, steps: int) -> "Schedule":
        return Schedule.from_scheduler(self.scheduler, steps)


def ddim_step(x: torch.Tensor, eps: torch.Tensor, alpha_t: float, alpha_next: float) -> torch.Tensor:
    """One deterministic DDIM move from noise level alpha_t to alpha_next (Eq. 1 and, reversed, Eq. 2)."""
    x0_pred = (x - (1 - alpha_t) ** 0.5 * eps) / alpha_t ** 0.5
    return alpha_next ** 0.5 * x0_pred + (1 - alpha_next) ** 0.5 * eps


def ddim_invert(x0: torch.Tensor, eps_fn: EpsFn, schedule: Schedule, num: int,
                callback: Optional[StepCallback] = None) -> dict[int, torch.Tensor]:
    """DDIM inversion of x0 through the first `num` timesteps (Eq. 2): framework.core.sampling.invert."""
    return invert(x0, eps_fn, schedule, num, callback)


def ddim_decode(x: torch.Tensor, eps_fn: EpsFn, schedule: Schedule, num: int,
                before_step: Optional[Callable[[int, int, torch.Tensor], torch.Tensor]] = None,
                callback: Optional[StepCallback] = None,
                after_step: Optional[Callable[[int, int, torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """Decode latents at encode level `num` down to x_0 (Eq. 1): framework.core.sampling.decode."""
    return decode(x, eps_fn, schedule, num, before_step, callback, after_step)


def noise_encode(x0: torch.Tensor, noise: torch.Tensor, alpha_t: float) -> torch.Tensor:
    """Random-noise (SDEdit) encoding: x_t = sqrt(alpha_t) x0 + sqrt(1 - alpha_t) noise."""
    return alpha_t ** 0.5 * x0 + (1 - alpha_t) ** 0.5 * noise
