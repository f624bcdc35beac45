"""Optimisation-based multi-modal semantic image editing, as a Lightning experiment framework.

Layers, from the bottom (each imports only the ones below it; tests/test_layers.py checks):
core (the procedure and every plugin contract) -> backbones, stages, io -> pipeline (EditPipeline) ->
lightning -> toy -> evaluation -> cli. Names load on first use, so `import framework` stays light.
"""

from importlib import import_module

from framework import moved

moved.install()

_EXPORTS = {
    "EditPipeline": "framework.pipeline", "EditPipelineOutput": "framework.pipeline",
    "EditModule": "framework.lightning.module", "EditDataModule": "framework.lightning.data",
    "DiffEdit": "framework.lightning.baselines", "SDEdit": "framework.lightning.baselines",
    "EditRequest": "framework.core.request", "EditResult": "framework.core.request",
    "load_manifest": "framework.io.manifests", "StableDiffusion": "framework.backbones",
    "StableDiffusionXL": "framework.backbones",
    "EditError": "framework.core.errors", "ConfigError": "framework.core.errors",
    "ManifestError": "framework.core.errors", "ModelLoadError": "framework.core.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'framework' has no attribute '{name}'")
