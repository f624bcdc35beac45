"""The example photographs of the paper settings: scikit-image's public-domain / CC0 sample photos.

    python -m framework.toy.photos experiments/examples/photos

writes each photo resized so its longer side is 512 px (JPEG), the keypoint JSON of the astronaut's
pose before and after the edit (drawn by `framework.io.conditions` when a request is loaded), hand-drawn
scribble and line maps, and one manifest per paper setting. Coordinates below are pixels of the
512 px photos. Needs scikit-image (installed with controlnet-aux).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import yaml
from PIL import Image, ImageDraw

from framework.io.openpose import save_keypoints_json

SIZE = 512  # longer side of the shipped photos

# skimage.data function -> (file name, licence as the function's docstring states it)
PHOTOS = {
    "astronaut": ("astronaut.jpg", "public domain (NASA; 'No known copyright restrictions')"),
    "chelsea": ("chelsea.jpg", "CC0 (photographer Stefan van der Walt)"),
    "coffee": ("coffee.jpg", "CC0 (photographer Rachel Michetti, courtesy of Pikolo Espresso Bar)"),
    "rocket": ("rocket.jpg", "public domain (SpaceX launch photo of DSCOVR on Falcon 9)"),
}

# COCO-18 keypoints (x, y) of the astronaut; None = not in the frame (hips, knees, ankles).
# Order: nose, neck, r_shoulder, r_elbow, r_wrist, l_shoulder, l_elbow, l_wrist, r_hip, r_knee,
# r_ankle, l_hip, l_knee, l_ankle, r_eye, l_eye, r_ear, l_ear (her right is the image's left).
ASTRONAUT_POSE = [(222, 142), (226, 250), (105, 305), (48, 420), (80, 505), (348, 300), (368, 425),
                  (330, 500), None, None, None, None, None, None, (205, 118), (243, 118), (180, 128), (268, 128)]
# The edit raises her right arm: elbow out to the side, wrist above the shoulder.
ASTRONAUT_RAISED = [*ASTRONAUT_POSE[:3], (45, 215), (88, 105), *ASTRONAUT_POSE[5:]]

Stroke = Sequence[tuple[float, float]]


def _ellipse(box: tuple[float, float, float, float], start: float = 0, end: float = 360, n: int = 48) -> Stroke:
    """Points of an elliptic arc in `box` (x0, y0, x1, y1), angles in degrees from 3 o'clock, clockwise."""
    cx, cy, rx, ry = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    angles = np.radians(np.linspace(start, end, n))
    return [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in angles]


# Scribbles of the coffee cup (512 x 341): rim, body, saucer, handle; the edit moves the handle to the right.
CUP = [_ellipse((148, 16, 348, 176)), [(150, 110), (178, 205), (210, 232), (286, 232), (318, 205), (346, 110)],
       _ellipse((66, 64, 408, 330), 0, 360)]
HANDLE_LEFT = [_ellipse((166, 196, 218, 262), 90, 300)]
HANDLE_RIGHT = [_ellipse((278, 196, 330, 262), -120, 90)]
SPOON = [[(352, 62), (344, 170), (322, 215)], _ellipse((280, 205, 346, 278))]

# MLSD-like line map of the launch pad (512 x 341): towers and the rocket; the edit makes the rocket taller.
TOWERS = [[(0, 10), (70, 2)], [(70, 2), (62, 330)], [(28, 5), (0, 330)], [(148, 100), (150, 330)],
          [(162, 100), (164, 330)], [(352, 100), (354, 330)], [(366, 100), (368, 330)],
          [(442, 2), (512, 10)], [(442, 2), (450, 330)], [(484, 5), (512, 330)], [(214, 325), (300, 325)]]


def rocket(top: float) -> list[Stroke]:
    """The rocket's outline: two sides from the pad up to `top` + 18 px, and the nose cone."""
    shoulder = top + 18
    sides = [[(248, 320), (248, shoulder)], [(268, 320), (268, shoulder)]]
    return [*sides, [(248, shoulder), (258, top), (268, shoulder)]]


def draw_strokes(size: tuple[int, int], strokes: Sequence[Stroke], width: int = 3) -> Image.Image:
    """White polylines on black: the scribble / line-map convention of ControlNet's SD 1.5 models."""
    image = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(image)
    for stroke in strokes:
        draw.line([tuple(map(float, p)) for p in stroke], fill=(255, 255, 255), width=width, joint="curve")
    return image


def _photo(name: str) -> Image.Image:
    from skimage import data

    image = Image.fromarray(getattr(data, name)())
    scale = SIZE / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)


def _keypoints(path: Path, points: list[Optional[tuple[float, float]]]) -> str:
    save_keypoints_json(path, [[(x, y, 1.0) if (x, y) != (0, 0) else (0, 0, 0) for x, y in
                                (p or (0, 0) for p in points)]])
    return path.name


def requests() -> dict[str, list[dict]]:
    """One manifest per paper setting (experiments/<setting>.yaml reads experiments/examples/photos/<setting>.yaml)."""
    astronaut = "a photo of a woman astronaut in an orange spacesuit"
    cup, tea = "a cup of coffee on a saucer on a wooden table", "a cup of green tea on a saucer on a wooden table"
    pad = "a rocket on a launch pad between towers at dusk"
    pose = {"source": {"pose": {"keypoints": "astronaut_pose.json"}},
            "edit": {"pose": {"keypoints": "astronaut_pose_raised.json"}}}
    scribble = {"source": {"scribble": "coffee_scribble.png"}, "edit": {"scribble": "coffee_scribble_edit.png"}}
    return {
        "text": [{"id": "cat_to_tiger", "image": "chelsea.jpg", "source_prompt": "a photo of a cat",
                  "edit_prompt": "a photo of a tiger"}],
        "pose": [{"id": "astronaut_raise_arm", "image": "astronaut.jpg", "source_prompt": astronaut, **pose}],
        "scribble": [{"id": "cup_handle_right", "image": "coffee.jpg", "source_prompt": cup, **scribble}],
        "lines": [{"id": "taller_rocket", "image": "rocket.jpg", "source_prompt": pad,
                   "source": {"lines": "rocket_lines.png"}, "edit": {"lines": "rocket_lines_edit.png"}}],
        "text_pose": [{"id": "astronaut_white_suit_raise_arm", "image": "astronaut.jpg", "source_prompt": astronaut,
                       "edit_prompt": "a photo of a woman astronaut in a white spacesuit", **pose}],
        "text_scribble": [{"id": "tea_handle_right", "image": "coffee.jpg", "source_prompt": cup,
                           "edit_prompt": tea, **scribble}],
    }


def make_photos(folder: Path) -> list[Path]:
    """Write the photos, maps, keypoints and manifests into `folder`; returns the manifests."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, (file, _) in PHOTOS.items():
        image = _photo(name)
        image.save(folder / file, quality=90)
        sizes[name] = image.size
    _keypoints(folder / "astronaut_pose.json", ASTRONAUT_POSE)
    _keypoints(folder / "astronaut_pose_raised.json", ASTRONAUT_RAISED)
    draw_strokes(sizes["coffee"], CUP + HANDLE_LEFT + SPOON).save(folder / "coffee_scribble.png")
    draw_strokes(sizes["coffee"], CUP + HANDLE_RIGHT).save(folder / "coffee_scribble_edit.png")
    draw_strokes(sizes["rocket"], TOWERS + rocket(102), width=2).save(folder / "rocket_lines.png")
    draw_strokes(sizes["rocket"], TOWERS + rocket(60), width=2).save(folder / "rocket_lines_edit.png")
    manifests = []
    for setting, rows in requests().items():
        path = folder / f"{setting}.yaml"
        images = ", ".join(r["image"] for r in rows)
        header = (f"# The {setting.replace('_', ' + ')} setting on a real photograph ({images}; README.md).\n"
                  "# Made by `python -m framework.toy.photos experiments/examples/photos`; paths are relative to this "
                  "file.\n")
        path.write_text(header + yaml.safe_dump({"requests": rows}, sort_keys=False))
        manifests.append(path)
    return manifests


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m framework.toy.photos", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write (experiments/examples/photos)")
    for path in make_photos(parser.parse_args(argv).folder):
        print(path)


if __name__ == "__main__":
    main()
