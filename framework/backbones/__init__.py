"""Backbones: model families behind the backbone contract (framework.core.backbone), and their loading.

- loading.py: hub ids, local folders and `builtin:` names to diffusers components, with one-line errors;
  the checkpoint's `model_index.json` decides the family.
- sd.py: Stable Diffusion 1.x, the first family; `StableDiffusion(pretrained)` builds the checkpoint's family.
- sdxl.py: Stable Diffusion XL (two text encoders, pooled embedding, micro-conditioning).
"""

from framework.backbones.loading import (  # noqa: F401
    BUILTIN_PREFIX,
    FAMILY_CLASSES,
    backbone_class,
    builtin_folder,
    check_family,
    checkpoint_family,
    load_component,
    load_config,
    resolve_pretrained,
)
from framework.backbones.sd import StableDiffusion  # noqa: F401
from framework.backbones.sdxl import StableDiffusionXL  # noqa: F401
