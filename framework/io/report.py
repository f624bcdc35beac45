"""Run reports for a user without W&B: a contact sheet PNG and a static HTML page.

Both are built from the edit records (the `result.json` of each edit, or `{"id", "error"}`)
and the files already in each edit's folder; a missing or unreadable file is left out.
"""

from __future__ import annotations

import html
import json
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image, ImageDraw

from framework.io.outputs import save_atomic, save_png

LABEL_WIDTH = 140  # px of the id column of the contact sheet
DEFAULT_ROW_HEIGHT = 142  # a strip.png of a small image: 128 px panels + 14 px labels
MAX_SHEET_HEIGHT = 16_000  # px: rows shrink past this, so a long run's sheet stays a few MB
MIN_ROW_HEIGHT = 64
MIN_TEXT_WIDTH = 320  # px of an error message when no strip sets the width
THUMBNAILS = ("input.png", "mask.png", "guidance.png", "edit.png")
STAGES = ("encode", "inversion", "mask", "guidance", "final", "decode")


def earlier_records(output_dir: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The edits already in `output_dir` (their result.json, or error.json) that `records` does not cover,
    sorted by id: edits of another manifest run into the same folder."""
    known = {str(r.get("id")) for r in records}
    earlier = []
    for folder in sorted(p for p in Path(output_dir).iterdir() if p.is_dir() and p.name not in known):
        for name in ("result.json", "error.json"):
            try:
                record = json.loads((folder / name).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and str(record.get("id", folder.name)) == folder.name:
                earlier.append(record)
                break
    return earlier


def write_report(output_dir: Path, records: list[dict[str, Any]]) -> dict[str, Path]:
    """Write `contact_sheet.png` and `index.html` into `output_dir`; return their paths.

    Both show this run's edits, then the edits earlier runs left in the folder (another manifest into
    the same output_dir), so the page lists everything the folder holds."""
    output_dir = Path(output_dir)
    records = list(records) + earlier_records(output_dir, records)
    sheet_path = output_dir / "contact_sheet.png"
    save_png(contact_sheet(output_dir, records), sheet_path)
    index_path = output_dir / "index.html"
    page = index_html(output_dir, records)
    save_atomic(lambda tmp: Path(tmp).write_text(page, encoding="utf-8"), index_path)
    return {"contact_sheet": sheet_path, "index": index_path}


# ------------------------------------------------------------------------------ contact sheet
def _strip_path(output_dir: Path, record: dict[str, Any]) -> Path | None:
    return None if "error" in record else output_dir / str(record.get("id")) / "strip.png"


def _size(path: Path | None) -> tuple[int, int] | None:
    """(width, height) of a readable image, from its header only; None when missing or unreadable."""
    if path is None:
        return None
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError):
        return None


def _row_height(sizes: list[tuple[int, int] | None]) -> int:
    """One height for every row: the tallest strip, shrunk so the whole sheet stays bounded."""
    tallest = max((size[1] for size in sizes if size is not None), default=DEFAULT_ROW_HEIGHT)
    budget = MAX_SHEET_HEIGHT // max(1, len(sizes))
    return max(MIN_ROW_HEIGHT, min(tallest, budget))


def _draw_label(draw: ImageDraw.ImageDraw, label: str, width: int, height: int) -> None:
    """The id, wrapped to the label column, and a rule under the row."""
    lines = textwrap.wrap(label, width=(LABEL_WIDTH - 8) // 6, break_long_words=True)[: max(1, (height - 8) // 12)]
    draw.multiline_text((4, 4), "\n".join(lines), fill=(0, 0, 0), spacing=2)
    draw.line([(0, height - 1), (width, height - 1)], fill=(210, 210, 210))


def _text_row(label: str, message: str, height: int, width: int, colour=(160, 0, 0)) -> Image.Image:
    """A row with the id on the left and a wrapped message in place of the strip."""
    row = Image.new("RGB", (LABEL_WIDTH + width, height), (255, 255, 255))
    draw = ImageDraw.Draw(row)
    _draw_label(draw, label, row.width, height)
    lines = textwrap.wrap(message, width=max(20, width // 6))[: max(1, (height - 8) // 12)]
    draw.multiline_text((LABEL_WIDTH + 4, 4), "\n".join(lines), fill=colour, spacing=2)
    return row


def _strip_row(label: str, path: Path, width: int, height: int) -> Image.Image | None:
    """A row with the id on the left and the edit's strip scaled to `height`; None if it cannot be read."""
    try:
        with Image.open(path) as strip:
            scaled = strip.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    except (OSError, ValueError):
        return None
    row = Image.new("RGB", (LABEL_WIDTH + width, height), (255, 255, 255))
    row.paste(scaled, (LABEL_WIDTH, 0))
    _draw_label(ImageDraw.Draw(row), label, row.width, height)
    return row


def _sheet_row(record: dict[str, Any], path: Path | None, strip_width: int, height: int,
               text_width: int) -> Image.Image:
    """The contact-sheet row of one edit: its strip, or its error, or a note that the strip is missing."""
    label = str(record.get("id", "?"))
    if "error" in record:
        return _text_row(label, f"failed: {record['error']}", height, text_width)
    row = _strip_row(label, path, strip_width, height) if strip_width else None
    if row is None:
        row = _text_row(label, "strip.png is missing or unreadable", height, text_width, colour=(110, 110, 110))
    return row


def contact_sheet(output_dir: Path, records: list[dict[str, Any]]) -> Image.Image:
    """One row per edit: its strip.png with the id on the left; failed edits show their error."""
    paths = [_strip_path(output_dir, r) for r in records]
    sizes = [_size(p) for p in paths]  # headers only: one strip is decoded at a time below
    height = _row_height(sizes)
    widths = [0 if size is None else max(1, round(size[0] * height / size[1])) for size in sizes]
    # Text rows span the strips' width, so the sheet is no wider than its images need.
    text_width = max(widths + [MIN_TEXT_WIDTH])
    sheet = Image.new("RGB", (LABEL_WIDTH + text_width, height * max(1, len(records))), (255, 255, 255))
    for n, (record, path, width) in enumerate(zip(records, paths, widths)):
        sheet.paste(_sheet_row(record, path, width, height, text_width), (0, n * height))
    if not records:
        sheet.paste(_text_row("(none)", "no edits in this run", height, text_width), (0, 0))
    return sheet


# --------------------------------------------------------------------------------- index.html
_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; font-size: 13px; }
th { background: #f0f0f0; }
td.num { text-align: right; white-space: nowrap; }
td.error { color: #a00000; }
img { max-width: 128px; max-height: 128px; display: block; }
.missing { color: #999; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _href(*parts: str) -> str:
    """A relative, URL-quoted link (escaped for an attribute), so the folder can be moved."""
    return _esc("/".join(quote(part) for part in parts))


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _thumbnail(output_dir: Path, edit_id: str, name: str) -> str:
    """A linked thumbnail of `<id>/<name>`, or a dash when the file is missing."""
    if not (output_dir / edit_id / name).is_file():
        return '<td class="missing">&ndash;</td>'
    href = _href(edit_id, name)
    return f'<td><a href="{href}"><img src="{href}" alt="{_esc(edit_id)} {_esc(name)}" loading="lazy"></a></td>'


def _id_cell(output_dir: Path, record: dict[str, Any]) -> str:
    """The id, linked to the edit's result.json (or error.json) when there is one."""
    edit_id = str(record.get("id", "?"))
    note = " <small>(resumed)</small>" if record.get("resumed") else ""
    for name in ("result.json", "error.json"):
        if (output_dir / edit_id / name).is_file():
            return f'<td><a href="{_href(edit_id, name)}">{_esc(edit_id)}</a>{note}</td>'
    return f"<td>{_esc(edit_id)}{note}</td>"


def _per_stage(values: dict[str, Any], unit: str) -> str:
    """`inversion 6, mask 24, ...`: a tooltip of per-stage numbers, escaped."""
    return _esc(", ".join(f"{k} {unit.format(v)}" for k, v in values.items() if k in STAGES))


def _table_row(output_dir: Path, record: dict[str, Any]) -> str:
    """One table row for an edit; a failed edit's row carries its error instead of results."""
    cells = [_id_cell(output_dir, record)]
    if "error" in record:
        cells.append(f'<td class="error" colspan="{len(COLUMNS) - 1}">failed: {_esc(record["error"])}</td>')
        return "<tr>" + "".join(cells) + "</tr>"
    edit_id = str(record.get("id", "?"))
    source, edit = record.get("source_prompt", ""), record.get("edit_prompt", "")
    prompts = _esc(source) if source == edit else f"{_esc(source)}<br>&rarr; {_esc(edit)}"
    seconds = record.get("seconds", {})
    evaluations = record.get("unet_evaluations", {})
    seconds_tip, evaluations_tip = _per_stage(seconds, "{:.2f}s"), _per_stage(evaluations, "{}")
    cells += [
        f"<td>{prompts}</td>",
        f"<td>{_esc(', '.join(record.get('modalities', [])) or 'text')}</td>",
        f'<td class="num">{_esc(_fmt(record.get("lam")))}</td>',
        f'<td class="num">{_esc(_fmt(record.get("seed")))}</td>',
        f'<td class="num">{_esc(_fmt(record.get("mask_area"), 3))}</td>',
        f'<td class="num" title="{seconds_tip}">{_esc(_fmt(seconds.get("total")))}</td>',
        f'<td class="num" title="{evaluations_tip}">{sum(evaluations.values())}</td>',
    ]
    cells += [_thumbnail(output_dir, edit_id, name) for name in THUMBNAILS]
    return "<tr>" + "".join(cells) + "</tr>"


COLUMNS = ("id", "prompts (source &rarr; edit)", "modalities", "lam", "seed", "mask area", "seconds",
           "UNet evaluations", "input", "mask", "guidance", "edit")


def _header(output_dir: Path, records: list[dict[str, Any]]) -> str:
    """Title, counts and links to the run-wide files that exist."""
    failed = sum(1 for r in records if "error" in r)
    links = [f'<a href="{_href(name)}">{name}</a>' for name in ("summary.json", "contact_sheet.png")
             if (output_dir / name).is_file()]
    return (f"<h1>Edits in {_esc(output_dir.name)}</h1>\n"
            f"<p>{len(records) - failed} edited, {failed} failed. {' &middot; '.join(links)}</p>")


def index_html(output_dir: Path, records: list[dict[str, Any]]) -> str:
    """A static page (no scripts, no external assets): one table row per edit."""
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    body = "\n".join(_table_row(output_dir, r) for r in records)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>Edits: {_esc(output_dir.name)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"{_header(output_dir, records)}\n<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n"
            f"</tbody>\n</table>\n</body>\n</html>\n")
