"""The README stays a front door, says what CI runs, and points at code and pages that exist."""

from __future__ import annotations

import re

from tests.conftest import ROOT

README = ROOT / "README.md"
# Pages written alongside these docs; a link to one of them is checked as soon as the page exists.
PAGES_ADDED_ALONGSIDE = {"stages.md", "reliability.md", "performance_cost.md", "piebench.md", "toymodel_gpu.md"}


def test_readme_is_one_screenful_and_its_test_command_is_what_ci_runs():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    commands = re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)
    assert ci in commands  # verbatim, as one block
    quickstart = ci.replace("'.[test]'", ".").replace("python -m pytest",
                                                       "python -m framework fit --config experiments/quickstart.yaml")
    assert quickstart in commands


def test_each_equation_row_names_functions_defined_in_its_file():
    rows = [line for line in README.read_text().splitlines()
            if re.match(r"\| (Eq\. \d|guidance image|A\.5|Fig\. 1) ", line) and ".py`" in line]
    assert {r.split("|")[1].strip() for r in rows} >= {"Eq. 1", "Eq. 2", "Eq. 4", "Eq. 5", "Eq. 6", "Eq. 7",
                                                       "guidance image G", "A.5"}
    every_source = "\n".join(p.read_text() for p in ROOT.glob("*/**/*.py") if ".venv" not in p.parts)
    for row in rows:
        cell = row.split("|")[3]
        for part in cell.split(";"):
            path, _, rest = part.partition(":")
            source = (ROOT / path.strip(" `")).read_text()
            named, _, mentioned = rest.partition("(")
            for name in re.findall(r"`([\w.]+)`", named):
                for piece in name.split("."):
                    assert re.search(rf"^\s*(def|class) {piece}\b", source, flags=re.M), (row, name)
            for name in re.findall(r"`([\w]+)`", mentioned):
                assert re.search(rf"^\s*(def|class) {name}\b", every_source, flags=re.M), (row, name)


def test_links_of_the_readme_and_docs_reach_files():
    pages = [README, *sorted((ROOT / "docs").rglob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path = (page.parent / target).resolve()
            assert path.exists() or path.name in PAGES_ADDED_ALONGSIDE, f"{page.name}: {target}"
