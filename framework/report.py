"""Run reports for a user without W&B: a contact sheet PNG and a static HTML page (placeholder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_report(output_dir: Path, records: list[dict[str, Any]]) -> dict[str, Path]:
    """Write `contact_sheet.png` and `index.html` into `output_dir`; return their paths."""
    return {}
