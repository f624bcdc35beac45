"""Measures of the quality gates and the toy classifier's crops, on exact renders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framework.toy.model.classifier import crop_boxes, pose_class
from framework.toy.model.gates import (
    dilate,
    foreground_outline,
    iou,
    palette_mask,
    psnr,
    saturated_box,
)
from framework.toy.world import condition_maps, render, sample_scene
from framework.toy.world.scenes import L_SHO, L_WRI, R_SHO, R_WRI, SHIRT, SKIN, TROUSERS, figure_mask, object_box


def _scene(want, size=64):
    seed = 0
    while not want(sample_scene(seed, size)):
        seed += 1
    return sample_scene(seed, size)


def test_saturated_box_finds_the_single_object():
    scene = _scene(lambda s: len(s.objects) == 1 and s.figure is None)
    image = render(scene, 64)[0]
    box = np.array(saturated_box(image))
    assert np.abs(box - np.array(object_box(scene.objects[0]))).max() <= 1.5 / 64


def test_palette_mask_is_the_figure_on_a_render():
    scene = _scene(lambda s: s.figure is not None and s.background.kind == "flat")
    image, masks = render(scene, 64)
    assert iou(palette_mask(image, (SHIRT, SKIN, TROUSERS), tolerance=1.0), masks["figure"]) == 1.0
    assert iou(masks["figure"], figure_mask(scene.figure, 64)) > 0.9  # objects never cover it much


def test_render_outline_matches_its_scribble_map():
    scene = _scene(lambda s: s.background.kind == "flat" and s.figure is None)
    image = render(scene, 64)[0]
    strokes = condition_maps(scene, 64)["scribble"][..., 0] > 127
    value = iou(dilate(foreground_outline(image)), dilate(strokes))
    assert value > 0.9
    other = _scene(lambda s: s.background.kind == "flat" and s.figure is None and s != scene)
    assert iou(dilate(foreground_outline(render(other, 64)[0])), dilate(strokes)) < 0.5


def test_iou_psnr_and_dilate_values():
    a = np.zeros((8, 8), bool)
    a[2:4, 2:4] = True
    b = np.zeros((8, 8), bool)
    b[3:5, 2:4] = True
    assert iou(a, b) == pytest.approx(2 / 6)
    assert dilate(a).sum() == 16
    x = np.full((4, 4, 3), 100, np.uint8)
    y = x.copy()
    y[0, 0, 0] = 110  # MSE = 100 / 48 / 255^2
    assert psnr(x, y) == pytest.approx(10 * np.log10(255 ** 2 * 48 / 100))


def test_crop_of_the_whole_image_is_the_image():
    image = torch.rand(1, 3, 16, 16)
    crop = crop_boxes(image, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), crop=16, margin=0.0)
    assert torch.allclose(crop, image, atol=1e-5)
    quarter = crop_boxes(image, torch.tensor([[0.0, 0.0, 0.5, 0.5]]), crop=8, margin=0.0)
    assert torch.allclose(quarter, image[:, :, :8, :8], atol=1e-5)


def test_pose_class_reads_wrists_against_shoulders():
    figure = [(0.5, 0.5)] * 18
    figure[R_SHO], figure[L_SHO] = (0.4, 0.4), (0.6, 0.4)
    figure[R_WRI], figure[L_WRI] = (0.3, 0.2), (0.7, 0.6)  # right up, left down
    assert pose_class(figure) == 1
    figure[L_WRI] = (0.7, 0.3)
    assert pose_class(figure) == 3


def test_figure_pixels_are_the_figure_on_renders_where_a_radius_takes_the_background():
    """On exact renders of the pose gate's scenes (dark greys lie 39 from the trousers, the cream stripe 60
    from the skin), nearest-colour figure pixels are the figure; a 60 radius also takes background."""
    from framework.toy.model.gates import figure_pixels, held_out

    seeds = held_out(32, 64, lambda s: s.figure is not None)
    nearest, radius = [], []
    for seed in seeds:
        scene = sample_scene(seed, 64)
        image, masks = render(scene, 64)
        nearest.append(iou(figure_pixels(image), masks["figure"]))
        radius.append(iou(palette_mask(image, (SHIRT, SKIN, TROUSERS)), masks["figure"]))
    assert min(nearest) == 1.0
    assert np.mean(radius) < 0.85  # measured: 0.78
    grey = np.full((4, 4, 3), 80, np.uint8)
    assert palette_mask(grey, (TROUSERS,)).all() and not figure_pixels(grey).any()
