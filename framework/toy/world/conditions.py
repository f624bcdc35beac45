"""Condition maps for a toy scene: scribble (outlines), lines (MLSD-like) and OpenPose.

Every map is uint8 HxWx3, white (or OpenPose colours) on black, like the ControlNet annotators.
"""

from __future__ import annotations

import numpy as np

from framework.io.openpose import draw_openpose, segment_mask

from .scenes import (
    L_ANK,
    L_ELB,
    L_HIP,
    L_KNEE,
    L_SHO,
    L_WRI,
    NECK,
    NOSE,
    R_ANK,
    R_ELB,
    R_HIP,
    R_KNEE,
    R_SHO,
    R_WRI,
    Scene,
    figure_mask,
    object_mask,
    square_vertices,
    stripe_bands,
    triangle_vertices,
)

MODALITIES = ("pose", "scribble", "lines")

# Straight body segments for the line map: limbs, torso outline and neck.
_BODY_SEGMENTS = (
    (R_SHO, R_ELB), (R_ELB, R_WRI), (L_SHO, L_ELB), (L_ELB, L_WRI),
    (R_HIP, R_KNEE), (R_KNEE, R_ANK), (L_HIP, L_KNEE), (L_KNEE, L_ANK),
    (R_SHO, L_SHO), (R_HIP, L_HIP), (R_SHO, R_HIP), (L_SHO, L_HIP), (NECK, NOSE),
)


def _to_rgb(mask: np.ndarray) -> np.ndarray:
    """Boolean mask to white-on-black uint8 HxWx3."""
    return np.repeat((mask * 255).astype(np.uint8)[:, :, None], 3, axis=2)


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion with a (2r+1)^2 square; outside the image counts as empty."""
    if radius <= 0:
        return mask.copy()
    h, w = mask.shape
    padded = np.pad(mask, radius, constant_values=False)
    out = np.ones_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out &= padded[dy:dy + h, dx:dx + w]
    return out


def outline(mask: np.ndarray, width: int) -> np.ndarray:
    """Inner boundary band of ``width`` pixels."""
    return mask & ~erode(mask, width)


def scribble_width(size: int) -> int:
    """Stroke width: 1 px at 64, 2 at 128, growing with size like a hand-drawn scribble."""
    return max(1, size // 64)


def line_width(size: int) -> int:
    """MLSD-like thin lines: 1 px below 128, else 2 px."""
    return 1 if size < 128 else 2


def scribble_map(scene: Scene, size: int = 64) -> np.ndarray:
    """White outlines of objects and the figure on black; later elements hide earlier strokes."""
    width = scribble_width(size)
    canvas = np.zeros((size, size), dtype=bool)
    shapes = [object_mask(obj, size) for obj in scene.objects]
    if scene.figure is not None:
        shapes.append(figure_mask(scene.figure, size))
    for mask in shapes:
        # Occlusion: a shape painted on top erases the strokes it covers, as in the rendered image.
        canvas[mask] = False
        canvas |= outline(mask, width)
    return _to_rgb(canvas)


def _stripe_lines(scene: Scene, size: int, width: int) -> np.ndarray:
    """Rows or columns where the stripe band changes (width pixels, ending at the boundary)."""
    lines = np.zeros((size, size), dtype=bool)
    if scene.background.kind != "stripes":
        return lines
    bands = stripe_bands(scene.background, size)
    edges = np.flatnonzero(np.diff(bands) != 0) + 1
    marks = np.zeros(size, dtype=bool)
    for edge in edges:
        marks[max(0, edge - width + 1):edge + 1] = True
    if scene.background.direction == "horizontal":
        lines[marks, :] = True
    else:
        lines[:, marks] = True
    return lines


def _polyline_segments(scene: Scene) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Normalised straight segments: square and triangle edges, then the figure's body segments."""
    segments = []
    for obj in scene.objects:
        if obj.shape == "circle":
            continue  # no straight edges: a line detector would not fire
        vertices = square_vertices(obj) if obj.shape == "square" else triangle_vertices(obj)
        segments += list(zip(vertices, vertices[1:] + vertices[:1]))
    if scene.figure is not None:
        segments += [(scene.figure[a], scene.figure[b]) for a, b in _BODY_SEGMENTS]
    return segments


def line_map(scene: Scene, size: int = 64) -> np.ndarray:
    """White 1-2 px straight lines on black: shape edges, stripe boundaries and limbs (MLSD-like)."""
    width = line_width(size)
    canvas = _stripe_lines(scene, size, width)
    for p, q in _polyline_segments(scene):
        pp = (p[0] * size - 0.5, p[1] * size - 0.5)
        qq = (q[0] * size - 0.5, q[1] * size - 0.5)
        canvas |= segment_mask((size, size), pp, qq, width / 2)
    return _to_rgb(canvas)


def pose_map(scene: Scene, size: int = 64) -> np.ndarray:
    """OpenPose map of the figure (all black when the scene has none)."""
    if scene.figure is None:
        return np.zeros((size, size, 3), dtype=np.uint8)
    return draw_openpose(scene.figure, size, normalized=True)


def condition_maps(scene: Scene, size: int = 64) -> dict[str, np.ndarray]:
    """All condition maps keyed by modality: {"pose", "scribble", "lines"}."""
    return {"pose": pose_map(scene, size), "scribble": scribble_map(scene, size), "lines": line_map(scene, size)}
