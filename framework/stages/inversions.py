"""Inversion plugins: from the input's latents x_0 to the trajectory {x_t} and what a decode from it needs.

The slot `model.inversion` of EditModule takes any `Inversion` subclass by `class_path`. Every one
here computes the same DDIM trajectory (Eq. 2, conditional only at `sampling.inversion_guidance_scale`);
they differ in what a classifier-free-guided decode from it needs to retrace it:

| class | decode needs | extra UNet cost |
|---|---|---|
| DDIMInversion | nothing (the paper's) | none |
| NegativePromptInversion | the source prompt as CFG's unconditional text (Miyake et al. 2023) | none |
| NullTextInversion | one optimised unconditional embedding per step (Mokady et al. 2023) | k forward + backward per step |
| DirectInversion | one latent offset per step, added after each decode step (Ju et al. 2024) | one CFG pair per step |

Glossary: x*_t the inversion trajectory, z_t the latents of the source decode being matched,
w the CFG scale, emptyset_t the per-step unconditional embedding.
"""

from __future__ import annotations

import torch

from framework.core.backbone import TextEncoding
from framework.core.denoiser import Conditioning, Denoiser
from framework.core.errors import ConfigError
from framework.core.stages import Inversion, InversionJob, Inverted, Side


class DDIMInversion(Inversion):
    """DDIM inversion (Eq. 2), the paper's: decodes use the trajectory and the plain CFG partner."""

    def invert(self, x0: torch.Tensor, job: InversionJob) -> Inverted:
        return Inverted(x0, self.trajectory(x0, job))


def text_of(side: Side, denoiser: Denoiser) -> TextEncoding:
    """The text encoding (batch 1) of a side's conditional half."""
    return side[0].parts[denoiser.text_index]


class NegativePromptInversion(Inversion):
    """Negative-prompt inversion (Miyake et al. 2023): the source prompt's embedding as the unconditional one.

    With emptyset_t = C_0 at every step, CFG's two halves agree at the inversion's own condition, so
    the decode under C_0 is the guidance-1 decode, which retraces a guidance-1 inversion up to the DDIM
    approximation; no optimisation."""

    def invert(self, x0: torch.Tensor, job: InversionJob) -> Inverted:
        trajectory = self.trajectory(x0, job)
        text = text_of(job.inversion, job.denoiser)
        steps = job.schedule.decode_timesteps(job.decode_num)
        return Inverted(x0, trajectory, uncond_text={t: text for t in steps})


def decode_step(job: InversionJob, z: torch.Tensor, t: int, side: Side) -> torch.Tensor:
    """One DDIM decode step from t under `side` at the decode's CFG scale, computed as the engine's decodes
    compute it (one UNet batch for both halves), so the per-step data fit the decode to float precision."""
    schedule = job.schedule
    eps = job.eps(side, job.decode_scale)(z, t)
    return schedule.step(z, eps.to(z.dtype), t)


def cfg_step(job: InversionJob, z: torch.Tensor, t: int, eps_cond: torch.Tensor, uncond: Conditioning,
             grad: bool = False) -> torch.Tensor:
    """One DDIM decode step from t under CFG: eps = eps_u + w (eps_c - eps_u), the conditional half given."""
    eps_uncond = job.denoiser(z, t, uncond, grad=grad)
    eps = eps_uncond + job.decode_scale * (eps_cond - eps_uncond)
    schedule = job.schedule
    return schedule.step(z, eps, t)


class NullTextInversion(Inversion):
    """Null-text inversion (Mokady et al. 2023): emptyset_t optimised so that the CFG decode retraces x*.

    For each decode step t, from z_T = x*_T: minimise ||x*_{t-1} - DDIM(z_t, eps_w(z_t, C_0, emptyset_t))||^2
    over emptyset_t with Adam (`inner_steps`, `lr`; stop early below `early_stop`), starting from the previous
    step's (the first from the plain unconditional embedding); then z_{t-1} = that step with the result.
    """

    def __init__(self, inner_steps: int = 10, lr: float = 0.01, early_stop: float = 1e-5):
        """
        Args:
            inner_steps: Adam steps per timestep (Mokady et al.: 10).
            lr: Adam learning rate (Mokady et al.: 0.01).
            early_stop: Stop a timestep's steps once the squared error (mean over latents) is below this.
        """
        if inner_steps < 1 or lr <= 0 or early_stop < 0:
            raise ConfigError(f"NullTextInversion needs inner_steps >= 1, lr > 0 and early_stop >= 0, got "
                              f"{inner_steps}, {lr}, {early_stop}.")
        self.inner_steps, self.lr, self.early_stop = inner_steps, lr, early_stop

    def invert(self, x0: torch.Tensor, job: InversionJob) -> Inverted:
        if job.decode_scale == 1:
            raise ConfigError("NullTextInversion tunes CFG's unconditional branch, and at sampling.guidance_scale 1 "
                              "(a guidance-distilled model such as FLUX.1) there is none: use DirectInversion or the "
                              "default inversion, or a guidance scale above 1.")
        trajectory = self.trajectory(x0, job)
        inverted = Inverted(x0, trajectory, uncond_text={})
        cond, uncond = job.source
        index = job.denoiser.text_index
        null = uncond.parts[index].detach().float().clone()
        steps = job.schedule.decode_timesteps(job.decode_num)
        z = trajectory[steps[0]]
        for t in steps:
            target = inverted.previous(t, job.schedule)
            eps_cond = job.denoiser(z, t, cond)
            null = self._fit(job, z, t, eps_cond, uncond, null, target)
            inverted.uncond_text[t] = null
            with torch.no_grad():  # the conditional half is known: one UNet evaluation for the step
                z = cfg_step(job, z, t, eps_cond, uncond.with_part(index, null))
        return inverted

    def _fit(self, job: InversionJob, z, t, eps_cond, uncond: Conditioning, start: TextEncoding,
             target: torch.Tensor) -> TextEncoding:
        """emptyset_t after at most `inner_steps` Adam steps on the step's reconstruction error."""
        param = start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam(param.tensors(), lr=self.lr)  # the whole encoding: SDXL's pooled part too
        index = job.denoiser.text_index
        with torch.enable_grad():
            for _ in range(self.inner_steps):
                step = cfg_step(job, z, t, eps_cond, uncond.with_part(index, param), grad=True)
                loss = torch.nn.functional.mse_loss(step, target)
                if float(loss.detach()) < self.early_stop:
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return param.detach()


class DirectInversion(Inversion):
    """Direct inversion (Ju et al. 2024, "PnP Inversion"): the source branch is put back on x* at every step.

    The CFG decode under C_0 from x*_t lands at DDIM(x*_t) instead of x*_{t-1}; the difference
    d_t = x*_{t-1} - DDIM(x*_t) is stored per step and added after every decode step from t, so a decode
    under C_0 retraces x* exactly and an edit decode gets the same correction. No optimisation: one CFG
    pair of UNet evaluations per step."""

    def invert(self, x0: torch.Tensor, job: InversionJob) -> Inverted:
        trajectory = self.trajectory(x0, job)
        corrections = {}
        for t in job.schedule.decode_timesteps(job.decode_num):
            step = decode_step(job, trajectory[t], t, job.source)  # the very computation of the decode
            corrections[t] = Inverted(x0, trajectory).previous(t, job.schedule) - step
        return Inverted(x0, trajectory, corrections=corrections)
