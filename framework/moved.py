"""Module paths from before the package had layers, kept so that configs, records and scripts naming them work.

`framework.inversion.NullTextInversion`, `python -m framework.sweep` and `import framework.toyworld` resolve to
the module that now holds the code (the same module object, so classes keep their identity). New code imports
the new paths; this table only grows when a module moves again.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "framework.engine": "framework.core.procedure", "framework.config": "framework.core.settings",
    "framework.errors": "framework.core.errors", "framework.ddim": "framework.core.ddim",
    "framework.denoiser": "framework.core.denoiser", "framework.ito": "framework.core.ito",
    "framework.masks": "framework.core.masks", "framework.mask_cache": "framework.core.mask_cache",
    "framework.inversion": "framework.stages.inversions", "framework.prompt_to_prompt": "framework.stages.prompt_to_prompt",
    "framework.models": "framework.backbones", "framework.data": "framework.lightning.data",
    "framework.preprocess": "framework.io.conditions", "framework.captioning": "framework.io.captioning",
    "framework.outputs": "framework.io.outputs", "framework.records": "framework.io.records",
    "framework.report": "framework.io.report", "framework.module": "framework.lightning.module",
    "framework.baselines": "framework.lightning.baselines", "framework.callbacks": "framework.lightning.callbacks",
    "framework.strategy": "framework.lightning.strategy", "framework.threads": "framework.lightning.threads",
    "framework.preflight": "framework.lightning.preflight", "framework.cli_messages": "framework.lightning.messages",
    "framework.demo": "framework.cli.demo", "framework.metrics": "framework.evaluation.metrics",
    "framework.datasets": "framework.toy.datasets", "framework.sweep": "framework.evaluation.sweep",
    "framework.fronts": "framework.evaluation.fronts", "framework.plots": "framework.evaluation.plots",
    "framework.paired": "framework.evaluation.paired", "framework.toyworld": "framework.toy.world",
    "framework.toymodel": "framework.toy.model", "framework.tiny": "framework.toy.tiny",
    "framework.photos": "framework.toy.photos", "framework.toyworld.pose": "framework.io.openpose",
}


def new_name(name: str) -> str | None:
    """Where an old module path lives now (its longest moved prefix replaced), or None if it never moved."""
    for old in sorted(MOVED, key=len, reverse=True):
        if name == old or name.startswith(old + "."):
            return MOVED[old] + name[len(old):]
    return None


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old path as the module at its new path; `python -m old.path` runs the new module's code."""

    def find_spec(self, name, path=None, target=None):
        new = new_name(name)
        if new is None:
            return None
        real = importlib.util.find_spec(new)
        if real is None:
            return None
        spec = importlib.util.spec_from_loader(name, self, origin=real.origin,
                                               is_package=real.submodule_search_locations is not None)
        spec.loader_state = new
        return spec

    def create_module(self, spec):
        module = importlib.import_module(spec.loader_state)
        spec.loader_state = module.__spec__  # importlib sets the alias spec on the module next: put it back then
        return module

    def exec_module(self, module):  # the module under its new name is already executed
        module.__spec__ = module.__spec__.loader_state

    def get_code(self, name):  # for runpy (`python -m framework.sweep`)
        new = new_name(name)
        return importlib.util.find_spec(new).loader.get_code(new)


def install() -> None:
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Alias())
