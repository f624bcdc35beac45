"""Edit requests: manifest parsing and validation, image loading and the sizing rule, the data module."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from framework.core.errors import ConfigError, ManifestError
from framework.io.manifests import EditRequest, RequestSpec, load_image, load_manifest, load_request, target_size
from framework.lightning.data import EditDataModule


def _rgb(path: Path, width: int, height: int, seed: int = 0) -> np.ndarray:
    """Save a random RGB PNG of width x height; return its (H, W, 3) uint8 pixels."""
    arr = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def _yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _spec(image: Path, **kw) -> RequestSpec:
    return RequestSpec(id="r", image=image, source_prompt="a cat", edit_prompt="a dog",
                       source=kw.pop("source", {}), edit=kw.pop("edit", {}), **kw)


def _single(tmp_path: Path, **fields) -> Path:
    """A one-row JSONL manifest next to a 16x16 input.png; `fields` override the defaults."""
    _rgb(tmp_path / "input.png", 16, 16)
    row = {"image": "input.png", "source_prompt": "a cat", **fields}
    row = {k: v for k, v in row.items() if v is not ...}
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return path


# ---------------------------------------------------------------- sizing rule


def test_crop_to_multiple_of_8_keeps_centre_pixels_exactly(tmp_path):
    arr = _rgb(tmp_path / "a.png", 100, 70)
    image = load_image(tmp_path / "a.png", None)
    assert image.shape == (1, 3, 64, 96) and image.dtype == torch.float32
    # 100 -> 96 drops 2 columns left / 2 right; 70 -> 64 drops 3 rows top / 3 bottom.
    expected = torch.from_numpy(arr[3:67, 2:98].astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    assert torch.equal(image, expected)


def test_image_with_side_under_8_needs_a_resolution(tmp_path):
    _rgb(tmp_path / "thin.png", 40, 5)
    with pytest.raises(ManifestError, match="40x5") as err:
        load_image(tmp_path / "thin.png", None)
    assert "thin.png" in str(err.value) and "resolution" in str(err.value)
    assert load_image(tmp_path / "thin.png", 64).shape == (1, 3, 8, 64)  # 64 x 8 after resizing


def test_resolution_scales_longer_side(tmp_path):
    _rgb(tmp_path / "a.png", 64, 48)
    image = load_image(tmp_path / "a.png", 128)
    assert image.shape == (1, 3, 96, 128)
    assert 0.0 <= image.min().item() and image.max().item() <= 1.0


@pytest.mark.parametrize("width, height, resolution, resized, cropped", [
    (100, 70, None, (100, 70), (96, 64)),
    (64, 48, 128, (128, 96), (128, 96)),
    (100, 70, 64, (64, 45), (64, 40)),
    (70, 100, 64, (45, 64), (40, 64)),
    (512, 512, 512, (512, 512), (512, 512)),
    (1000, 10, 100, (100, 8), (96, 8)),  # the short side never goes below 8
])
def test_target_size(width, height, resolution, resized, cropped):
    assert target_size(width, height, resolution) == (resized, cropped)


def test_maps_and_mask_are_resized_to_the_image(tmp_path):
    _rgb(tmp_path / "a.png", 100, 70)
    _rgb(tmp_path / "pose.png", 50, 35, seed=1)  # same aspect, half the size
    _rgb(tmp_path / "pose2.png", 200, 140, seed=2)
    Image.new("L", (100, 70), 255).save(tmp_path / "mask.png")
    spec = _spec(tmp_path / "a.png", source={"pose": tmp_path / "pose.png"}, edit={"pose": tmp_path / "pose2.png"},
                 mask=tmp_path / "mask.png", seed=5, lam=0.25)
    req = load_request(spec, None, index=3)
    assert req.image.shape == (1, 3, 64, 96)
    assert req.source_maps["pose"].shape == (1, 3, 64, 96)
    assert req.edit_maps["pose"].shape == (1, 3, 64, 96)
    assert req.mask.shape == (1, 1, 64, 96) and torch.all(req.mask == 1.0)
    for t in (req.image, req.source_maps["pose"], req.edit_maps["pose"], req.mask):
        assert t.min().item() >= 0.0 and t.max().item() <= 1.0
    assert (req.id, req.seed, req.lam, req.index) == ("r", 5, 0.25, 3)

    req = load_request(spec, 128)
    assert req.image.shape == (1, 3, 88, 128)  # 128 x 90 -> cropped to 128 x 88
    assert req.source_maps["pose"].shape == req.edit_maps["pose"].shape == (1, 3, 88, 128)
    assert req.mask.shape == (1, 1, 88, 128)


def test_map_with_other_aspect_is_rejected(tmp_path):
    _rgb(tmp_path / "a.png", 100, 70)
    _rgb(tmp_path / "pose.png", 70, 70)
    with pytest.raises(ManifestError, match="aspect") as err:
        load_request(_spec(tmp_path / "a.png", source={"pose": tmp_path / "pose.png"},
                           edit={"pose": tmp_path / "pose.png"}), None)
    assert "pose.png" in str(err.value) and "70x70" in str(err.value)


def test_mask_with_other_aspect_is_rejected(tmp_path):
    _rgb(tmp_path / "a.png", 100, 70)
    Image.new("L", (70, 100), 255).save(tmp_path / "mask.png")
    with pytest.raises(ManifestError, match="aspect"):
        load_request(_spec(tmp_path / "a.png", mask=tmp_path / "mask.png"), None)


# ---------------------------------------------------------------- manifests


ROWS = [
    {"id": "first", "image": "img/a.png", "source_prompt": "a cat", "edit_prompt": "a dog",
     "source": {"pose": "img/pose.png"}, "edit": {"pose": "img/pose2.png"}, "seed": 7, "lam": 0.5},
    {"image": "img/a.png", "source_prompt": "a red ball", "mask": "img/mask.png"},
]


def _files(root: Path) -> None:
    for name in ("a.png", "pose.png", "pose2.png", "mask.png"):
        _rgb(root / "img" / name, 16, 16)


def test_three_manifest_forms_parse_the_same(tmp_path):
    _files(tmp_path)
    import yaml

    as_list = _yaml(tmp_path / "list.yaml", yaml.safe_dump(ROWS))
    as_requests = _yaml(tmp_path / "requests.yml", yaml.safe_dump({"requests": ROWS}))
    as_jsonl = _yaml(tmp_path / "rows.jsonl", "\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    specs = load_manifest(as_list)
    assert load_manifest(as_requests) == specs
    assert load_manifest(as_jsonl) == specs
    img = tmp_path / "img"
    assert specs[0] == RequestSpec(id="first", image=img / "a.png", source_prompt="a cat", edit_prompt="a dog",
                                   source={"pose": img / "pose.png"}, edit={"pose": img / "pose2.png"},
                                   mask=None, seed=7, lam=0.5, extra={})
    assert specs[1] == RequestSpec(id="0001", image=img / "a.png", source_prompt="a red ball",
                                   edit_prompt="a red ball", source={}, edit={}, mask=img / "mask.png",
                                   seed=None, lam=None, extra={})
    assert isinstance(specs[0].lam, float)


def test_paths_are_relative_to_the_manifest_folder(tmp_path, monkeypatch):
    _files(tmp_path / "data")
    manifest = _yaml(tmp_path / "data" / "m.yaml", "- image: img/a.png\n  source_prompt: x\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (spec,) = load_manifest(manifest)
    assert spec.image == tmp_path / "data" / "img" / "a.png"
    # relative manifest path works from its own parent too
    monkeypatch.chdir(tmp_path)
    (spec,) = load_manifest("data/m.yaml")
    assert spec.image.resolve() == (tmp_path / "data" / "img" / "a.png").resolve()


def test_absolute_and_home_paths(tmp_path, monkeypatch):
    _rgb(tmp_path / "home" / "pics" / "a.png", 8, 8)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    absolute = tmp_path / "home" / "pics" / "a.png"
    manifest = _yaml(tmp_path / "m" / "m.yaml",
                     f"- {{id: abs, image: '{absolute}', source_prompt: x}}\n"
                     "- {id: home, image: ~/pics/a.png, source_prompt: x}\n")
    specs = load_manifest(manifest)
    assert [s.image for s in specs] == [absolute, absolute]


def test_edit_prompt_defaults_to_source_prompt(tmp_path):
    (spec,) = load_manifest(_single(tmp_path))
    assert spec.edit_prompt == spec.source_prompt == "a cat"
    assert spec.id == "0000" and spec.seed is None and spec.lam is None and spec.mask is None


def test_missing_edit_modality_keeps_source_map(tmp_path):
    for name in ("pose.png", "depth.png", "pose2.png"):
        _rgb(tmp_path / name, 16, 16)
    (spec,) = load_manifest(_single(tmp_path, source={"pose": "pose.png", "depth": "depth.png"},
                                    edit={"pose": "pose2.png"}))
    assert spec.source == {"pose": tmp_path / "pose.png", "depth": tmp_path / "depth.png"}
    assert spec.edit == {"pose": tmp_path / "pose2.png", "depth": tmp_path / "depth.png"}
    (spec,) = load_manifest(_single(tmp_path, source={"pose": "pose.png"}))
    assert spec.edit == spec.source == {"pose": tmp_path / "pose.png"}


def test_evaluation_fields_land_in_extra(tmp_path):
    _rgb(tmp_path / "gt.png", 16, 16)
    _rgb(tmp_path / "gt_mask.png", 16, 16)
    meta = {"dataset": "toy", "n": 3}
    (spec,) = load_manifest(_single(tmp_path, target="gt.png", true_mask="gt_mask.png", meta=meta))
    assert spec.extra == {"target": str(tmp_path / "gt.png"), "true_mask": str(tmp_path / "gt_mask.png"),
                          "meta": meta}
    assert load_request(spec, None).extra == spec.extra


def test_limit_keeps_the_first_requests(tmp_path):
    _rgb(tmp_path / "a.png", 16, 16)
    manifest = _yaml(tmp_path / "m.yaml", "".join(f"- {{id: r{i}, image: a.png, source_prompt: x, edit_prompt: y}}\n"
                                                  for i in range(5)))
    assert [s.id for s in EditDataModule(str(manifest), limit=2).specs] == ["r0", "r1"]
    assert [s.id for s in EditDataModule(str(manifest)).specs] == ["r0", "r1", "r2", "r3", "r4"]
    assert len(EditDataModule(str(manifest), limit=10).specs) == 5


# ---------------------------------------------------------------- bad manifests


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="does not exist") as err:
        load_manifest(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(err.value)


@pytest.mark.parametrize("name", ["m.txt", "m.json", "m"])
def test_wrong_suffix(tmp_path, name):
    path = _yaml(tmp_path / name, "- image: a.png\n  source_prompt: x\n")
    with pytest.raises(ManifestError, match=r"\.yaml/\.yml or \.jsonl") as err:
        load_manifest(path)
    assert name in str(err.value)


def test_invalid_yaml_is_one_line_with_its_line_and_column(tmp_path):
    with pytest.raises(ManifestError, match="not valid YAML") as err:
        load_manifest(_yaml(tmp_path / "m.yaml", "- image: [a.png\n  source_prompt: x\n"))
    message = str(err.value)
    assert f"{tmp_path / 'm.yaml'}:2:16: not valid YAML: expected ',' or ']'" in message, message
    assert "\n" not in message


def test_invalid_jsonl_names_the_line(tmp_path):
    path = _yaml(tmp_path / "m.jsonl", '{"image": "a.png", "source_prompt": "x"}\n{"image": \n')
    with pytest.raises(ManifestError, match=r"m\.jsonl:2:\d+: not valid JSON"):
        load_manifest(path)


@pytest.mark.parametrize("name, text, message", [
    ("m.yaml", "", "expected a list of requests"),
    ("m.yaml", "# only a comment\n", "expected a list of requests"),
    ("m.yaml", "[]\n", "no requests"),
    ("m.yaml", "requests: []\n", "no requests"),
    ("m.yaml", "other: 1\n", "expected a list of requests"),
    ("m.jsonl", "", "no requests"),
    ("m.jsonl", "\n  \n", "no requests"),
])
def test_empty_manifest(tmp_path, name, text, message):
    with pytest.raises(ManifestError, match=message):
        load_manifest(_yaml(tmp_path / name, text))


@pytest.mark.parametrize("text", ["- just a string\n", "- [a.png, x]\n", "- 3\n"])
def test_row_not_a_mapping(tmp_path, text):
    with pytest.raises(ManifestError, match="request 0: expected a mapping of fields"):
        load_manifest(_yaml(tmp_path / "m.yaml", text))


def test_missing_image(tmp_path):
    with pytest.raises(ManifestError, match="request 0: missing 'image'"):
        load_manifest(_single(tmp_path, image=...))


@pytest.mark.parametrize("value", [..., None, 3])
def test_missing_source_prompt(tmp_path, value):
    with pytest.raises(ManifestError, match="missing 'source_prompt'"):
        load_manifest(_single(tmp_path, source_prompt=value))


def test_image_file_missing_names_the_path(tmp_path):
    with pytest.raises(ManifestError, match="does not exist") as err:
        load_manifest(_single(tmp_path, image="sub/missing.png"))
    assert str(tmp_path / "sub" / "missing.png") in str(err.value)
    assert ".image" in str(err.value)


@pytest.mark.parametrize("field, value", [("mask", "no_mask.png"), ("target", "no_gt.png"),
                                          ("source", {"pose": "no_pose.png"})])
def test_other_missing_files_name_the_path(tmp_path, field, value):
    with pytest.raises(ManifestError, match="does not exist") as err:
        load_manifest(_single(tmp_path, **{field: value}))
    missing = value if isinstance(value, str) else value["pose"]
    assert str(tmp_path / missing) in str(err.value)


def test_image_not_a_path(tmp_path):
    with pytest.raises(ManifestError, match="expected a file path"):
        load_manifest(_single(tmp_path, image=5))


def test_misspelled_field_is_listed(tmp_path):
    with pytest.raises(ManifestError, match="unknown field") as err:
        load_manifest(_single(tmp_path, edit_promt="a dog", colour="red"))
    assert "['colour', 'edit_promt']" in str(err.value)
    assert "edit_prompt" in str(err.value)  # the valid fields are listed too


def test_edit_map_without_source_map(tmp_path):
    _rgb(tmp_path / "pose.png", 16, 16)
    _rgb(tmp_path / "depth.png", 16, 16)
    with pytest.raises(ManifestError, match="no source map") as err:
        load_manifest(_single(tmp_path, source={"depth": "depth.png"}, edit={"pose": "pose.png"}))
    assert "['pose']" in str(err.value)


def test_maps_not_a_mapping(tmp_path):
    with pytest.raises(ManifestError, match=r"source: expected \{modality: path\}"):
        load_manifest(_single(tmp_path, source="pose.png"))


@pytest.mark.parametrize("lam", [1.5, -0.1, "0.5"])
def test_lam_out_of_range_is_a_config_error(tmp_path, lam):
    with pytest.raises(ConfigError, match=r"lam must be in \[0, 1\]") as err:
        load_manifest(_single(tmp_path, lam=lam))
    assert isinstance(err.value, ValueError) and not isinstance(err.value, ManifestError)
    assert "m.jsonl request 0" in str(err.value)


@pytest.mark.parametrize("lam", [0, 1, 0.3])
def test_lam_in_range(tmp_path, lam):
    (spec,) = load_manifest(_single(tmp_path, lam=lam))
    assert spec.lam == float(lam) and isinstance(spec.lam, float)


@pytest.mark.parametrize("seed", [1.5, "3", [1]])
def test_non_integer_seed(tmp_path, seed):
    with pytest.raises(ManifestError, match="'seed' must be an integer"):
        load_manifest(_single(tmp_path, seed=seed))


def test_non_string_edit_prompt(tmp_path):
    with pytest.raises(ManifestError, match="'edit_prompt' must be a string"):
        load_manifest(_single(tmp_path, edit_prompt=3))


def test_duplicate_ids(tmp_path):
    _rgb(tmp_path / "a.png", 16, 16)
    text = "- {id: x, image: a.png, source_prompt: p}\n- {id: y, image: a.png, source_prompt: p}\n" \
           "- {id: x, image: a.png, source_prompt: p}\n- {id: '0003', image: a.png, source_prompt: p}\n" \
           "- {image: a.png, source_prompt: p}\n"  # default id of row 4 is '0004': no clash with '0003'
    with pytest.raises(ManifestError, match=r"duplicate request id\(s\) \['x'\]"):
        load_manifest(_yaml(tmp_path / "m.yaml", text))
    # an explicit id equal to another row's default id also clashes
    text = "- {image: a.png, source_prompt: p}\n- {id: '0000', image: a.png, source_prompt: p}\n"
    with pytest.raises(ManifestError, match=r"\['0000'\]"):
        load_manifest(_yaml(tmp_path / "m2.yaml", text))


def test_corrupt_png_raises_manifest_error_on_load(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    (spec,) = load_manifest(_yaml(tmp_path / "m.yaml", "- image: bad.png\n  source_prompt: x\n"))
    with pytest.raises(ManifestError, match="cannot be read") as err:
        load_request(spec, None)
    assert str(bad) in str(err.value)


def test_corrupt_map_raises_manifest_error_on_load(tmp_path):
    _rgb(tmp_path / "a.png", 16, 16)
    bad = tmp_path / "pose.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))  # a PNG signature, then garbage
    with pytest.raises(ManifestError, match="cannot be read") as err:
        load_request(_spec(tmp_path / "a.png", source={"pose": bad}, edit={"pose": bad}), None)
    assert str(bad) in str(err.value)


def test_resolution_below_8_is_rejected(tmp_path):
    with pytest.raises(ManifestError, match="resolution must be >= 8"):
        EditDataModule(str(_single(tmp_path, edit_prompt="a dog")), resolution=4)


# ---------------------------------------------------------------- image kinds


def test_grayscale_image(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (16, 24), dtype=np.uint8)
    Image.fromarray(arr, "L").save(tmp_path / "g.png")
    image = load_image(tmp_path / "g.png", None)
    assert image.shape == (1, 3, 16, 24)
    expected = torch.from_numpy(arr.astype(np.float32) / 255.0)
    for c in range(3):
        assert torch.equal(image[0, c], expected)


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.zeros((16, 16, 4), dtype=np.uint8)
    arr[:, :8] = (0, 0, 0, 0)          # fully transparent black -> white
    arr[:, 8:] = (200, 10, 50, 255)    # opaque -> unchanged
    arr[0, 8] = (0, 0, 0, 128)         # half-transparent black -> grey
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png", None)
    assert image.shape == (1, 3, 16, 16)
    assert torch.all(image[..., :8] == 1.0)
    assert torch.equal(image[0, :, 1, 8], torch.tensor([200, 10, 50]) / 255.0)
    assert image[0, :, 0, 8].sub(127 / 255).abs().max().item() <= 1 / 255 + 1e-6


def test_16_bit_png(tmp_path):
    arr = np.zeros((8, 16), dtype=np.uint16)
    arr[:, 4:8] = 128 * 257
    arr[:, 8:12] = 65535
    arr[:, 12:] = 1000
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode.startswith("I")
    image = load_image(tmp_path / "a.png", None)
    assert image.shape == (1, 3, 8, 16)
    row = image[0, 0, 0]
    assert torch.equal(row[:4], torch.zeros(4))
    assert torch.equal(row[4:8], torch.full((4,), 128 / 255))
    assert torch.equal(row[8:12], torch.ones(4))
    assert torch.equal(row[12:], torch.full((4,), 4 / 255))  # 1000 / 65535 ~ 4 / 255
    assert torch.equal(image[0, 0], image[0, 1]) and torch.equal(image[0, 0], image[0, 2])


def test_dim_16_bit_png_is_not_stretched(tmp_path):
    Image.fromarray(np.full((8, 8), 1000, dtype=np.uint16)).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png", None)
    assert torch.equal(image, torch.full((1, 3, 8, 8), 4 / 255))


def test_palette_image(tmp_path):
    palette = [0, 0, 0, 255, 0, 0, 0, 128, 255] + [0] * (256 * 3 - 9)
    img = Image.fromarray(np.array([[0, 1, 2, 1] * 2] * 8, dtype=np.uint8), "P")
    img.putpalette(palette)
    img.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    image = load_image(tmp_path / "p.png", None)
    assert image.shape == (1, 3, 8, 8)
    expected = torch.tensor([[0, 255, 0, 255], [0, 0, 128, 0], [0, 0, 255, 0]]).repeat(1, 2) / 255.0
    assert torch.equal(image[0, :, 0], expected)


def test_palette_image_with_transparency(tmp_path):
    img = Image.fromarray(np.array([[0, 1] * 4] * 8, dtype=np.uint8), "P")
    img.putpalette([10, 20, 30, 40, 50, 60] + [0] * (254 * 3))
    img.save(tmp_path / "p.png", transparency=0)
    image = load_image(tmp_path / "p.png", None)
    assert image.shape == (1, 3, 8, 8)
    assert torch.all(image[..., 0::2] == 1.0)  # transparent index 0 -> white
    assert torch.equal(image[0, :, 0, 1], torch.tensor([40, 50, 60]) / 255.0)


def test_exif_rotated_jpeg(tmp_path):
    arr = np.zeros((32, 48, 3), dtype=np.uint8)
    arr[:, :24] = (255, 0, 0)   # left half red
    arr[:, 24:] = (0, 0, 255)   # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6            # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif, quality=95)
    Image.fromarray(arr).save(tmp_path / "plain.jpg", quality=95)
    assert load_image(tmp_path / "plain.jpg", None).shape == (1, 3, 32, 48)
    image = load_image(tmp_path / "r.jpg", None)
    assert image.shape == (1, 3, 48, 32)
    top, bottom = image[0, :, :20].mean(dim=(1, 2)), image[0, :, 28:].mean(dim=(1, 2))
    assert top[0] > 0.9 and top[2] < 0.1        # the left (red) half is now on top
    assert bottom[2] > 0.9 and bottom[0] < 0.1
    # a map drawn in the displayed (rotated) frame passes the aspect check
    _rgb(tmp_path / "pose.png", 32, 48)
    req = load_request(_spec(tmp_path / "r.jpg", source={"pose": tmp_path / "pose.png"},
                             edit={"pose": tmp_path / "pose.png"}), None)
    assert req.image.shape == (1, 3, 48, 32) and req.source_maps["pose"].shape == (1, 3, 48, 32)


# ---------------------------------------------------------------- data module


def test_dataloader_yields_requests_in_order(tmp_path):
    _rgb(tmp_path / "a.png", 24, 16)
    _rgb(tmp_path / "b.png", 16, 16, seed=1)
    _rgb(tmp_path / "pose.png", 24, 16, seed=2)
    _rgb(tmp_path / "pose2.png", 24, 16, seed=3)
    new_pose = "source: {pose: pose.png}, edit: {pose: pose2.png}"  # the edit condition of zeta and mid
    manifest = _yaml(tmp_path / "m.yaml",
                     "requests:\n"
                     f"  - {{id: zeta, image: a.png, source_prompt: one, {new_pose}}}\n"
                     "  - {id: alpha, image: b.png, source_prompt: two, edit_prompt: deux, seed: 4}\n"
                     f"  - {{id: mid, image: a.png, source_prompt: three, {new_pose}, lam: 0.1}}\n")
    module = EditDataModule(str(manifest))
    for loader in (module.predict_dataloader(), module.test_dataloader(), module.train_dataloader()):
        items = list(loader)
        assert all(isinstance(r, EditRequest) for r in items)
        assert [(r.id, r.index) for r in items] == [("zeta", 0), ("alpha", 1), ("mid", 2)]
        assert [r.image.shape for r in items] == [(1, 3, 16, 24), (1, 3, 16, 16), (1, 3, 16, 24)]
        assert [(r.edit_prompt, r.seed, r.lam) for r in items] == [("one", None, None), ("deux", 4, None),
                                                                   ("three", None, 0.1)]
        assert items[2].edit_maps["pose"].shape == (1, 3, 16, 24)
    moved = module.transfer_batch_to_device(items[2], torch.device("cpu"), 0)
    assert isinstance(moved, EditRequest) and moved.index == 2 and torch.equal(moved.image, items[2].image)


def test_dataloader_respects_limit_and_resolution(tmp_path):
    _rgb(tmp_path / "a.png", 64, 48)
    manifest = _yaml(tmp_path / "m.jsonl", "".join(
        json.dumps({"id": f"r{i}", "image": "a.png", "source_prompt": "x", "edit_prompt": "y"}) + "\n"
        for i in range(3)))
    items = list(EditDataModule(str(manifest), resolution=128, limit=2).predict_dataloader())
    assert [(r.id, r.index, tuple(r.image.shape)) for r in items] == [("r0", 0, (1, 3, 96, 128)),
                                                                    ("r1", 1, (1, 3, 96, 128))]


def test_no_stray_files(tmp_path):
    """Loading never writes next to the manifest."""
    manifest = _single(tmp_path, edit_prompt="a dog")
    before = sorted(os.listdir(tmp_path))
    list(EditDataModule(str(manifest)).predict_dataloader())
    assert sorted(os.listdir(tmp_path)) == before
