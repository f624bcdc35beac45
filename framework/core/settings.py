"""Scalar settings of an edit, grouped; each field's docstring is its `--help` text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from framework.core.errors import ConfigError

BALANCES = ("gradient", "none")
"""ito.balance: each loss's gradient at unit RMS before the lam mix, or Eq. 6's gradient as it is."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


Steps = Union[int, float]
"""A number of decoding steps: a count (an int), or a fraction of the decode's steps (a float in [0, 1]), as
Lightning's `val_check_interval` is a count of batches or a fraction of an epoch."""


def fields_of(settings, cls: type) -> dict:
    """The fields of settings dataclass `cls` read from `settings` (an instance of it, or a stage that is one)."""
    return {name: getattr(settings, name) for name in cls.__dataclass_fields__}


def step_count(value: Steps, steps: int) -> int:
    """`value` steps of a decode of `steps`: the count itself, or the fraction of them rounded half up."""
    return min(steps, int(value * steps + 0.5)) if isinstance(value, float) else value


def _check_steps_setting(value, where: str) -> None:
    _check((isinstance(value, int) and not isinstance(value, bool) and value >= 0)
           or (isinstance(value, float) and 0 <= value <= 1),
           f"{where} must be a count of steps (an int >= 0) or a fraction of them (a float in [0, 1]), got {value!r}.")


@dataclass
class SamplingConfig:
    """DDIM sampling and inversion (paper Sec. 3.1 and 4)."""

    steps: int = 20
    """Number of DDIM steps of the full schedule."""
    encode_ratio: float = 1.0
    """t_E / steps: how far the input is DDIM-inverted before decoding (paper: 1.0)."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale of every decode (mask, guidance image, final edit)."""
    inversion_guidance_scale: float = 1.0
    """Classifier-free guidance scale of DDIM inversion (1 = conditional only, as DiffEdit)."""
    inversion_prompt: Optional[str] = None
    """Prompt used to invert the input; None = the request's source prompt."""
    negative_prompt: str = ""
    """Prompt of the unconditional half of classifier-free guidance."""
    guidance_rescale: float = 0.0
    """phi of guidance rescale (Lin et al. 2024), against the colour drift of high CFG; 0 = plain CFG (the paper)."""

    def __post_init__(self):
        _check(self.steps >= 1, f"sampling.steps must be >= 1, got {self.steps}.")
        _check(0 < self.encode_ratio <= 1, f"sampling.encode_ratio must be in (0, 1], got {self.encode_ratio}.")
        _check(self.guidance_scale >= 0 and self.inversion_guidance_scale >= 0,
               "sampling.guidance_scale and inversion_guidance_scale must be >= 0.")
        _check(0 <= self.guidance_rescale <= 1,
               f"sampling.guidance_rescale must be in [0, 1], got {self.guidance_rescale}.")


@dataclass
class GivenMaskConfig:
    """How a user's mask (the request's `mask:`) is put on the latent grid: the settings of GivenMask."""

    given: str = "cover"
    """A given mask on the latent grid: 'cover' (any marked pixel of a block) or 'area' (more than half of it)."""

    def __post_init__(self):
        _check(self.given in ("cover", "area"), f"mask.given must be 'cover' or 'area', got '{self.given}'.")


@dataclass
class MaskConfig(GivenMaskConfig):
    """Edit-mask estimation from noise-prediction differences (paper Eq. 7; DiffEdit as an option; docs/settings.md).

    The settings of the Eq. 7 stage, framework.stages.NoiseDifferenceMask (its init_args); `model.mask` sets those of
    the default mask estimator."""

    seeds: int = 3
    """n: random-noise encodings averaged (paper and DiffEdit: 10)."""
    strength: float = 0.5
    """Noise level the input is encoded to for the mask, as a fraction of the schedule (DiffEdit: 0.5)."""
    threshold: float = 0.1
    """tau: threshold on the normalised difference map (paper: 0.1; DiffEdit variant: 0.5)."""
    smoothing: float = 1.0
    """Sigma of the Gaussian smoothing, in latent pixels; 0 turns it off."""
    compare_at: str = "last"
    """'last': compare eps after decoding both conditions (Eq. 7); 'first': at the encoded step (DiffEdit)."""
    normalize: str = "minmax"
    """'minmax': scale the map to [0, 1]; 'mean_ratio': clip at mean_ratio x mean and divide (DiffEdit)."""
    mean_ratio: float = 3.0
    """Clip level of 'mean_ratio' normalisation, in multiples of the mean."""
    guidance_scale: Optional[float] = None
    """CFG scale of the mask decodes; None = sampling.guidance_scale."""
    steps: Optional[int] = 10
    """DDIM steps of the mask's own coarser schedule (it decodes strength x steps); None = sampling.steps."""
    resolution: float = 1.0
    """Estimate the mask on the input resized by this factor in (0, 1]; 1 = full resolution."""
    early_stop_iou: Optional[float] = None
    """Add seeds in groups until the mask's IoU with the previous group's exceeds this; None = all n at once."""
    seed_group: int = 2
    """Seeds per group when early_stop_iou is set."""
    cache_dir: Optional[str] = None
    """Folder where estimated soft masks are stored and reused (runs of a sweep share them); None: no cache."""

    def __post_init__(self):
        super().__post_init__()
        _check(self.seeds >= 1, f"mask.seeds must be >= 1, got {self.seeds}.")
        _check(self.steps is None or self.steps >= 1, f"mask.steps must be >= 1 or null, got {self.steps}.")
        _check(0 < self.resolution <= 1, f"mask.resolution must be in (0, 1], got {self.resolution}.")
        _check(self.early_stop_iou is None or 0 < self.early_stop_iou <= 1,
               f"mask.early_stop_iou must be in (0, 1] or null, got {self.early_stop_iou}.")
        _check(self.seed_group >= 1, f"mask.seed_group must be >= 1, got {self.seed_group}.")
        _check(0 < self.strength <= 1, f"mask.strength must be in (0, 1], got {self.strength}.")
        _check(0 <= self.threshold < 1, f"mask.threshold must be in [0, 1), got {self.threshold}.")
        _check(self.smoothing >= 0, f"mask.smoothing must be >= 0, got {self.smoothing}.")
        _check(self.compare_at in ("last", "first"),
               f"mask.compare_at must be 'last' or 'first', got '{self.compare_at}'.")
        _check(self.normalize in ("minmax", "mean_ratio"),
               f"mask.normalize must be 'minmax' or 'mean_ratio', got '{self.normalize}'.")


PAPER_MASK = {"seeds": 10, "steps": None, "resolution": 1.0, "early_stop_iou": None, "guidance_scale": None}
"""The paper's own mask procedure (Eq. 7 after DiffEdit: n = 10 on the full 25-step grid, CFG as every decode)."""


def paper_literal_mask(**changes) -> MaskConfig:
    """MaskConfig of the paper's unreduced Eq. 7 (480 UNet samples per text edit at 25 steps), with `changes`."""
    return MaskConfig(**{**PAPER_MASK, **changes})


@dataclass
class ITOObjective:
    """How a stage's ITO steps optimise the latents: the settings every ITO stage has (the final decode's and the
    guidance image's; with `model.ito` both default stages take these from it)."""

    keep_optimizer_state: bool = False
    """False: a fresh optimiser at every timestep; True: one optimiser (and its moments) for the whole decode."""
    balance: str = "gradient"
    """'gradient': each loss's gradient at unit RMS before the lam mix; 'none': Eq. 6 as printed (the paper)."""
    loss_mask: str = "binary"
    """Mask the ITO losses see: 'binary' (thresholded Eq. 7 mask, or the given one) or 'soft' (the map before it)."""

    def __post_init__(self):
        _check(self.balance in BALANCES, f"ito.balance must be one of {BALANCES}, got '{self.balance}'.")
        _check(self.loss_mask in ("binary", "soft"),
               f"ito.loss_mask must be 'binary' or 'soft', got '{self.loss_mask}'.")

    def objective(self) -> dict:
        """The ITOObjective fields of these settings (what the default guidance stage takes from `model.ito`)."""
        return fields_of(self, ITOObjective)


@dataclass
class ITOConfig(ITOObjective):
    """The final decode's inference-time optimisation (paper Eq. 6, Sec. 4).

    The settings of framework.stages.ITODecode (its init_args); `model.ito` sets those of the default decoder, and
    its objective (balance, loss_mask, keep_optimizer_state) those of the default guidance stage's ITO as well."""

    update_steps: Steps = 0.6
    """t_u: ITO at each of the first t_u decoding steps: a count (int), or a fraction of them (0.6: 12 of 20)."""
    inner_steps: int = 2
    """k: optimiser steps per timestep (the paper: 1; experiments/paper_literal.yaml)."""
    first_step: str = "skip"
    """'skip': no ITO at the final decode's first step (where y_t = x_t); 'optimize' (the paper): ITO from it."""
    lam_end: Optional[float] = None
    """lam at the last ITO step, moving linearly from the edit's lam; None: the edit's lam throughout (the paper)."""
    blend: str = "after"
    """'after': pull the latents outside the mask back to the input's after t_u (DiffEdit's way); 'none' (the paper)."""
    blend_weight: Optional[float] = None
    """w of the blend in [0, 1]; None: the edit's lam at its last ITO step."""
    feather: float = 0.0
    """Sigma, in latent pixels, of the blend's soft edge inside the mask; 0: the hard mask."""
    blend_margin: int = 1
    """Latent pixels the mask is grown by before the blend; 0: the mask as is (DiffEdit's blend)."""
    outside_guidance_scale: Optional[float] = None
    """CFG scale outside the mask in the steps after t_u (1: condition alone); None: one scale."""

    def __post_init__(self):
        super().__post_init__()
        _check_steps_setting(self.update_steps, "ito.update_steps (t_u)")
        _check(self.inner_steps >= 1, f"inner_steps (k) must be >= 1, got {self.inner_steps}.")
        _check(self.first_step in ("optimize", "skip"),
               f"ito.first_step must be 'optimize' or 'skip', got '{self.first_step}'.")
        _check(self.lam_end is None or 0 <= self.lam_end <= 1, f"ito.lam_end must be in [0, 1], got {self.lam_end}.")
        _check(self.blend in ("none", "after"), f"ito.blend must be 'none' or 'after', got '{self.blend}'.")
        _check(self.feather >= 0, f"ito.feather must be >= 0, got {self.feather}.")
        _check(self.blend_margin >= 0, f"ito.blend_margin must be >= 0, got {self.blend_margin}.")
        _check(self.blend_weight is None or 0 <= self.blend_weight <= 1,
               f"ito.blend_weight must be in [0, 1] or null, got {self.blend_weight}.")
        _check(self.outside_guidance_scale is None or self.outside_guidance_scale >= 0,
               f"ito.outside_guidance_scale must be >= 0 or null, got {self.outside_guidance_scale}.")


@dataclass
class GuidanceConfig:
    """The guidance image: ITO with lam = 1 from a random-noise encoding (Sec. 3.2), optional refinement (A.5).

    The settings of framework.stages.NoiseEncodedGuidance (its init_args, with an ITOObjective); `model.guidance`
    sets those of the default guidance stage."""

    update_steps: Steps = 0.6
    """t_u of the guidance decode: a count or a fraction of its steps (paper: 15 of 25; A.2: 20 with k = 30)."""
    inner_steps: int = 1
    """k of the guidance decode."""
    encode_ratio: Optional[float] = None
    """Noise level of its random-noise encoding; None = sampling.encode_ratio."""
    reference: str = "decode"
    """g_t of the guidance loss: 'decode' (G's own decode latents) or 'inversion' (G DDIM-inverted, the paper)."""
    invert: str = "missing"
    """'missing': invert G only where its decode skipped a timestep of t_E; 'always': through t_E (the old cost)."""
    decode: str = "needed"
    """'needed': G's decode stops at the last g_t the edit's decode reads, then finishes coarsely; 'full': to the end."""
    finish_steps: int = 2
    """Coarse steps that finish G's picture after a 'needed' decode stops (2 x 2 CFG samples); 0: its x_0 estimate."""
    refine: bool = False
    """Refine the guidance image with ITO at lam = 0 towards the input (A.5)."""
    refine_update_steps: int = 6
    """t_u of the refinement (A.5: 6)."""
    refine_inner_steps: int = 1
    """k of the refinement (A.5: 1)."""

    def __post_init__(self):
        _check_steps_setting(self.update_steps, "guidance.update_steps")
        _check(self.refine_update_steps >= 0, "guidance.refine_update_steps must be >= 0.")
        _check(self.inner_steps >= 1 and self.refine_inner_steps >= 1, "guidance inner steps must be >= 1.")
        _check(self.encode_ratio is None or 0 < self.encode_ratio <= 1,
               f"guidance.encode_ratio must be in (0, 1], got {self.encode_ratio}.")
        _check(self.invert in ("missing", "always"), f"guidance.invert must be 'missing' or 'always', got '{self.invert}'.")
        _check(self.decode in ("needed", "full"), f"guidance.decode must be 'needed' or 'full', got '{self.decode}'.")
        _check(self.finish_steps >= 0, f"guidance.finish_steps must be >= 0, got {self.finish_steps}.")
        _check(self.reference in ("inversion", "decode"),
               f"guidance.reference must be 'inversion' or 'decode', got '{self.reference}'.")


def check_lam(lam: float, where: str = "lam") -> float:
    _check(isinstance(lam, (int, float)) and 0 <= lam <= 1,
           f"{where} must be in [0, 1] (1 = preservation only, 0 = guidance only), got {lam!r}.")
    return float(lam)


def decode_steps(sampling: SamplingConfig) -> int:
    """Steps of the edit's decode, t_E: floor(encode_ratio x steps), at least 1 (as Sampler.encode_level)."""
    return max(1, min(sampling.steps, int(sampling.encode_ratio * sampling.steps + 1e-9)))


def check_update_steps(update_steps: Steps, steps: int, what: str, steps_name: str, fix: str) -> None:
    """A stage's t_u cannot exceed the steps of the decode it runs in (a fraction never does)."""
    _check(isinstance(update_steps, float) or update_steps <= steps,
           f"{what} (t_u = {update_steps}) exceeds the {steps} decoding steps ({steps_name}); {fix}.")


@dataclass
class AutoLam:
    """`lam: auto`: lam = clip(intercept + slope * area + prompt_change * [prompt changes], low, high) per edit.

    Fit the constants per domain from a lam study: `python -m framework fit-auto-lam` (docs/settings.md, docs/lam.md).
    """

    intercept: float = 1.0
    """lam of an empty mask with the prompt unchanged (before clipping)."""
    slope: float = -4.0
    """Change of lam per unit of mask area (negative: larger masks get more guidance)."""
    prompt_change: float = 0.6
    """Added to lam when the edit prompt differs from the source prompt (0: the mask area alone decides)."""
    low: float = 0.3
    """Smallest lam the rule gives."""
    high: float = 1.0
    """Largest lam the rule gives (1: edits with small masks skip the guidance image)."""

    def __post_init__(self):
        _check(0 <= self.low <= self.high <= 1,
               f"auto_lam needs 0 <= low <= high <= 1, got low={self.low}, high={self.high}.")

    def __call__(self, mask_area: float, prompt_changed: bool = False) -> float:
        """lam for an edit whose mask covers `mask_area` of the image, and whose prompt changes or not."""
        lam = self.intercept + self.slope * float(mask_area) + self.prompt_change * bool(prompt_changed)
        return float(min(self.high, max(self.low, lam)))


def check_lam_setting(lam, where: str = "lam"):
    """A lam setting: a number in [0, 1], or 'auto' (lam from the mask, see AutoLam)."""
    if lam == "auto":
        return "auto"
    _check(isinstance(lam, (int, float)) and not isinstance(lam, bool) and 0 <= lam <= 1,
           f"{where} must be in [0, 1] (1 = preservation only, 0 = guidance only) or 'auto' (set per edit "
           f"from its mask), got {lam!r}.")
    return float(lam)
