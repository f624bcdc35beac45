"""Plugins for rectified-flow backbones (SD3, FLUX): FlowEdit's inversion-free decode and a midpoint inversion.

Both use only the sampler contract (`schedule.encode`, `schedule.step`, `schedule.inverse_step`, `below`), so
they read as the papers write them; they are meant for flow samplers (framework.core.flow.FlowSchedule), where
timesteps are sigma x 1000 and a midpoint in time is a midpoint in sigma.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from framework.core.sampling import seeded_noise
from framework.core.stages import Decoder, Inversion, InversionJob, Inverted

if TYPE_CHECKING:
    from framework.core.procedure import EditState
    from framework.core.stages import StageTools


class FlowEditDecode(Decoder):
    """FlowEdit (Kulikov et al. 2024): an ODE between the source and edit distributions, with no inversion.

    From the encode level (t_E, `sampling.encode_ratio`) down: draw noise n, put the source on the path,
    z_src = (1 - sigma) x_0 + sigma n, shift the edit the same way, z_edit = z + z_src - x_0, and move z by the
    difference of velocities v(z_edit, C_EDIT) - v(z_src, C_0) (each with CFG), averaged over `averages` noises.
    No mask and no ITO: the latents change only where the two conditions' velocities differ.
    """

    uses_inversion = False

    def __init__(self, averages: int = 1, source_guidance_scale: Optional[float] = None):
        """
        Args:
            averages: Noises drawn per step whose velocity differences are averaged (FlowEdit's n_avg).
            source_guidance_scale: CFG of the source velocity (None: `sampling.guidance_scale`; FlowEdit uses a
                lower one than the edit's, e.g. 3.5 against 13.5 on SD3).
        """
        self.averages = averages
        self.source_guidance_scale = source_guidance_scale

    def decode(self, tools: "StageTools", state: "EditState") -> torch.Tensor:
        schedule, x0, sides = state.schedule, state.x0, state.sides
        scale = tools.sampling.guidance_scale
        edit = tools.eps(sides.edit, scale)
        source = tools.eps(sides.source, scale if self.source_guidance_scale is None else self.source_guidance_scale)
        callback = tools.step_callback("final")
        z = x0
        for i, t in enumerate(schedule.decode_timesteps(state.n_final)):
            noises = seeded_noise((self.averages, *x0.shape[1:]), state.seed + 1 + i, x0.device, x0.dtype)
            delta = torch.zeros_like(z)
            for noise in noises:
                z_src = schedule.encode(x0, noise[None], t)
                delta = delta + edit(z + z_src - x0, t) - source(z_src, t)
            z = schedule.step(z, (delta / self.averages).to(z.dtype), t)
            callback(i, t, z)
        return z


class MidpointInversion(Inversion):
    """Second-order inversion of the flow ODE (the midpoint rule of RF-Solver / FireFlow): two velocity
    evaluations per step, v at the level below and v at the midpoint it predicts, so the trajectory follows the
    ODE to second order where Euler inversion (the default) is first order. Decodes are Euler steps as before."""

    def invert(self, x0: torch.Tensor, job: InversionJob) -> Inverted:
        schedule, velocity = job.schedule, job.eps(job.inversion, job.inversion_scale)
        trajectory, x = {}, x0
        for i, t in enumerate(reversed(schedule.decode_timesteps(job.num))):
            lower = schedule.below(t)
            half = (x + schedule.inverse_step(x, velocity(x, lower).to(x.dtype), t)) / 2  # x + h/2 v(x, lower)
            x = schedule.inverse_step(x, velocity(half, (lower + t) / 2).to(x.dtype), t)
            trajectory[t] = x
            if job.callback is not None:
                job.callback(i, t, x)
        return Inverted(x0, trajectory)
