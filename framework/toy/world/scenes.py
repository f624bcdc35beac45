"""Toy-world scenes: a dataclass description, a seeded sampler, a renderer and a caption grammar.

All geometry is normalised to [0, 1] (x to the right, y down), so one scene renders at any size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from framework.io.openpose import NUM_KEYPOINTS, disc_mask, polygon_mask, segment_mask

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 210),
    "yellow": (235, 205, 40),
}
# Pale stripe colours stay far from the saturated object colours, so captions stay truthful.
STRIPE_COLOURS = {"cream": (236, 226, 196), "lavender": (204, 194, 232), "mint": (192, 226, 206)}
DIRECTIONS = ("horizontal", "vertical")

# Figure palette: shirt on torso and upper arms, skin on head and forearms, dark trousers.
SHIRT, SKIN, TROUSERS = (150, 60, 170), (236, 188, 150), (50, 55, 85)

Point = tuple[float, float]

# Keypoint indices (OpenPose order) used to build and edit the figure.
NOSE, NECK, R_SHO, R_ELB, R_WRI, L_SHO, L_ELB, L_WRI = range(8)
R_HIP, R_KNEE, R_ANK, L_HIP, L_KNEE, L_ANK, R_EYE, L_EYE, R_EAR, L_EAR = range(8, 18)
LIMB_CHAINS = {
    "right arm": (R_SHO, R_ELB, R_WRI),
    "left arm": (L_SHO, L_ELB, L_WRI),
    "right leg": (R_HIP, R_KNEE, R_ANK),
    "left leg": (L_HIP, L_KNEE, L_ANK),
}
# Figure proportions in units of figure height h (head top = 0, ankles ~ 1).
_TORSO = 0.36  # neck to mid-hip, used to recover h from keypoints
_HEAD_R, _LIMB_W, _NECK_W = 0.085, 0.065, 0.05


@dataclass(frozen=True)
class Background:
    """Flat grey, or stripes of a pale colour over the grey with a direction and period."""

    kind: str = "flat"  # "flat" | "stripes"
    grey: int = 128
    direction: str = "horizontal"
    stripe_colour: str = "cream"
    period: float = 0.25  # one stripe plus one gap, normalised


@dataclass(frozen=True)
class SceneObject:
    """One coloured shape; ``size`` is the half-extent (circle radius, square half-side)."""

    shape: str
    colour: str
    center: Point
    size: float


@dataclass(frozen=True)
class Scene:
    """A background, objects drawn in order, and an optional figure drawn on top."""

    background: Background
    objects: tuple[SceneObject, ...] = ()
    figure: Optional[tuple[Point, ...]] = None  # 18 normalised OpenPose-order keypoints


# ----------------------------------------------------------------------------- geometry


def _px(point: Point, size: int) -> Point:
    """Normalised to pixel-index coordinates (pixel centres at integers)."""
    return point[0] * size - 0.5, point[1] * size - 0.5


def triangle_vertices(obj: SceneObject) -> list[Point]:
    """Upward isosceles triangle inscribed in the object's bounding square."""
    (cx, cy), s = obj.center, obj.size
    return [(cx, cy - s), (cx + s, cy + s), (cx - s, cy + s)]


def square_vertices(obj: SceneObject) -> list[Point]:
    """Axis-aligned square corners, clockwise from top-left."""
    (cx, cy), s = obj.center, obj.size
    return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]


def object_mask(obj: SceneObject, size: int) -> np.ndarray:
    """Full (unoccluded) boolean mask of one object."""
    shape = (size, size)
    if obj.shape == "circle":
        cx, cy = _px(obj.center, size)
        return disc_mask(shape, cx, cy, obj.size * size)
    vertices = square_vertices(obj) if obj.shape == "square" else triangle_vertices(obj)
    return polygon_mask(shape, [_px(v, size) for v in vertices])


def figure_scale(figure: tuple[Point, ...]) -> float:
    """Figure height h (normalised), recovered from the neck to mid-hip distance."""
    mid_hip = np.mean([figure[R_HIP], figure[L_HIP]], axis=0)
    return float(np.hypot(*(np.asarray(figure[NECK]) - mid_hip))) / _TORSO


def figure_parts(figure: tuple[Point, ...], size: int) -> list[tuple[np.ndarray, tuple[int, int, int]]]:
    """The figure's (mask, colour) parts in painting order: legs, torso, neck, arms, head."""
    shape, h = (size, size), figure_scale(figure) * size
    p = [_px(k, size) for k in figure]
    limb_r, neck_r = max(1.0, _LIMB_W * h / 2), max(1.0, _NECK_W * h / 2)
    parts = []
    for hip, knee, ankle in ((R_HIP, R_KNEE, R_ANK), (L_HIP, L_KNEE, L_ANK)):
        parts.append((segment_mask(shape, p[hip], p[knee], limb_r), TROUSERS))
        parts.append((segment_mask(shape, p[knee], p[ankle], limb_r), TROUSERS))
    parts.append((polygon_mask(shape, [p[R_SHO], p[L_SHO], p[L_HIP], p[R_HIP]]), SHIRT))
    parts.append((segment_mask(shape, p[NECK], p[NOSE], neck_r), SKIN))
    for sho, elb, wri in ((R_SHO, R_ELB, R_WRI), (L_SHO, L_ELB, L_WRI)):
        parts.append((segment_mask(shape, p[sho], p[elb], limb_r), SHIRT))
        parts.append((segment_mask(shape, p[elb], p[wri], limb_r), SKIN))
    parts.append((disc_mask(shape, *p[NOSE], max(2.0, _HEAD_R * h)), SKIN))
    return parts


def figure_mask(figure: tuple[Point, ...], size: int) -> np.ndarray:
    """Full boolean mask of the figure (union of its parts)."""
    mask = np.zeros((size, size), dtype=bool)
    for part, _ in figure_parts(figure, size):
        mask |= part
    return mask


def stripe_bands(background: Background, size: int) -> np.ndarray:
    """Integer band index per pixel row/column (even = base grey, odd = stripe), length ``size``."""
    centres = (np.arange(size) + 0.5) / size
    return np.floor(centres / (background.period / 2)).astype(int)


# ----------------------------------------------------------------------------- rendering


def render_background(background: Background, size: int) -> np.ndarray:
    """The background alone as uint8 HxWx3."""
    image = np.full((size, size, 3), background.grey, dtype=np.uint8)
    if background.kind == "stripes":
        odd = stripe_bands(background, size) % 2 == 1
        rows = odd[:, None] if background.direction == "horizontal" else odd[None, :]
        image[np.broadcast_to(rows, (size, size))] = STRIPE_COLOURS[background.stripe_colour]
    return image


def render(scene: Scene, size: int = 64) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render to (uint8 HxWx3, visible masks {"background", "object_<i>", "figure"})."""
    image = render_background(scene.background, size)
    owner = np.full((size, size), -1, dtype=int)  # which element is visible at each pixel
    for index, obj in enumerate(scene.objects):
        mask = object_mask(obj, size)
        image[mask] = COLOURS[obj.colour]
        owner[mask] = index
    if scene.figure is not None:
        for part, colour in figure_parts(scene.figure, size):
            image[part] = colour
            owner[part] = len(scene.objects)
    masks = {"background": owner == -1}
    for index in range(len(scene.objects)):
        masks[f"object_{index}"] = owner == index
    if scene.figure is not None:
        masks["figure"] = owner == len(scene.objects)
    return image, masks


# ----------------------------------------------------------------------------- caption


def _join(phrases: list[str]) -> str:
    """English list: 'a', 'a and b', 'a, b and c'."""
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def background_phrase(background: Background) -> str:
    """'a striped background', 'a light grey background' or 'a dark grey background'."""
    if background.kind == "stripes":
        return "a striped background"
    return f"a {'light' if background.grey >= 128 else 'dark'} grey background"


def caption(scene: Scene) -> str:
    """Caption from the grammar: '<things> on <background>' (layout and pose never appear)."""
    things = [f"a {obj.colour} {obj.shape}" for obj in scene.objects]
    if scene.figure is not None:
        things.append("a figure")
    subject = _join(things) if things else "nothing"
    return f"{subject} on {background_phrase(scene.background)}"


# ----------------------------------------------------------------------------- sampling


def _limb(rng: np.random.Generator, root: Point, side: float, lengths, angle_range, bend_range, h):
    """Two joints of a limb hanging from ``root``; angles in degrees, 0 = straight down."""
    a = math.radians(rng.uniform(*angle_range))
    b = a + math.radians(rng.uniform(*bend_range))
    mid = (root[0] + side * math.sin(a) * lengths[0] * h, root[1] + math.cos(a) * lengths[0] * h)
    end = (mid[0] + side * math.sin(b) * lengths[1] * h, mid[1] + math.cos(b) * lengths[1] * h)
    return mid, end


def _figure_attempt(rng: np.random.Generator) -> tuple[Point, ...]:
    """One unchecked figure: random height, position and limb angles."""
    h = rng.uniform(0.5, 0.72)
    cx, top = rng.uniform(0.15, 0.85), rng.uniform(0.03, 0.97 - h)
    at = lambda dx, dy: (cx + dx * h, top + dy * h)  # noqa: E731 - local shorthand
    k: list[Point] = [(0.0, 0.0)] * NUM_KEYPOINTS
    k[NOSE], k[NECK] = at(0, 0.09), at(0, 0.2)
    k[R_EYE], k[L_EYE], k[R_EAR], k[L_EAR] = at(-0.03, 0.07), at(0.03, 0.07), at(-0.06, 0.09), at(0.06, 0.09)
    # The figure faces the viewer, so its right side is on the image's left (side = -1).
    k[R_SHO], k[L_SHO], k[R_HIP], k[L_HIP] = at(-0.11, 0.22), at(0.11, 0.22), at(-0.07, 0.56), at(0.07, 0.56)
    for (root, mid, end), side in ((LIMB_CHAINS["right arm"], -1), (LIMB_CHAINS["left arm"], 1)):
        k[mid], k[end] = _limb(rng, k[root], side, (0.16, 0.15), (10, 150), (-70, 70), h)
    for (root, mid, end), side in ((LIMB_CHAINS["right leg"], -1), (LIMB_CHAINS["left leg"], 1)):
        k[mid], k[end] = _limb(rng, k[root], side, (0.22, 0.21), (0, 25), (-25, 10), h)
    return tuple((float(x), float(y)) for x, y in k)


def in_bounds(figure: tuple[Point, ...], margin: float = 0.02) -> bool:
    """True when every keypoint and the head stay inside the image with ``margin``."""
    pts = np.asarray(figure)
    head_r = _HEAD_R * figure_scale(figure)
    head_ok = margin <= pts[NOSE, 1] - head_r
    return bool(head_ok and np.all(pts >= margin) and np.all(pts <= 1 - margin))


def sample_figure(rng: np.random.Generator) -> tuple[Point, ...]:
    """A random in-bounds figure (rejection sampling keeps limbs inside the frame)."""
    for _ in range(200):
        figure = _figure_attempt(rng)
        if in_bounds(figure):
            return figure
    raise RuntimeError("could not sample an in-bounds figure")


def figure_box(figure: tuple[Point, ...]) -> tuple[float, float, float, float]:
    """Normalised (x0, y0, x1, y1) box around the figure including limb thickness and head."""
    pts, h = np.asarray(figure), figure_scale(figure)
    pad = max(_HEAD_R, _LIMB_W / 2) * h
    return pts[:, 0].min() - pad, pts[:, 1].min() - pad, pts[:, 0].max() + pad, pts[:, 1].max() + pad


def object_box(obj: SceneObject) -> tuple[float, float, float, float]:
    """Normalised bounding box of an object."""
    (cx, cy), s = obj.center, obj.size
    return cx - s, cy - s, cx + s, cy + s


def boxes_overlap(a, b, margin: float = 0.02) -> bool:
    """True when two (x0, y0, x1, y1) boxes come closer than ``margin``."""
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def placement_ok(obj: SceneObject, others, figure, avoid_figure: bool = True) -> bool:
    """Object inside the frame, clear of ``others`` and (optionally) of the figure."""
    box = object_box(obj)
    if min(box) < 0.02 or max(box) > 0.98:
        return False
    if any(boxes_overlap(box, object_box(o)) for o in others):
        return False
    return not (avoid_figure and figure is not None and boxes_overlap(box, figure_box(figure)))


def _sample_objects(rng: np.random.Generator, count: int, figure, size: int) -> tuple[SceneObject, ...]:
    """Place up to ``count`` non-overlapping objects; the first one always lands."""
    min_half = 4.0 / size  # keep shapes recognisable at small sizes
    objects: list[SceneObject] = []
    for tries in range(400):
        if len(objects) == count:
            break
        s = max(float(rng.uniform(0.08, 0.15)), min_half)
        obj = SceneObject(
            shape=str(rng.choice(SHAPES)),
            colour=str(rng.choice(list(COLOURS))),
            center=(float(rng.uniform(s, 1 - s)), float(rng.uniform(s, 1 - s))),
            size=s,
        )
        # Give up on avoiding the figure late, so crowded scenes still get their first object.
        if placement_ok(obj, objects, figure, avoid_figure=tries < 300 or len(objects) > 0):
            objects.append(obj)
    return tuple(objects)


def _sample_background(rng: np.random.Generator) -> Background:
    """Flat grey or stripes, half and half."""
    grey = int(rng.integers(70, 200))
    if rng.random() < 0.5:
        return Background(kind="flat", grey=grey)
    return Background(
        kind="stripes",
        grey=grey,
        direction=str(rng.choice(DIRECTIONS)),
        stripe_colour=str(rng.choice(list(STRIPE_COLOURS))),
        period=float(rng.choice([0.25, 1 / 3, 0.5])),
    )


def sample_scene_rng(rng: np.random.Generator, size: int = 64, *, with_figure: Optional[bool] = None) -> Scene:
    """Draw a scene from an existing generator (used by edits to keep one stream)."""
    background = _sample_background(rng)
    has_figure = bool(rng.random() < 0.6) if with_figure is None else with_figure
    figure = sample_figure(rng) if has_figure else None
    count = int(rng.integers(1, 3 if has_figure else 4))
    objects = _sample_objects(rng, count, figure, size)
    return Scene(background=background, objects=objects, figure=figure)


def sample_scene(seed: int, size: int = 64, *, with_figure: Optional[bool] = None) -> Scene:
    """Deterministically draw one scene from ``numpy.random.default_rng(seed)``."""
    return sample_scene_rng(np.random.default_rng(seed), size, with_figure=with_figure)
