"""Edit pairs: the true mask is exactly the changed pixels, prompts follow the kind, deterministic."""

import numpy as np
import pytest

from framework.toy.world.conditions import condition_maps
from framework.toy.world.edits import EDIT_KINDS, make_edit, move_limb
from framework.toy.world.scenes import R_ELB, R_SHO, R_WRI, render, sample_scene

SEEDS = range(6)


@pytest.mark.parametrize("kind", EDIT_KINDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_true_mask_is_exactly_the_changed_pixels(kind, seed):
    pair = make_edit(seed, kind, 64)
    assert pair.true_mask.dtype == bool and pair.true_mask.shape == (64, 64)
    assert pair.true_mask.any()
    outside, inside = ~pair.true_mask, pair.true_mask
    assert np.array_equal(pair.source_image[outside], pair.target_image[outside])
    assert np.all(np.any(pair.source_image[inside] != pair.target_image[inside], axis=-1))
    assert np.array_equal(render(pair.source, 64)[0], pair.source_image)
    assert np.array_equal(render(pair.target, 64)[0], pair.target_image)


@pytest.mark.parametrize("kind", EDIT_KINDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_prompts_follow_the_kind(kind, seed):
    pair = make_edit(seed, kind, 64)
    if kind in ("text", "text_pose"):
        assert pair.source_prompt != pair.edit_prompt
    else:
        assert pair.source_prompt == pair.edit_prompt


@pytest.mark.parametrize("seed", SEEDS)
def test_each_kind_changes_only_its_part_of_the_scene(seed):
    pose = make_edit(seed, "pose", 64)
    assert pose.source.objects == pose.target.objects and pose.source.figure != pose.target.figure
    # Only elbows, wrists, knees and ankles move.
    moved = {i for i, (a, b) in enumerate(zip(pose.source.figure, pose.target.figure)) if a != b}
    assert moved and moved <= {3, 4, 6, 7, 9, 10, 12, 13}
    assert not np.array_equal(pose.source_maps["pose"], pose.edit_maps["pose"])
    scribble = make_edit(seed, "scribble", 64)
    assert scribble.source.figure == scribble.target.figure
    assert not np.array_equal(scribble.source_maps["scribble"], scribble.edit_maps["scribble"])
    text = make_edit(seed, "text", 64)
    assert text.source.figure == text.target.figure and text.source.background == text.target.background
    both = make_edit(seed, "text_pose", 64)
    assert both.source.figure != both.target.figure and both.source.objects != both.target.objects


def test_maps_match_the_scenes():
    pair = make_edit(3, "text_pose", 64)
    for name, image in condition_maps(pair.source, 64).items():
        assert np.array_equal(image, pair.source_maps[name])
    for name, image in condition_maps(pair.target, 64).items():
        assert np.array_equal(image, pair.edit_maps[name])
    assert pair.modalities == ("pose",)


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_make_edit_is_deterministic(kind):
    a, b = make_edit(11, kind, 64), make_edit(11, kind, 64)
    assert a.source == b.source and a.target == b.target and a.changes == b.changes
    assert a.source_image.tobytes() == b.source_image.tobytes()
    assert a.target_image.tobytes() == b.target_image.tobytes()
    assert a.true_mask.tobytes() == b.true_mask.tobytes()


def test_works_at_128():
    pair = make_edit(0, "pose", 128)
    assert pair.source_image.shape == (128, 128, 3) and pair.true_mask.any()


def test_move_limb_keeps_lengths():
    figure = sample_scene(0, 64, with_figure=True).figure
    moved = move_limb(figure, "right arm", "root", 40.0)
    length = lambda f, a, b: np.hypot(*(np.subtract(f[a], f[b])))  # noqa: E731
    assert moved[R_SHO] == figure[R_SHO]
    assert np.isclose(length(moved, R_SHO, R_ELB), length(figure, R_SHO, R_ELB))
    assert np.isclose(length(moved, R_ELB, R_WRI), length(figure, R_ELB, R_WRI))


def test_unknown_kind_raises():
    with pytest.raises(ValueError):
        make_edit(0, "colour", 64)
