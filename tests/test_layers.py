"""The package's layers: every import (top-level or inside a function) points down, never up.

Layers from the bottom; a module may import its own layer's package and anything below it. `framework.core`
imports no third-party framework beyond torch and numpy. Read with `ast`, so a function-level import that
would hide a cycle counts like any other.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [
    ("framework.core",),
    ("framework.backbones",),
    ("framework.stages", "framework.io", "losses", "conditioners"),
    ("framework.pipeline",),
    ("framework.lightning",),
    ("framework.evaluation",),
    ("framework.toy",),
    ("framework.cli",),
    ("framework.__main__",),
]
"""Within one row, packages do not import each other (each stands on the rows below)."""
CORE_MAY_NOT = ("lightning", "wandb", "gradio", "yaml", "jsonargparse", "diffusers", "transformers")


def package_of(module: str) -> str | None:
    for row in LAYERS:
        for package in row:
            if module == package or module.startswith(package + "."):
                return package
    return None


def rank(package: str) -> int:
    return next(i for i, row in enumerate(LAYERS) if package in row)


def modules():
    for folder in ("framework", "losses", "conditioners"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "assets" in path.parts:
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            yield name, path


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node.lineno
            yield from ((f"{node.module}.{alias.name}", node.lineno) for alias in node.names)


def upward_edges():
    for name, path in modules():
        here = package_of(name)
        if here is None:  # framework/__init__.py and framework/moved.py: the root, imported by everything
            continue
        for target, line in imports(path):
            there = package_of(target)
            if there is None or there == here:
                continue
            if rank(there) >= rank(here):
                yield f"{path.relative_to(ROOT)}:{line}: {name} ({here}) imports {target} ({there})"


def test_imports_point_down_only():
    assert list(upward_edges()) == []


def test_core_imports_torch_and_numpy_only():
    found = [f"{path.relative_to(ROOT)}:{line}: {target}" for name, path in modules() if package_of(name) ==
             "framework.core" for target, line in imports(path) if target.split(".")[0] in CORE_MAY_NOT]
    assert found == []


def test_import_core_loads_nothing_above_it():
    probe = ("import sys, framework.core.procedure, framework.core.stages, framework.core.metric\n"
             "bad = ('lightning', 'wandb', 'gradio', 'yaml', 'framework.toy', 'framework.evaluation', "
             "'framework.lightning', 'framework.cli')\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in bad or m.startswith(bad)))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("old", ["framework.inversion.NullTextInversion", "framework.stages.NoMask",
                                 "framework.baselines.DiffEdit", "framework.prompt_to_prompt.PromptToPrompt",
                                 "framework.models.StableDiffusion", "framework.data.EditDataModule",
                                 "framework.datasets.ToyEditDataModule", "framework.metrics.BackgroundShift",
                                 "framework.module.EditModule", "framework.EditModule", "framework.StableDiffusion"])
def test_old_class_paths_resolve_to_the_same_class(old):
    import importlib

    from framework.moved import new_name

    module, name = old.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    assert cls.__name__ == name
    now = new_name(module)
    if now is not None:  # the old path gives the very class the new module holds
        assert cls is getattr(importlib.import_module(now), name)


def test_old_module_paths_still_run_as_scripts():
    """`python -m framework.toyworld.make_examples` (a moved module) runs the module that now holds the code."""
    out = subprocess.run([sys.executable, "-m", "framework.toyworld.make_examples", "--help"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0 and "--seed" in out.stdout
