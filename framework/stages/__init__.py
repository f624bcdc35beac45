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

from framework.core.stages import (  # noqa: F401  (the contracts, for plugin authors)
    Decoder,
    GuidanceGenerator,
    Inversion,
    InversionJob,
    Inverted,
    MaskEstimator,
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


def method_slots(inversion: Inversion | None = None, mask_estimator: MaskEstimator | None = None,
                 guidance_generator: GuidanceGenerator | None = None, decoder: Decoder | None = None) -> dict:
    """The four slots of an edit, each the given plugin or the method's own (written here once): DDIM inversion,
    the Eq. 7 mask, the noise-encoded guidance image and the ITO decode."""
    return {"inversion": inversion or DDIMInversion(), "mask_estimator": mask_estimator or NoiseDifferenceMask(),
            "guidance_generator": guidance_generator or NoiseEncodedGuidance(), "decoder": decoder or ITODecode()}
