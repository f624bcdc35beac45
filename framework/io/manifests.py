"""Edit requests: manifests (YAML or JSONL), image loading and sizing, the Lightning data module.

Sizing rule: an image is optionally resized so that its longer side equals `resolution`
(aspect kept), then each side is centre-cropped down to a multiple of 8 (at most 7 pixels),
so every kept pixel is the input's own. Condition maps and masks are resized to the result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image, ImageOps, UnidentifiedImageError

from framework.core.errors import ManifestError, note
from framework.core.request import EditRequest
from framework.core.settings import check_lam_setting
from framework.io.conditions import MapSpec, parse_map_spec
from framework.io.conditions import existing_file as _path

FIELDS = {
    "id": "name of the edit (default: row number)",
    "image": "input image path (required)",
    "source_prompt": "caption of the input, S / C_0's text (required unless data.captioner is set)",
    "edit_prompt": "prompt of the edit (default: source_prompt)",
    "source": "{modality: map} of the input's layout (C_0); a map is a path, {keypoints: pose.json} (an OpenPose "
              "map drawn at the input's size) or {image: photo.jpg, detector: canny, ...options} (made by a "
              "framework.io.conditions detector when the request is loaded)",
    "edit": "{modality: map} of the edit's layout (C_EDIT), maps as in 'source'; a modality missing here keeps the "
            "source map",
    "mask": "edit-mask image path (white = edit); overrides the estimated mask",
    "seed": "random seed of this edit",
    "lam": "preservation weight of this edit, in [0, 1], or 'auto' (from its mask: model.auto_lam)",
    "target": "ground-truth edited image (evaluation only)",
    "true_mask": "ground-truth edit region (evaluation only)",
    "meta": "free-form metadata, copied to the outputs",
}
_PATH_FIELDS = ("image", "mask", "target", "true_mask")


@dataclass
class RequestSpec:
    """One manifest row, validated, with absolute paths; nothing loaded yet."""

    id: str
    image: Path
    source_prompt: str
    edit_prompt: str
    source: dict[str, Path | MapSpec]  # a MapSpec is made when the request is loaded
    edit: dict[str, Path | MapSpec]
    mask: Optional[Path] = None
    seed: Optional[int] = None
    lam: Optional[float | str] = None  # a number or "auto"
    extra: dict[str, Any] = field(default_factory=dict)


def yaml_problem(path: Path, err: yaml.YAMLError) -> str:
    """One line for a YAML parse error: 'file:line:column: not valid YAML: problem (context started at line N).'"""
    if not isinstance(err, yaml.MarkedYAMLError):
        return f"{path}: not valid YAML: {' '.join(str(err).split())}."
    mark = err.problem_mark or err.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    context = ""
    if err.context and err.problem:
        start = f" started at line {err.context_mark.line + 1}" if err.context_mark else ""
        context = f" ({err.context}{start})"
    return f"{where}: not valid YAML: {err.problem or err.context}{context}."


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise ManifestError(f"manifest '{path}' does not exist; give the path of a .yaml or .jsonl manifest.")
    text = path.read_text()
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ManifestError(f"manifest {path}:{n}:{err.colno}: not valid JSON ({err.msg}).") from err
        return rows
    if path.suffix not in (".yaml", ".yml"):
        raise ManifestError(f"manifest '{path}': use a .yaml/.yml or .jsonl file.")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ManifestError(f"manifest {yaml_problem(path, err)}") from err
    rows = data.get("requests") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise ManifestError(f"manifest '{path}': expected a list of requests (or a 'requests:' list).")
    return rows


def _maps(root: Path, value: Any, where: str, **prepare) -> dict[str, Path | MapSpec]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: expected {{modality: path}}, e.g. {{pose: pose.png}}, got {value!r}.")
    # A mapping instead of a path is a map to prepare; `prepare` carries the annotators options.
    return {str(k): parse_map_spec(v, root, f"{where}.{k}", **prepare) if isinstance(v, dict)
            else _path(root, v, f"{where}.{k}") for k, v in value.items()}


def parse_row(row: Any, n: int, root: Path, where: str, annotators: Optional[str | Path] = None,
              allow_pickle: bool = False, captioned: bool = False) -> RequestSpec:
    """Validate one manifest row (every error names the row and the field)."""
    where = f"{where} request {n}"
    if not isinstance(row, dict):
        raise ManifestError(f"{where}: expected a mapping of fields, got {row!r}.")
    unknown = set(row) - set(FIELDS)
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {sorted(unknown)}; valid fields: {sorted(FIELDS)}.")
    if "image" not in row:
        raise ManifestError(f"{where}: missing 'image' (the input image path).")
    if not isinstance(row.get("source_prompt"), str) and not (captioned and row.get("source_prompt") is None):
        raise ManifestError(f"{where}: missing 'source_prompt' (a caption of the input image; the method needs "
                            "it). Write one, or set a captioner (--data.captioner "
                            "framework.io.captioning.BlipCaptioner).")
    prepare = {"annotators": annotators, "allow_pickle": allow_pickle}
    source = _maps(root, row.get("source"), f"{where}.source", **prepare)
    edit = _maps(root, row.get("edit"), f"{where}.edit", **prepare)
    if set(edit) - set(source):
        raise ManifestError(f"{where}: edit map(s) {sorted(set(edit) - set(source))} have no source map; give "
                            f"the input's own layout under 'source' too.")
    edit = {**source, **edit}
    edit_prompt = row.get("edit_prompt", row.get("source_prompt"))
    if edit_prompt is not None and not isinstance(edit_prompt, str):
        raise ManifestError(f"{where}: 'edit_prompt' must be a string.")
    lam = row.get("lam")
    if lam is not None:
        lam = check_lam_setting(lam, f"{where}: lam")
    seed = row.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise ManifestError(f"{where}: 'seed' must be an integer, got {seed!r}.")
    extra = {k: str(_path(root, row[k], f"{where}.{k}")) for k in ("target", "true_mask") if k in row}
    if "meta" in row:
        extra["meta"] = row["meta"]
    return RequestSpec(
        id=str(row.get("id", f"{n:04d}")), image=_path(root, row["image"], f"{where}.image"),
        source_prompt=row.get("source_prompt"), edit_prompt=edit_prompt, source=source, edit=edit,
        mask=_path(root, row["mask"], f"{where}.mask") if row.get("mask") else None,
        seed=seed, lam=lam, extra=extra,
    )


def load_manifest(path: str | Path, annotators: Optional[str | Path] = None,
                  allow_pickle: bool = False, captioned: bool = False) -> list[RequestSpec]:
    """Parse and validate a manifest; paths inside are relative to the manifest's folder.

    `annotators` and `allow_pickle` are for maps made by detectors with weights (framework.io.conditions.detect).
    """
    path = Path(path).expanduser()
    rows = _read_rows(path)
    specs = [parse_row(row, n, path.parent, str(path), annotators, allow_pickle, captioned)
             for n, row in enumerate(rows)]
    ids = [s.id for s in specs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ManifestError(f"{path}: duplicate request id(s) {duplicates}; ids name output folders.")
    if not specs:
        raise ManifestError(f"{path}: the manifest has no requests.")
    return specs


ALPHA_BACKGROUND = (255, 255, 255)  # what shows through transparent pixels: white, as a browser shows them


def open_image(path: Path, mode: str = "RGB", what: str = "image", request: Optional[str] = None) -> Image.Image:
    """Open an image with EXIF orientation applied, as RGB (or L); 16-bit and alpha handled.

    `what` names the file in errors ('image', 'mask', 'pose map' ...); with `request` (its id), errors name the
    request and an input with transparency gets a note saying what it was composited onto."""
    of = f"request '{request}': " if request is not None else ""
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ManifestError(f"{of}{what} '{path}' cannot be read ({err}); re-save it as PNG or JPEG.") from err
    return as_mode(img, mode, request, f"{what} '{path}'")


def as_mode(img: Image.Image, mode: str = "RGB", request: Optional[str] = None, name: str = "image") -> Image.Image:
    """An opened image as RGB (or L): 16-bit brought to 8-bit, transparency laid on white. With `request` (its
    id), transparency gets a note naming the request and the file (`name`: "mask 'm.png'", "image" ...)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.round(arr / 257), 0, 255).astype(np.uint8))  # 16-bit -> 8-bit
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        alpha = np.asarray(img.getchannel("A"))
        if request is not None and alpha.min() < 255:
            note(f"request '{request}': {name} is transparent in {np.mean(alpha < 255):.0%} of its pixels "
                 f"(mean alpha {alpha.mean() / 255:.2f}); composited onto white, which lightens it. Save it without "
                 f"an alpha channel, on the background you want, to edit it as you see it.")
        background = Image.new("RGBA", img.size, (*ALPHA_BACKGROUND, 255))
        img = Image.alpha_composite(background, img)
    return img.convert(mode)


def read_image(path: str | Path, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """An image file -> (1, 3, H, W) in [0, 1], optionally resized to `size` (H, W)."""
    image = torch.from_numpy(np.asarray(open_image(Path(path)), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    if size is None or tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def target_size(width: int, height: int, resolution: Optional[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(resized size, cropped size) of the sizing rule in this module's docstring."""
    if resolution:
        scale = resolution / max(width, height)
        width, height = max(8, round(width * scale)), max(8, round(height * scale))
    return (width, height), (width // 8 * 8, height // 8 * 8)


def _to_tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = arr[..., None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def to_pil_image(image: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) in [0, 1] -> PIL RGB."""
    arr = (image[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr)


def _centre_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    left, top = (img.width - size[0]) // 2, (img.height - size[1]) // 2
    return img.crop((left, top, left + size[0], top + size[1]))


def load_image(path: Path, resolution: Optional[int]) -> torch.Tensor:
    """Input image -> (1, 3, H, W) in [0, 1], H and W multiples of 8."""
    return fit_image(open_image(path), resolution, path)


def fit_image(img: Image.Image, resolution: Optional[int], name) -> torch.Tensor:
    """An opened input image sized by the rule in this module's docstring -> (1, 3, H, W) in [0, 1]."""
    resized, cropped = target_size(img.width, img.height, resolution)
    if min(cropped) < 8:
        raise ManifestError(f"image '{name}' is {img.width}x{img.height}: sides under 8 pixels; set a resolution.")
    if resized != img.size:
        img = img.resize(resized, Image.BICUBIC)
    return _to_tensor(_centre_crop(img, cropped))


def check_aspect(map_size: tuple[int, int], image_size: tuple[int, int], what: str, path) -> None:
    """A map or mask is resized onto the input, so its aspect ratio must be the input's (within 2 %)."""
    aspect, expected = map_size[0] / map_size[1], image_size[0] / image_size[1]
    if abs(aspect / expected - 1) > 0.02:
        raise ManifestError(f"{what} '{path}' is {map_size[0]}x{map_size[1]} but the input image is "
                            f"{image_size[0]}x{image_size[1]}: the aspect ratios differ. Draw the map "
                            f"for the input's frame.")


def load_aligned(path: Path | MapSpec, size: tuple[int, int], image_size: tuple[int, int], what: str,
                 mode: str = "RGB") -> torch.Tensor:
    """A condition map (file or MapSpec, made here) or mask resized like the input; aspects must match."""
    img = path.render(image_size).convert(mode) if isinstance(path, MapSpec) else open_image(path, mode)
    return align_image(img, size, image_size, what, path)


def align_image(img: Image.Image, size: tuple[int, int], image_size: tuple[int, int], what: str, name) -> torch.Tensor:
    """An opened map or mask resized to the input's working `size`; its aspect must be the input's `image_size`."""
    check_aspect(img.size, image_size, what, name)
    return _to_tensor(img.resize(size, Image.BILINEAR))


def check_request(spec: RequestSpec, resolution: Optional[int]) -> None:
    """Open every file of a request (decoding each in full) and check sizes and aspects, without loading
    any model: what `load_request` would refuse, found before the run starts."""
    img = open_image(spec.image, request=spec.id)
    _, cropped = target_size(img.width, img.height, resolution)
    if min(cropped) < 8:
        raise ManifestError(f"request '{spec.id}': image '{spec.image}' is {img.width}x{img.height}: sides under 8 "
                            f"pixels; set a resolution.")
    files = [(f"{side} {k} map", p) for side, maps in (("source", spec.source), ("edit", spec.edit))
             for k, p in maps.items()]
    files += [("mask", spec.mask)] if spec.mask else []
    for what, path in files:
        if isinstance(path, MapSpec):  # made when the request is loaded; its photo must be readable now
            photo = getattr(path, "image", None)
            if photo is not None:
                check_aspect(open_image(photo, what=f"{what} photo", request=spec.id).size, img.size, what, path)
            continue
        opened = open_image(path, "L" if what == "mask" else "RGB", what=what, request=spec.id)
        check_aspect(opened.size, img.size, what, path)


def has_edit_condition(spec: RequestSpec) -> bool:
    """Whether the request asks for any change: an edit prompt other than the source's, or an edit map that
    is not the source map. (A request without a source prompt is captioned: it needs its own edit prompt.)"""
    prompt_differs = spec.edit_prompt is not None and spec.edit_prompt != spec.source_prompt
    return prompt_differs or any(spec.edit[k] != spec.source.get(k) for k in spec.edit)


def check_requests(specs: list[Optional[RequestSpec]], resolution: Optional[int]) -> None:
    """`check_request` on every request; one ManifestError naming each request that cannot be used."""
    problems = []
    for spec in specs:
        if spec is None:
            continue
        try:
            check_request(spec, resolution)
            if not has_edit_condition(spec):
                raise ManifestError(f"request '{spec.id}' has no edit condition: its edit_prompt is its "
                                    f"source_prompt and no edit map differs from its source map. Give an "
                                    f"edit_prompt or an edit map (e.g. edit: {{pose: new_pose.png}}).")
        except ManifestError as err:
            problems.append(str(err).rstrip("."))
    if len(problems) == 1:
        raise ManifestError(problems[0] + ".")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ManifestError(f"{len(problems)} requests cannot be used (nothing was edited): {shown}.")


def load_request(spec: RequestSpec, resolution: Optional[int], index: int = 0) -> EditRequest:
    """Read the images of one request."""
    image = load_image(spec.image, resolution)  # first: an unreadable image raises ManifestError here
    with Image.open(spec.image) as probe:
        original = ImageOps.exif_transpose(probe).size if probe else None
    size = (image.shape[-1], image.shape[-2])
    maps = lambda d, side: {k: load_aligned(p, size, original, f"{side} {k} map") for k, p in d.items()}  # noqa: E731
    mask = load_aligned(spec.mask, size, original, "mask", "L") if spec.mask else None
    return EditRequest(spec.id, image, spec.source_prompt, spec.edit_prompt, maps(spec.source, "source"),
                       maps(spec.edit, "edit"), mask, spec.seed, spec.lam, spec.extra, index)


