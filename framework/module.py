"""EditModule: one training step = one whole edit (paper Sec. 3.2, Fig. 1).

Glossary (paper -> code): I -> request.image, x_0 -> x0, x_t -> x_traj[t] (DDIM inversion of the
input), y_t -> latents being decoded, G / g_t -> guidance image / g_traj[t], m -> mask (1 = edit),
C_0 / C_EDIT -> source / edit condition sides, t_E -> encode level, t_u / k -> update / inner steps,
lambda -> lam.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Optional, Union

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from conditioners.base import Conditioner, ConditionSide
from conditioners.text import TextConditioner
from framework.config import (
    AutoLam, GuidanceConfig, ITOConfig, MaskConfig, SamplingConfig, check_lam_setting, check_steps,
)
from framework.data import EditRequest
from framework.ddim import Schedule, ddim_decode, ddim_invert, noise_encode, seeded_noise
from framework.denoiser import Conditioning, Denoiser
from framework.errors import ConfigError, EditError
from framework.ito import LatentOptimizer, OptimizerFactory, default_optimizer
from framework.mask_cache import MaskCache, mask_key, plain_fields, request_digest, settings_digest
from framework.masks import binary_mask, estimate_soft_mask, mask_area_hint, mask_image_size, mask_schedule
from framework.models import StableDiffusion
from framework.metrics import EditMetric
from framework.outputs import EditResult, read_edit, save_json, write_edit, write_results_table
from losses.base import EditLoss
from losses.guidance import CosineGuidance
from losses.preservation import MaskedMSEPreservation


class NonFiniteLatents(EditError):
    """NaN or inf appeared in the latents of an edit."""


@dataclass
class EditState:
    """What the stages of one edit share: the request, x_0, the trajectories, the mask."""

    request: EditRequest
    x0: torch.Tensor  # (1, 4, h, w)
    sides: "_Sides"
    schedule: Schedule
    n_final: int  # t_E in steps
    lam: float
    seed: int
    x_traj: Optional[dict[int, torch.Tensor]] = None  # DDIM inversion of x_0: {t: x_t}
    mask: Optional[torch.Tensor] = None  # (1, 1, h, w), 1 = edit
    soft: Optional[torch.Tensor] = None
    g0: Optional[torch.Tensor] = None  # guidance latents G
    g_traj: Optional[dict[int, torch.Tensor]] = None


class _Sides:
    """The encoded condition sides of one request: (cond, uncond) pairs for C_0, C_EDIT and inversion."""

    def __init__(self, denoiser: Denoiser, backbone, request: EditRequest, sampling: SamplingConfig):
        negative = sampling.negative_prompt
        src = ConditionSide(request.source_prompt, request.source_maps)
        edit = ConditionSide(request.edit_prompt, request.edit_maps)
        inv = ConditionSide(sampling.inversion_prompt, request.source_maps) if sampling.inversion_prompt else src
        enc = lambda side: (denoiser.encode(side, backbone), denoiser.encode(side.unconditional(negative), backbone))  # noqa: E731
        self.source, self.edit = enc(src), enc(edit)
        self.inversion = enc(inv) if inv is not src else self.source


def _writable_folder(path: str) -> Path:
    """Create `path` if needed and check that files can be written there, before any model work."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"output_dir '{folder}' is not writable ({err.strerror or err}); choose another "
                          f"with --model.output_dir.") from err
    return folder


OOM_HINT = ("Out of GPU memory. Lower it with: --model.unet_chunk_size 8 (smaller UNet batches in the mask), "
            "--model.backbone.init_args.vae_tiling true (large images), --model.mask.seeds 5, "
            "--data.resolution 512 (or less), --trainer.precision 16-mixed, or "
            "--model.mask.compare_at first (one step instead of a decode).")


class EditModule(pl.LightningModule):
    """Optimisation-based multi-modal semantic image editing of every request of a manifest.

    `fit`, `test` and `predict` all run the edit; `fit` is the paper's procedure as a
    "training" run whose parameters are the latents of each edit, optimised per sample.
    """

    def __init__(
        self,
        backbone: Optional[StableDiffusion] = None,
        conditioners: Optional[list[Conditioner]] = None,
        losses: Optional[list[EditLoss]] = None,
        optimizer: Optional[Callable[[Iterable], torch.optim.Optimizer]] = None,
        lam: Union[float, Literal["auto"]] = 0.6,
        sampling: SamplingConfig = SamplingConfig(),  # noqa: B008 - instances so --help lists their fields;
        mask: MaskConfig = MaskConfig(),  # noqa: B008   copied below, never shared
        ito: ITOConfig = ITOConfig(),  # noqa: B008
        guidance: GuidanceConfig = GuidanceConfig(),  # noqa: B008
        seed: int = 0,
        output_dir: str = "outputs/edits",
        unet_chunk_size: Optional[int] = None,
        overwrite: bool = False,
        metrics: Optional[list[EditMetric]] = None,
        auto_lam: AutoLam = AutoLam(),  # noqa: B008
    ):
        """
        Args:
            backbone: The Stable Diffusion 1.x model (None: SD 1.5 from the Hub).
            conditioners: Condition plugins; a text conditioner is put first when none is listed.
            losses: ITO loss plugins (None: masked-MSE preservation + cosine guidance, the paper's).
            optimizer: Factory of the ITO optimiser over [y_t] (None: Adam, lr 0.1, the paper's).
            lam: lambda, preservation weight; guidance gets 1 - lam. 1 skips the guidance image. 'auto':
                set per edit from its mask area by `auto_lam` (recorded in result.json as lam and lam_rule).
            sampling: DDIM steps, encode ratio, CFG scales, inversion prompt.
            mask: Edit-mask estimation (Eq. 7) settings.
            ito: t_u, k and optimiser-state policy of the final decode.
            guidance: Guidance-image settings and optional refinement (A.5).
            seed: Seed of every random draw of an edit (a request's own seed wins).
            output_dir: Folder that receives one sub-folder per edit and summary.json.
            unet_chunk_size: Most samples per UNet call (bounds memory of the batched mask); None: no cap.
            overwrite: Redo edits already finished in output_dir (default: skip them, so a rerun resumes).
            metrics: Scores of each edit and of the run (framework.metrics: L1Distance, GroundTruthL1,
                CSFID, FID, ClassifierAccuracy, PickScore, your own); written to results.md/.csv.
            auto_lam: The rule of `lam: auto` (also of requests with `lam: auto`): lam = clip(intercept +
                slope * mask_area, low, high); None: AutoLam's defaults.
        """
        super().__init__()
        self.lam = check_lam_setting(lam)
        # Copies: the defaults in the signature are instances (so --help and --print_config list their fields),
        # and a module that changes its settings must not change the next module's defaults.
        self.auto_lam = replace(auto_lam) if auto_lam is not None else AutoLam()
        self.sampling = replace(sampling) if sampling is not None else SamplingConfig()
        self.mask_cfg = replace(mask) if mask is not None else MaskConfig()
        self._mask_cached = False
        self._mask_store: Optional[MaskCache] = None  # mask.cache_dir, opened on first use
        self.ito_cfg = replace(ito) if ito is not None else ITOConfig()
        self.guidance_cfg = replace(guidance) if guidance is not None else GuidanceConfig()
        check_steps(self.sampling, self.ito_cfg if self.uses_ito else None,
                    self.guidance_cfg if self.uses_guidance else None)
        if unet_chunk_size is not None and unet_chunk_size < 1:
            raise ConfigError(f"unet_chunk_size must be >= 1 or null, got {unet_chunk_size}.")
        conditioners = list(conditioners or [])
        if not any(c.provides_text for c in conditioners):
            conditioners.insert(0, TextConditioner())
        elif not conditioners[0].provides_text:
            conditioners.sort(key=lambda c: not c.provides_text)  # text first: ControlNets read it
        self.backbone = backbone if backbone is not None else StableDiffusion()
        self.conditioners = torch.nn.ModuleList(conditioners)
        self.losses = torch.nn.ModuleList(losses if losses is not None else
                                          [MaskedMSEPreservation(), CosineGuidance()])
        self.optimizer_factory: Optional[OptimizerFactory] = optimizer
        self.seed = seed
        self.output_dir = _writable_folder(output_dir)
        self.overwrite = overwrite
        self.metrics = torch.nn.ModuleList(metrics or [])
        self.unet_chunk_size = unet_chunk_size
        self.automatic_optimization = False
        self.denoiser: Optional[Denoiser] = None
        self.records: list[dict[str, Any]] = []
        self._current_id: Optional[str] = None

    # ----------------------------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        """Load the weights once configuration and data have been checked."""
        self.load_weights()
        self.backbone.configure_memory(*self.conditioners)  # attention slicing reaches the ControlNets too
        self.denoiser = Denoiser(self.backbone.unet, self.conditioners,
                                 self.backbone.scheduler.config.num_train_timesteps, self.unet_chunk_size)
        self.records = []
        self._settings: Optional[str] = None

    def load_weights(self) -> None:
        """Read the backbone's and the conditioners' weights (once); each conditioner checks that it fits the
        UNet first. The CLI calls this before the Trainer starts, so a model that cannot load leaves no run
        behind (no W&B run, no summary)."""
        self.backbone.load()
        for conditioner in self.conditioners:
            conditioner.load(self.backbone)

    def settings_digest(self) -> str:
        """A digest of everything besides the request that decides an edit: `resolved_parameters` and the
        weights of the backbone and conditioners (the memory options aside: they save memory, the edit
        stays). Each result.json stores it; a later run into the same output_dir resumes only edits
        made with the same one."""
        if getattr(self, "_settings", None) is None:
            params = {k: v for k, v in self.resolved_parameters().items() if k != "memory"}
            self._settings = settings_digest(params, self.backbone, *self.conditioners)
        return self._settings

    def _load_metrics(self) -> None:
        for metric in self.metrics:
            metric.reset()
            metric.load(self.device)

    def on_fit_start(self) -> None:
        self._load_metrics()

    def on_test_start(self) -> None:
        self._load_metrics()

    def on_predict_start(self) -> None:
        self._load_metrics()

    def configure_optimizers(self):
        """Nothing to train: the latents of each edit are optimised inside the step."""
        return None

    def train(self, mode: bool = True) -> "EditModule":
        """Frozen networks: stay in eval mode under `fit`."""
        return super().train(False)

    # ------------------------------------------------------------------------------ the edit
    # Which stages a method uses; baselines (framework/baselines.py) switch them off.
    uses_inversion = True
    uses_mask = True
    uses_guidance = True
    uses_ito = True

    def edit(self, request: EditRequest) -> EditResult:
        """The whole procedure on one request (paper Fig. 1): encode, mask, guidance image, final decode."""
        self._current_id = request.id
        setting = self.lam if request.lam is None else check_lam_setting(request.lam, f"request '{request.id}' lam")
        auto = setting == "auto"  # lam is then set from the mask, after step 2
        lam = self.auto_lam.high if auto else setting
        seed = self.seed if request.seed is None else request.seed
        schedule = Schedule.from_scheduler(self.backbone.scheduler, self.sampling.steps)
        self.denoiser.reset_counts()
        self._mask_cached = False  # set when the estimated mask is read from mask.cache_dir
        seconds: dict[str, float] = {}

        with self._stage("encode", seconds):
            sides = _Sides(self.denoiser, self.backbone, request, self.sampling)
            x0 = self.backbone.encode_image(request.image)  # (1, 4, h, w)
        n_guide = schedule.encode_level(self.guidance_cfg.encode_ratio or self.sampling.encode_ratio)
        # With lam: auto, whether G is made is known only after the mask: invert deep enough for it.
        guided = self._guided(self.auto_lam.low if auto else lam)
        state = EditState(request, x0, sides, schedule, schedule.encode_level(self.sampling.encode_ratio), lam, seed)

        # 1. DDIM inversion of x_0 under C_0 (Eq. 2), computed once, reused by every stage.
        if self.uses_inversion:
            with self._stage("inversion", seconds):
                state.x_traj = ddim_invert(x0, self._eps(sides.inversion, self.sampling.inversion_guidance_scale),
                                           schedule, max(state.n_final, n_guide if guided else 0),
                                           self._callback("inversion"))
                self._check_finite(state.x_traj[max(state.x_traj)], "inversion", request)

        # 2. Edit mask (Eq. 7), or the request's own.
        if self.uses_mask:
            with self._stage("mask", seconds):
                state.mask, state.soft = self._mask(request, x0, sides, schedule, seed)
        else:
            state.mask = torch.zeros_like(x0[:, :1])
        if auto:  # lam from the mask's area (AutoLam; paper A.3: difficulty follows mask size)
            state.lam = lam = self.auto_lam(float(state.mask.mean()))
            guided = self._guided(lam)

        # 3. Guidance image G: ITO with lam = 1 from a random-noise encoding (Sec. 3.2), then g_t.
        if guided:
            with self._stage("guidance", seconds):
                state.g0, state.g_traj = self._guidance(state, n_guide)

        # 4. Final decode (Eq. 6 for this method; baselines override `final_decode`).
        with self._stage("final", seconds):
            y0 = self.final_decode(state)
            self._check_finite(y0, "final decode", request)

        with self._stage("decode", seconds):
            edit_image = self.backbone.decode_latents(y0)
            guidance_image = None if state.g0 is None else self.backbone.decode_latents(state.g0)
        seconds["total"] = round(sum(seconds.values()), 4)
        record = self._record(request, lam, seed, seconds, state.mask, state.n_final, guided)
        if auto:
            record["lam_rule"] = {"rule": "auto", "mask_area": float(state.mask.mean()), **asdict(self.auto_lam)}
        cpu = lambda d: {k: v.detach().cpu() for k, v in d.items()}  # noqa: E731
        return EditResult(request.id, edit_image.cpu(), request.image.cpu(), state.mask.cpu(),
                          None if state.soft is None else state.soft.cpu(),
                          None if guidance_image is None else guidance_image.cpu(),
                          cpu(request.source_maps), cpu(request.edit_maps), record)

    def _guided(self, lam: float) -> bool:
        """Whether an edit at this lam makes a guidance image: the method uses one and its loss has weight."""
        return self.uses_guidance and lam < 1 and any(
            loss.role_weight(lam) != 0 for loss in self.losses if loss.role == "guidance")

    def final_decode(self, state: "EditState") -> torch.Tensor:
        """Decode from x_{t_E} under C_EDIT with ITO on the first t_u steps (Eq. 6); returns y_0."""
        optimizer = self._optimizer(state.lam, self.ito_cfg.inner_steps, self.ito_cfg.keep_optimizer_state)
        scale = self.sampling.guidance_scale
        start = state.x_traj[state.schedule.decode_timesteps(state.n_final)[0]]
        hook = self._ito_hook(optimizer, self.ito_cfg.update_steps, state.x_traj, state.g_traj, state.mask)
        return ddim_decode(start, self._eps(state.sides.edit, scale), state.schedule, state.n_final, hook,
                           self._callback("final"))

    def _eps(self, side: tuple[Conditioning, Conditioning], scale: float):
        cond, uncond = side
        return lambda x, t: self.denoiser(x, t, cond, uncond, scale)

    def _optimizer(self, lam: float, inner_steps: int, keep_state: bool) -> LatentOptimizer:
        return LatentOptimizer(self.losses, lam, inner_steps, self.optimizer_factory, keep_state)

    def _ito_hook(self, optimizer: LatentOptimizer, update_steps: int, x_traj: dict, g_traj: Optional[dict],
                  mask: torch.Tensor, stage: str = "final"):
        """before_step of a decode: k optimiser steps on y_t at each of the first t_u steps."""
        def before_step(i: int, t: int, y_t: torch.Tensor) -> torch.Tensor:
            if i >= update_steps:
                return y_t
            y_t = optimizer(y_t, x_t=x_traj[t], g_t=None if g_traj is None else g_traj[t], mask=mask, t=t)
            self._emit(stage, "ito", i, t, y_t, loss=optimizer.last_loss)
            return y_t
        return before_step

    def _mask(self, request: EditRequest, x0: torch.Tensor, sides: _Sides, schedule: Schedule, seed: int):
        """Binary mask (1, 1, h, w) and, when estimated, the soft map (1, 1, h, w)."""
        h, w = x0.shape[-2:]
        if request.mask is not None:
            if self.mask_cfg.given == "cover":
                mask = (F.adaptive_max_pool2d((request.mask.float() > 0.5).float(), (h, w)) > 0).float()
            else:
                mask = (F.interpolate(request.mask.float(), size=(h, w), mode="area") > 0.5).float()
            soft = None
        else:
            cfg = self.mask_cfg
            cache = key = soft = None
            if cfg.cache_dir:
                if self._mask_store is None or self._mask_store.folder != Path(cfg.cache_dir):
                    self._mask_store = MaskCache(cfg.cache_dir)  # once per run (it creates the folder)
                cache = self._mask_store
                key = mask_key(request, self.backbone, self.conditioners, self.sampling, cfg, seed, x0.dtype,
                               x0.device)
                soft = cache.get(key)
                if soft is not None:
                    soft = soft.to(x0.device, x0.dtype)
                    self._mask_cached = True
            if soft is None:
                scale = self.sampling.guidance_scale if cfg.guidance_scale is None else cfg.guidance_scale
                x_mask, sides = self._mask_inputs(request, x0, sides)
                grid = mask_schedule(schedule, self.backbone.scheduler, cfg)
                soft, _ = estimate_soft_mask(x_mask, self.denoiser, sides.source, sides.edit, grid, cfg, seed,
                                             scale, (h, w))
                if cache is not None:
                    cache.put(key, soft)
            mask = binary_mask(soft, cfg.threshold)
            soft = soft[None, None]
        area = float(mask.mean())
        if area in (0.0, 1.0):
            hint = mask_area_hint(area, request.mask is not None, self.mask_cfg.given)
            warnings.warn(f"Edit '{request.id}': {hint}", stacklevel=2)
        return mask, soft

    def _mask_inputs(self, request: EditRequest, x0: torch.Tensor, sides: _Sides):
        """x_0 and the condition sides at `mask.resolution`: the input and its maps resized, re-encoded."""
        size = mask_image_size(*request.image.shape[-2:], self.mask_cfg.resolution)
        if size == tuple(request.image.shape[-2:]):
            return x0, sides
        small = lambda image: F.interpolate(image.float(), size=size, mode="area")  # noqa: E731
        low = replace(request, image=small(request.image),
                      source_maps={k: small(v) for k, v in request.source_maps.items()},
                      edit_maps={k: small(v) for k, v in request.edit_maps.items()})
        return self.backbone.encode_image(low.image), _Sides(self.denoiser, self.backbone, low, self.sampling)

    def _guidance(self, state: "EditState", n_guide: int):
        """G: random-noise encoding, decode under C_EDIT with preservation-only ITO; then invert G."""
        cfg, schedule, x0 = self.guidance_cfg, state.schedule, state.x0
        noise = seeded_noise(tuple(x0.shape), state.seed + 1, x0.device)
        start = noise_encode(x0, noise, schedule.alpha(schedule.decode_timesteps(n_guide)[0]))
        eps_edit = self._eps(state.sides.edit, self.sampling.guidance_scale)
        optimizer = self._optimizer(1.0, cfg.inner_steps, self.ito_cfg.keep_optimizer_state)
        g0 = ddim_decode(start, eps_edit, schedule, n_guide,
                         self._ito_hook(optimizer, cfg.update_steps, state.x_traj, None, state.mask, "guidance"),
                         self._callback("guidance"))
        eps_invert = self._eps(state.sides.edit, self.sampling.inversion_guidance_scale)
        g_traj = ddim_invert(g0, eps_invert, schedule, state.n_final)
        if cfg.refine:
            # A.5: ITO with lam = 0, decoding G towards the input: G's trajectory is updated,
            # the input's is the reference of the guidance loss.
            optimizer = self._optimizer(0.0, cfg.refine_inner_steps, self.ito_cfg.keep_optimizer_state)
            start = g_traj[schedule.decode_timesteps(state.n_final)[0]]
            g0 = ddim_decode(start, eps_edit, schedule, state.n_final,
                             self._ito_hook(optimizer, cfg.refine_update_steps, g_traj, state.x_traj, state.mask,
                                            "refine"))
            g_traj = ddim_invert(g0, eps_invert, schedule, state.n_final)
        return g0, g_traj

    # --------------------------------------------------------------------------- bookkeeping
    @contextmanager
    def _stage(self, name: str, seconds: dict[str, float]):
        if self.denoiser is not None:
            self.denoiser.stage = name
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds[name] = round(time.perf_counter() - start, 4)

    def _check_finite(self, latents: torch.Tensor, where: str, request: EditRequest) -> None:
        if not torch.isfinite(latents).all():
            raise NonFiniteLatents(
                f"Edit '{request.id}': NaN/inf latents after the {where}. With 16-mixed precision try "
                f"bf16-mixed or 32-true; otherwise lower the ITO learning rate or sampling.guidance_scale.")

    def _callback(self, stage: str):
        return lambda i, t, x: self._emit(stage, "step", i, t, x)

    def _emit(self, stage: str, kind: str, i: int, t: int, latents: torch.Tensor, **extra) -> None:
        """Intermediates go to every Trainer callback that defines `on_edit_step(trainer, module, info)`."""
        trainer = self._trainer
        if trainer is None:
            return
        info = {"id": self._current_id, "stage": stage, "kind": kind, "i": i, "t": t, "latents": latents, **extra}
        for callback in trainer.callbacks:
            hook = getattr(callback, "on_edit_step", None)
            if hook is not None:
                hook(trainer, self, info)

    def _record(self, request: EditRequest, lam: float, seed: int, seconds: dict, mask: torch.Tensor,
                n_final: int, guided: bool) -> dict[str, Any]:
        counts = self.denoiser
        return {
            "id": request.id, "source_prompt": request.source_prompt, "edit_prompt": request.edit_prompt,
            "modalities": sorted(request.edit_maps), "lam": lam, "seed": seed, "guidance_image": guided,
            "encode_steps": n_final, "mask_area": round(float(mask.mean()), 4),
            "mask_source": ("given" if request.mask is not None else "cached" if self._mask_cached
                            else "estimated" if self.uses_mask else "none"),
            "method": f"{type(self).__module__}.{type(self).__name__}",
            "height": int(request.image.shape[-2]), "width": int(request.image.shape[-1]),
            "seconds": seconds, "unet_evaluations": dict(counts.samples), "unet_calls": dict(counts.calls),
            "settings": self.settings_digest(), "inputs": request_digest(request),
            **self._prompts_used(request),
            **({"extra": request.extra} if request.extra else {}),
        }

    def _prompts_used(self, request: EditRequest) -> dict[str, Any]:
        """{'prompts_used': {field: the text the encoder saw}} for prompts cut at the tokenizer's limit."""
        used = getattr(self.backbone, "prompt_used", None)
        cut = {} if used is None else {k: used(p) for k, p in (("source_prompt", request.source_prompt),
                                                                 ("edit_prompt", request.edit_prompt))}
        cut = {k: v for k, v in cut.items() if v is not None}
        return {"prompts_used": cut} if cut else {}

    def _optimizer_repr(self) -> str:
        """The ITO optimiser as torch prints it (class and every hyperparameter), built on a stand-in tensor."""
        probe = [torch.zeros(1, requires_grad=True)]
        return repr((self.optimizer_factory or default_optimizer)(probe))

    def resolved_parameters(self) -> dict[str, Any]:
        """Everything that decides an edit, for summary.json."""
        return {
            "method": f"{type(self).__module__}.{type(self).__name__}",
            "stages": {"inversion": self.uses_inversion, "mask": self.uses_mask, "guidance": self.uses_guidance,
                       "ito": self.uses_ito},
            "lam": self.lam, "auto_lam": asdict(self.auto_lam) if self.lam == "auto" else None,
            "seed": self.seed, "backbone": self.backbone.pretrained,
            "memory": {k: getattr(self.backbone, k, None)
                       for k in ("attention_slicing", "vae_tiling", "vae_tile_size")},
            "sampling": asdict(self.sampling), "mask": asdict(self.mask_cfg), "ito": asdict(self.ito_cfg),
            "guidance": asdict(self.guidance_cfg), "conditioners": [plain_fields(c) for c in self.conditioners],
            "losses": [plain_fields(loss) for loss in self.losses],
            "optimizer": self._optimizer_repr(),
            "precision": str(self.trainer.precision) if self._trainer else None,
        }

    # ------------------------------------------------------------------------ Lightning steps
    def _finished(self, request: EditRequest) -> Optional[dict[str, Any]]:
        """The record of an edit already written by an earlier run (result.json is written last)."""
        path = self.output_dir / request.id / "result.json"
        if self.overwrite or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if not all((path.parent / name).is_file() for name in ("input.png", "edit.png")):
            return None  # images removed since: edit again
        if "settings" not in record or "inputs" not in record:
            raise EditError(f"{path.parent} holds an edit whose result.json does not record the settings and inputs "
                            "it was made with (written by an earlier version), so it cannot be resumed safely; give "
                            "this run its own model.output_dir, or set model.overwrite: true to edit again")
        if record["inputs"] != request_digest(request):
            raise EditError(f"{path.parent} holds an edit of other inputs (image, condition maps or prompts) under "
                            f"the id '{request.id}'; give this run its own model.output_dir, or set "
                            "model.overwrite: true to edit them again")
        if record["settings"] != self.settings_digest():
            raise EditError(f"{path.parent} holds an edit made with other settings than this run's (model weights, "
                            "method, lam, sampling, mask, ITO, losses, seed or precision), which a resumed run would "
                            "count as its own; give this run its own model.output_dir, or set model.overwrite: true "
                            "to edit again")
        return record

    def _run(self, request: Optional[EditRequest]) -> dict[str, Any]:
        if request is None:  # padding of a shard: this process has no edit at this step
            return {}
        done = self._finished(request)
        if done is not None:
            if self.metrics:  # the run's scores cover resumed edits too
                scores: dict[str, float] = {}
                result = read_edit(self.output_dir / request.id, done)
                for metric in self.metrics:
                    scores.update(metric.resume(result, request, done.get("metrics", {})))
                if scores:
                    done["metrics"] = scores
            self.records.append(dict(done, resumed=True))
            return {}
        for stale in (self.output_dir / request.id).glob(".*"):  # temporaries of an interrupted write
            stale.unlink(missing_ok=True)
        try:
            result = self.edit(request)
        except torch.cuda.OutOfMemoryError as err:
            raise EditError(f"Edit '{request.id}': {OOM_HINT} ({err})") from None
        except NonFiniteLatents as err:
            warnings.warn(str(err) + " Skipping this edit; the others continue.", stacklevel=2)
            save_json({"id": request.id, "error": str(err)}, self.output_dir / request.id / "error.json")
            self.records.append({"id": request.id, "error": str(err)})
            return {}
        scores: dict[str, float] = {}
        for metric in self.metrics:
            scores.update(metric.update(result, request))
        if scores:
            result.record["metrics"] = scores
        if scores and not self.trainer.predicting:
            self.log_dict({k: float(v) for k, v in scores.items()}, batch_size=1, on_step=True, on_epoch=False)
        write_edit(result, self.output_dir / request.id)
        self.records.append(result.record)
        if not self.trainer.predicting:  # Lightning does not log during predict
            self.log_dict({"edit/seconds": result.record["seconds"]["total"], "mask/area": result.record["mask_area"],
                       "edit/unet_evaluations": float(sum(result.record["unet_evaluations"].values()))},
                      batch_size=1, on_step=True, on_epoch=False)
        return {"result": result}

    def training_step(self, batch: EditRequest, batch_idx: int):
        return self._run(batch)

    def test_step(self, batch: EditRequest, batch_idx: int):
        return self._run(batch)

    def predict_step(self, batch: EditRequest, batch_idx: int):
        return self._run(batch).get("result")

    def _summary(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        ok = [r for r in records if "error" not in r]
        totals = {key: round(sum(r["seconds"].get(key, 0.0) for r in ok), 3)
                  for key in ("encode", "inversion", "mask", "guidance", "final", "decode", "total")}
        return {"parameters": self.resolved_parameters(), "edits": records,
                "totals": {"edits": len(ok), "failed": len(records) - len(ok),
                           "resumed": sum(1 for r in records if r.get("resumed")), "seconds": totals,
                           "processes": self.trainer.world_size}}

    def _write_summary(self) -> None:
        """summary.json (and the report) for the run; with several processes, rank 0 merges theirs."""
        from framework.report import write_report

        world = self.trainer.world_size
        if world > 1:
            save_json({"edits": self.records}, self.output_dir / f"summary.rank{self.global_rank}.json")
            self.trainer.strategy.barrier("edit-summaries")
            if self.global_rank != 0:
                return
            records = []
            for rank in range(world):
                part = self.output_dir / f"summary.rank{rank}.json"
                records += json.loads(part.read_text())["edits"]
                part.unlink()
            records.sort(key=lambda r: r["id"])
        else:
            records = self.records
        if records:
            summary = self._summary(records)
            if self.metrics and world == 1:
                summary["metrics"] = {k: v for metric in self.metrics for k, v in metric.compute().items()}
                write_results_table(self.output_dir, records, summary["metrics"])
                if not self.trainer.predicting:  # the run's scores also reach the loggers, as run/<key>
                    for logger in self.loggers:
                        logger.log_metrics({f"run/{k}": float(v) for k, v in summary["metrics"].items()})
            save_json(summary, self.output_dir / "summary.json")
            write_report(self.output_dir, records)

    def on_train_end(self) -> None:
        self._write_summary()

    def on_test_end(self) -> None:
        self._write_summary()

    def on_predict_end(self) -> None:
        self._write_summary()
