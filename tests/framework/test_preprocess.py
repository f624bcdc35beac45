"""Preparing conditions: pose maps from keypoints, detectors, annotator-weight checks, the CLI, manifest maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from framework.core.errors import ConfigError, ManifestError, ModelLoadError
from framework.io.conditions import (
    ANNOTATOR_FILES,
    DETECTORS,
    DetectedMap,
    KeypointsMap,
    detect,
    main,
    pose_from_keypoints,
)
from framework.io.manifests import load_manifest, load_request
from framework.io.openpose import OPENPOSE_COLOURS, limb_colour, save_keypoints_json
from framework.lightning.data import EditDataModule

BLACK = (0, 0, 0)
WEIGHTED = ("mlsd", "hed", "scribble", "openpose")


def _person(**points):
    """18 (x, y, c) entries, missing (c = 0) except the named indices (k1=(x, y), ...)."""
    person = [(0.0, 0.0, 0.0)] * 18
    for name, (x, y) in points.items():
        person[int(name[1:])] = (float(x), float(y), 1.0)
    return person


def _keypoints(path: Path, **points) -> Path:
    return save_keypoints_json(path, [_person(**points)])


def _square(width: int = 64, height: int = 64, box=(16, 16, 48, 48)) -> Image.Image:
    """Black image with a filled white square: edges only on the square's border."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    left, top, right, bottom = box
    arr[top:bottom, left:right] = 255
    return Image.fromarray(arr)


def _dummy_weights(folder: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"not a real checkpoint")
    return folder


# ---------------------------------------------------------------- pose maps from keypoints


def test_keypoints_json_draws_limb_colour_at_requested_size(tmp_path):
    path = _keypoints(tmp_path / "pose.json", k1=(20, 32), k2=(44, 32))
    image = pose_from_keypoints(path, (80, 64))  # (width, height): non-square catches a swapped order
    assert image.mode == "RGB" and image.size == (80, 64)
    arr = np.asarray(image)
    assert tuple(arr[32, 32]) == limb_colour(1, 2)  # between neck and right shoulder
    assert tuple(arr[32, 20]) == OPENPOSE_COLOURS[1] and tuple(arr[32, 44]) == OPENPOSE_COLOURS[2]
    assert tuple(arr[5, 70]) == BLACK


def test_bad_keypoints_json_is_a_manifest_error(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ManifestError, match="cannot be read as OpenPose JSON"):
        pose_from_keypoints(tmp_path / "bad.json", 64)


# ---------------------------------------------------------------- detectors


def test_canny_finds_the_square_border_and_nothing_in_flat_areas():
    edges = np.asarray(detect(_square(), "canny"))
    assert edges.shape == (64, 64, 3)
    on = edges.max(axis=-1) > 0
    # Each side of the square (16..47) has edge pixels within a pixel or two of its border.
    assert on[14:18, 20:44].any(axis=0).all() and on[46:50, 20:44].any(axis=0).all()
    assert on[20:44, 14:18].any(axis=1).all() and on[20:44, 46:50].any(axis=1).all()
    assert not on[22:42, 22:42].any()  # inside the square
    assert not on[:10].any() and not on[54:].any()  # outside it


def test_canny_map_has_the_input_size_and_takes_thresholds():
    image = _square(96, 40, box=(30, 8, 60, 32))
    assert detect(image, "canny", low_threshold=50, high_threshold=100).size == (96, 40)
    # Thresholds above any gradient Canny can see leave no edges: the options do reach the detector.
    assert not np.asarray(detect(image, "canny", low_threshold=5000, high_threshold=6000)).any()


def test_unknown_detector_and_option_are_config_errors():
    with pytest.raises(ConfigError, match="valid detectors: canny, mlsd, hed, scribble, openpose"):
        detect(_square(), "sobel")
    with pytest.raises(ConfigError, match="no option.*'low'.*low_threshold"):
        detect(_square(), "canny", low=10)


@pytest.mark.parametrize("detector", WEIGHTED)
def test_missing_annotators_folder_names_files_and_download_command(detector):
    with pytest.raises(ModelLoadError) as info:
        detect(_square(), detector)
    message = str(info.value)
    assert all(name in message for name in ANNOTATOR_FILES[detector])
    assert f"hf download lllyasviel/Annotators {' '.join(ANNOTATOR_FILES[detector])} --local-dir" in message


@pytest.mark.parametrize("detector", WEIGHTED)
def test_missing_annotator_files_name_the_folder_and_the_fix(tmp_path, detector):
    with pytest.raises(ModelLoadError) as info:
        detect(_square(), detector, annotators=tmp_path / "annotators")
    assert "does not exist" in str(info.value)
    assert f"--local-dir {tmp_path / 'annotators'}" in str(info.value)


def test_partly_present_openpose_weights_download_only_the_missing(tmp_path):
    folder = _dummy_weights(tmp_path, ["body_pose_model.pth"])
    with pytest.raises(ModelLoadError) as info:
        detect(_square(), "openpose", annotators=folder, allow_pickle=True)
    assert "lacks hand_pose_model.pth, facenet.pth" in str(info.value)
    assert "Annotators hand_pose_model.pth facenet.pth --local-dir" in str(info.value)


@pytest.mark.parametrize("detector", WEIGHTED)
def test_present_weights_are_refused_without_allow_pickle(tmp_path, detector):
    folder = _dummy_weights(tmp_path, ANNOTATOR_FILES[detector])
    with pytest.raises(ModelLoadError, match=r"refusing to load .*pickles.*allow_pickle=True .*--allow-pickle"):
        detect(_square(), detector, annotators=folder)


def test_unreadable_weights_with_allow_pickle_are_a_model_load_error(tmp_path):
    folder = _dummy_weights(tmp_path, ANNOTATOR_FILES["hed"])
    with pytest.raises(ModelLoadError, match="HEDdetector cannot load its weights"):
        detect(_square(), "hed", annotators=folder, allow_pickle=True)


# ---------------------------------------------------------------- CLI


def test_cli_writes_a_canny_map_atomically(tmp_path, capsys):
    _square(72, 48, box=(20, 10, 50, 40)).save(tmp_path / "photo.png")
    out = tmp_path / "maps" / "edges.png"
    main(["--detector", "canny", "--input", str(tmp_path / "photo.png"), "--output", str(out),
          "--option", "low_threshold=50"])
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as written:
        assert written.size == (72, 48) and np.asarray(written).any()
    assert sorted(p.name for p in out.parent.iterdir()) == ["edges.png"]  # no temporary left behind


def test_cli_draws_keypoints_at_the_given_size(tmp_path, capsys):
    path = _keypoints(tmp_path / "pose.json", k1=(20, 32), k2=(44, 32))
    main(["--keypoints", str(path), "--size", "80x64", "--output", str(tmp_path / "pose.png")])
    with Image.open(tmp_path / "pose.png") as written:
        assert written.size == (80, 64) and tuple(np.asarray(written)[32, 32]) == limb_colour(1, 2)


@pytest.mark.parametrize("args, expected", [
    (["--detector", "hed", "--input", "{photo}"], "hf download lllyasviel/Annotators ControlNetHED.pth"),
    (["--detector", "sobel", "--input", "{photo}"], "invalid choice"),
    (["--keypoints", "{photo}"], "--keypoints needs --size"),
    (["--detector", "canny", "--input", "{photo}", "--option", "low"], "--option must be KEY=VALUE"),
])
def test_cli_errors_print_one_line_and_exit_2(tmp_path, capsys, args, expected):
    _square().save(tmp_path / "photo.png")
    args = [a.format(photo=tmp_path / "photo.png") for a in args] + ["--output", str(tmp_path / "m.png")]
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.png").exists()


# ---------------------------------------------------------------- manifest maps


def _manifest(tmp_path: Path, source: dict, edit: dict | None = None) -> Path:
    """A manifest with one 64x48 input (a white square on black) and the given maps."""
    _square(64, 48, box=(16, 8, 48, 40)).save(tmp_path / "input.png")
    row = {"image": "input.png", "source_prompt": "a box", "source": source, "edit": edit or {}}
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps({"requests": [row]}))  # JSON is YAML
    return path


def test_manifest_keypoints_and_canny_maps_load_at_the_input_size(tmp_path):
    _keypoints(tmp_path / "pose.json", k1=(20, 24), k2=(44, 24))
    _keypoints(tmp_path / "pose2.json", k12=(32, 10), k13=(32, 40))
    source = {"pose": {"keypoints": "pose.json"}, "lines": {"image": "input.png", "detector": "canny"}}
    path = _manifest(tmp_path, source, {"pose": {"keypoints": "pose2.json"}})
    spec = load_manifest(path)[0]
    assert isinstance(spec.source["pose"], KeypointsMap) and isinstance(spec.source["lines"], DetectedMap)
    request = load_request(spec, None)
    for maps in (request.source_maps, request.edit_maps):
        assert {k: tuple(v.shape) for k, v in maps.items()} == {"pose": (1, 3, 48, 64), "lines": (1, 3, 48, 64)}
    colour = lambda t, y, x: tuple(int(round(float(v) * 255)) for v in t[0, :, y, x])  # noqa: E731
    assert colour(request.source_maps["pose"], 24, 32) == limb_colour(1, 2)
    assert colour(request.edit_maps["pose"], 24, 32) == limb_colour(12, 13)
    lines = request.source_maps["lines"][0].amax(0) > 0
    assert lines[6:11, 20:44].any(0).all() and not lines[14:34, 22:42].any() and not lines[:, :10].any()
    assert torch.equal(request.edit_maps["lines"], request.source_maps["lines"])  # kept from the source


def test_manifest_detector_options_reach_the_detector(tmp_path):
    path = _manifest(tmp_path, {"lines": {"image": "input.png", "detector": "canny",
                                          "low_threshold": 5000, "high_threshold": 6000}})
    spec = load_manifest(path)[0]
    assert spec.source["lines"].options == {"low_threshold": 5000, "high_threshold": 6000}
    assert not load_request(spec, None).source_maps["lines"].any()


def test_manifest_bad_detector_fails_at_parse_time_listing_valid_ones(tmp_path):
    path = _manifest(tmp_path, {"lines": {"image": "input.png", "detector": "sobel"}})
    with pytest.raises(ManifestError, match=r"request 0\.source\.lines: unknown detector 'sobel'; valid detectors: "
                                            + ", ".join(DETECTORS)):
        load_manifest(path)


@pytest.mark.parametrize("value, expected", [
    ({"image": "missing.png", "detector": "canny"}, r"source\.lines\.image: file .* does not exist"),
    ({"image": "input.png"}, "'detector' is required"),
    ({"image": "input.png", "detector": "canny", "low": 3}, "no option"),
    ({"image": "input.png", "detector": "canny", "low_threshold": [1]}, "must be a number"),
    ({"image": "input.png", "keypoints": "pose.json", "detector": "canny"}, "exactly one of 'keypoints' or 'image'"),
    ({"keypoints": "bad.json"}, r"source\.lines: keypoints .* cannot be read"),
])
def test_manifest_bad_map_specs_fail_at_parse_time(tmp_path, value, expected):
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(ManifestError, match=expected):
        load_manifest(_manifest(tmp_path, {"lines": value}))


def test_data_module_checks_annotator_weights_before_any_model_work(tmp_path):
    path = _manifest(tmp_path, {"scribble": {"image": "input.png", "detector": "scribble", "safe": True}},
                     {"scribble": "input.png"})
    with pytest.raises(ModelLoadError, match=r"request 0\.source\.scribble: .*ControlNetHED\.pth.*hf download"):
        EditDataModule(str(path))
    folder = _dummy_weights(tmp_path / "annotators", ["ControlNetHED.pth"])
    with pytest.raises(ModelLoadError, match="allow_pickle"):
        EditDataModule(str(path), annotators=str(folder))
    spec = EditDataModule(str(path), annotators=str(folder), allow_pickle=True).specs[0].source["scribble"]
    assert spec == DetectedMap(tmp_path / "input.png", "scribble", {"safe": True}, folder, True)


def _random_weights(folder: Path, detector: str) -> Path:
    """Save a randomly initialised network under the detector's annotator file name (tests the real loading path)."""
    if detector == "mlsd":
        from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large as Network
    else:
        from controlnet_aux.hed import ControlNetHED_Apache2 as Network
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(Network().state_dict(), folder / ANNOTATOR_FILES[detector][0])
    return folder


@pytest.mark.parametrize("detector", ["hed", "scribble", "mlsd"])
def test_weighted_detectors_run_from_a_local_folder_at_the_input_size(tmp_path, detector):
    folder = _random_weights(tmp_path / "annotators", detector)
    result = detect(_square(80, 56), detector, annotators=folder, allow_pickle=True, detect_resolution=64)
    assert result.mode == "RGB" and result.size == (80, 56)
    if detector == "scribble":  # thinned and thresholded: a binary map
        assert set(np.unique(np.asarray(result))) <= {0, 255}
