"""OpenPose drawing: limb colours, missing keypoints, coordinate modes and JSON I/O."""

import json

import numpy as np

from framework.io.openpose import (
    OPENPOSE_COLOURS,
    draw_openpose,
    limb_colour,
    load_keypoints_json,
    save_keypoints_json,
)

BLACK = (0, 0, 0)


def _person(**points):
    """18 entries, None except the named indices (k1=(x, y[, c]), ...)."""
    person = [None] * 18
    for name, value in points.items():
        person[int(name[1:])] = value
    return person


def _colours(image):
    return {tuple(int(v) for v in c) for c in image.reshape(-1, 3)}


def test_limb_between_neck_and_right_shoulder_has_its_colour():
    person = _person(k1=(20, 32), k2=(44, 32))
    image = draw_openpose(person, 64, normalized=False, stick_width=3, dot_radius=2)
    assert tuple(image[32, 32]) == limb_colour(1, 2) == (153, 0, 0)
    assert tuple(image[32, 20]) == OPENPOSE_COLOURS[1]  # neck dot on top of the limb
    assert tuple(image[32, 44]) == OPENPOSE_COLOURS[2]
    assert tuple(image[10, 32]) == BLACK
    assert _colours(image) == {BLACK, limb_colour(1, 2), OPENPOSE_COLOURS[1], OPENPOSE_COLOURS[2]}


def test_left_knee_to_ankle_limb_colour():
    person = _person(k12=(0.5, 0.3), k13=(0.5, 0.7))
    image = draw_openpose(person, 128, normalized=True)
    assert tuple(image[64, 63]) == limb_colour(12, 13) == tuple(int(c * 0.6) for c in OPENPOSE_COLOURS[11])


def test_missing_keypoints_are_skipped():
    # r_elbow has confidence 0 and l_shoulder is None: neither they nor their limbs are drawn.
    person = _person(k1=(20, 20, 0.9), k2=(40, 20, 0.8), k3=(40, 50, 0.0), k5=(5, 20))
    person[5] = None
    image = draw_openpose(person, 64, normalized=False, stick_width=2, dot_radius=2)
    assert tuple(image[35, 40]) == BLACK  # where the upper arm would be
    assert tuple(image[50, 40]) == BLACK  # where the elbow dot would be
    assert _colours(image) == {BLACK, limb_colour(1, 2), OPENPOSE_COLOURS[1], OPENPOSE_COLOURS[2]}


def test_empty_person_gives_black_map():
    assert not draw_openpose([None] * 18, (32, 48)).any()
    assert draw_openpose([], 16).shape == (16, 16, 3)


def test_normalised_and_pixel_coordinates_agree():
    pixels = _person(k0=(30, 10), k1=(30, 20), k2=(20, 21), k3=(15, 35))
    normalised = [None if p is None else ((p[0] + 0.5) / 64, (p[1] + 0.5) / 64) for p in pixels]
    assert np.array_equal(draw_openpose(pixels, 64), draw_openpose(normalised, 64))


def test_non_square_size_and_multiple_people():
    one = _person(k1=(10, 10), k2=(30, 10))
    two = _person(k1=(60, 30), k2=(80, 30))
    image = draw_openpose([one, two], (40, 100), normalized=False)
    assert image.shape == (40, 100, 3)
    assert tuple(image[10, 20]) == limb_colour(1, 2) and tuple(image[30, 70]) == limb_colour(1, 2)


def test_line_width_scales_with_size():
    person = _person(k1=(0.2, 0.5), k2=(0.8, 0.5))
    small = draw_openpose(person, 128).any(axis=-1).sum()
    large = draw_openpose(person, 512).any(axis=-1).sum()
    assert large > 10 * small


def test_json_round_trip(tmp_path):
    person = [(float(i), float(2 * i), 1.0) for i in range(18)]
    person[4] = (0.0, 0.0, 0.0)
    path = save_keypoints_json(tmp_path / "kp.json", [person])
    assert load_keypoints_json(path) == [person]
    assert json.loads(path.read_text())["people"][0]["pose_keypoints_2d"][:6] == [0.0, 0.0, 1.0, 1.0, 2.0, 1.0]


def test_load_openpose_file_and_plain_lists(tmp_path):
    flat = [v for i in range(18) for v in (10.0 + i, 20.0 + i, 0.5)]
    (tmp_path / "op.json").write_text(json.dumps({"people": [{"pose_keypoints_2d": flat}, {"pose_keypoints_2d": flat}]}))
    people = load_keypoints_json(tmp_path / "op.json")
    assert len(people) == 2 and people[0][3] == (13.0, 23.0, 0.5)
    (tmp_path / "plain.json").write_text(json.dumps([[i, i] for i in range(18)]))
    assert load_keypoints_json(tmp_path / "plain.json") == [[(float(i), float(i), 1.0) for i in range(18)]]


def test_body25_is_mapped_to_coco18(tmp_path):
    flat = [v for i in range(25) for v in (float(i), 0.0, 1.0)]
    (tmp_path / "b25.json").write_text(json.dumps({"people": [{"pose_keypoints_2d": flat}]}))
    xs = [p[0] for p in load_keypoints_json(tmp_path / "b25.json")[0]]
    assert xs[:8] == list(range(8)) and xs[8] == 9.0 and xs[17] == 18.0  # mid-hip (8) dropped


def test_drawing_from_json_matches_drawing_from_list(tmp_path):
    person = _person(k0=(30, 10, 1.0), k1=(30, 20, 1.0), k2=(20, 21, 1.0))
    path = save_keypoints_json(tmp_path / "kp.json", [person])
    assert np.array_equal(draw_openpose(load_keypoints_json(path), 64), draw_openpose(person, 64))
