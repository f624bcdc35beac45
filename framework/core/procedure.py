"""The edit procedure of the paper's Fig. 1, as calls to its stages: encode, invert, mask, guidance image, decode.

Glossary (paper -> code): I -> request.image, x_0 -> state.x0, x_t -> state.inverted.trajectory[t]
(inversion of the input under C_0), y_t -> latents being decoded, G / g_t -> state.g0 /
state.g_traj[t], m -> state.mask (1 = edit), C_0 / C_EDIT -> state.sides.source / .edit,
t_E -> state.n_final steps, lambda -> state.lam.

Each stage is a plugin chosen by `class_path` (framework.stages.inversions, framework.stages); the method
and its baselines differ only in which plugins fill the slots. `EditEngine` holds the models, the
settings and the slots and runs them; `EditPipeline` (framework.pipeline), the Python API, owns one and
is the way every other part runs an edit (`EditModule`, the Lightning shell, and the demo call it).
Benchmarks call the same stage methods.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from framework.core.conditioning import Conditioner, ConditionSide
from framework.core.denoiser import Conditioning, Denoiser
from framework.core.errors import EditError
from framework.core.ito import LatentOptimizer, OptimizerFactory
from framework.core.loss import EditLoss
from framework.core.request import EditRequest, EditResult
from framework.core.sampling import Sampler
from framework.core.settings import AutoLam, SamplingConfig, check_lam_setting
from framework.core.stages import (
    Decoder,
    GuidanceGenerator,
    Inversion,
    InversionJob,
    Inverted,
    MaskEstimator,
    StageTools,
)

Side = tuple[Conditioning, Conditioning]  # (cond, uncond)
Emit = Callable[..., None]  # emit(stage, kind, i, t, latents, **extra)


class NonFiniteLatents(EditError):
    """NaN or inf appeared in the latents of an edit."""


class Sides:
    """The encoded condition sides of one request: (cond, uncond) pairs for C_0, C_EDIT and the inversion."""

    def __init__(self, denoiser: Denoiser, backbone, request: EditRequest, sampling: SamplingConfig):
        negative = sampling.negative_prompt
        src = ConditionSide(request.source_prompt, request.source_maps)
        edit = ConditionSide(request.edit_prompt, request.edit_maps)
        inv = ConditionSide(sampling.inversion_prompt, request.source_maps) if sampling.inversion_prompt else src
        enc = lambda side: self.encode_pair(denoiser, backbone, side, negative)  # noqa: E731
        self.source, self.edit = enc(src), enc(edit)
        self.inversion = enc(inv) if inv is not src else self.source

    @staticmethod
    def encode_pair(denoiser: Denoiser, backbone, side: ConditionSide, negative_prompt: str) -> Side:
        """(cond, uncond) of one side: the uncond half has the negative prompt and the same maps."""
        return denoiser.encode(side, backbone), denoiser.encode(side.unconditional(negative_prompt), backbone)

    @classmethod
    def of(cls, source: Optional[Side], edit: Optional[Side], inversion: Optional[Side] = None) -> "Sides":
        """Sides from encoded pairs (benchmarks time the stages on them one by one)."""
        sides = cls.__new__(cls)
        sides.source, sides.edit, sides.inversion = source, edit, inversion or source
        return sides


@dataclass
class EditState:
    """What the stages of one edit share: the request, x_0, the inversion, the mask, the guidance image."""

    request: EditRequest
    x0: torch.Tensor  # (1, 4, h, w)
    sides: Sides
    schedule: Sampler  # the run's timesteps and the moves between them (the backbone's sampler)
    n_final: int  # t_E in steps
    lam: float
    seed: int
    inverted: Optional[Inverted] = None
    mask: Optional[torch.Tensor] = None  # (1, 1, h, w), 1 = edit
    soft: Optional[torch.Tensor] = None  # (1, 1, h, w) before the threshold, when estimated
    mask_source: str = "none"  # given / estimated / cached / none
    g0: Optional[torch.Tensor] = None  # guidance latents G
    g_traj: Optional[dict[int, torch.Tensor]] = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def x_traj(self) -> Optional[dict[int, torch.Tensor]]:
        """{t: x_t}: the inversion trajectory of the input (None without an inversion)."""
        return None if self.inverted is None else self.inverted.trajectory


class EditEngine:
    """Runs the procedure on requests with one backbone, conditioners, losses, settings and stage plugins."""

    def __init__(self, backbone, conditioners: Sequence[Conditioner], losses: Sequence[EditLoss], *,
                 inversion: Inversion, mask_estimator: MaskEstimator, guidance_generator: GuidanceGenerator,
                 decoder: Decoder,
                 optimizer: Optional[OptimizerFactory] = None, sampling: Optional[SamplingConfig] = None,
                 unet_chunk_size: Optional[int] = None, emit: Optional[Emit] = None):
        self.backbone = backbone
        self.conditioners = list(conditioners)
        self.losses = list(losses)
        self.inversion, self.mask_estimator = inversion, mask_estimator
        self.guidance_generator, self.decoder = guidance_generator, decoder
        self.optimizer_factory = optimizer
        self.sampling = sampling or SamplingConfig()
        self.denoiser = Denoiser(backbone.unet, self.conditioners, backbone.scheduler.config.num_train_timesteps,
                                 unet_chunk_size, backbone.unet_inputs, backbone.predict)
        self.denoiser.guidance_rescale = self.sampling.guidance_rescale
        self.emit: Emit = emit or (lambda *args, **kwargs: None)
        self.request_id: Optional[str] = None
        self.tools = StageTools(self)  # what the stages receive

    # ------------------------------------------------------------------------------ the procedure
    def edit(self, request: EditRequest, lam_setting, seed: int, auto_lam: AutoLam) -> EditResult:
        """The whole procedure on one request (paper Fig. 1). `lam_setting` is a number or 'auto'."""
        auto = lam_setting == "auto"  # lam is then set from the mask, after step 2
        state = self.start(request, auto_lam.high if auto else lam_setting, seed)
        # With lam: auto, whether G is made is known only after the mask: invert deep enough for it.
        guided = self.guided(auto_lam.low if auto else state.lam)
        with self.stage("encode", state):
            self.encode(state)
        if self.needs_inversion(guided):  # 1. inversion of x_0 under C_0 (Eq. 2), reused by every stage
            with self.stage("inversion", state):
                self.invert(state, self.guidance_level(state) if guided else 0)
        with self.stage("mask", state):  # 2. edit mask (Eq. 7), or the request's own
            self.estimate_mask(state)
        if auto:  # lam from the mask's area and the kind of edit (AutoLam; paper A.3: difficulty follows mask size)
            state.lam = auto_lam(float(state.mask.mean()), request.changes_prompt)
            guided = self.guided(state.lam)
        if guided:  # 3. guidance image G and its trajectory g_t (Sec. 3.2)
            with self.stage("guidance", state):
                self.make_guidance(state)
        with self.stage("final", state):  # 4. final decode (Eq. 6 for the method)
            y0 = self.final(state)
        with self.stage("decode", state):
            edit_image = self.backbone.decode_latents(y0)
            guidance_image = None if state.g0 is None else self.backbone.decode_latents(state.g0)
        state.seconds["total"] = round(sum(state.seconds.values()), 4)
        record = self.record(state, guided)
        if auto:
            record["lam_rule"] = {"rule": "auto", "mask_area": float(state.mask.mean()),
                                  "prompt_changed": request.changes_prompt, **asdict(auto_lam)}
        cpu = lambda d: {k: v.detach().cpu() for k, v in d.items()}  # noqa: E731
        return EditResult(request.id, edit_image.cpu(), request.image.cpu(), state.mask.cpu(),
                          None if state.soft is None else state.soft.cpu(),
                          None if guidance_image is None else guidance_image.cpu(),
                          cpu(request.source_maps), cpu(request.edit_maps), record)

    # --------------------------------------------------------------------------------- the stages
    def start(self, request: EditRequest, lam: float, seed: int) -> EditState:
        """A fresh state for `request`: its schedule, t_E, lam and seed (nothing computed yet)."""
        self.request_id = request.id
        self.denoiser.reset_counts()
        schedule = self.backbone.sampler(self.sampling.steps, tuple(request.image.shape[-2:]))
        return EditState(request, None, None, schedule, schedule.encode_level(self.sampling.encode_ratio),
                         float(check_lam_setting(lam)), seed)

    def encode(self, state: EditState) -> None:
        """Encode: the condition sides and x_0 (VAE posterior mean)."""
        state.sides = Sides(self.denoiser, self.backbone, state.request, self.sampling)
        state.x0 = self.backbone.encode_image(state.request.image)  # (1, 4, h, w)

    def invert(self, state: EditState, depth: int = 0) -> None:
        """Invert x_0 through max(t_E, depth) steps with the inversion plugin."""
        job = self.inversion_job(state.sides.inversion, state.sides.source, state.schedule,
                                 max(state.n_final, depth), state.n_final, self.step_callback("inversion"))
        state.inverted = self.inversion.invert(state.x0, job)
        self.check_finite(state.x_traj[max(state.x_traj)], "inversion", state.request)

    def estimate_mask(self, state: EditState) -> None:
        state.mask, state.soft, state.mask_source = self.mask_estimator.estimate(self.tools, state)

    def make_guidance(self, state: EditState) -> None:
        state.g0, state.g_traj = self.guidance_generator.generate(self.tools, state, self.guidance_level(state))

    def final(self, state: EditState) -> torch.Tensor:
        y0 = self.decoder.decode(self.tools, state)
        self.check_finite(y0, "final decode", state.request)
        return y0

    # ---------------------------------------------------------------------- what stages call
    def guided(self, lam: float) -> bool:
        """Whether an edit at this lam makes a guidance image: the decoder uses one and its loss has weight at the
        lowest lam the decode reaches (a lam schedule may go below the edit's lam)."""
        lam = self.decoder.least_lam(lam)
        return self.decoder.uses_guidance and lam < 1 and any(
            loss.role_weight(lam) != 0 for loss in self.losses if loss.role == "guidance")

    def needs_inversion(self, guided: bool) -> bool:
        """The decoder starts from the trajectory, or the guidance decode's ITO compares to it."""
        return self.decoder.uses_inversion or guided

    def guidance_level(self, state: EditState) -> int:
        return self.guidance_generator.level(state.schedule, self.sampling)

    def inversion_job(self, inversion: Side, source: Side, schedule: Sampler, num: int, decode_num: int,
                      callback=None) -> InversionJob:
        return InversionJob(self.denoiser, schedule, num, decode_num, inversion,
                            self.sampling.inversion_guidance_scale, source, self.sampling.guidance_scale, callback)

    def eps(self, side: Side, scale: float, inverted: Optional[Inverted] = None):
        """eps(x, t) under `side` with CFG `scale`; from an inversion, with its per-step unconditional text."""
        cond, uncond = side
        if inverted is None or not inverted.uncond_text:
            return lambda x, t: self.denoiser(x, t, cond, uncond, scale)
        index = self.denoiser.text_index

        def eps(x: torch.Tensor, t: int) -> torch.Tensor:
            text = inverted.uncond_text.get(t)
            return self.denoiser(x, t, cond, uncond if text is None else uncond.with_part(index, text), scale)
        return eps

    @staticmethod
    def corrections(inverted: Optional[Inverted]):
        """after_step of a decode from an inversion with per-step offsets (direct inversion), else None."""
        if inverted is None or not inverted.corrections:
            return None
        return lambda i, t, x: x + inverted.corrections[t].to(x.dtype) if t in inverted.corrections else x

    def ito_hook(self, optimizer: LatentOptimizer, update_steps: int, x_traj: dict, g_traj: Optional[dict],
                 mask: torch.Tensor, stage: str = "final", first: int = 0,
                 lam_at: Optional[Callable[[int], float]] = None):
        """before_step of a decode: k optimiser steps on y_t at each of the first t_u steps (Eq. 6), from `first`;
        `lam_at(i)` gives step i's lam when lam follows a schedule (ito.lam_end)."""
        def before_step(i: int, t: int, y_t: torch.Tensor) -> torch.Tensor:
            if i >= update_steps or i < first:
                return y_t
            if lam_at is not None:
                optimizer.lam = lam_at(i)
            y_t = optimizer(y_t, x_t=x_traj[t], g_t=None if g_traj is None else g_traj[t], mask=mask, t=t)
            self.emit(stage, "ito", i, t, y_t, loss=optimizer.last_loss)
            return y_t
        return before_step

    def step_callback(self, stage: str):
        return lambda i, t, x: self.emit(stage, "step", i, t, x)

    # ------------------------------------------------------------------------------ bookkeeping
    @contextmanager
    def stage(self, name: str, state: EditState):
        """Time a stage (synchronised on CUDA) into state.seconds and count its UNet evaluations under `name`."""
        self.denoiser.stage = name
        device = self.backbone.unet.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        state.seconds[name] = round(time.perf_counter() - start, 4)

    def check_finite(self, latents: torch.Tensor, where: str, request: EditRequest) -> None:
        if not torch.isfinite(latents).all():
            raise NonFiniteLatents(
                f"Edit '{request.id}': NaN/inf latents after the {where}. With 16-mixed precision try "
                f"bf16-mixed or 32-true; otherwise lower the ITO learning rate or sampling.guidance_scale.")

    def record(self, state: EditState, guided: bool) -> dict[str, Any]:
        """What result.json says about the edit itself (the module adds method, settings and inputs)."""
        request, counts = state.request, self.denoiser
        return {
            "id": request.id, "source_prompt": request.source_prompt, "edit_prompt": request.edit_prompt,
            "modalities": sorted(request.edit_maps), "lam": state.lam, "seed": state.seed, "guidance_image": guided,
            "encode_steps": state.n_final, "mask_area": round(float(state.mask.mean()), 4),
            "mask_source": state.mask_source,
            "height": int(request.image.shape[-2]), "width": int(request.image.shape[-1]),
            "seconds": state.seconds, "unet_evaluations": dict(counts.samples), "unet_calls": dict(counts.calls),
            "controlnet_evaluations": dict(counts.control_samples),
        }
