"""Preparing conditions: OpenPose maps from keypoint JSON, and condition maps detected in photos.

Detectors come from `controlnet_aux`; those with learned weights read them from a LOCAL folder laid
out like the Hub repo `lllyasviel/Annotators` (nothing is ever downloaded). The weights are pickle
`.pth` files, so loading them needs an explicit `allow_pickle=True`.

CLI (writes the map atomically and prints its path; errors print one line and exit 2):

    python -m framework.io.conditions --detector canny --input photo.jpg --output map.png
    python -m framework.io.conditions --detector hed --input photo.jpg --output map.png --annotators DIR --allow-pickle
    python -m framework.io.conditions --keypoints pose.json --size 512x768 --output pose.png
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
from PIL import Image

from framework.core.errors import ConfigError, EditError, ManifestError, ModelLoadError
from framework.io.openpose import draw_openpose, load_keypoints_json

# Files each detector's `from_pretrained` reads from an lllyasviel/Annotators folder (controlnet_aux 0.0.10).
# OpenposeDetector loads its hand and face models even when only bodies are drawn, so all three are needed.
ANNOTATOR_FILES: dict[str, tuple[str, ...]] = {
    "canny": (),
    "mlsd": ("mlsd_large_512_fp32.pth",),
    "hed": ("ControlNetHED.pth",),
    "scribble": ("ControlNetHED.pth",),
    "openpose": ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
}
DETECTORS = tuple(ANNOTATOR_FILES)
ANNOTATORS_REPO = "lllyasviel/Annotators"

_CLASSES = {"canny": "CannyDetector", "mlsd": "MLSDdetector", "hed": "HEDdetector", "scribble": "HEDdetector",
            "openpose": "OpenposeDetector"}
# Options a user may set per detector (the rest of each __call__ is ours to fix); controlnet_aux
# swallows unknown keywords silently, so a typo would otherwise be ignored without a word.
OPTIONS: dict[str, tuple[str, ...]] = {
    "canny": ("low_threshold", "high_threshold", "detect_resolution"),
    "mlsd": ("thr_v", "thr_d", "detect_resolution"),
    "hed": ("safe", "detect_resolution"),
    "scribble": ("safe", "detect_resolution"),
    "openpose": ("include_body", "include_hand", "include_face", "detect_resolution"),
}
# ControlNet's scribble preprocessor is HED followed by thinning, blurring and a threshold, which
# HEDdetector does with scribble=True.
_FIXED: dict[str, dict[str, Any]] = {"scribble": {"scribble": True}}
# The networks were trained on 512-pixel inputs, ControlNet's preprocessing resolution.
_NETWORK_RESOLUTION = 512

Size = Union[int, Sequence[int]]


# ----------------------------------------------------------------------------- pose maps


def _width_height(size: Size) -> tuple[int, int]:
    """(width, height) from an int (square) or a (width, height) pair."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    width, height = size
    return int(width), int(height)


def pose_from_keypoints(json_path: Union[str, Path], size: Size) -> Image.Image:
    """Draw an OpenPose/COCO-18 keypoint JSON as an OpenPose map of `size` = (width, height)."""
    width, height = _width_height(size)
    try:
        people = load_keypoints_json(json_path)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ManifestError(f"keypoints '{json_path}' cannot be read as OpenPose JSON ({err}); expected "
                            f"{{people: [{{pose_keypoints_2d: [x, y, c, ...]}}]}} or a list of [x, y(, c)].") from err
    # draw_openpose takes (height, width); keypoints are pixels of this size (or normalised to [0, 1]).
    return Image.fromarray(draw_openpose(people, (height, width)), "RGB")


# ----------------------------------------------------------------------------- detector checks


def check_detector(detector: str) -> None:
    """Raise ConfigError unless `detector` is one this module runs."""
    if detector not in ANNOTATOR_FILES:
        raise ConfigError(f"unknown detector {detector!r}; valid detectors: {', '.join(DETECTORS)}.")


def check_options(detector: str, options: dict[str, Any]) -> None:
    """Raise ConfigError for an option the detector does not take or a non-scalar value."""
    unknown = sorted(set(options) - set(OPTIONS[detector]))
    if unknown:
        raise ConfigError(f"detector {detector!r} has no option(s) {unknown}; valid: {', '.join(OPTIONS[detector])}.")
    for key, value in options.items():
        if not isinstance(value, (bool, int, float)):
            raise ConfigError(f"detector {detector!r} option {key!r} must be a number or true/false, got {value!r}.")


def _download_hint(files: Sequence[str], folder: str) -> str:
    return f"`hf download {ANNOTATORS_REPO} {' '.join(files)} --local-dir {folder}`"


def check_annotators(detector: str, annotators: Optional[Union[str, Path]], allow_pickle: bool) -> Optional[Path]:
    """The annotators folder the detector loads from (None when it needs none); ModelLoadError otherwise."""
    files = ANNOTATOR_FILES[detector]
    if not files:
        return None
    if annotators is None:
        raise ModelLoadError(
            f"detector {detector!r} needs the annotator weights {', '.join(files)} from a local folder, and none "
            f"was given. Download them with {_download_hint(files, 'annotators')} and pass that folder "
            f"(--annotators annotators, or data.annotators in a config). Nothing is downloaded automatically.")
    folder = Path(annotators).expanduser()
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        state = "does not exist" if not folder.is_dir() else f"lacks {', '.join(missing)}"
        raise ModelLoadError(
            f"detector {detector!r} needs {', '.join(files)} in the annotators folder '{folder}', which {state}. "
            f"Download with {_download_hint(missing, str(folder))}.")
    if not allow_pickle:
        raise ModelLoadError(
            f"refusing to load {', '.join(files)} from '{folder}' for detector {detector!r}: these .pth weights are "
            f"Python pickles, and loading a pickle can run code hidden in the file. If you trust them (e.g. "
            f"downloaded from {ANNOTATORS_REPO}), allow it with allow_pickle=True (CLI: --allow-pickle; "
            f"config: data.allow_pickle: true).")
    return folder


# ----------------------------------------------------------------------------- detection


def _controlnet_aux():
    """Import controlnet_aux (seconds, and noisy about optional extras it does not need here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module("controlnet_aux")


@functools.lru_cache(maxsize=4)
def _load_detector(class_name: str, folder: Optional[str]):
    """A controlnet_aux detector, loaded once per (class, folder): loading weights takes seconds."""
    cls = getattr(_controlnet_aux(), class_name)
    if folder is None:
        return cls()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # A folder path makes from_pretrained read local files only (it downloads only for hub ids).
            return cls.from_pretrained(folder)
    except Exception as err:  # noqa: BLE001 - any failure to read the weights is reported the same way
        raise ModelLoadError(f"{class_name} cannot load its weights from '{folder}' ({type(err).__name__}: {err}); "
                             f"re-download them from {ANNOTATORS_REPO}.") from err


def _default_resolution(detector: str, size: tuple[int, int]) -> int:
    """Canny has nothing learned at a scale, so it runs at the image's own resolution; networks at 512."""
    if detector == "canny":
        return max(64, min(size))  # controlnet_aux rounds sides to multiples of 64: below 32 they vanish
    return _NETWORK_RESOLUTION


def detect(image: Image.Image, detector: str, annotators: Optional[Union[str, Path]] = None,
           allow_pickle: bool = False, **kwargs) -> Image.Image:
    """Run a controlnet_aux detector on `image`; an RGB map of the image's size."""
    check_detector(detector)
    check_options(detector, kwargs)
    folder = check_annotators(detector, annotators, allow_pickle)  # before importing anything slow
    model = _load_detector(_CLASSES[detector], None if folder is None else str(folder))
    image = image.convert("RGB")
    options = {**kwargs, **_FIXED.get(detector, {})}
    resolution = int(options.pop("detect_resolution", _default_resolution(detector, image.size)))
    # image_resolution = detect_resolution: one resize back to the input's size instead of two.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = model(np.asarray(image), detect_resolution=resolution, image_resolution=resolution,
                       output_type="np", **options)
    result = Image.fromarray(np.asarray(result, dtype=np.uint8)).convert("RGB").resize(image.size, Image.BILINEAR)
    return _binarise(result) if detector == "scribble" else result


def _binarise(image: Image.Image) -> Image.Image:
    """Scribbles are binary; resizing greys their strokes, so any grey becomes a stroke again (as ControlNet's > 4)."""
    return Image.fromarray(np.where(np.asarray(image) > 4, 255, 0).astype(np.uint8))


# ----------------------------------------------------------------------------- manifest map specs


@dataclass(frozen=True)
class MapSpec:
    """A condition map to make when its request is loaded, rather than a file to read."""

    def render(self, input_size: tuple[int, int]) -> Image.Image:
        """The map as an RGB image; `input_size` is the (width, height) of the request's input."""
        raise NotImplementedError


@dataclass(frozen=True)
class KeypointsMap(MapSpec):
    """`{keypoints: pose.json}`: an OpenPose map drawn at the input's size."""

    keypoints: Path

    def render(self, input_size: tuple[int, int]) -> Image.Image:
        """Draw the keypoints at the input's size (they are in the input's pixels)."""
        return pose_from_keypoints(self.keypoints, input_size)

    def __str__(self) -> str:
        return f"pose drawn from {self.keypoints}"


@dataclass(frozen=True)
class DetectedMap(MapSpec):
    """`{image: photo.jpg, detector: canny, ...options}`: a detector's map of that image, at its size."""

    image: Path
    detector: str
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    annotators: Optional[Path] = None
    allow_pickle: bool = False

    def render(self, input_size: tuple[int, int]) -> Image.Image:
        """Run the detector on the image (the map is aligned to the input like any map file)."""
        from framework.io.manifests import open_image  # lazily: framework.io.manifests imports this module

        return detect(open_image(self.image), self.detector, self.annotators, self.allow_pickle, **self.options)

    def __str__(self) -> str:
        return f"{self.detector} map of {self.image}"


def existing_file(root: Path, value: Any, where: str) -> Path:
    """A manifest-relative path that must name a file."""
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: expected a file path, got {value!r}.")
    path = root / Path(value).expanduser()
    if not path.is_file():
        raise ManifestError(f"{where}: file '{path}' does not exist (paths are relative to the manifest).")
    return path


def parse_map_spec(value: dict, root: Path, where: str, annotators: Optional[Union[str, Path]] = None,
                   allow_pickle: bool = False) -> MapSpec:
    """Validate a manifest map mapping (files, detector, options, weights) before any model work."""
    forms = "{keypoints: pose.json} or {image: photo.jpg, detector: canny, ...options}"
    if ("keypoints" in value) == ("image" in value):
        raise ManifestError(f"{where}: a map mapping needs exactly one of 'keypoints' or 'image': {forms}.")
    if "keypoints" in value:
        if set(value) != {"keypoints"}:
            extra = sorted(set(value) - {"keypoints"})
            raise ManifestError(f"{where}: {{keypoints: ...}} takes no other keys, got {extra}.")
        spec = KeypointsMap(existing_file(root, value["keypoints"], f"{where}.keypoints"))
        try:
            spec.render((8, 8))  # reads and checks the JSON now, so a bad file fails before any model work
        except ManifestError as err:
            raise ManifestError(f"{where}: {err}") from err
        return spec
    options = {k: v for k, v in value.items() if k not in ("image", "detector")}
    detector = value.get("detector")
    try:
        if not isinstance(detector, str):
            raise ConfigError(f"'detector' is required with 'image'; valid detectors: {', '.join(DETECTORS)}.")
        check_detector(detector)
        check_options(detector, options)
    except ConfigError as err:
        raise ManifestError(f"{where}: {err}") from err
    image = existing_file(root, value["image"], f"{where}.image")
    try:
        folder = check_annotators(detector, annotators, allow_pickle)
    except ModelLoadError as err:
        raise ModelLoadError(f"{where}: {err}") from err
    return DetectedMap(image, detector, options, folder, allow_pickle)


# ----------------------------------------------------------------------------- CLI


def _parse_size(text: str) -> tuple[int, int]:
    """'512x768' -> (512, 768) as (width, height)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size must be WIDTHxHEIGHT, e.g. 512x768, got {text!r}.") from None
    if width < 1 or height < 1:
        raise ConfigError(f"--size must be positive, got {text!r}.")
    return width, height


def _parse_option(text: str) -> tuple[str, Any]:
    """'low_threshold=50' -> ('low_threshold', 50); values are read as YAML scalars."""
    import yaml  # lazily: only the CLI parses options from text

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--option must be KEY=VALUE, e.g. low_threshold=50, got {text!r}.")
    return key, yaml.safe_load(value)


def save_atomic(image: Image.Image, path: Path) -> None:
    """Save under a temporary name in the same folder, then rename: readers never see half a file."""
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"--output '{path}': unknown image extension; use .png (recommended) or .jpg.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        image.save(tmp, format=fmt)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit status 2."""

    def error(self, message: str):
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m framework.io.conditions",
                            description="Make a condition map: detect one in a photo, or draw a pose from keypoints.")
    parser.add_argument("--detector", choices=DETECTORS, help="detector to run on --input")
    parser.add_argument("--input", type=Path, help="input photo (with --keypoints: gives the map size)")
    parser.add_argument("--output", type=Path, required=True, help="map to write (.png)")
    parser.add_argument("--annotators", type=Path, help=f"local folder of {ANNOTATORS_REPO} weights")
    parser.add_argument("--allow-pickle", action="store_true", help="allow loading the pickle .pth weights")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="detector option, e.g. low_threshold=50 (repeatable)")
    parser.add_argument("--keypoints", type=Path, help="OpenPose keypoint JSON to draw")
    parser.add_argument("--size", help="WIDTHxHEIGHT of the pose map (default: the size of --input)")
    return parser


def _make_map(args: argparse.Namespace) -> Image.Image:
    """The map the parsed arguments ask for."""
    from framework.io.manifests import open_image  # lazily: it imports torch and Lightning

    if (args.detector is None) == (args.keypoints is None):
        raise ConfigError("give either --detector with --input, or --keypoints (with --size or --input).")
    if args.keypoints is not None:
        if args.size is None and args.input is None:
            raise ConfigError("--keypoints needs --size WIDTHxHEIGHT or an --input image to take the size from.")
        size = _parse_size(args.size) if args.size else open_image(args.input).size
        if not args.keypoints.is_file():
            raise ManifestError(f"--keypoints: file '{args.keypoints}' does not exist.")
        return pose_from_keypoints(args.keypoints, size)
    if args.input is None:
        raise ConfigError(f"--detector {args.detector} needs --input IMAGE.")
    options = dict(_parse_option(text) for text in args.option)
    return detect(open_image(args.input), args.detector, args.annotators, args.allow_pickle, **options)


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """Write the requested map and print its path; the project's errors print one line and exit 2."""
    args = _parser().parse_args(argv)
    try:
        save_atomic(_make_map(args), args.output)
    except EditError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(args.output)
    return args.output


if __name__ == "__main__":
    main()
