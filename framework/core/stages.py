"""The stage contracts of the procedure: inversion, mask estimator, guidance-image generator, decoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch

from framework.core.ddim import Schedule, StepCallback, ddim_invert
from framework.core.denoiser import Conditioning, Denoiser

if TYPE_CHECKING:
    from framework.core.procedure import EditEngine, EditState

Side = tuple[Conditioning, Conditioning]  # (cond, uncond) of one condition side


@dataclass
class Inverted:
    """One inverted image: the trajectory and the per-step data that a CFG decode from it uses."""

    x0: torch.Tensor  # (1, 4, h, w)
    trajectory: dict[int, torch.Tensor]  # {t: x*_t}, t increasing in insertion order
    uncond_text: Optional[dict[int, torch.Tensor]] = None
    """{t: text embedding (1, L, D)} replacing the unconditional text of the decode's CFG at step t."""
    corrections: Optional[dict[int, torch.Tensor]] = None
    """{t: (1, 4, h, w)} added to the latents after the decode step from t."""

    def previous(self, t: int, schedule: Schedule) -> torch.Tensor:
        """x*_{t - stride}: the trajectory one level less noisy than t (x_0 below the first level)."""
        return self.trajectory.get(t - schedule.stride, self.x0)


@dataclass
class InversionJob:
    """What an inversion gets: the model, the grid, how deep to go and the condition sides."""

    denoiser: Denoiser
    schedule: Schedule
    num: int  # invert through the first `num` timesteps
    decode_num: int  # the decode that starts from the trajectory has this many steps
    inversion: Side  # the side the trajectory is computed under (C_0 or sampling.inversion_prompt)
    inversion_scale: float  # sampling.inversion_guidance_scale
    source: Side  # the side whose CFG decode should retrace the trajectory (C_0)
    decode_scale: float  # sampling.guidance_scale
    callback: Optional[StepCallback] = None

    def eps(self, side: Side, scale: float) -> Callable[[torch.Tensor, int], torch.Tensor]:
        cond, uncond = side
        return lambda x, t: self.denoiser(x, t, cond, uncond, scale)


class Inversion:
    """Base class of inversion plugins: `invert(x0, job) -> Inverted`. Select one by `class_path`."""

    def invert(self, x0: torch.Tensor, job: InversionJob) -> Inverted:
        raise NotImplementedError

    @staticmethod
    def trajectory(x0: torch.Tensor, job: InversionJob) -> dict[int, torch.Tensor]:
        """DDIM inversion of x_0 under the inversion side (Eq. 2)."""
        return ddim_invert(x0, job.eps(job.inversion, job.inversion_scale), job.schedule, job.num, job.callback)


MaskResult = tuple[torch.Tensor, Optional[torch.Tensor], str]  # binary (1, 1, h, w), soft or None, source


# ------------------------------------------------------------------------------------- masks
class MaskEstimator:
    """Base class of mask estimators: the edit region m (1 = edit) on the latent grid."""

    def estimate(self, engine: "EditEngine", state: "EditState") -> MaskResult:
        raise NotImplementedError


# ---------------------------------------------------------------------------- guidance image
class GuidanceGenerator:
    """Base class of guidance-image generators: G under C_EDIT and its trajectory {t: g_t}."""

    def generate(self, engine: "EditEngine", state: "EditState", level: int):
        raise NotImplementedError


# ----------------------------------------------------------------------------- final decode
class Decoder:
    """Base class of final decodes: y_0 from the state."""

    uses_inversion = True  # starts from the inversion trajectory
    uses_guidance = False  # reads a guidance image's trajectory
    uses_ito = False  # runs ITO (t_u and k apply)

    def decode(self, engine: "EditEngine", state: "EditState") -> torch.Tensor:
        raise NotImplementedError
