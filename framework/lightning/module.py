"""EditModule: the Lightning shell around the edit pipeline; one training step = one whole edit.

The procedure itself (paper Fig. 1: encode, invert, mask, guidance image, final decode) is
framework/core/procedure.py, run by framework.pipeline.EditPipeline, which holds the models, the settings and
the stage plugins (framework/stages/inversions.py, framework/stages/decoders.py) chosen by `class_path` in the slots
below. This module builds that pipeline from its arguments, feeds it requests, skips edits an earlier
run finished, scores and writes each edit, and writes the run's summary (framework/io/records.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Optional, Union

import lightning.pytorch as pl
import torch

from conditioners.base import Conditioner
from framework.core.backbone import Backbone
from framework.core.errors import EditError, note, warn
from framework.core.mask_cache import request_digest
from framework.core.metric import EditMetric
from framework.core.procedure import EditState, NonFiniteLatents, Sides
from framework.core.settings import AutoLam, GuidanceConfig, ITOConfig, MaskConfig, SamplingConfig
from framework.io.manifests import EditRequest
from framework.io.outputs import EditResult, read_edit, save_json, write_edit
from framework.io.records import finished_record, writable_folder, write_failure, write_summary
from framework.pipeline import EditPipeline
from framework.stages import Decoder, GuidanceGenerator, MaskEstimator
from framework.stages.inversions import Inversion
from losses.base import EditLoss

__all__ = ["EditModule", "EditState", "NonFiniteLatents", "Sides"]


OOM_HINT = ("Out of GPU memory. Lower it with: --model.unet_chunk_size 8 (smaller UNet batches in the mask), "
            "--model.backbone.init_args.vae_tiling true (large images), --model.mask.seeds 2, "
            "--data.resolution 512 (or less), --trainer.precision 16-mixed, or "
            "--model.mask.compare_at first (one step instead of a decode).")

# The settings and slots live on the pipeline; the module's names for them (the CLI's parameter names, and
# `mask_cfg` ... of older code) read and write the pipeline's.
ON_PIPELINE = {
    "backbone": "backbone", "conditioners": "conditioners", "losses": "losses", "optimizer_factory": "optimizer",
    "lam": "lam", "seed": "seed", "auto_lam": "auto_lam", "sampling": "sampling", "mask_cfg": "mask",
    "ito_cfg": "ito", "guidance_cfg": "guidance", "unet_chunk_size": "unet_chunk_size", "inversion": "inversion",
    "mask_estimator": "mask_estimator", "guidance_generator": "guidance_generator", "decoder": "decoder",
    "engine": "engine",
}


class EditModule(pl.LightningModule):
    """Optimisation-based multi-modal semantic image editing of every request of a manifest.

    `fit`, `test` and `predict` all run the edit; `fit` is the paper's procedure as a
    "training" run whose parameters are the latents of each edit, optimised per sample.
    """

    def __init__(
        self,
        backbone: Optional[Backbone] = None,
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
            backbone: The model: `framework.StableDiffusion` with `pretrained` an SD 1.x or SDXL checkpoint (its
                model_index.json picks the family), or any Backbone (None: SD 1.5 from the Hub).
            conditioners: Condition plugins; a text conditioner is put first when none is listed.
            losses: ITO loss plugins (None: masked-MSE preservation + cosine guidance, scaled so lam weighs them).
            optimizer: Factory of the ITO optimiser over [y_t] (None: Adam, lr 0.1, the paper's).
            lam: lambda of Eq. 6 in [0, 1]: 1 keeps the input most (no guidance image), 0 lands on G; 'auto': per edit.
            sampling: DDIM steps, encode ratio, CFG scales, inversion prompt.
            mask: The default mask estimator's settings (NoiseDifferenceMask's init_args: Eq. 7).
            ito: The default decoder's settings (ITODecode's init_args: t_u, k, blend ...), and the default G's
                ITO objective.
            guidance: The default guidance stage's settings (NoiseEncodedGuidance's init_args; refinement, A.5).
            seed: Seed of every random draw of an edit (a request's own seed wins).
            output_dir: Folder that receives one sub-folder per edit and summary.json.
            unet_chunk_size: Most samples per UNet call (bounds memory of the batched mask); None: no cap.
            overwrite: Redo edits already finished in output_dir (default: skip them, so a rerun resumes).
            metrics: Scores of each edit and of the run (framework.evaluation.metrics), written to results.md/.csv.
            auto_lam: The rule of `lam: auto`: lam from the mask area (fit it: python -m framework fit-auto-lam).
            inversion: Inversion plugin (None: DDIMInversion, the paper's; framework.stages.inversions has others).
            mask_estimator: Mask plugin (None: NoiseDifferenceMask with `mask`; GivenMask, NoMask, your own), its
                settings its init_args.
            guidance_generator: Guidance-image plugin (None: NoiseEncodedGuidance with `guidance`).
            decoder: Final decode (None: ITODecode, Eq. 6, with `ito`; MaskBlendDecode, NoiseEncodedDecode,
                PromptToPrompt).
        """
        super().__init__()
        self.pipeline = EditPipeline(backbone, conditioners, losses, optimizer, lam, sampling, mask, ito, guidance,
                                     seed, unet_chunk_size, auto_lam, inversion, mask_estimator, guidance_generator,
                                     decoder)
        self.output_dir = Path(output_dir).expanduser()  # checked writable by `load_weights`, before any weights
        self.overwrite = overwrite
        self.metrics = torch.nn.ModuleList(metrics or [])
        self.automatic_optimization = False
        self.records: list[dict[str, Any]] = []

    def __getattr__(self, name: str):
        if name in ON_PIPELINE and "pipeline" in self.__dict__.get("_modules", {}):
            return getattr(self._modules["pipeline"], ON_PIPELINE[name])
        return super().__getattr__(name)

    def __setattr__(self, name: str, value) -> None:
        if name in ON_PIPELINE and "pipeline" in self.__dict__.get("_modules", {}):
            setattr(self._modules["pipeline"], ON_PIPELINE[name], value)
        else:
            super().__setattr__(name, value)

    # ----------------------------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        """Load the weights once configuration and data have been checked."""
        self.load_weights()
        self.records = []
        self._settings: Optional[str] = None

    def load_weights(self) -> None:
        """Check output_dir, then read the backbone's and the conditioners' weights (once; each conditioner
        checks that it fits the UNet first). The CLI calls this before the Trainer starts, so a model that
        cannot load leaves no run behind (no W&B run, no summary)."""
        self.output_dir = writable_folder(self.output_dir)
        self.pipeline.load()

    def settings_digest(self) -> str:
        """A digest of everything besides the request that decides an edit: `resolved_parameters` less what
        cannot change this method's edits (EditPipeline.deciding_settings), and the weights of the backbone and
        conditioners. Each result.json stores it; a later run into the same output_dir resumes only edits made
        with the same one."""
        if getattr(self, "_settings", None) is None:
            # model.seed changes no edit when every request of the run carries its own seed: then it is left out,
            # so `--model.seed` there does not make a rerun into the same folder "other settings". (Each edit's own
            # seed is in its record and checked on resume either way: `finished_record`.)
            self._settings = self.pipeline.settings_digest({"method": self.method_name(),
                                                            "precision": self._precision()},
                                                           seeded_requests=self._requests_seed_themselves())
        return self._settings

    def weights_digest(self) -> str:
        """A digest of the weights alone (part of `settings_digest`): a resumed run tells a checkpoint changed at
        the same path from other settings by it."""
        return self.pipeline.weights_digest()

    def _requests_seed_themselves(self) -> bool:
        """Whether every request of the run's data carries its own seed (False when the data is not known)."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        specs = [s for s in getattr(datamodule, "specs", None) or [] if s is not None]
        return bool(specs) and all(getattr(s, "seed", None) is not None for s in specs)

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
        """The whole procedure on one request (paper Fig. 1), by the pipeline; the record names method and settings."""
        return self._recorded(request, self.pipeline.edit(request, self._emit))

    def edit_batch(self, requests: list[EditRequest]) -> list[Union[EditResult, Exception]]:
        """Several requests edited side by side in one set of UNet calls (EditPipeline.edit_batch; data.batch_size)."""
        results = self.pipeline.edit_batch(requests, self._emit)
        return [r if isinstance(r, Exception) else self._recorded(q, r) for q, r in zip(requests, results)]

    def _recorded(self, request: EditRequest, result: EditResult) -> EditResult:
        result.record.update({"method": self.method_name(), "settings": self.settings_digest(),
                              "weights": self.weights_digest(), "inputs": request_digest(request),
                              **({"extra": request.extra} if request.extra else {})})
        return result

    def method_name(self) -> str:
        return f"{type(self).__module__}.{type(self).__name__}"

    def _emit(self, pipeline: EditPipeline, i: int, t: int, info: dict[str, Any]) -> None:
        """Intermediates go to every Trainer callback that defines `on_edit_step(trainer, module, info)`."""
        trainer = self._trainer
        if trainer is None:
            return
        for callback in trainer.callbacks:
            hook = getattr(callback, "on_edit_step", None)
            if hook is not None:
                hook(trainer, self, info)

    def resolved_parameters(self) -> dict[str, Any]:
        """Everything that decides an edit, for summary.json: the method, the pipeline's settings, the precision."""
        return {"method": self.method_name(), **self.pipeline.resolved_settings(), "precision": self._precision()}

    def _precision(self) -> Optional[str]:
        return str(self.trainer.precision) if self._trainer else None

    # ------------------------------------------------------------------------ Lightning steps
    def _finished(self, request: EditRequest) -> Optional[dict[str, Any]]:
        seed = self.seed if request.seed is None else request.seed
        return finished_record(self.output_dir, request, self.settings_digest(), self.overwrite, seed=seed,
                               weights=self.weights_digest())

    def _run(self, request: Union[None, EditRequest, list[Optional[EditRequest]]]) -> dict[str, Any]:
        if isinstance(request, list):  # data.batch_size > 1: the batch's edits side by side
            todo = [r for r in request if r is not None and not self._resumed(r)]
            results = self.edit_batch(todo) if todo else []
            outs = [self._completed(r, result) for r, result in zip(todo, results)]
            return {"results": [o["result"] for o in outs if "result" in o]}
        if request is None or self._resumed(request):  # None: padding of a shard, no edit at this step
            return {}
        return self._completed(request, None)

    def _resumed(self, request: EditRequest) -> bool:
        """An edit finished earlier with these settings and inputs: its record (and scores) kept, True."""
        done = self._finished(request)
        if done is not None:
            if self.metrics:  # the run's scores cover resumed edits too
                scores: dict[str, float] = {}
                result = read_edit(self.output_dir / request.id, done)
                for metric in self.metrics:
                    scores.update(metric.resume(result, request, done.get("metrics", {})))
                if scores:
                    done["metrics"] = scores
            if not any(r.get("resumed") for r in self.records):  # said once per run, at its first resumed edit
                note(f"resuming: edits finished earlier in {self.output_dir} with this run's settings and inputs "
                     f"(first: '{request.id}') are kept, not edited again; --model.overwrite true edits them again.")
            self.records.append(dict(done, resumed=True))
            return True
        return False

    def _completed(self, request: EditRequest, result: Union[None, EditResult, Exception]) -> dict[str, Any]:
        """Edit `request` (None) or take its batched result or error; score, write and record it."""
        for stale in (self.output_dir / request.id).glob(".*"):  # temporaries of an interrupted write
            stale.unlink(missing_ok=True)
        try:
            if result is None:
                result = self.edit(request)
            elif isinstance(result, Exception):
                raise result
        except torch.cuda.OutOfMemoryError as err:
            raise EditError(f"Edit '{request.id}': {OOM_HINT} ({err})") from None
        except NonFiniteLatents as err:
            warn(str(err) + " Skipping this edit; the others continue.")
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
        try:
            write_edit(result, self.output_dir / request.id)
        except OSError as err:
            raise EditError(write_failure(err, f"Edit '{request.id}': its files could not be written to "
                                               f"{self.output_dir / request.id}")) from err
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
        out = self._run(batch)
        return out.get("results") if isinstance(batch, list) else out.get("result")

    def _write_summary(self) -> None:
        write_summary(self)

    def on_train_end(self) -> None:
        self._write_summary()

    def on_test_end(self) -> None:
        self._write_summary()

    def on_predict_end(self) -> None:
        self._write_summary()
