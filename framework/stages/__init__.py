"""Stage plugins, one file per slot; the method and its baselines differ only in which fill the slots.

- inversions.py (`model.inversion`): DDIM, negative-prompt, null-text and direct inversion.
- masks.py (`model.mask_estimator`): the Eq. 7 mask, a given mask, no mask.
- guidance.py (`model.guidance_generator`): the noise-encoded guidance image G.
- decoders.py (`model.decoder`): the ITO decode (Eq. 6), DiffEdit's mask blend, SDEdit's decode.
- prompt_to_prompt.py: prompt-to-prompt's attention exchange as a decoder.
- flow.py: for rectified-flow backbones, FlowEdit's inversion-free decoder and a midpoint (second-order) inversion.
The contracts they fulfil are in framework.core.stages; this package re-exports every plugin, so
`class_path: framework.stages.NoMask` names one.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional

from framework.core.errors import ConfigError
from framework.core.settings import GuidanceConfig, ITOConfig, MaskConfig, fields_of
from framework.core.stages import (  # noqa: F401  (the contracts, for plugin authors)
    Decoder,
    GuidanceGenerator,
    Inversion,
    InversionJob,
    Inverted,
    MaskEstimator,
    Stage,
    StageTools,
)
from framework.stages.decoders import (  # noqa: F401
    ITODecode,
    MaskBlendDecode,
    NoiseEncodedDecode,
    blend_outside,
    feathered,
    grown,
    linear_lam,
)
from framework.stages.flow import FlowEditDecode, MidpointInversion  # noqa: F401
from framework.stages.guidance import NoiseEncodedGuidance  # noqa: F401
from framework.stages.inversions import DDIMInversion, DirectInversion, NegativePromptInversion, NullTextInversion  # noqa: F401
from framework.stages.masks import GivenMask, NoiseDifferenceMask, NoMask, given_mask, warn_degenerate  # noqa: F401
from framework.stages.prompt_to_prompt import PromptToPrompt  # noqa: F401


SLOTS = ("inversion", "mask_estimator", "guidance_generator", "decoder")
"""The procedure's stage slots, in the order they run."""

SETTINGS_GROUPS = {"mask": ("mask_estimator", NoiseDifferenceMask, MaskConfig),
                   "ito": ("decoder", ITODecode, ITOConfig),
                   "guidance": ("guidance_generator", NoiseEncodedGuidance, GuidanceConfig)}
"""`model.mask`, `model.ito`, `model.guidance`: the init_args of the method's own stage in a slot, by group."""


def settings_group(group: str, value) -> Optional[Any]:
    """A settings group as its dataclass: a dict of some fields, the dataclass (or a stage that is one), or None."""
    cls = SETTINGS_GROUPS[group][2]
    if value is None or type(value) is cls:
        return value
    if isinstance(value, dict):
        return cls(**value)
    if isinstance(value, cls):  # a stage: its settings fields
        return cls(**fields_of(value, cls))
    raise ConfigError(f"model.{group} must be a {cls.__name__} or a dict of its fields, got {type(value).__name__}.")


def method_slots(inversion: Inversion | None = None, mask_estimator: MaskEstimator | None = None,
                 guidance_generator: GuidanceGenerator | None = None, decoder: Decoder | None = None, *,
                 mask=None, ito=None, guidance=None) -> dict:
    """The four slots of an edit, each the given plugin or the method's own (written here once): DDIM inversion,
    the Eq. 7 mask, the noise-encoded guidance image and the ITO decode.

    `mask`, `ito` and `guidance` (a settings dataclass or a dict of its fields) are the init_args of the method's
    own stage in their slot (`model.mask` ... of a YAML); the default guidance stage takes its ITO objective
    (balance, loss_mask, keep_optimizer_state) from `ito`. A group that differs from its defaults while its slot
    holds a plugin of that very class given with its own init_args is refused: one place per setting."""
    groups = {"mask": settings_group("mask", mask), "ito": settings_group("ito", ito),
              "guidance": settings_group("guidance", guidance)}
    given = {"mask_estimator": mask_estimator, "decoder": decoder, "guidance_generator": guidance_generator}
    for group, (slot, _, cls) in SETTINGS_GROUPS.items():
        plugin = given[slot]
        if isinstance(plugin, cls) and groups[group] not in (None, cls()):
            raise ConfigError(f"model.{group} and model.{slot} ({type(plugin).__name__} with its init_args) both set "
                              f"its settings: put them in one place (the {slot}'s init_args, or model.{group}).")
    ito_group = groups["ito"] or ITOConfig()
    if guidance_generator is None:
        fields = asdict(groups["guidance"] or GuidanceConfig())
        guidance_generator = NoiseEncodedGuidance(**fields, **ito_group.objective())
    return {"inversion": inversion or DDIMInversion(),
            "mask_estimator": mask_estimator or NoiseDifferenceMask(**asdict(groups["mask"] or MaskConfig())),
            "guidance_generator": guidance_generator,
            "decoder": decoder or ITODecode(**asdict(ito_group))}
