"""Optimisation-based multi-modal semantic image editing, as a Lightning experiment framework.

Names load on first use, so light subpackages (e.g. `framework.toyworld`) import without torch.
"""

from importlib import import_module

_EXPORTS = {
    "EditPipeline": "framework.pipeline", "EditModule": "framework.module", "EditDataModule": "framework.data", "EditRequest": "framework.data",
    "load_manifest": "framework.data", "StableDiffusion": "framework.models", "EditError": "framework.errors",
    "ConfigError": "framework.errors", "ManifestError": "framework.errors", "ModelLoadError": "framework.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'framework' has no attribute '{name}'")
