"""`--help` says what each setting means in one line; the group helps and docs/settings.md are the full reference."""

from __future__ import annotations

import ast
import dataclasses
import re

import pytest

from framework.core import settings
from framework.lightning.cli import main
from tests.conftest import ROOT

GROUPS = {"sampling": settings.SamplingConfig, "mask": settings.MaskConfig, "ito": settings.ITOConfig,
          "guidance": settings.GuidanceConfig, "auto_lam": settings.AutoLam}


def help_text(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def test_fit_help_is_one_line_per_setting_and_under_200_lines(capsys):
    text = help_text(capsys, "fit", "--help")
    lines = text.splitlines()
    assert 100 < len(lines) < 200  # it was 920 lines with the measurement logs in the docstrings
    assert max(map(len, lines)) <= 150
    # Every field of every settings group is there, on one line with its default.
    rows = {line.split()[0]: line.split()[1] for line in lines if line.startswith("  ") and len(line.split()) > 1}
    for group, cls in GROUPS.items():
        for f in dataclasses.fields(cls):
            assert f"{group}.{f.name}" in rows, (group, f.name)
    assert rows["ito.inner_steps"] == "2" and rows["mask.seeds"] == "3" and rows["lam"] == "1.0"
    assert rows["ito.update_steps"] == rows["guidance.update_steps"] == "0.6"  # t_u as a fraction of the steps
    assert rows["max_epochs"] == "1"  # a Trainer option, with the project's default
    assert "docs/settings.md" in text and "--model.help EditModule" in text


@pytest.mark.parametrize("group", ["ito"])
def test_a_group_help_shows_every_field_with_its_default(capsys, group):
    text = help_text(capsys, "fit", f"--model.{group}.help")
    for f in dataclasses.fields(GROUPS[group]):
        assert re.search(rf"--model\.{group}\.{f.name}\b", text), f.name
    flat = " ".join(text.split())
    assert "(type: int, default: 2)" in flat.split("--model.ito.inner_steps")[2]  # k's default, after its usage entry


def test_each_setting_docstring_is_one_line_and_docs_settings_describes_every_field():
    tree = ast.parse((ROOT / "framework" / "core" / "settings.py").read_text())
    page = (ROOT / "docs" / "settings.md").read_text()
    for node in tree.body:
        if not isinstance(node, ast.ClassDef) or node.name not in {c.__name__ for c in GROUPS.values()}:
            continue
        for field, doc in zip(node.body, node.body[1:]):
            if isinstance(field, ast.AnnAssign) and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):
                assert doc.lineno == doc.end_lineno and len(doc.value.value) <= 112, (node.name, field.target.id)
    for group, cls in GROUPS.items():
        section = page.split(f"## `model.{group}`")[1].split("\n## ")[0]
        for f in dataclasses.fields(cls):
            assert f"**`{f.name}`**" in section, (group, f.name)
