"""Condition maps: formats, and that each shows what it should."""

import numpy as np
import pytest

from framework.toy.world.conditions import condition_maps, line_map, pose_map, scribble_map
from framework.toy.world.scenes import Background, Scene, SceneObject, object_mask, render, sample_scene


@pytest.mark.parametrize("size", [64, 128])
def test_maps_are_uint8_rgb(size):
    maps = condition_maps(sample_scene(2, size, with_figure=True), size)
    assert set(maps) == {"pose", "scribble", "lines"}
    for image in maps.values():
        assert image.shape == (size, size, 3) and image.dtype == np.uint8 and image.any()
    for name in ("scribble", "lines"):
        assert set(np.unique(maps[name])) <= {0, 255}


def test_pose_map_black_without_figure():
    assert not pose_map(sample_scene(0, 64, with_figure=False), 64).any()


def test_scribble_is_the_object_outline():
    obj = SceneObject("circle", "red", (0.5, 0.5), 0.25)
    strokes = scribble_map(Scene(Background(), (obj,)), 64)[:, :, 0] > 0
    mask = object_mask(obj, 64)
    assert strokes.any() and np.all(mask[strokes])  # strokes lie on the shape
    assert not strokes[32, 32]  # interior stays empty


def test_scribble_outlines_the_figure():
    scene = sample_scene(4, 64, with_figure=True)
    strokes = scribble_map(scene, 64)[:, :, 0] > 0
    assert (strokes & render(scene, 64)[1]["figure"]).any()


def test_lines_only_for_straight_edges():
    circle = Scene(Background(), (SceneObject("circle", "red", (0.5, 0.5), 0.2),))
    assert not line_map(circle, 64).any()
    square = Scene(Background(), (SceneObject("square", "red", (0.5, 0.5), 0.2),))
    lines = line_map(square, 64)[:, :, 0] > 0
    assert lines.sum() < 4 * 0.4 * 64 * 2  # thin: about one pixel per edge pixel


def test_stripe_boundaries_are_full_lines():
    scene = Scene(Background(kind="stripes", direction="vertical", period=0.5))
    lines = line_map(scene, 64)[:, :, 0] > 0
    columns = np.flatnonzero(lines.all(axis=0))
    assert len(columns) == 3 and lines.sum() == 3 * 64  # bands of 16 px -> 3 inner boundaries
    assert line_map(scene, 128)[:, :, 0].astype(bool).sum() == 3 * 2 * 128  # 2 px at 128
