"""EditModule: the Lightning shell around the edit engine; one training step = one whole edit.

The procedure itself (paper Fig. 1: encode, invert, mask, guidance image, final decode) is
framework/engine.py; its stages are plugins (framework/inversion.py, framework/stages.py) chosen
by `class_path` in the slots below. This module feeds requests to the engine, skips edits an
earlier run finished, scores and writes each edit, and writes the run's summary (framework/records.py).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, replace
from typing import Any, Callable, Iterable, Literal, Optional, Union

import lightning.pytorch as pl
import torch

from conditioners.base import Conditioner
from conditioners.text import TextConditioner
from framework.config import (
    AutoLam, GuidanceConfig, ITOConfig, MaskConfig, SamplingConfig, check_lam_setting, check_steps,
)
from framework.data import EditRequest
from framework.engine import EditEngine, EditState, NonFiniteLatents, Sides
from framework.errors import ConfigError, EditError
from framework.inversion import DDIMInversion, Inversion
from framework.ito import OptimizerFactory, default_optimizer
from framework.mask_cache import plain_fields, request_digest, settings_digest
from framework.metrics import EditMetric
from framework.models import StableDiffusion
from framework.outputs import EditResult, read_edit, save_json, write_edit
from framework.records import finished_record, write_summary, writable_folder
from framework.stages import (
    Decoder, NoMask, GuidanceGenerator, ITODecode, MaskEstimator, NoiseDifferenceMask, NoiseEncodedGuidance,
)
from losses.base import EditLoss
from losses.guidance import CosineGuidance
from losses.preservation import MaskedMSEPreservation

__all__ = ["EditModule", "EditState", "NonFiniteLatents", "Sides"]


OOM_HINT = ("Out of GPU memory. Lower it with: --model.unet_chunk_size 8 (smaller UNet batches in the mask), "
            "--model.backbone.init_args.vae_tiling true (large images), --model.mask.seeds 2, "
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
        lam: Union[float, Literal["auto"]] = 1.0,
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
        inversion: Optional[Inversion] = None,
        mask_estimator: Optional[MaskEstimator] = None,
        guidance_generator: Optional[GuidanceGenerator] = None,
        decoder: Optional[Decoder] = None,
    ):
        """
        Args:
            backbone: The Stable Diffusion 1.x model (None: SD 1.5 from the Hub).
            conditioners: Condition plugins; a text conditioner is put first when none is listed.
            losses: ITO loss plugins (None: masked-MSE preservation + cosine guidance, the paper's losses, scaled
                so that lam weighs them: mean MSE, per-pixel cosine with a norm term; experiments/paper_literal.yaml
                prints them as Eqs. 4-5 do).
            optimizer: Factory of the ITO optimiser over [y_t] (None: Adam, lr 0.1, the paper's).
            lam: lambda, the dial between keeping and changing (Eq. 6, Fig. 5): the preservation loss (and the
                blend after t_u) gets lam, the guidance loss 1 - lam. 1 (default; the paper: 0.6) keeps the
                background most and skips the guidance image, which on the toy world gave the lowest background and
                target L1 (docs/background.md); lower values follow the guidance image G more, background included;
                0 lands on G (docs/lam.md; experiments/paper_literal.yaml, where lam acts as a switch). 'auto': set
                per edit from its mask area and whether its prompt changes, by `auto_lam` (recorded in result.json
                as lam and lam_rule).
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
                slope * mask_area + prompt_change * [prompt changes], low, high); None: AutoLam's defaults
                (fitted on toy 'val' edits, docs/lam.md).
            inversion: Inversion plugin (framework.inversion: DDIMInversion, the default and the paper's;
                NullTextInversion, NegativePromptInversion, DirectInversion; your own).
            mask_estimator: Mask plugin (framework.stages: NoiseDifferenceMask, Eq. 7 by `mask`, the default;
                GivenMask; NoMask; your own).
            guidance_generator: Guidance-image plugin (framework.stages.NoiseEncodedGuidance by `guidance`,
                the default; your own).
            decoder: Final decode (framework.stages: ITODecode, Eq. 6, the default; MaskBlendDecode, DiffEdit;
                NoiseEncodedDecode, SDEdit; framework.prompt_to_prompt.PromptToPrompt; your own).
        """
        super().__init__()
        self.lam = check_lam_setting(lam)
        # Copies: the defaults in the signature are instances (so --help and --print_config list their fields),
        # and a module that changes its settings must not change the next module's defaults.
        self.auto_lam = replace(auto_lam) if auto_lam is not None else AutoLam()
        self.sampling = replace(sampling) if sampling is not None else SamplingConfig()
        self.mask_cfg = replace(mask) if mask is not None else MaskConfig()
        self.ito_cfg = replace(ito) if ito is not None else ITOConfig()
        self.guidance_cfg = replace(guidance) if guidance is not None else GuidanceConfig()
        self.inversion = inversion or DDIMInversion()
        self.mask_estimator = mask_estimator or NoiseDifferenceMask()
        self.guidance_generator = guidance_generator or NoiseEncodedGuidance()
        self.decoder = decoder or ITODecode()
        check_steps(self.sampling, self.ito_cfg if self.decoder.uses_ito else None,
                    self.guidance_cfg if self.decoder.uses_guidance else None)
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
        self.output_dir = writable_folder(output_dir)
        self.overwrite = overwrite
        self.metrics = torch.nn.ModuleList(metrics or [])
        self.unet_chunk_size = unet_chunk_size
        self.automatic_optimization = False
        self.engine: Optional[EditEngine] = None
        self.records: list[dict[str, Any]] = []

    # ----------------------------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        """Load the weights once configuration and data have been checked."""
        self.load_weights()
        self.backbone.configure_memory(*self.conditioners)  # attention slicing reaches the ControlNets too
        self.engine = EditEngine(
            self.backbone, list(self.conditioners), list(self.losses), inversion=self.inversion,
            mask_estimator=self.mask_estimator, guidance_generator=self.guidance_generator, decoder=self.decoder,
            optimizer=self.optimizer_factory, sampling=self.sampling, mask=self.mask_cfg, ito=self.ito_cfg,
            guidance=self.guidance_cfg, unet_chunk_size=self.unet_chunk_size, emit=self._emit)
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
            self._settings = settings_digest(self.deciding_parameters(), self.backbone, *self.conditioners)
        return self._settings

    def deciding_parameters(self) -> dict[str, Any]:
        """`resolved_parameters` less what cannot change this method's edits: the memory options, and the
        settings of stages its decoder does not run (a DiffEdit run resumes after ITO's defaults change)."""
        unused = {"memory"}
        if not self.decoder.uses_ito:
            unused |= {"ito", "losses", "optimizer", "lam", "auto_lam"}
        if not self.decoder.uses_guidance:
            unused |= {"guidance"}
        if isinstance(self.mask_estimator, NoMask):
            unused |= {"mask"}
        return {k: v for k, v in self.resolved_parameters().items() if k not in unused}

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
    @property
    def denoiser(self):
        """The engine's noise predictor (counts UNet evaluations per stage); None before `setup`."""
        return None if self.engine is None else self.engine.denoiser

    def edit(self, request: EditRequest) -> EditResult:
        """The whole procedure on one request (paper Fig. 1), by the engine; the record names method and settings."""
        setting = self.lam if request.lam is None else check_lam_setting(request.lam, f"request '{request.id}' lam")
        seed = self.seed if request.seed is None else request.seed
        engine = self.engine
        # Settings and slots as they are now (a sweep or a test may have replaced them since `setup`).
        engine.sampling, engine.mask_cfg, engine.ito_cfg = self.sampling, self.mask_cfg, self.ito_cfg
        engine.guidance_cfg, engine.optimizer_factory = self.guidance_cfg, self.optimizer_factory
        engine.losses = list(self.losses)
        engine.inversion, engine.mask_estimator = self.inversion, self.mask_estimator
        engine.guidance_generator, engine.decoder = self.guidance_generator, self.decoder
        result = engine.edit(request, setting, seed, self.auto_lam)
        result.record.update({"method": self.method_name(), "settings": self.settings_digest(),
                              "inputs": request_digest(request), **self._prompts_used(request),
                              **({"extra": request.extra} if request.extra else {})})
        return result

    def _prompts_used(self, request: EditRequest) -> dict[str, Any]:
        """{'prompts_used': {field: the text the encoder saw}} for prompts cut at the tokenizer's limit."""
        used = getattr(self.backbone, "prompt_used", None)
        cut = {} if used is None else {k: used(p) for k, p in (("source_prompt", request.source_prompt),
                                                                 ("edit_prompt", request.edit_prompt))}
        cut = {k: v for k, v in cut.items() if v is not None}
        return {"prompts_used": cut} if cut else {}

    def method_name(self) -> str:
        return f"{type(self).__module__}.{type(self).__name__}"

    def _emit(self, stage: str, kind: str, i: int, t: int, latents: torch.Tensor, **extra) -> None:
        """Intermediates go to every Trainer callback that defines `on_edit_step(trainer, module, info)`."""
        trainer = self._trainer
        if trainer is None:
            return
        info = {"id": self.engine.request_id, "stage": stage, "kind": kind, "i": i, "t": t, "latents": latents,
                **extra}
        for callback in trainer.callbacks:
            hook = getattr(callback, "on_edit_step", None)
            if hook is not None:
                hook(trainer, self, info)

    def _optimizer_repr(self) -> str:
        """The ITO optimiser as torch prints it (class and every hyperparameter), built on a stand-in tensor."""
        probe = [torch.zeros(1, requires_grad=True)]
        return repr((self.optimizer_factory or default_optimizer)(probe))

    def resolved_parameters(self) -> dict[str, Any]:
        """Everything that decides an edit, for summary.json."""
        return {
            "method": self.method_name(),
            "stages": {"inversion": self.decoder.uses_inversion, "mask": not isinstance(self.mask_estimator, NoMask),
                       "guidance": self.decoder.uses_guidance, "ito": self.decoder.uses_ito,
                       **{slot: plain_fields(getattr(self, slot)) for slot in
                          ("inversion", "mask_estimator", "guidance_generator", "decoder")}},
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
        return finished_record(self.output_dir, request, self.settings_digest(), self.overwrite)

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

    def _write_summary(self) -> None:
        write_summary(self)

    def on_train_end(self) -> None:
        self._write_summary()

    def on_test_end(self) -> None:
        self._write_summary()

    def on_predict_end(self) -> None:
        self._write_summary()
