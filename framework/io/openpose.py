"""OpenPose-style pose maps, keypoint JSON I/O and the numpy raster primitives the toy world shares.

Coordinates: pixel-index space, where pixel column ``i`` has its centre at ``x = i`` (the
OpenPose convention). Normalised coordinates map to it with ``x * width - 0.5`` so that 0.5
is the image centre for every size.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

KEYPOINT_NAMES = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)

# The 17 standard OpenPose (COCO-18) limb connections, 0-indexed, in the order that fixes their colour.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)

# Standard OpenPose palette: joint i uses colour i, limb i uses colour i scaled by LIMB_ALPHA.
OPENPOSE_COLOURS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
# ControlNet's annotator paints limbs at 60% intensity over black, then full-colour joints.
LIMB_ALPHA = 0.6

# BODY_25 -> COCO-18: BODY_25 inserts mid-hip at 8 and appends feet; the rest keeps order.
BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)

Size = Union[int, Sequence[int]]
Point = Optional[Sequence[float]]


# ----------------------------------------------------------------------------- raster primitives


def hw(size: Size) -> tuple[int, int]:
    """Return (height, width) from an int (square) or a (height, width) pair."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


def _window(shape: tuple[int, int], x0: float, y0: float, x1: float, y1: float):
    """Clip a float bounding box to the image; return (slices, xs, ys) or None if empty."""
    height, width = shape
    c0, c1 = max(0, math.floor(x0)), min(width, math.ceil(x1) + 1)
    r0, r1 = max(0, math.floor(y0)), min(height, math.ceil(y1) + 1)
    if c0 >= c1 or r0 >= r1:
        return None
    ys, xs = np.mgrid[r0:r1, c0:c1].astype(np.float64)
    return (slice(r0, r1), slice(c0, c1)), xs, ys


def _paint(shape: tuple[int, int], box, inside) -> np.ndarray:
    """Evaluate ``inside(xs, ys)`` only within ``box`` (speed on large images) into a full mask."""
    mask = np.zeros(shape, dtype=bool)
    window = _window(shape, *box)
    if window is not None:
        sl, xs, ys = window
        mask[sl] = inside(xs, ys)
    return mask


def disc_mask(shape: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    """Pixels whose centres lie within distance ``r`` of (cx, cy)."""
    box = (cx - r, cy - r, cx + r, cy + r)
    return _paint(shape, box, lambda xs, ys: (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r)


def segment_mask(shape: tuple[int, int], p: Sequence[float], q: Sequence[float], r: float) -> np.ndarray:
    """Capsule: pixels within distance ``r`` of segment pq (round caps come for free)."""
    (px, py), (qx, qy) = p, q
    dx, dy = qx - px, qy - py
    length2 = dx * dx + dy * dy
    box = (min(px, qx) - r, min(py, qy) - r, max(px, qx) + r, max(py, qy) + r)

    def inside(xs, ys):
        t = np.zeros_like(xs) if length2 == 0 else ((xs - px) * dx + (ys - py) * dy) / length2
        t = np.clip(t, 0.0, 1.0)
        return (xs - px - t * dx) ** 2 + (ys - py - t * dy) ** 2 <= r * r

    return _paint(shape, box, inside)


def polygon_mask(shape: tuple[int, int], points: Sequence[Sequence[float]]) -> np.ndarray:
    """Convex polygon (either winding): pixels on the inner side of every edge."""
    pts = np.asarray(points, dtype=np.float64)
    box = (pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max())

    def inside(xs, ys):
        crosses = []
        for (ax, ay), (bx, by) in zip(pts, np.roll(pts, -1, axis=0)):
            crosses.append((bx - ax) * (ys - ay) - (by - ay) * (xs - ax))
        crosses = np.stack(crosses)
        # Accepting both signs makes the test independent of vertex winding.
        return np.all(crosses >= 0, axis=0) | np.all(crosses <= 0, axis=0)

    return _paint(shape, box, inside)


def ellipse_mask(shape: tuple[int, int], p: Sequence[float], q: Sequence[float], half_width: float) -> np.ndarray:
    """Ellipse spanning segment pq with semi-minor axis ``half_width`` (the OpenPose limb shape)."""
    (px, py), (qx, qy) = p, q
    mx, my = (px + qx) / 2, (py + qy) / 2
    length = math.hypot(qx - px, qy - py)
    a = max(length / 2, half_width)  # a zero-length limb still shows as a dot
    ux, uy = ((qx - px) / length, (qy - py) / length) if length > 0 else (1.0, 0.0)
    box = (mx - a, my - a, mx + a, my + a)

    def inside(xs, ys):
        along = (xs - mx) * ux + (ys - my) * uy
        across = -(xs - mx) * uy + (ys - my) * ux
        return (along / a) ** 2 + (across / half_width) ** 2 <= 1.0

    return _paint(shape, box, inside)


# ----------------------------------------------------------------------------- keypoint parsing


def _point(entry: Point, min_confidence: float) -> Optional[tuple[float, float]]:
    """One keypoint as (x, y), or None when missing, non-finite or at or below min_confidence."""
    if entry is None:
        return None
    values = [float(v) for v in entry]
    if len(values) == 3 and values[2] <= min_confidence:
        return None
    if len(values) not in (2, 3) or not all(math.isfinite(v) for v in values[:2]):
        return None
    return values[0], values[1]


def _is_point(entry) -> bool:
    """True for an (x, y[, c]) entry, False for a person (a list of entries)."""
    scalars = [np.isscalar(v) for v in entry if v is not None]
    return bool(scalars) and all(scalars)


def _as_people(keypoints) -> list:
    """Accept one person (18 entries) or a list of people; return a list of people."""
    if isinstance(keypoints, np.ndarray):
        return [keypoints] if keypoints.ndim == 2 else list(keypoints)
    entries = [e for e in keypoints if e is not None]
    if not entries:
        return [keypoints] if len(keypoints) else []
    return [keypoints] if _is_point(entries[0]) else list(keypoints)


def _person_points(person, min_confidence: float) -> list[Optional[tuple[float, float]]]:
    """Normalise one person's entries to 18 optional (x, y) points."""
    if len(person) != NUM_KEYPOINTS:
        raise ValueError(f"expected {NUM_KEYPOINTS} keypoints per person, got {len(person)}")
    return [_point(entry, min_confidence) for entry in person]


def _looks_normalised(people: list[list[Optional[tuple[float, float]]]]) -> bool:
    """Guess: every present coordinate in [0, 1] means normalised."""
    coords = [v for person in people for p in person if p is not None for v in p]
    return bool(coords) and all(0.0 <= v <= 1.0 for v in coords)


# ----------------------------------------------------------------------------- drawing


def draw_openpose(
    keypoints,
    size: Size,
    *,
    normalized: Optional[bool] = None,
    stick_width: Optional[float] = None,
    dot_radius: Optional[float] = None,
    min_confidence: float = 0.0,
) -> np.ndarray:
    """Draw an OpenPose-style map (uint8 HxWx3) for one person or a list of people."""
    height, width = hw(size)
    # ControlNet draws at 512 px with stick width 4 and dot radius 4; scale with the short side.
    scale = min(height, width) / 512.0
    stick = stick_width if stick_width is not None else max(1.0, 4.0 * scale)
    radius = dot_radius if dot_radius is not None else max(1.0, 4.0 * scale)
    people = [_person_points(p, min_confidence) for p in _as_people(keypoints)]
    if normalized is None:
        normalized = _looks_normalised(people)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for person in people:
        pts = [_to_pixels(p, height, width) if normalized else p for p in person]
        _draw_person(canvas, pts, stick, radius)
    return canvas


def _to_pixels(p: Optional[tuple[float, float]], height: int, width: int):
    """Normalised (x, y) to pixel-index coordinates."""
    return None if p is None else (p[0] * width - 0.5, p[1] * height - 0.5)


def _draw_person(canvas: np.ndarray, pts, stick: float, radius: float) -> None:
    """Paint limbs first, then joints on top, skipping anything with a missing end."""
    shape = canvas.shape[:2]
    for index, (a, b) in enumerate(LIMBS):
        if pts[a] is None or pts[b] is None:
            continue
        colour = [int(c * LIMB_ALPHA) for c in OPENPOSE_COLOURS[index]]
        canvas[ellipse_mask(shape, pts[a], pts[b], stick)] = colour
    for index, p in enumerate(pts):
        if p is not None:
            canvas[disc_mask(shape, p[0], p[1], radius)] = OPENPOSE_COLOURS[index]


def limb_colour(a: int, b: int) -> tuple[int, int, int]:
    """The colour draw_openpose paints the limb between keypoints a and b with."""
    index = LIMBS.index((a, b)) if (a, b) in LIMBS else LIMBS.index((b, a))
    return tuple(int(c * LIMB_ALPHA) for c in OPENPOSE_COLOURS[index])


# ----------------------------------------------------------------------------- JSON I/O


def _triples(flat: Sequence[float]) -> list[tuple[float, float, float]]:
    """Split OpenPose's flat [x, y, c, ...] into COCO-18 (x, y, c) triples."""
    if len(flat) % 3:
        raise ValueError("pose_keypoints_2d length must be a multiple of 3")
    triples = [tuple(float(v) for v in flat[i:i + 3]) for i in range(0, len(flat), 3)]
    if len(triples) == 25:
        triples = [triples[i] for i in BODY25_TO_COCO18]
    if len(triples) != NUM_KEYPOINTS:
        raise ValueError(f"expected 18 (COCO) or 25 (BODY_25) keypoints, got {len(triples)}")
    return triples


def _plain_person(entries) -> list[tuple[float, float, float]]:
    """A list of [x, y] / [x, y, c] / null entries as (x, y, c) triples; [x, y] means c = 1."""
    out = []
    for entry in entries:
        if entry is None:
            out.append((0.0, 0.0, 0.0))
        elif len(entry) == 2:
            out.append((float(entry[0]), float(entry[1]), 1.0))
        else:
            out.append(tuple(float(v) for v in entry[:3]))
    if len(out) == 25:
        out = [out[i] for i in BODY25_TO_COCO18]
    if len(out) != NUM_KEYPOINTS:
        raise ValueError(f"expected 18 keypoints per person, got {len(out)}")
    return out


def parse_keypoints(data) -> list[list[tuple[float, float, float]]]:
    """Parse decoded OpenPose JSON or a plain keypoint list into per-person (x, y, c) lists."""
    if isinstance(data, dict):
        return [_triples(person["pose_keypoints_2d"]) for person in data.get("people", [])]
    people = _as_people(data)
    return [_plain_person(person) for person in people]


def load_keypoints_json(path: Union[str, Path]) -> list[list[tuple[float, float, float]]]:
    """Read an OpenPose JSON file (or a plain [[x, y(, c)], ...] list) into per-person triples."""
    with open(path, "r", encoding="utf-8") as handle:
        return parse_keypoints(json.load(handle))


def save_keypoints_json(path: Union[str, Path], people: Iterable) -> Path:
    """Write people (lists of 18 (x, y[, c]) or None) as OpenPose JSON; missing points get c = 0."""
    records = []
    for person in people:
        flat: list[float] = []
        for x, y, c in _plain_person(person):
            flat.extend((x, y, c))
        records.append({"pose_keypoints_2d": flat})
    path = Path(path)
    path.write_text(json.dumps({"version": 1.3, "people": records}, indent=1) + "\n", encoding="utf-8")
    return path
