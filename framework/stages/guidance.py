"""Guidance-image generator plugins: the guidance image G and its trajectory {g_t} (paper Sec. 3.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from framework.core.sampling import decode, invert, seeded_noise
from framework.core.stages import GuidanceGenerator

if TYPE_CHECKING:
    from framework.core.procedure import EditState
    from framework.core.stages import StageTools


class NoiseEncodedGuidance(GuidanceGenerator):
    """G: random-noise encoding of x_0, decode under C_EDIT with preservation-only ITO (Sec. 3.2); then g_t.

    Settings from `model.guidance` (GuidanceConfig). With `refine` (A.5), ITO at lam = 0 decodes G again
    from g_{t_E} towards the input (G's trajectory updated, the input's as the guidance loss's reference);
    that decode starts from G's inversion, so it is inverted with the model's inversion plugin."""

    def generate(self, tools: "StageTools", state: "EditState", level: int):
        cfg, schedule, x0 = tools.guidance, state.schedule, state.x0
        noise = seeded_noise(tuple(x0.shape), state.seed + 1, x0.device)
        start = schedule.encode(x0, noise, schedule.decode_timesteps(level)[0])
        eps_edit = tools.eps(state.sides.edit, tools.sampling.guidance_scale)
        optimizer = tools.optimizer(1.0, cfg.inner_steps)
        hook = tools.ito_hook(optimizer, cfg.update_steps, state.x_traj, None, tools.loss_mask(state), "guidance")
        visited: dict[int, torch.Tensor] = {}  # G's own decode: the latents the UNet saw at each timestep

        def guidance_step(i: int, t: int, y_t: torch.Tensor) -> torch.Tensor:
            visited[t] = hook(i, t, y_t)
            return visited[t]
        step = guidance_step if cfg.reference == "decode" else hook
        g0 = decode(start, eps_edit, schedule, level, step, tools.step_callback("guidance"))
        if not cfg.refine:  # g_t is only the guidance loss's reference: the trajectory is all it needs
            needed = schedule.decode_timesteps(state.n_final)
            if cfg.reference == "decode" and cfg.invert == "missing" and all(t in visited for t in needed):
                return g0, {t: visited[t] for t in reversed(needed)}  # the decode visited every g_t: no inversion
            eps_invert = tools.eps(state.sides.edit, tools.sampling.inversion_guidance_scale)
            g_traj = invert(g0, eps_invert, schedule, state.n_final)
            # guidance.reference 'decode': G's decode where it visited, its inversion elsewhere
            g_traj.update({t: y for t, y in visited.items() if t in g_traj})
            return g0, g_traj
        job = tools.inversion_job(state.sides.edit, state.sides.edit, schedule, state.n_final, state.n_final)
        inverted = tools.invert(g0, job)
        optimizer = tools.optimizer(0.0, cfg.refine_inner_steps)
        start = inverted.trajectory[schedule.decode_timesteps(state.n_final)[0]]
        g0 = decode(start, tools.eps(state.sides.edit, tools.sampling.guidance_scale, inverted), schedule,
                         state.n_final,
                         tools.ito_hook(optimizer, cfg.refine_update_steps, inverted.trajectory, state.x_traj,
                                         tools.loss_mask(state), "refine"),
                         after_step=tools.corrections(inverted))
        return g0, tools.trajectory(g0, job)
