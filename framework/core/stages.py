"""The stage contracts of the procedure: inversion, mask estimator, guidance-image generator, decoder.

A stage plugin fills one slot of the procedure (framework.core.procedure.EditEngine.edit, the paper's Fig. 1).
It receives the edit's `EditState` (what earlier stages computed) and `StageTools` (what it may use: the
conditioned noise predictor, the backbone, the run's settings groups and a few helpers), never the engine.
docs/stages.md states each slot's full contract: what it receives, what it returns, which callbacks it fires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch

from framework.core.backbone import TextEncoding
from framework.core.denoiser import Conditioning, Denoiser
from framework.core.ito import LatentOptimizer
from framework.core.sampling import Sampler, StepCallback, invert
from framework.core.settings import ITOObjective, SamplingConfig

if TYPE_CHECKING:
    from framework.core.procedure import EditEngine, EditState

Side = tuple[Conditioning, Conditioning]  # (cond, uncond) of one condition side


@dataclass
class Inverted:
    """One inverted image: the trajectory and the per-step data that a CFG decode from it uses."""

    x0: torch.Tensor  # (1, 4, h, w)
    trajectory: dict[int, torch.Tensor]  # {t: x*_t}, t increasing in insertion order
    uncond_text: Optional[dict[int, TextEncoding]] = None  # per-step unconditional text (null-text inversion)
    """{t: text embedding (1, L, D)} replacing the unconditional text of the decode's CFG at step t."""
    corrections: Optional[dict[int, torch.Tensor]] = None
    """{t: (1, 4, h, w)} added to the latents after the decode step from t."""

    def previous(self, t: int, schedule: Sampler) -> torch.Tensor:
        """The trajectory one level less noisy than t (x_0 below the first level)."""
        return self.trajectory.get(schedule.below(t), self.x0)


@dataclass
class InversionJob:
    """What an inversion gets: the model, the grid, how deep to go and the condition sides."""

    denoiser: Denoiser
    schedule: Sampler
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


class StageTools:
    """What a mask estimator, guidance generator or decoder may use besides the state (the engine stays hidden).

    - `denoiser`: eps_theta(x_t, t, cond, uncond, scale) with the conditioners and CFG; counts UNet samples.
    - `backbone`: encode_image / decode_latents / encode_prompt, `scheduler`, `tokenizer`, `unet`.
    - `conditioners`: the run's conditioners (text first).
    - `sampling`: the run's sampling settings (`model.sampling`: steps, encode ratio, CFG scales), which every
      stage shares. A stage's own settings are its init_args (`self`), not here.
    - `eps(side, scale, inverted=None)`: x, t -> eps under one condition side, with an inversion's per-step text.
    - `guidance_timesteps(state)`: the final decode's timesteps whose g_t it reads (a guidance stage may stop there).
    - `corrections(inverted)`: the after-step of a decode from an inversion with per-step offsets, or None.
    - `step_callback(stage)`: the callback a decode must pass on, so progress and previews see each step.
    - `optimizer(lam, inner_steps, objective)`, `ito_hook(...)`, `loss_mask(state, objective)`: ITO (Eq. 6) on the
      latents being decoded, with the run's losses and optimiser and the stage's ITOObjective settings.
    - `inversion_job(...)`, `invert(x0, job)`, `trajectory(x0, job)`: the run's inversion plugin, for a stage
      that inverts another image (the guidance image's refinement).
    - `sides(request)`: the encoded (cond, uncond) sides of a request (e.g. one resized for the mask).
    """

    def __init__(self, engine: "EditEngine"):
        self._engine = engine

    denoiser = property(lambda self: self._engine.denoiser)
    backbone = property(lambda self: self._engine.backbone)
    conditioners = property(lambda self: self._engine.conditioners)
    sampling = property(lambda self: self._engine.sampling)

    def eps(self, side: Side, scale, inverted: Optional[Inverted] = None):
        return self._engine.eps(side, scale, inverted)

    def guidance_timesteps(self, state: "EditState") -> tuple:
        """The timesteps of the final decode whose g_t it reads (the decoder's `guidance_steps`), noisiest first."""
        timesteps = state.schedule.decode_timesteps(state.n_final)
        return timesteps[:self._engine.decoder.guidance_steps(state.n_final)]

    def corrections(self, inverted: Optional[Inverted]):
        return self._engine.corrections(inverted)

    def step_callback(self, stage: str):
        return self._engine.step_callback(stage)

    def optimizer(self, lam: float, inner_steps: int, objective: ITOObjective) -> LatentOptimizer:
        """The run's losses and optimiser at `lam`, k = `inner_steps`, with a stage's objective settings."""
        engine = self._engine
        return LatentOptimizer(engine.losses, lam, inner_steps, engine.optimizer_factory,
                               objective.keep_optimizer_state, objective.balance)

    def ito_hook(self, *args, **kwargs):
        return self._engine.ito_hook(*args, **kwargs)

    @staticmethod
    def loss_mask(state: "EditState", objective: ITOObjective) -> torch.Tensor:
        """The mask the ITO losses see (`objective.loss_mask`): the binary one, or the soft Eq. 7 map where estimated."""
        return state.soft if objective.loss_mask == "soft" and state.soft is not None else state.mask

    def inversion_job(self, *args, **kwargs) -> InversionJob:
        return self._engine.inversion_job(*args, **kwargs)

    def invert(self, x0: torch.Tensor, job: InversionJob) -> Inverted:
        return self._engine.inversion.invert(x0, job)

    def trajectory(self, x0: torch.Tensor, job: InversionJob) -> dict[int, torch.Tensor]:
        return self._engine.inversion.trajectory(x0, job)

    def sides(self, request):
        from framework.core.procedure import Sides  # the state's type module imports this one

        return Sides(self.denoiser, self.backbone, request, self.sampling)


class Stage:
    """What every stage plugin has besides its slot's method: its settings are its own init_args (a dataclass
    stage's fields), checked against the run's sampling settings before any model work."""

    def check(self, sampling: SamplingConfig) -> None:
        """Raise ConfigError when the stage's settings do not fit the run's sampling (e.g. t_u > the steps)."""


class Inversion(Stage):
    """Base class of inversion plugins (`model.inversion`): `invert(x0, job) -> Inverted`.

    Receives x_0 (1, C, h, w) and an `InversionJob` (the denoiser, schedule, number of steps, the inversion and
    source sides, CFG scales and the step callback). Must return `Inverted` whose `trajectory` holds x*_t for
    the first `job.num` timesteps of `job.schedule.decode_timesteps(job.num)` reversed, keyed by timestep t
    (increasing), and call `job.callback(i, t, x)` after each step when it is set."""

    def invert(self, x0: torch.Tensor, job: InversionJob) -> Inverted:
        raise NotImplementedError

    @staticmethod
    def trajectory(x0: torch.Tensor, job: InversionJob) -> dict[int, torch.Tensor]:
        """The sampler's inversion of x_0 under the inversion side (Eq. 2)."""
        return invert(x0, job.eps(job.inversion, job.inversion_scale), job.schedule, job.num, job.callback)


MaskResult = tuple[torch.Tensor, Optional[torch.Tensor], str]  # binary (1, 1, h, w), soft or None, source


# ------------------------------------------------------------------------------------- masks
class MaskEstimator(Stage):
    """Base class of mask estimators (`model.mask_estimator`): the edit region m (1 = edit) on the latent grid.

    `estimate(tools, state)` runs after the inversion (`state.x0`, `state.sides`, `state.schedule`,
    `state.inverted` when one ran, `state.seed`). Must return (mask, soft, source): the binary mask
    (1, 1, h, w) on x_0's grid, the soft map before the threshold or None, and 'estimated', 'given', 'cached'
    or 'none'. A request's own mask (`state.request.mask`) should win over an estimate."""

    def estimate(self, tools: StageTools, state: "EditState") -> MaskResult:
        raise NotImplementedError


# ---------------------------------------------------------------------------- guidance image
class GuidanceGenerator(Stage):
    """Base class of guidance-image generators (`model.guidance_generator`): G under C_EDIT and {t: g_t}.

    `generate(tools, state, level)` runs after the mask (`state.mask`). `level` is the number of steps G is
    encoded to, `level(schedule, sampling)`'s answer (the inversion is run that deep before the mask). Must
    return (G latents (1, C, h, w), {t: g_t} for the final decode's timesteps that read it:
    `tools.guidance_timesteps(state)`, every timestep of t_E unless the decoder's `guidance_steps` says fewer), and
    pass `tools.step_callback("guidance")` to its decode."""

    def level(self, schedule: Sampler, sampling: SamplingConfig) -> int:
        """Steps G is encoded to: t_E (sampling.encode_ratio) unless the generator has its own."""
        return schedule.encode_level(sampling.encode_ratio)

    def generate(self, tools: StageTools, state: "EditState", level: int):
        raise NotImplementedError


# ----------------------------------------------------------------------------- final decode
class Decoder(Stage):
    """Base class of final decodes (`model.decoder`): y_0 from the state.

    `decode(tools, state)` runs last; it reads `state.inverted` (if `uses_inversion`), `state.mask`,
    `state.g_traj` (if `uses_guidance`), `state.lam`, `state.n_final` (t_E in steps) and `state.sides.edit`.
    Must return y_0 latents (1, C, h, w) and pass `tools.step_callback("final")` to its decode."""

    uses_inversion = True  # starts from the inversion trajectory
    uses_guidance = False  # reads a guidance image's trajectory
    uses_ito = False  # runs ITO (t_u and k apply)
    batchable = True  # may run beside other edits whose UNet calls join its own (framework.core.batching)

    def guidance_steps(self, n_final: int) -> int:
        """How many of the first of its `n_final` steps read the guidance trajectory g_t (all, unless it says)."""
        return n_final

    def least_lam(self, lam: float) -> float:
        """The lowest lam the decode's ITO reaches from the edit's lam (a lam schedule may go lower): whether a
        guidance image is made is decided by it."""
        return lam

    def decode(self, tools: StageTools, state: "EditState") -> torch.Tensor:
        raise NotImplementedError
