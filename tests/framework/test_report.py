"""The run report: contact_sheet.png and index.html, after a real fit and from hand-made records."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

from framework.io.report import LABEL_WIDTH, MAX_SHEET_HEIGHT, write_report
from framework.lightning.cli import main
from tests.framework.test_cli import FAST, write_config


class _Links(HTMLParser):
    """Collects every href and src of a page, and whether it has scripts."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        self.scripts += tag == "script"
        self.links += [value for name, value in attrs if name in ("href", "src")]


def links_of(page: str) -> _Links:
    parser = _Links()
    parser.feed(page)
    return parser


def assert_links_resolve(folder: Path) -> list[str]:
    """Every link of index.html is relative and names a file in `folder`; returns the links."""
    from urllib.parse import unquote

    parsed = links_of((folder / "index.html").read_text(encoding="utf-8"))
    assert parsed.scripts == 0
    for link in parsed.links:
        assert "://" not in link and not link.startswith("/"), link
        assert (folder / unquote(link)).is_file(), link
    return parsed.links


def fake_edit(out: Path, edit_id: str, strip_size: tuple[int, int], **record) -> dict:
    """An edit folder with a strip and the four thumbnails, and its record."""
    folder = out / edit_id
    folder.mkdir(parents=True)
    Image.new("RGB", strip_size, (30, 120, 200)).save(folder / "strip.png")
    for name in ("input.png", "mask.png", "guidance.png", "edit.png"):
        Image.new("RGB", (32, 32), (200, 60, 60)).save(folder / name)
    (folder / "result.json").write_text("{}")
    return {"id": edit_id, "source_prompt": "a cat", "edit_prompt": "a dog", "modalities": ["pose"], "lam": 0.6,
            "seed": 0, "mask_area": 0.25, "seconds": {"mask": 1.0, "final": 2.0, "total": 3.0},
            "unet_evaluations": {"mask": 24, "final": 12}, **record}


def test_fit_writes_contact_sheet_and_index(tmp_path, tiny_dirs, manifest):
    out = tmp_path / "out"
    main(["fit", "--config", str(write_config(tmp_path / "exp.yaml", tiny_dirs, manifest, out)), *FAST])
    strips = [Image.open(out / edit_id / "strip.png") for edit_id in ("text", "pose")]
    sheet = Image.open(out / "contact_sheet.png")
    row = max(s.height for s in strips)
    assert sheet.height == len(strips) * row == sum(s.height for s in strips)  # same-size strips: no rescale
    assert sheet.width == LABEL_WIDTH + max(s.width for s in strips)
    page = (out / "index.html").read_text(encoding="utf-8")
    for text in (">text</a>", ">pose</a>", "a red circle", "a blue circle", ">0.80<", ">54</td>"):  # ids, prompts, lam, UNet evals (6 + 24 + 4 x 2 + 2 x 2 + 12)
        assert text in page
    links = assert_links_resolve(out)
    assert {"text/edit.png", "pose/input.png", "pose/mask.png", "pose/guidance.png", "contact_sheet.png"} <= set(links)
    shutil.move(out, tmp_path / "moved")  # relative links survive a move
    assert_links_resolve(tmp_path / "moved")


def test_rows_share_one_height_and_failed_or_missing_edits_render(tmp_path):
    records = [fake_edit(tmp_path, "small", (300, 142)), fake_edit(tmp_path, "tall", (400, 270)),
               {"id": "broken", "error": "NaN <latents> & more"},
               {"id": "gone", "source_prompt": "x", "edit_prompt": "x", "seconds": {}, "unet_evaluations": {}},
               fake_edit(tmp_path, "corrupt", (100, 100))]
    (tmp_path / "corrupt" / "strip.png").write_bytes(b"not a png")
    paths = write_report(tmp_path, records)
    assert set(paths) == {"contact_sheet", "index"} and all(p.is_file() for p in paths.values())
    sheet = Image.open(paths["contact_sheet"])
    assert sheet.height == 5 * 270  # the tallest strip sets the common row height
    assert sheet.width == LABEL_WIDTH + max(round(300 * 270 / 142), 400)
    page = paths["index"].read_text(encoding="utf-8")
    assert "failed: NaN &lt;latents&gt; &amp; more" in page and "<latents>" not in page
    assert "1 failed" in page
    links = assert_links_resolve(tmp_path)
    assert not any(link.startswith(("gone/", "broken/")) for link in links)  # nothing there
    assert not list(tmp_path.glob(".*"))  # no temporaries left behind


def test_text_is_escaped_and_odd_ids_are_quoted(tmp_path):
    prompt = '<script>alert("x")</script> & <b>bold</b>'
    records = [fake_edit(tmp_path, "a b#1", (200, 142), source_prompt=prompt, edit_prompt="it's \"quoted\"")]
    page = write_report(tmp_path, records)["index"].read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "it&#x27;s &quot;quoted&quot;" in page
    assert "a%20b%231/edit.png" in page
    assert "a%20b%231/edit.png" in assert_links_resolve(tmp_path)


def test_long_runs_shrink_rows_and_no_records_still_write(tmp_path):
    records = [{"id": f"e{i:03d}", "error": "x"} for i in range(200)]
    sheet = Image.open(write_report(tmp_path, records)["contact_sheet"])
    assert sheet.height == MAX_SHEET_HEIGHT  # 200 rows of 80 px, not 142
    empty = tmp_path / "empty"
    empty.mkdir()
    paths = write_report(empty, [])
    assert Image.open(paths["contact_sheet"]).height > 0 and "0 edited" in paths["index"].read_text()
