"""The sampler contract: what the procedure asks of a model family's sampler, and the two loops built on it.

A sampler maps the run's timesteps to noise levels and moves latents between neighbouring levels with the
model's prediction (epsilon for DDIM models, velocity for rectified-flow models). The procedure, the masks
(Eq. 7 differences whatever is predicted) and the stages use only this contract, so a family brings its own
sampler (framework.core.ddim.Schedule for SD 1.x and SDXL) and nothing else changes.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

PredictFn = Callable[[torch.Tensor, int], torch.Tensor]  # (latents, t) -> the model's prediction
StepCallback = Callable[[int, int, torch.Tensor], None]  # (step index, timestep, latents)
StepHook = Callable[[int, int, torch.Tensor], torch.Tensor]  # (step index, timestep, latents) -> latents


class Sampler:
    """Base class of samplers. `timesteps` decrease (the first is the noisiest); a level is a timestep."""

    timesteps: tuple[int, ...]

    def decode_timesteps(self, num: int) -> tuple[int, ...]:
        """The last `num` denoising timesteps: decoding from encode level num/steps down to the clean latents."""
        return self.timesteps[len(self.timesteps) - num:] if num > 0 else ()

    def encode_level(self, ratio: float) -> int:
        """Number of steps for an encode ratio (t_E / steps): floor(ratio x steps), at least 1 (diffusers'
        strength)."""
        return max(1, min(len(self.timesteps), int(ratio * len(self.timesteps) + 1e-9)))

    def below(self, t: int) -> int:
        """The level one step less noisy than t (the clean latents' key when t is the last)."""
        raise NotImplementedError

    def step(self, x: torch.Tensor, prediction: torch.Tensor, t: int) -> torch.Tensor:
        """One decode move of x from level t to `below(t)` with the model's prediction at t (Eq. 1)."""
        raise NotImplementedError

    def inverse_step(self, x: torch.Tensor, prediction: torch.Tensor, t: int) -> torch.Tensor:
        """One inversion move of x from `below(t)` up to t with the prediction at t on x (Eq. 2)."""
        raise NotImplementedError

    def jump(self, x: torch.Tensor, prediction: torch.Tensor, t: int, to: int) -> torch.Tensor:
        """A decode move of x from level t to any less noisy level `to` with the prediction at t (`step` is the jump
        to `below(t)`); a coarse finish of a decode."""
        raise NotImplementedError

    def clean(self, x: torch.Tensor, prediction: torch.Tensor, t: int) -> torch.Tensor:
        """The clean latents the prediction at t points to from x (x_0's estimate, a decode's preview)."""
        raise NotImplementedError

    def encode(self, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
        """Random-noise encoding of clean latents to level t (SDEdit's start, the mask's and G's)."""
        raise NotImplementedError

    def with_steps(self, steps: int) -> "Sampler":
        """The same sampler on a grid of `steps` steps (the mask's coarser grid)."""
        raise NotImplementedError


def decode(x: torch.Tensor, predict: PredictFn, sampler: Sampler, num: int, before_step: Optional[StepHook] = None,
           callback: Optional[StepCallback] = None, after_step: Optional[StepHook] = None,
           steps: Optional[int] = None) -> torch.Tensor:
    """Decode latents at encode level `num` down to the clean latents (Eq. 1); with `steps`, only its first
    `steps` steps (the latents that far down).

    `before_step(i, t, y_t) -> y_t'` may replace the latents before the model sees them: that is where the
    inference-time optimisation acts. `after_step(i, t, y) -> y'` may replace the result of the step from t
    (direct inversion adds its per-step correction there).
    """
    for i, t in enumerate(sampler.decode_timesteps(num)[:steps]):
        if before_step is not None:
            x = before_step(i, t, x)
        x = sampler.step(x, predict(x, t).to(x.dtype), t)
        if after_step is not None:
            x = after_step(i, t, x)
        if callback is not None:
            callback(i, t, x)
    return x


def invert(x0: torch.Tensor, predict: PredictFn, sampler: Sampler, num: int,
           callback: Optional[StepCallback] = None) -> dict[int, torch.Tensor]:
    """Inversion of x0 through the first `num` levels (Eq. 2): {t: x_t} for every visited t, increasing.

    The step into level t evaluates the model at t on the latents of the level below (as diffusers'
    DDIMInverseScheduler does). The ITO preservation loss compares the decode's latents to this trajectory.
    """
    trajectory = {}
    x = x0
    for i, t in enumerate(reversed(sampler.decode_timesteps(num))):
        x = sampler.inverse_step(x, predict(x, t).to(x.dtype), t)
        trajectory[t] = x
        if callback is not None:
            callback(i, t, x)
    return trajectory


def seeded_noise(shape: tuple[int, ...], seed: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Gaussian noise drawn on the CPU from `seed`, so the same seed gives the same noise on any device."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
