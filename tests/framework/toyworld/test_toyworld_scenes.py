"""Scenes: deterministic sampling and rendering, masks, captions, and no torch dependency."""

from pathlib import Path

import numpy as np
import pytest

import framework.toy.world as toyworld
from framework.toy.world.scenes import Background, Scene, SceneObject, caption, render, sample_scene


@pytest.mark.parametrize("size", [64, 128])
def test_same_seed_gives_identical_bytes(size):
    a, b = sample_scene(7, size), sample_scene(7, size)
    assert a == b
    assert render(a, size)[0].tobytes() == render(b, size)[0].tobytes()


def test_different_seeds_differ():
    images = {render(sample_scene(seed, 64), 64)[0].tobytes() for seed in range(12)}
    assert len(images) == 12


@pytest.mark.parametrize("size", [64, 128, 50, 97])
def test_render_any_size_and_masks_partition_the_image(size):
    scene = sample_scene(3, size, with_figure=True)
    image, masks = render(scene, size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert set(masks) == {"background", "figure"} | {f"object_{i}" for i in range(len(scene.objects))}
    coverage = sum(m.astype(int) for m in masks.values())
    assert np.all(coverage == 1)
    assert masks["figure"].any()


def test_sampled_scenes_are_well_formed():
    for seed in range(30):
        scene = sample_scene(seed, 64)
        assert 1 <= len(scene.objects) <= 3
        if scene.figure is not None:
            pts = np.asarray(scene.figure)
            assert pts.shape == (18, 2)
            assert np.all((pts >= 0) & (pts <= 1))


def test_with_figure_flag_is_respected():
    assert all(sample_scene(s, 64, with_figure=True).figure is not None for s in range(10))
    assert all(sample_scene(s, 64, with_figure=False).figure is None for s in range(10))


def test_caption_grammar():
    red = SceneObject("circle", "red", (0.2, 0.2), 0.1)
    blue = SceneObject("square", "blue", (0.7, 0.2), 0.1)
    figure = sample_scene(0, 64, with_figure=True).figure
    striped = Background(kind="stripes")
    assert caption(Scene(striped, (red,), figure)) == "a red circle and a figure on a striped background"
    assert caption(Scene(Background(grey=90), (red, blue))) == "a red circle and a blue square on a dark grey background"
    three = Scene(Background(grey=180), (red, blue, red), figure)
    assert caption(three) == "a red circle, a blue square, a red circle and a figure on a light grey background"


def test_object_colours_are_rendered():
    scene = Scene(Background(grey=128), (SceneObject("triangle", "green", (0.5, 0.5), 0.2),))
    image, masks = render(scene, 64)
    assert np.all(image[masks["object_0"]] == toyworld.scenes.COLOURS["green"])
    assert np.all(image[masks["background"]] == 128)


def test_modules_do_not_import_torch():
    for path in Path(toyworld.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert "import torch" not in text and "from torch" not in text, path.name
