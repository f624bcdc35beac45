"""EditPipeline: the Python API of the method, in the shape of a diffusers pipeline.

    from framework import EditPipeline
    pipe = EditPipeline.from_config("experiments/quickstart.yaml")         # any experiment YAML, or
    pipe = EditPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5", conditioners=["pose"],
                                        torch_dtype=torch.float16).to("cuda")
    out = pipe(image, source_prompt="a man", edit_prompt="a man", source_maps={"pose": p0},
               edit_maps={"pose": p1}, lam=0.6, seed=0)
    out.image.save("edit.png")

The pipeline holds the models, the settings and the stage plugins (the model section of an experiment
YAML: every key there is a keyword of `from_pretrained` / `from_config`) and runs the procedure of
framework/core/procedure.py on one request per call. The Lightning module (framework.lightning.module.EditModule) is a
shell over it, so `pipe(...)` and `python -m framework fit` give the same pixels for the same config,
request and seed. Inputs are sized as the data module sizes files (framework/io/manifests.py).
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
import yaml
from jsonargparse import ArgumentParser
from jsonargparse.typing import import_object
from PIL import Image, ImageOps
from torch import nn

import conditioners as _conditioners  # noqa: F401 - short class names in configs resolve once imported
import losses as _losses  # noqa: F401
from conditioners.base import Conditioner
from conditioners.controlnet import ControlNetConditioner
from conditioners.text import TextConditioner
from framework.backbones.loading import BUILTIN_PREFIX, SDXL, backbone_class
from framework.backbones.sd import StableDiffusion
from framework.core.backbone import Backbone
from framework.core.errors import ConfigError, ManifestError
from framework.core.ito import OptimizerFactory, default_optimizer
from framework.core.mask_cache import plain_fields, settings_digest
from framework.core.procedure import EditEngine
from framework.core.settings import (
    AutoLam,
    GuidanceConfig,
    ITOConfig,
    ITOObjective,
    MaskConfig,
    SamplingConfig,
    check_lam_setting,
    fields_of,
)
from framework.io.manifests import EditRequest, align_image, as_mode, check_aspect, fit_image, target_size
from framework.io.outputs import EditResult, to_pil, upsample_mask
from framework.stages import (
    SETTINGS_GROUPS,
    SLOTS,
    Decoder,
    GuidanceGenerator,
    MaskEstimator,
    NoMask,
    method_slots,
    settings_group,
)
from framework.stages.inversions import Inversion
from losses.base import EditLoss
from losses.guidance import CosineGuidance
from losses.preservation import MaskedMSEPreservation

ImageInput = Union[Image.Image, torch.Tensor]
StepCallback = Callable[["EditPipeline", int, int, dict], Any]

# SD 1.5 ControlNets for short conditioner names (`conditioners=["pose"]`): ControlNet 1.1, as the YAMLs use.
SD15_CONTROLNETS = {
    "pose": "lllyasviel/control_v11p_sd15_openpose", "scribble": "lllyasviel/control_v11p_sd15_scribble",
    "lines": "lllyasviel/control_v11p_sd15_mlsd", "canny": "lllyasviel/control_v11p_sd15_canny",
    "depth": "lllyasviel/control_v11f1p_sd15_depth", "softedge": "lllyasviel/control_v11p_sd15_softedge",
}
# SDXL ControlNets for the same names on an SDXL backbone (xinsir's ship safetensors in diffusers' layout).
SDXL_CONTROLNETS = {
    "pose": "xinsir/controlnet-openpose-sdxl-1.0", "scribble": "xinsir/controlnet-scribble-sdxl-1.0",
    "canny": "xinsir/controlnet-canny-sdxl-1.0", "depth": "xinsir/controlnet-depth-sdxl-1.0",
}
# SD3 ControlNets: InstantX's pose and canny for SD3 medium (stabilityai/stable-diffusion-3-medium-diffusers).
SD3_CONTROLNETS = {"pose": "InstantX/SD3-Controlnet-Pose", "canny": "InstantX/SD3-Controlnet-Canny"}
# FLUX.1-dev: Shakker Labs' union ControlNet Pro 2.0 (no modes) for pose, canny, depth and soft edges.
FLUX_CONTROLNETS = dict.fromkeys(("pose", "canny", "depth", "softedge", "scribble"),
                                 "Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro-2.0")
CONTROLNETS = {"SD 1.x": SD15_CONTROLNETS, SDXL: SDXL_CONTROLNETS, "SD3": SD3_CONTROLNETS, "FLUX": FLUX_CONTROLNETS}
RUN_SETTINGS = ("output_dir", "overwrite", "metrics")
"""Keys of a YAML's model section that belong to a run (files, scores), not to the edit."""


@dataclass
class EditPipelineOutput:
    """One edit: PIL images of the input's working size, and what the procedure recorded."""

    image: Image.Image  # the edit
    mask: Image.Image  # the edit region m (white = edit), nearest-upsampled from the latent grid
    guidance: Optional[Image.Image]  # the guidance image G (None when lam = 1 or the method makes none)
    lam: float  # the lam the edit ran with (set from the mask with lam='auto')
    seconds: float  # the whole procedure
    unet_evaluations: int  # UNet sample-evaluations, every stage
    result: EditResult  # tensors (1, 3, H, W) in [0, 1] and the full record (stages' seconds, counts, mask area)


def controlnet_for(modality: str, pretrained: str, family: str = "SD 1.x") -> str:
    """The ControlNet checkpoint of a short conditioner name: the same built-in model, else the family's table
    (SD15_CONTROLNETS, SDXL_CONTROLNETS, SD3_CONTROLNETS)."""
    if pretrained.startswith(BUILTIN_PREFIX):
        return pretrained
    known = CONTROLNETS.get(family, {})
    if modality not in known:
        raise ConfigError(f"no default ControlNet for modality '{modality}' on {family} (known: {', '.join(known)}); "
                          f"pass ControlNetConditioner('{modality}', pretrained=<hub id or folder>) instead.")
    return known[modality]


def _merge(current: Any, change: Any) -> Any:
    """A setting override: a dict changes some fields of a dataclass setting (`mask={"threshold": 0.3}`)."""
    return replace(current, **change) if isinstance(change, dict) and is_dataclass(current) else change


class EditPipeline(nn.Module):
    """Models, settings and stage plugins of the method; `pipe(image, ...)` edits one image.

    The parameters are the model settings of an experiment YAML (framework.lightning.module.EditModule documents each;
    `--model.help EditModule` prints them). Weights load on first use (`load`), or at once through
    `from_pretrained` / `from_config`.
    """

    def __init__(
        self,
        backbone: Optional[Backbone] = None,
        conditioners: Optional[Sequence[Conditioner]] = None,
        losses: Optional[Sequence[EditLoss]] = None,
        optimizer: Optional[OptimizerFactory] = None,
        lam: Union[float, str] = 1.0,
        sampling: Optional[SamplingConfig] = None,
        mask: Optional[MaskConfig] = None,
        ito: Optional[ITOConfig] = None,
        guidance: Optional[GuidanceConfig] = None,
        seed: int = 0,
        unet_chunk_size: Optional[int] = None,
        auto_lam: Optional[AutoLam] = None,
        inversion: Optional[Inversion] = None,
        mask_estimator: Optional[MaskEstimator] = None,
        guidance_generator: Optional[GuidanceGenerator] = None,
        decoder: Optional[Decoder] = None,
        resolution: Optional[int] = None,
    ):
        """
        Args:
            backbone: The model (a Backbone: StableDiffusion picks SD 1.x or SDXL from the checkpoint; None: SD 1.5
                from the Hub).
            conditioners: Condition plugins; a text conditioner is put first when none is listed.
            losses: ITO loss objects (None: masked-MSE preservation + cosine guidance).
            optimizer: Factory of the ITO optimiser over [y_t] (None: Adam, lr 0.1).
            lam: lambda of Eq. 6 (1, the default: keeps most and makes no guidance image; 0 lands on the guidance
                image), or 'auto' (from the mask).
            sampling: The run's sampling settings (SamplingConfig or a dict of some fields; None: defaults), shared by every
                stage.
            mask, ito, guidance: The init_args of the method's own stage in the mask, decoder and guidance slots
                (MaskConfig, ITOConfig, GuidanceConfig or a dict of some of their fields; None: defaults); the
                default guidance stage takes its ITO objective from `ito`. A plugin given in a slot carries its own.
            seed: Seed of every random draw of an edit (a call's own seed wins).
            unet_chunk_size: Most samples per UNet call; None: no cap.
            auto_lam: The rule of lam='auto' (None: AutoLam's defaults).
            inversion, mask_estimator, guidance_generator, decoder: Stage plugins (None: the method's).
            resolution: Resize inputs so the longer side is this many pixels, as data.resolution (None: keep).
        """
        super().__init__()
        self.lam = check_lam_setting(lam)
        # Copies (callers such as EditModule's signature pass shared default instances); a dict gives some fields.
        self.sampling = SamplingConfig(**sampling) if isinstance(sampling, dict) else replace(sampling or SamplingConfig())
        self.auto_lam = AutoLam(**auto_lam) if isinstance(auto_lam, dict) else replace(auto_lam or AutoLam())
        # The settings groups as given (None: defaults); the stages built from them hold the settings in use.
        self._groups = {"mask": settings_group("mask", mask), "ito": settings_group("ito", ito),
                        "guidance": settings_group("guidance", guidance)}
        self._guidance_follows_ito = guidance_generator is None  # the default G takes model.ito's objective
        slots = method_slots(inversion, mask_estimator, guidance_generator, decoder, **self._groups)
        self.inversion, self.mask_estimator = slots["inversion"], slots["mask_estimator"]
        self.guidance_generator, self.decoder = slots["guidance_generator"], slots["decoder"]
        self.check_stages()
        if unet_chunk_size is not None and unet_chunk_size < 1:
            raise ConfigError(f"unet_chunk_size must be >= 1 or null, got {unet_chunk_size}.")
        if resolution is not None and resolution < 8:
            raise ConfigError(f"resolution must be >= 8 pixels, got {resolution}.")
        conditioners = list(conditioners or [])
        if not any(c.provides_text for c in conditioners):
            conditioners.insert(0, TextConditioner())
        elif not conditioners[0].provides_text:
            conditioners.sort(key=lambda c: not c.provides_text)  # text first: ControlNets read it
        self.backbone = backbone if backbone is not None else StableDiffusion()
        for conditioner in conditioners:  # a ControlNet of the other family, from the configs alone
            conditioner.check_backbone(self.backbone)
        self.conditioners = nn.ModuleList(conditioners)
        self.losses = nn.ModuleList(losses if losses is not None else [MaskedMSEPreservation(), CosineGuidance()])
        self.optimizer = optimizer
        self.seed = seed
        self.unet_chunk_size = unet_chunk_size
        self.resolution = resolution
        self.engine: Optional[EditEngine] = None  # built by `load`
        self._placement: dict[str, Any] = {}  # what `.to` asked for before the weights were read
        self._callback: Optional[StepCallback] = None
        self._engines: list[EditEngine] = []  # the further engines of batched edits (edit_batch)
        self.last_batch: Optional[dict[str, int]] = None  # UNet calls and samples of the last edit_batch

    # -------------------------------------------------------------------------------- building
    @classmethod
    def from_pretrained(cls, pretrained: str, conditioners: Optional[Sequence[Union[str, Conditioner]]] = None, *,
                        torch_dtype: Optional[torch.dtype] = None, **settings) -> "EditPipeline":
        """Load a pipeline from an SD 1.x, SDXL, SD3 or FLUX.1 hub id, folder or `builtin:` name (its model_index.json
        picks the backbone class; another family is refused in one line).

        `conditioners`: short names ('pose', 'scribble': a ControlNet of that modality, the same built-in model or
        the family's table in CONTROLNETS) or conditioner objects. `settings`: the pipeline's parameters (`lam`,
        `mask`, `ito`, `losses`, the stage slots ...; a dict changes some fields of a settings group,
        `mask={"threshold": 0.3}`) and the backbone's (`variant`, `revision`, `attention_slicing` ...).
        """
        cls_backbone = backbone_class(pretrained, settings.get("revision"))
        backbone_keys = set(inspect.signature(cls_backbone.__init__).parameters) - {"self", "pretrained"}
        backbone = cls_backbone(pretrained, **{k: settings.pop(k) for k in list(settings) if k in backbone_keys})
        made = [c if isinstance(c, Conditioner) else
                ControlNetConditioner(c, controlnet_for(c, pretrained, backbone.family)) for c in conditioners or []]
        return cls(backbone, made, **settings).to(dtype=torch_dtype).load()

    @classmethod
    def from_config(cls, config: Union[str, Path, dict], args: Sequence[str] = (), *,
                    torch_dtype: Optional[torch.dtype] = None, **settings) -> "EditPipeline":
        """Load the pipeline of an experiment YAML (its model section, and data.resolution), as `fit` builds it.

        `args`: `--model.*` overrides as the command line takes them (['--model.mask.seeds', '4']).
        `settings`: overrides as Python values; a dict changes fields of a settings group
        (`mask={"threshold": 0.3}`), anything else replaces the setting (`lam=0.4`, `losses=[MyLoss()]`).
        """
        data = config if isinstance(config, dict) else yaml.safe_load(Path(config).read_text())
        section = dict((data or {}).get("model") or {})
        if "class_path" not in section:
            raise ConfigError(f"{config}: no model section with a class_path (e.g. framework.EditModule).")
        section["init_args"] = {k: v for k, v in (section.get("init_args") or {}).items() if k != "metrics"}
        # The YAML names a Lightning module class (EditModule or a baseline built on it): build it as the CLI does,
        # so its defaults and checks apply, and keep its pipeline.
        parser = ArgumentParser(exit_on_error=False)
        parser.add_subclass_arguments(import_object(section["class_path"]), "model", required=True)
        parsed = parser.parse_args(["--model", yaml.safe_dump(section), *args])
        pipe = parser.instantiate_classes(parsed).model.pipeline
        data_args = ((data or {}).get("data") or {}).get("init_args") or {}
        settings.setdefault("resolution", data_args.get("resolution"))
        current = pipe.arguments()
        unknown = sorted(set(settings) - set(current))
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; the pipeline's: {', '.join(current)}.")
        # Rebuilt with the overrides, so they pass the constructor's checks (nothing is loaded yet).
        pipe = cls(**{k: _merge(v, settings[k]) if k in settings else v for k, v in current.items()})
        return pipe.to(dtype=torch_dtype).load()

    def arguments(self) -> dict[str, Any]:
        """The constructor arguments that make this pipeline (models and plugins as the objects held; a slot that
        holds the method's own stage as its settings group, so a group override reaches it)."""
        args = {name: getattr(self, name) for name in inspect.signature(type(self)).parameters}
        for group, (slot, stage_cls, cls) in SETTINGS_GROUPS.items():
            stage = args[slot]
            own = type(stage) is stage_cls and (group != "guidance" or self._follows_ito(stage))
            args[group], args[slot] = (settings_group(group, stage), None) if own else (None, stage)
        return args

    # --------------------------------------------------------------------------- settings groups
    # `pipe.mask`, `pipe.ito`, `pipe.guidance`: the settings of the stage in the slot when it is the method's own
    # (the stage itself, a dataclass of those fields), else the group as given; setting one rebuilds that stage.
    def _group(self, group: str):
        slot, _, cls = SETTINGS_GROUPS[group]
        stage = getattr(self, slot)
        return stage if isinstance(stage, cls) else (self._groups[group] or cls())

    def _set_group(self, group: str, value) -> None:
        value = settings_group(group, value)
        slot, _, cls = SETTINGS_GROUPS[group]
        slots = self._slots()
        if isinstance(slots[slot], cls):  # the slot's stage has these settings: the same stage with the new ones
            slots[slot] = replace(slots[slot], **asdict(value or cls()))
        if group == "ito" and self._guidance_follows_ito and isinstance(slots["guidance_generator"], ITOObjective):
            slots["guidance_generator"] = replace(slots["guidance_generator"], **(value or cls()).objective())
        self.check_stages(slots)  # a refused value leaves the pipeline as it was
        self._groups[group] = value
        for name, stage in slots.items():
            setattr(self, name, stage)

    def _follows_ito(self, stage) -> bool:
        return self._guidance_follows_ito and stage.objective() == self.ito.objective()

    mask = property(lambda self: self._group("mask"), lambda self, v: self._set_group("mask", v),
                    doc="The Eq. 7 settings (MaskConfig) of the mask estimator, when it is NoiseDifferenceMask.")
    ito = property(lambda self: self._group("ito"), lambda self, v: self._set_group("ito", v),
                   doc="The ITO settings (ITOConfig) of the decoder, when it is ITODecode.")
    guidance = property(lambda self: self._group("guidance"), lambda self, v: self._set_group("guidance", v),
                        doc="The guidance-image settings (GuidanceConfig) of NoiseEncodedGuidance.")

    def _slots(self) -> dict[str, Any]:
        """{slot: the stage plugin in it}, the procedure's four slots."""
        return {name: getattr(self, name) for name in SLOTS}

    def check_stages(self, slots: Optional[dict[str, Any]] = None) -> None:
        """Each stage's settings against the run's sampling (t_u within the steps ...), before any model work."""
        slots = slots or self._slots()
        for name, stage in slots.items():
            if name != "guidance_generator" or slots["decoder"].uses_guidance:  # a G the decoder reads
                stage.check(self.sampling)

    def resolved_settings(self) -> dict[str, Any]:
        """Everything of the pipeline that decides an edit, as plain values (summary.json's parameters)."""
        probe = [torch.zeros(1, requires_grad=True)]  # the optimiser as torch prints it, on a stand-in tensor
        return {
            "stages": {"inversion": self.decoder.uses_inversion, "mask": not isinstance(self.mask_estimator, NoMask),
                       "guidance": self.decoder.uses_guidance, "ito": self.decoder.uses_ito,
                       **{slot: plain_fields(stage) for slot, stage in self._slots().items()}},
            "lam": self.lam, "auto_lam": asdict(self.auto_lam) if self.lam == "auto" else None,
            "seed": self.seed, "backbone": self.backbone.pretrained,
            "memory": {k: getattr(self.backbone, k, None)
                       for k in ("attention_slicing", "vae_tiling", "vae_tile_size")},
            "sampling": asdict(self.sampling), "mask": fields_of(self.mask, MaskConfig),
            "ito": fields_of(self.ito, ITOConfig), "guidance": fields_of(self.guidance, GuidanceConfig),
            "conditioners": [plain_fields(c) for c in self.conditioners],
            "losses": [plain_fields(loss) for loss in self.losses],
            "optimizer": repr((self.optimizer or default_optimizer)(probe)),
        }

    def deciding_settings(self, seeded_requests: bool = False) -> dict[str, Any]:
        """`resolved_settings` less what cannot change this method's edits: the memory options, the settings of
        stages its decoder does not run (a DiffEdit run resumes after ITO's defaults change), and `seed` when
        `seeded_requests` (every request of the run carries its own seed, so the pipeline's decides no edit)."""
        unused = {"memory", "seed"} if seeded_requests else {"memory"}
        if not self.decoder.uses_ito:
            unused |= {"ito", "losses", "optimizer", "lam", "auto_lam"}
        if not self.decoder.uses_guidance:
            unused |= {"guidance", "guidance_generator"}
        if isinstance(self.mask_estimator, NoMask):
            unused |= {"mask"}
        settings = {k: v for k, v in self.resolved_settings().items() if k not in unused}
        settings["stages"] = {k: v for k, v in settings["stages"].items() if k not in unused}
        return settings

    def settings_digest(self, extra: Optional[dict[str, Any]] = None, seeded_requests: bool = False) -> str:
        """A digest of `deciding_settings` (and `extra`) and of the weights (result.json's `settings`)."""
        return settings_digest({**self.deciding_settings(seeded_requests), **(extra or {})}, self.backbone,
                               *self.conditioners)

    def weights_digest(self) -> str:
        """A digest of the weights alone (part of `settings_digest`; result.json's `weights`)."""
        return settings_digest({}, self.backbone, *self.conditioners)

    def load(self) -> "EditPipeline":
        """Read the backbone's and the conditioners' weights (once; each conditioner checks that it fits the UNet)."""
        if self.engine is not None:
            return self
        self.backbone.load()
        for conditioner in self.conditioners:
            conditioner.load(self.backbone)
        self.backbone.configure_memory(*self.conditioners)  # attention slicing reaches the ControlNets too
        self.engine = EditEngine(self.backbone, list(self.conditioners), list(self.losses), emit=self._emit,
                                 **self._slots())
        self._update_engine()
        if self._placement:
            super().to(**self._placement)
        return self

    def _update_engine(self, engine: Optional[EditEngine] = None) -> None:
        """The engine runs with the pipeline's settings and slots as they are now (benchmarks call its stages)."""
        engine = engine or self.engine
        engine.sampling = self.sampling
        engine.optimizer_factory, engine.losses = self.optimizer, list(self.losses)
        engine.inversion, engine.mask_estimator = self.inversion, self.mask_estimator
        engine.guidance_generator, engine.decoder = self.guidance_generator, self.decoder
        engine.denoiser.chunk_size = self.unet_chunk_size

    def to(self, device: Union[str, torch.device, torch.dtype, None] = None,
           dtype: Optional[torch.dtype] = None) -> "EditPipeline":
        """Move the models (`pipe.to("cuda")`) and/or cast their weights (`pipe.to("cpu", torch.bfloat16)`).

        Each model then runs in its weights' dtype, its inputs cast to it, as diffusers' fp16 pipelines run (CPU
        autocast cannot mix bf16 weights with ControlNets' float32 group norms); the ITO step stays in float32."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        change = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        self._placement.update(change)
        if change and self.engine is not None:
            super().to(**change)
        return self

    @property
    def device(self) -> torch.device:
        if self.backbone.loaded:
            return next(self.backbone.unet.parameters()).device
        return torch.device(self._placement.get("device", "cpu"))

    @property
    def dtype(self) -> torch.dtype:
        if self.backbone.loaded:
            return next(self.backbone.unet.parameters()).dtype
        return self._placement.get("dtype", torch.float32)

    @property
    def modalities(self) -> list[str]:
        """The map names this pipeline's conditioners read ('pose', 'scribble' ...)."""
        return [c.modality for c in self.conditioners if c.modality]

    def train(self, mode: bool = True) -> "EditPipeline":
        """Frozen networks: the pipeline stays in eval mode."""
        return super().train(False)

    # ------------------------------------------------------------------------------ the edit
    @torch.no_grad()
    def __call__(self, image: ImageInput, source_prompt: str, edit_prompt: Optional[str] = None, *,
                 source_maps: Optional[dict[str, ImageInput]] = None, edit_maps: Optional[dict[str, ImageInput]] = None,
                 mask: Optional[ImageInput] = None, lam: Union[float, str, None] = None, seed: Optional[int] = None,
                 resolution: Optional[int] = None, callback_on_step_end: Optional[StepCallback] = None,
                 request_id: str = "edit") -> EditPipelineOutput:
        """Edit one image (paper Fig. 1).

        Args:
            image: The input I: a PIL image, or a tensor (1, 3, H, W) in [0, 1].
            source_prompt: Caption of the input (C_0's text).
            edit_prompt: Prompt of the edit (C_EDIT's text; None: the source prompt).
            source_maps: {modality: map} of the input's layout, e.g. {"pose": pose_map}; PIL or (1, 3, H, W).
            edit_maps: {modality: map} of the edit's layout; a modality missing here keeps its source map.
            mask: The edit region (white / 1 = edit), PIL or (1, 1, H, W); None: estimated (Eq. 7).
            lam: Preservation weight of this edit (None: the pipeline's `lam`).
            seed: Seed of this edit's random draws (None: the pipeline's `seed`).
            resolution: Longer side the input is resized to (None: the pipeline's `resolution`).
            callback_on_step_end: `fn(pipe, step, timestep, info)`, called at every DDIM step of every stage
                (info["kind"] == "step": "inversion", "guidance", "final") and after every ITO update
                (info["kind"] == "ito", with info["loss"]). info also holds "stage", "latents" (read-only: the
                return value is ignored), "i" and "t", and the request's "id".
            request_id: Name of the edit in its record.

        Images of one size are used as they are; others are resized like the data module's files (tensors by way
        of 8 bits, as if read from a PNG). Maps and the mask must have the input's aspect ratio.
        """
        resolution = self.resolution if resolution is None else resolution
        self.check_inputs(image, source_prompt, edit_prompt, source_maps, edit_maps, mask, lam, seed, resolution)
        request = self.prepare_request(image, source_prompt, edit_prompt, source_maps or {}, edit_maps or {}, mask,
                                       resolution, lam, seed, request_id)
        result = self.edit(request, callback_on_step_end)
        record = result.record
        size = tuple(result.edit.shape[-2:])
        return EditPipelineOutput(to_pil(result.edit), to_pil(upsample_mask(result.mask, size)),
                                  None if result.guidance is None else to_pil(result.guidance), record["lam"],
                                  record["seconds"]["total"], sum(record["unet_evaluations"].values()), result)

    def edit(self, request: EditRequest, callback: Optional[StepCallback] = None) -> EditResult:
        """The procedure on a loaded request (framework.io.manifests.EditRequest), with the pipeline's settings and slots."""
        self.load()
        setting, seed = self._lam_and_seed(request)
        self._update_engine()  # a sweep, the demo or a test may have replaced settings or slots since `load`
        self._callback = callback
        try:
            result = self.engine.edit(request.to(self.device), setting, seed, self.auto_lam)
        finally:
            self._callback = None
        result.record.update(self._prompts_used(request))
        return result

    def _lam_and_seed(self, request: EditRequest) -> tuple[Union[float, str], int]:
        """The lam setting and seed of a request: its own where it has them, else the pipeline's."""
        lam = self.lam if request.lam is None else check_lam_setting(request.lam, f"request '{request.id}' lam")
        return lam, self.seed if request.seed is None else request.seed

    def edit_batch(self, requests: Sequence[EditRequest],
                   callback: Optional[StepCallback] = None) -> list[Union[EditResult, Exception]]:
        """Several requests edited side by side, their UNet calls joined into one per step (framework.core.batching):
        each keeps its own mask, lam, seed, guidance image and ITO, and its result equals `edit`'s up to the float
        rounding of a larger UNet batch. Returns one result per request, or the exception its edit raised.
        Slots that change the UNet for one edit (prompt-to-prompt's attention) run the requests one at a time."""
        from framework.core.batching import UNetBatcher, run_side_by_side

        self.load()
        self._update_engine()
        if len(requests) <= 1 or not all(getattr(stage, "batchable", True) for stage in self._slots().values()):
            results: list[Union[EditResult, Exception]] = []
            for request in requests:
                try:
                    results.append(self.edit(request, callback))
                except Exception as err:  # noqa: BLE001 - handed to the caller, per request
                    results.append(err)
            return results
        while len(self._engines) < len(requests) - 1:  # one engine (and sample counter) per edit in flight
            engine = EditEngine(self.backbone, list(self.conditioners), list(self.losses),
                                **self._slots())
            engine.emit = lambda *args, engine=engine, **kwargs: self._emit_from(engine, *args, **kwargs)
            self._engines.append(engine)
        engines = [self.engine, *self._engines[:len(requests) - 1]]
        batcher = UNetBatcher(len(requests))
        for order, engine in enumerate(engines):
            self._update_engine(engine)
            engine.denoiser.guidance_rescale = self.engine.denoiser.guidance_rescale
            engine.denoiser.batcher, engine.denoiser.order = batcher, order

        def job(engine: EditEngine, request: EditRequest):
            def run() -> EditResult:
                setting, seed = self._lam_and_seed(request)
                return engine.edit(request.to(self.device), setting, seed, self.auto_lam)
            return run

        self._callback = callback
        try:
            results = run_side_by_side([job(e, r) for e, r in zip(engines, requests)], batcher)
        finally:
            self._callback = None
            for engine in engines:
                engine.denoiser.batcher = None
        self.last_batch = {"unet_calls": batcher.calls, "unet_samples": batcher.samples}
        for request, result in zip(requests, results):
            if isinstance(result, EditResult):
                result.record.update(self._prompts_used(request))
        return results

    def _emit(self, stage: str, kind: str, i: int, t: int, latents: torch.Tensor, **extra) -> None:
        """The engine's intermediates, to the callback of the edit in progress."""
        self._emit_from(self.engine, stage, kind, i, t, latents, **extra)

    def _emit_from(self, engine: EditEngine, stage: str, kind: str, i: int, t: int, latents: torch.Tensor,
                   **extra) -> None:
        if self._callback is not None:
            info = {"id": engine.request_id, "stage": stage, "kind": kind, "i": i, "t": t, "latents": latents,
                    **extra}
            self._callback(self, i, t, info)

    def _prompts_used(self, request: EditRequest) -> dict[str, Any]:
        """{'prompts_used': {field: the text the encoder saw}} for prompts cut at the tokenizer's limit."""
        used = getattr(self.backbone, "prompt_used", None)
        cut = {} if used is None else {k: used(p) for k, p in (("source_prompt", request.source_prompt),
                                                                 ("edit_prompt", request.edit_prompt))}
        cut = {k: v for k, v in cut.items() if v is not None}
        return {"prompts_used": cut} if cut else {}

    # ------------------------------------------------------------------------------ the inputs
    def check_inputs(self, image, source_prompt, edit_prompt=None, source_maps=None, edit_maps=None, mask=None,
                     lam=None, seed=None, resolution=None) -> None:
        """One ManifestError naming what is wrong with a call's inputs, before any model work."""
        size = _check_image(image, "image", 3)
        _, cropped = target_size(*size, resolution)
        if min(cropped) < 8:
            raise ManifestError(f"image is {size[0]}x{size[1]}: sides under 8 pixels; pass a larger image or a "
                                f"resolution.")
        if not isinstance(source_prompt, str):
            raise ManifestError(f"source_prompt must be a string (a caption of the input), got {source_prompt!r}.")
        if edit_prompt is not None and not isinstance(edit_prompt, str):
            raise ManifestError(f"edit_prompt must be a string, got {edit_prompt!r}.")
        source_maps, edit_maps = source_maps or {}, edit_maps or {}
        for side, maps in (("source_maps", source_maps), ("edit_maps", edit_maps)):
            if not isinstance(maps, dict):
                raise ManifestError(f"{side} must be a dict {{modality: map}}, e.g. {{'pose': pose_map}}.")
            unknown = sorted(set(maps) - set(self.modalities))
            if unknown:
                raise ManifestError(f"{side}: no conditioner reads {unknown}; this pipeline's modalities: "
                                    f"{', '.join(self.modalities) or 'none (text only)'}.")
            for name, item in maps.items():
                check_aspect(_check_image(item, f"{side}['{name}']", 3), size, f"{side}['{name}']", "given")
        if set(edit_maps) - set(source_maps):
            raise ManifestError(f"edit map(s) {sorted(set(edit_maps) - set(source_maps))} have no source map; give "
                                f"the input's own layout in source_maps too.")
        if mask is not None:
            check_aspect(_check_image(mask, "mask", 1), size, "mask", "given")
        if (edit_prompt is None or edit_prompt == source_prompt) and not edit_maps:
            raise ManifestError("no edit condition: give an edit_prompt other than the source_prompt, or edit_maps.")
        try:
            check_lam_setting(1.0 if lam is None else lam)
        except ConfigError as err:
            raise ManifestError(str(err)) from None
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ManifestError(f"seed must be an integer, got {seed!r}.")

    def prepare_request(self, image: ImageInput, source_prompt: str, edit_prompt: Optional[str],
                        source_maps: dict[str, ImageInput], edit_maps: dict[str, ImageInput],
                        mask: Optional[ImageInput], resolution: Optional[int], lam=None, seed: Optional[int] = None,
                        request_id: str = "edit") -> EditRequest:
        """The request the data module would load from these images saved as files (same sizing, same filters)."""
        original = _size(image)
        if isinstance(image, torch.Tensor) and target_size(*original, resolution) == (original, original):
            pixels = image.float()  # already at its working size: used as it is
        else:
            pixels = fit_image(_opened(image, "RGB", request_id, "image"), resolution, "image")
        working = (pixels.shape[-1], pixels.shape[-2])

        def align(item: ImageInput, what: str, mode: str) -> torch.Tensor:
            if isinstance(item, torch.Tensor) and _size(item) == working:
                return item.float()
            return align_image(_opened(item, mode, request_id, what), working, original, what, "given")

        source = {k: align(v, f"source {k} map", "RGB") for k, v in source_maps.items()}
        edit = {**source, **{k: align(v, f"edit {k} map", "RGB") for k, v in edit_maps.items()}}
        return EditRequest(request_id, pixels, source_prompt, edit_prompt or source_prompt, source, edit,
                           None if mask is None else align(mask, "mask", "L"), seed, lam, {})


def _size(item: ImageInput) -> tuple[int, int]:
    """(width, height) of a PIL image or an image tensor."""
    return item.size if isinstance(item, Image.Image) else (int(item.shape[-1]), int(item.shape[-2]))


def _check_image(item: Any, what: str, channels: int) -> tuple[int, int]:
    """(width, height) of a PIL image or a (1, channels, H, W) tensor in [0, 1]; ManifestError otherwise."""
    if isinstance(item, Image.Image):
        return _size(ImageOps.exif_transpose(item))
    if not isinstance(item, torch.Tensor):
        raise ManifestError(f"{what}: expected a PIL image or a tensor (1, {channels}, H, W) in [0, 1], got "
                            f"{type(item).__name__}.")
    if item.dim() != 4 or item.shape[:2] != (1, channels) or not item.is_floating_point():
        raise ManifestError(f"{what}: expected a float tensor (1, {channels}, H, W) in [0, 1], got "
                            f"{item.dtype} {tuple(item.shape)}.")
    if item.numel() and (item.min() < 0 or item.max() > 1):
        raise ManifestError(f"{what}: values must be in [0, 1], got [{float(item.min()):.3g}, {float(item.max()):.3g}].")
    return _size(item)


def _opened(item: ImageInput, mode: str, request_id: Optional[str] = None, what: str = "image") -> Image.Image:
    """A PIL image as framework.io.manifests opens a file (EXIF orientation, 8-bit, alpha on white, with the same note
    naming the request); a tensor via 8 bits."""
    if isinstance(item, torch.Tensor):
        item = to_pil(item.detach().cpu())
    return as_mode(ImageOps.exif_transpose(item), mode, request_id, what)
