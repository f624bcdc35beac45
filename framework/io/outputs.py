"""Writing an edit's files: images, condition maps, the mask, a side-by-side strip, JSON records.

Every file is written to a temporary name and renamed, so an interrupted run never leaves a
half-written image behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from framework.core.request import EditResult
from framework.io.manifests import read_image


def to_pil(image: torch.Tensor) -> Image.Image:
    """(1, C, H, W) in [0, 1] -> PIL image."""
    arr = (image[0].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def upsample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Latent-resolution mask -> image resolution (nearest), (1, 1, H, W)."""
    return F.interpolate(mask.float(), size=size, mode="nearest")


def mask_overlay(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The input with the edit region tinted red."""
    m = upsample_mask(mask, image.shape[-2:])
    red = torch.tensor([1.0, 0.2, 0.2]).view(1, 3, 1, 1)
    return image * (1 - 0.45 * m) + red * 0.45 * m


def _umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_atomic(write, path: Path) -> None:
    """Write via `write(tmp_path)` then rename onto `path`, with the mode a plain `open` would give (0666 less
    the umask: mkstemp's 0600 would hide index.html from a web server or a colleague)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_png(image: Image.Image, path: Path) -> None:
    save_atomic(lambda tmp: image.save(tmp, format="PNG"), path)


def save_json(data: Any, path: Path) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, default=str)
    save_atomic(write, path)


def strip(panels: list[tuple[str, Image.Image]], height: int) -> Image.Image:
    """Labelled panels side by side, each scaled to `height`."""
    label_h = 14
    scaled = [(name, img.convert("RGB").resize((max(1, round(img.width * height / img.height)), height)))
              for name, img in panels]
    width = sum(img.width for _, img in scaled) + 2 * (len(scaled) - 1)
    sheet = Image.new("RGB", (width, height + label_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    x = 0
    for name, img in scaled:
        sheet.paste(img, (x, label_h))
        draw.text((x + 2, 1), name[: max(3, img.width // 6)], fill=(0, 0, 0))
        x += img.width + 2
    return sheet


def write_edit(result: EditResult, folder: Path) -> dict[str, str]:
    """Write all files of one edit into `folder`; return {what: file name}."""
    files: dict[str, Image.Image] = {"input.png": to_pil(result.input), "edit.png": to_pil(result.edit)}
    size = tuple(result.input.shape[-2:])
    files["mask.png"] = to_pil(upsample_mask(result.mask, size))
    if result.soft_mask is not None:
        files["mask_soft.png"] = to_pil(upsample_mask(result.soft_mask, size))
    if result.guidance is not None:
        files["guidance.png"] = to_pil(result.guidance)
    for side, maps in (("source", result.source_maps), ("edit", result.edit_maps)):
        for modality, image in maps.items():
            files[f"{side}_{modality}.png"] = to_pil(image)
    panels = [("input", files["input.png"])]
    panels += [(f"source {m}", files[f"source_{m}.png"]) for m in result.source_maps]
    panels += [(f"edit {m}", files[f"edit_{m}.png"]) for m in result.edit_maps]
    panels.append(("mask", to_pil(mask_overlay(result.input, result.mask))))
    if result.guidance is not None:
        panels.append(("guidance", files["guidance.png"]))
    panels.append(("edit", files["edit.png"]))
    files["strip.png"] = strip(panels, height=max(128, min(size[0], 256)))
    # result.json marks the edit finished (a rerun resumes it): drop an older one before replacing the images, so a
    # write that fails half-way (a full disk) never leaves new images under an old edit's record.
    (folder / "result.json").unlink(missing_ok=True)
    for name, image in files.items():
        save_png(image, folder / name)
    record = dict(result.record, files=sorted(files) + ["result.json"])
    save_json(record, folder / "result.json")
    return {name: str(folder / name) for name in files}


def read_edit(folder: Path, record: dict[str, Any]) -> EditResult:
    """An edit written by `write_edit`, read back (images 8-bit rounded; masks at image resolution).

    The input and edited images must be there (ManifestError naming the file otherwise).
    """
    written = {name for name in record.get("files", []) if (folder / name).is_file()}
    image = read_image(folder / "input.png")

    def read(name: str, channels: int = 3) -> Optional[torch.Tensor]:
        return read_image(folder / name)[:, :channels] if name in written else None

    maps = {side: {name[len(side) + 1:-len(".png")]: read(name) for name in sorted(written)
                   if name.startswith(side + "_") and name.endswith(".png")} for side in ("source", "edit")}
    mask = read("mask.png", 1)
    return EditResult(id=record.get("id", folder.name), edit=read_image(folder / "edit.png"), input=image,
                      mask=torch.zeros_like(image[:, :1]) if mask is None else (mask > 0.5).float(),
                      soft_mask=read("mask_soft.png", 1), guidance=read("guidance.png"),
                      source_maps=maps["source"], edit_maps=maps["edit"], record=dict(record))


def write_results_table(folder: Path, records: list[dict[str, Any]], aggregate: dict[str, float]) -> None:
    """results.csv (one row per edit and a mean row) and results.md (the run's scores, then per edit)."""
    names = sorted({k for r in records for k in r.get("metrics", {})})
    rows = [[r["id"], r.get("method", ""), r.get("lam", "")] + [r.get("metrics", {}).get(n, "") for n in names]
            for r in records if "error" not in r]
    header = ["id", "method", "lam"] + names
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    csv_lines = [",".join(header)] + [",".join(fmt(v) for v in row) for row in rows]
    csv_lines.append(",".join(["mean", "", ""] + [fmt(aggregate.get(n, "")) for n in names]))
    save_atomic(lambda tmp: Path(tmp).write_text("\n".join(csv_lines) + "\n"), folder / "results.csv")
    md = ["| metric | value |", "|---|---|"] + [f"| {k} | {fmt(v)} |" for k, v in sorted(aggregate.items())]
    md += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    save_atomic(lambda tmp: Path(tmp).write_text("\n".join(md) + "\n"), folder / "results.md")
