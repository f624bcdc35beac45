"""The rectified-flow sampler (SD3, FLUX): Euler steps on the velocity, the flow ODE run backwards, noise encoding.

A flow model predicts a velocity v = noise - x_0 along the straight path x_sigma = (1 - sigma) x_0 + sigma noise.
The paper's equations carry over term by term (docs/flow.md): Eq. 1 is the Euler step
x_{sigma'} = x_sigma + (sigma' - sigma) v, Eq. 2 the same step upwards, random-noise encoding is the path at
sigma, and Eq. 7 differences velocities instead of noise predictions. `FlowSchedule` fulfils the sampler contract
(framework.core.sampling), so the procedure and stages run unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from framework.core.sampling import Sampler


@dataclass(frozen=True)
class FlowSchedule(Sampler):
    """The timesteps of one flow sampling run (decreasing, sigma x 1000) and their sigmas."""

    timesteps: tuple[float, ...]
    sigmas: tuple[float, ...]  # sigma of each timestep, then 0 for the clean latents
    scheduler: Any = field(default=None, compare=False, repr=False)
    mu: Optional[float] = None  # the resolution-dependent shift of dynamically shifted schedules (FLUX)

    linear_sigmas: bool = False  # FLUX's pipelines: sigmas linspace(1, 1/steps), then shifted by mu

    @classmethod
    def from_scheduler(cls, scheduler, steps: int, mu: Optional[float] = None,
                       linear_sigmas: bool = False) -> "FlowSchedule":
        """Timesteps and sigmas as `FlowMatchEulerDiscreteScheduler.set_timesteps(steps)` gives them (shift
        included; `mu` for schedulers with dynamic shifting; `linear_sigmas` as FLUX's pipelines ask for them)."""
        kwargs = {"mu": 1.0 if mu is None else mu} if getattr(scheduler.config, "use_dynamic_shifting", False) else {}
        if linear_sigmas:
            kwargs["sigmas"] = [1.0 - i / steps for i in range(steps)]
        scheduler.set_timesteps(steps, **kwargs)
        sigmas = tuple(float(s) for s in scheduler.sigmas)
        return cls(tuple(float(t) for t in scheduler.timesteps), sigmas, scheduler, mu, linear_sigmas)

    def sigma(self, t: float) -> float:
        """sigma at timestep t (0 for the clean latents' key)."""
        return 0.0 if t == 0 else self.sigmas[self.timesteps.index(t)]

    # the sampler contract
    def below(self, t: float) -> float:
        i = self.timesteps.index(t)
        return self.timesteps[i + 1] if i + 1 < len(self.timesteps) else 0.0

    def step(self, x: torch.Tensor, prediction: torch.Tensor, t: float) -> torch.Tensor:
        return x + (self.sigma(self.below(t)) - self.sigma(t)) * prediction

    def inverse_step(self, x: torch.Tensor, prediction: torch.Tensor, t: float) -> torch.Tensor:
        return x + (self.sigma(t) - self.sigma(self.below(t))) * prediction

    def jump(self, x: torch.Tensor, prediction: torch.Tensor, t: float, to: float) -> torch.Tensor:
        return x + (self.sigma(to) - self.sigma(t)) * prediction

    def clean(self, x: torch.Tensor, prediction: torch.Tensor, t: float) -> torch.Tensor:
        return x - self.sigma(t) * prediction  # x_t = (1 - sigma) x_0 + sigma noise, v = noise - x_0

    def encode(self, x0: torch.Tensor, noise: torch.Tensor, t: float) -> torch.Tensor:
        sigma = self.sigma(t)
        return (1 - sigma) * x0 + sigma * noise

    def with_steps(self, steps: int) -> "FlowSchedule":
        return FlowSchedule.from_scheduler(self.scheduler, steps, self.mu, self.linear_sigmas)
