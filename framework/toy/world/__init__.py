"""Seeded toy world: scenes with shapes and a stick figure, condition maps and ground-truth edits.

Pure numpy + Pillow (no torch), so benchmarks and tests can build data without the engine.
"""

from framework.io.openpose import draw_openpose, load_keypoints_json, parse_keypoints, save_keypoints_json

from .conditions import MODALITIES, condition_maps, line_map, pose_map, scribble_map
from .edits import EDIT_KINDS, KIND_MODALITIES, EditPair, make_edit
from .scenes import Background, Scene, SceneObject, caption, render, sample_scene

__all__ = [
    "Background", "EDIT_KINDS", "EditPair", "KIND_MODALITIES", "MODALITIES", "Scene", "SceneObject",
    "caption", "condition_maps", "draw_openpose", "line_map", "load_keypoints_json", "make_edit",
    "parse_keypoints", "pose_map", "render", "sample_scene", "save_keypoints_json", "scribble_map",
]
