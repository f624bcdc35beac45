"""Ground-truth edit pairs: a source scene, an edited target scene, their maps, prompts and true mask."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np

from .conditions import condition_maps
from .scenes import (
    COLOURS,
    LIMB_CHAINS,
    SHAPES,
    Scene,
    SceneObject,
    caption,
    in_bounds,
    placement_ok,
    render,
    sample_scene_rng,
)

EDIT_KINDS = ("text", "pose", "scribble", "text_pose")
# Which condition maps carry the edit for each kind (text edits live in the prompt only).
KIND_MODALITIES = {"text": (), "pose": ("pose",), "scribble": ("scribble",), "text_pose": ("pose",)}
_MAX_ATTEMPTS = 50


@dataclass
class EditPair:
    """One edit with its ground truth; maps are keyed by modality ("pose", "scribble", "lines")."""

    source: Scene
    target: Scene
    kind: str
    source_prompt: str
    edit_prompt: str
    source_maps: dict[str, np.ndarray]
    edit_maps: dict[str, np.ndarray]
    source_image: np.ndarray
    target_image: np.ndarray
    true_mask: np.ndarray  # bool HxW: exactly the pixels where source and target renders differ
    seed: int = 0
    changes: list[str] = field(default_factory=list)  # human-readable description of the edit

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities relevant to this edit kind."""
        return KIND_MODALITIES[self.kind]


# ----------------------------------------------------------------------------- single edits


def _rotate(point, pivot, angle: float):
    """Rotate a normalised point about ``pivot`` by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = point[0] - pivot[0], point[1] - pivot[1]
    return (pivot[0] + c * dx - s * dy, pivot[1] + s * dx + c * dy)


def move_limb(figure, limb: str, joint: str, degrees: float):
    """Rotate a limb about its root ("root": whole limb) or its middle joint ("mid": lower part only)."""
    root, mid, end = LIMB_CHAINS[limb]
    points = list(figure)
    pivot = points[root] if joint == "root" else points[mid]
    moving = (mid, end) if joint == "root" else (end,)
    for index in moving:
        points[index] = _rotate(points[index], pivot, math.radians(degrees))
    return tuple(points)


def edit_pose(scene: Scene, rng: np.random.Generator, changes: list[str]) -> Optional[Scene]:
    """Rotate one or two limbs by 25-70 degrees, keeping the figure in the frame."""
    figure = scene.figure
    limbs = rng.choice(list(LIMB_CHAINS), size=int(rng.integers(1, 3)), replace=False)
    for limb in limbs:
        for _ in range(20):
            joint = str(rng.choice(["root", "mid"]))
            degrees = float(rng.uniform(25, 70) * rng.choice([-1, 1]))
            moved = move_limb(figure, str(limb), joint, degrees)
            if in_bounds(moved):
                figure = moved
                about = "root" if joint == "root" else "middle joint"
                changes.append(f"{limb} rotated {degrees:+.0f} deg about its {about}")
                break
        else:
            return None
    return replace(scene, figure=figure)


def edit_text(scene: Scene, rng: np.random.Generator, changes: list[str]) -> Optional[Scene]:
    """Change the colour or the shape of one object (the caption changes with it)."""
    index = int(rng.integers(len(scene.objects)))
    obj = scene.objects[index]
    if rng.random() < 0.5:
        colour = str(rng.choice([c for c in COLOURS if c != obj.colour]))
        new, note = replace(obj, colour=colour), f"{obj.colour} {obj.shape} -> {colour}"
    else:
        shape = str(rng.choice([s for s in SHAPES if s != obj.shape]))
        new, note = replace(obj, shape=shape), f"{obj.colour} {obj.shape} -> {shape}"
    changes.append(note)
    return _with_object(scene, index, new)


def edit_scribble(scene: Scene, rng: np.random.Generator, changes: list[str]) -> Optional[Scene]:
    """Move or resize one object to a free spot (shape and colour, hence the caption, stay)."""
    index = int(rng.integers(len(scene.objects)))
    obj = scene.objects[index]
    others = scene.objects[:index] + scene.objects[index + 1:]
    for _ in range(40):
        if rng.random() < 0.5:
            angle, dist = rng.uniform(0, 2 * math.pi), rng.uniform(0.12, 0.35)
            center = (obj.center[0] + dist * math.cos(angle), obj.center[1] + dist * math.sin(angle))
            new, note = replace(obj, center=(float(center[0]), float(center[1]))), "moved"
        else:
            factor = float(rng.choice([rng.uniform(0.6, 0.8), rng.uniform(1.25, 1.5)]))
            new, note = replace(obj, size=obj.size * factor), f"resized x{factor:.2f}"
        if placement_ok(new, others, scene.figure):
            changes.append(f"{obj.colour} {obj.shape} {note}")
            return _with_object(scene, index, new)
    return None


def _with_object(scene: Scene, index: int, obj: SceneObject) -> Scene:
    """Copy of the scene with object ``index`` replaced."""
    objects = scene.objects[:index] + (obj,) + scene.objects[index + 1:]
    return replace(scene, objects=objects)


def _edit_text_pose(scene: Scene, rng: np.random.Generator, changes: list[str]) -> Optional[Scene]:
    """Pose edit followed by a text edit."""
    posed = edit_pose(scene, rng, changes)
    return None if posed is None else edit_text(posed, rng, changes)


_EDITORS: dict[str, Callable[..., Optional[Scene]]] = {
    "text": edit_text, "pose": edit_pose, "scribble": edit_scribble, "text_pose": _edit_text_pose,
}


# ----------------------------------------------------------------------------- pairs


def _pair_is_valid(kind: str, source: Scene, target: Scene, mask: np.ndarray) -> bool:
    """Reject pairs with no visible change or prompts that disagree with the kind."""
    if not mask.any():
        return False
    prompts_differ = caption(source) != caption(target)
    return prompts_differ if kind in ("text", "text_pose") else not prompts_differ


def build_pair(source: Scene, target: Scene, kind: str, size: int, seed: int = 0, changes=None) -> EditPair:
    """Render both scenes and derive maps, prompts and the exact changed-pixel mask."""
    source_image, _ = render(source, size)
    target_image, _ = render(target, size)
    return EditPair(
        source=source, target=target, kind=kind,
        source_prompt=caption(source), edit_prompt=caption(target),
        source_maps=condition_maps(source, size), edit_maps=condition_maps(target, size),
        source_image=source_image, target_image=target_image,
        true_mask=np.any(source_image != target_image, axis=-1),
        seed=seed, changes=list(changes or []),
    )


def make_edit(seed: int, kind: str, size: int = 64) -> EditPair:
    """Deterministically sample a scene and one edit of ``kind`` from ``default_rng(seed)``."""
    if kind not in _EDITORS:
        raise ValueError(f"unknown edit kind {kind!r}; expected one of {EDIT_KINDS}")
    rng = np.random.default_rng(seed)
    needs_figure = True if "pose" in kind else None
    for _ in range(_MAX_ATTEMPTS):
        # One generator for scene and edit: a rejected attempt simply draws the next scene.
        source = sample_scene_rng(rng, size, with_figure=needs_figure)
        changes: list[str] = []
        target = _EDITORS[kind](source, rng, changes)
        if target is None:
            continue
        pair = build_pair(source, target, kind, size, seed, changes)
        if _pair_is_valid(kind, source, target, pair.true_mask):
            return pair
    raise RuntimeError(f"no valid {kind!r} edit found for seed {seed} in {_MAX_ATTEMPTS} attempts")
