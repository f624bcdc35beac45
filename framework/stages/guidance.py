"""Guidance-image generator plugins: the guidance image G and its trajectory {g_t} (paper Sec. 3.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

from framework.core.sampling import Sampler, decode, invert, seeded_noise
from framework.core.settings import GuidanceConfig, ITOObjective, SamplingConfig, check_update_steps, step_count
from framework.core.stages import GuidanceGenerator

if TYPE_CHECKING:
    from framework.core.procedure import EditState
    from framework.core.stages import StageTools


@dataclass
class NoiseEncodedGuidance(GuidanceGenerator, GuidanceConfig, ITOObjective):
    """G: random-noise encoding of x_0, decode under C_EDIT with preservation-only ITO (Sec. 3.2); then g_t.

    Its init_args are GuidanceConfig's fields and its ITO's objective (ITOObjective); `model.guidance` sets
    those of the default guidance stage, which takes its objective from `model.ito`. With `refine` (A.5), ITO at
    lam = 0 decodes G again from g_{t_E} towards the input (G's trajectory updated, the input's as the guidance
    loss's reference); that decode starts from G's inversion, so it is inverted with the model's inversion
    plugin."""

    def __post_init__(self):
        GuidanceConfig.__post_init__(self)
        ITOObjective.__post_init__(self)

    def check(self, sampling: SamplingConfig) -> None:
        check_update_steps(self.update_steps, sampling.steps, "guidance.update_steps",
                           "sampling.steps", "lower it or raise sampling.steps")

    def level(self, schedule: Sampler, sampling: SamplingConfig) -> int:
        return schedule.encode_level(self.encode_ratio or sampling.encode_ratio)

    def needed_steps(self, timesteps: tuple, read: tuple) -> Optional[int]:
        """Steps of G's decode (over `timesteps`) that give every g_t the edit reads (`read`), when G's own decode
        is the reference and nothing after needs G itself (`decode: needed`); None: decode G to the end."""
        if self.decode != "needed" or self.reference != "decode" or self.invert != "missing" or self.refine or not read:
            return None
        if not set(read) <= set(timesteps):  # G's decode skips a timestep the edit reads: G is inverted
            return None
        stop = timesteps.index(read[-1]) + 1  # g_t is the latents the UNet saw at t: the step from t included
        return stop if stop < len(timesteps) else None

    def finish(self, x, eps, schedule: Sampler, remaining: tuple) -> torch.Tensor:
        """G's picture from latents at level remaining[0]: `finish_steps` coarse moves down to the clean latents
        (the levels spread over `remaining`), or the x_0 estimate there with 0. It decides no pixel of the edit."""
        if self.finish_steps == 0:
            return schedule.clean(x, eps(x, remaining[0]).to(x.dtype), remaining[0])
        count = min(self.finish_steps, len(remaining))
        levels = [remaining[i * len(remaining) // count] for i in range(count)] + [schedule.below(remaining[-1])]
        for t, to in zip(levels, levels[1:]):
            x = schedule.jump(x, eps(x, t).to(x.dtype), t, to)
        return x

    def generate(self, tools: "StageTools", state: "EditState", level: int):
        schedule, x0 = state.schedule, state.x0
        noise = seeded_noise(tuple(x0.shape), state.seed + 1, x0.device)
        start = schedule.encode(x0, noise, schedule.decode_timesteps(level)[0])
        eps_edit = tools.eps(state.sides.edit, tools.sampling.guidance_scale)
        optimizer = tools.optimizer(1.0, self.inner_steps, self)
        loss_mask = tools.loss_mask(state, self)
        hook = tools.ito_hook(optimizer, step_count(self.update_steps, level), state.x_traj, None, loss_mask, "guidance")
        visited: dict[int, torch.Tensor] = {}  # G's own decode: the latents the UNet saw at each timestep

        def guidance_step(i: int, t: int, y_t: torch.Tensor) -> torch.Tensor:
            visited[t] = hook(i, t, y_t)
            return visited[t]
        step = guidance_step if self.reference == "decode" else hook
        callback = tools.step_callback("guidance")
        read = tools.guidance_timesteps(state)
        stop = self.needed_steps(schedule.decode_timesteps(level), read)
        if stop is not None:  # the edit reads g_t down to read[-1] only: decode G that far, then finish its picture
            x = decode(start, eps_edit, schedule, level, step, callback, steps=stop)
            return self.finish(x, eps_edit, schedule, schedule.decode_timesteps(level)[stop:]), \
                {t: visited[t] for t in reversed(read)}
        g0 = decode(start, eps_edit, schedule, level, step, callback)
        if not self.refine:  # g_t is only the guidance loss's reference: the trajectory is all it needs
            needed = schedule.decode_timesteps(state.n_final)
            if self.reference == "decode" and self.invert == "missing" and all(t in visited for t in needed):
                return g0, {t: visited[t] for t in reversed(needed)}  # the decode visited every g_t: no inversion
            eps_invert = tools.eps(state.sides.edit, tools.sampling.inversion_guidance_scale)
            g_traj = invert(g0, eps_invert, schedule, state.n_final)
            # guidance.reference 'decode': G's decode where it visited, its inversion elsewhere
            g_traj.update({t: y for t, y in visited.items() if t in g_traj})
            return g0, g_traj
        job = tools.inversion_job(state.sides.edit, state.sides.edit, schedule, state.n_final, state.n_final)
        inverted = tools.invert(g0, job)
        optimizer = tools.optimizer(0.0, self.refine_inner_steps, self)
        start = inverted.trajectory[schedule.decode_timesteps(state.n_final)[0]]
        g0 = decode(start, tools.eps(state.sides.edit, tools.sampling.guidance_scale, inverted), schedule,
                         state.n_final,
                         tools.ito_hook(optimizer, self.refine_update_steps, inverted.trajectory, state.x_traj,
                                         loss_mask, "refine"),
                         after_step=tools.corrections(inverted))
        return g0, tools.trajectory(g0, job)
