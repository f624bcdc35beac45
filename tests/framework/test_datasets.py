"""Evaluation data modules: FlexIT's queries.csv on a generated ImageNet-like folder; toy-world edits by seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from framework.core.errors import ManifestError
from framework.evaluation.datasets import FlexITDataModule, class_phrase
from framework.io.manifests import load_request
from framework.toy.datasets import TOY_SPLITS, ToyEditDataModule

HEADER = "path,source,source_id,target,target_id,split\n"


@pytest.fixture
def imagenet(tmp_path):
    """A validation folder with three JPEGs in class folders, and a FlexIT queries.csv over them."""
    root = tmp_path / "val"
    sizes = {"n01/a.JPEG": (100, 60), "n01/b.JPEG": (48, 48), "n02/c.JPEG": (30, 90)}
    for n, (name, size) in enumerate(sizes.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (40 * n, 100, 200)).save(root / name, format="JPEG")
    (tmp_path / "queries.csv").write_text(
        HEADER + "n01/a.JPEG,tench,0,goldfish,1,test\n"
        'n01/b.JPEG,"tench, Tinca tinca",0,great_white_shark,2,val\n'
        "n02/c.JPEG,goldfish,1,tench,0,test\n"
        "n01/a.JPEG,tench,0,great_white_shark,2,test\n")
    return tmp_path


def test_flexit_requests_prompts_labels_split_and_sizes(imagenet):
    data = FlexITDataModule(str(imagenet / "queries.csv"), str(imagenet / "val"), split="test", resolution=64)
    assert [s.id for s in data.specs] == ["00000_a", "00002_c", "00003_a"]  # csv data rows 0, 2, 3
    first = data.specs[0]
    assert (first.source_prompt, first.edit_prompt) == ("a photo of a tench", "a photo of a goldfish")
    assert first.extra["meta"] == {"source_class": "tench", "source_id": 0, "target_class": "goldfish",
                                   "target_id": 1, "split": "test", "path": "n01/a.JPEG"}
    assert data.specs[2].edit_prompt == "a photo of a great white shark"
    assert first.image == imagenet / "val" / "n01" / "a.JPEG" and first.seed is None and first.lam is None
    # The manifest sizing rule: 100x60 -> longer side 64 -> 64x38 -> cropped to 64x32; 30x90 -> 21x64 -> 16x64.
    assert load_request(first, data.resolution).image.shape == (1, 3, 32, 64)
    assert load_request(data.specs[1], data.resolution).image.shape == (1, 3, 64, 16)

    everything = FlexITDataModule(str(imagenet / "queries.csv"), str(imagenet / "val"), split=None, limit=2,
                                  prompt="an image of a {}")
    assert [s.id for s in everything.specs] == ["00000_a", "00001_b"]
    assert everything.specs[1].source_prompt == "an image of a tench"  # first synonym only
    assert everything.resolution == 512 and class_phrase("great_white_shark, man-eater") == "great white shark"


def test_flexit_errors_name_the_problem_and_the_fix(imagenet):
    queries, root = str(imagenet / "queries.csv"), str(imagenet / "val")
    with pytest.raises(ManifestError, match=r"queries file .*nowhere\.csv' does not exist; set data\.queries"):
        FlexITDataModule(str(imagenet / "nowhere.csv"), root)
    (imagenet / "bad.csv").write_text("path,source,target,split\nn01/a.JPEG,tench,goldfish,test\n")
    with pytest.raises(ManifestError, match=r"lacks column\(s\) \['source_id', 'target_id'\]"):
        FlexITDataModule(str(imagenet / "bad.csv"), root)
    with pytest.raises(ManifestError, match="ImageNet folder .* does not exist; set data.root"):
        FlexITDataModule(queries, str(imagenet / "train"))
    with pytest.raises(ManifestError, match=r"no row with split 'dev'; its splits are \['test', 'val'\]"):
        FlexITDataModule(queries, root, split="dev")
    (imagenet / "val" / "n02" / "c.JPEG").unlink()
    with pytest.raises(ManifestError, match=r"queries.csv row 4: image .*c\.JPEG' does not exist; data\.root"):
        FlexITDataModule(queries, root)
    (imagenet / "ids.csv").write_text(HEADER + "n01/a.JPEG,tench,zero,goldfish,1,test\n")
    with pytest.raises(ManifestError, match="'source_id' must be an ImageNet class index"):
        FlexITDataModule(str(imagenet / "ids.csv"), root)


def test_toy_edits_by_seed_with_ground_truth(tmp_path):
    from framework.toy.world import make_edit

    data = ToyEditDataModule(edits=5, split="test", size=64, cache_dir=str(tmp_path / "cache"))
    kinds = ["text", "pose", "scribble", "text_pose", "text"]
    assert [s.id for s in data.specs] == [f"{k}_{n:06d}" for n, k in enumerate(kinds)]  # seeds 0..4, kinds in turn
    for n, spec in enumerate(data.specs):
        pair = make_edit(n, kinds[n], 64)
        request = load_request(spec, None)
        expected = torch.from_numpy(pair.source_image).permute(2, 0, 1)[None].float() / 255
        assert torch.equal(request.image, expected)  # PNG round trip: exact
        assert (request.source_prompt, request.edit_prompt, request.seed) == (pair.source_prompt, pair.edit_prompt, n)
        assert sorted(request.edit_maps) == list(pair.modalities)
        true_mask = np.asarray(Image.open(spec.extra["true_mask"])) > 127
        assert np.array_equal(true_mask, pair.true_mask)
        assert np.array_equal(np.asarray(Image.open(spec.extra["target"])), pair.target_image)
        assert spec.extra["meta"]["kind"] == kinds[n] and spec.extra["meta"]["changes"] == pair.changes
    text = data.specs[0].extra["meta"]
    assert text["source_class"] in data.specs[0].source_prompt and text["target_class"] in data.specs[0].edit_prompt
    assert "source_class" not in data.specs[1].extra["meta"]  # a pose edit changes no object

    # A second module reads the cache: nothing is rewritten.
    stamp = (tmp_path / "cache" / "s64" / "pose_000001" / "input.png").stat().st_mtime_ns
    again = ToyEditDataModule(edits=8, limit=3, kinds=["pose"], cache_dir=str(tmp_path / "cache"))
    assert [s.id for s in again.specs] == ["pose_000000", "pose_000001", "pose_000002"]  # limit: only 3 made
    assert (tmp_path / "cache" / "s64" / "pose_000001" / "input.png").stat().st_mtime_ns == stamp
    assert len(list((tmp_path / "cache" / "s64").iterdir())) == 7  # 5 + pose_000000 + pose_000002; no temporaries


def test_toy_edits_with_true_mask_carry_their_true_edit_region_as_the_mask(tmp_path):
    estimated = ToyEditDataModule(edits=4, cache_dir=str(tmp_path))
    oracle = ToyEditDataModule(edits=4, cache_dir=str(tmp_path), true_mask=True)
    for plain, spec in zip(estimated.specs, oracle.specs):
        assert plain.mask is None and plain.id == spec.id
        request = load_request(spec, None)
        true_mask = np.asarray(Image.open(spec.extra["true_mask"])) > 127
        assert 0 < true_mask.sum() < true_mask.size
        assert torch.equal(request.mask[0, 0] > 0.5, torch.from_numpy(true_mask))


def test_toy_splits_are_held_out_and_bounded(tmp_path):
    training = pytest.importorskip("framework.toy.model.data")
    # No evaluation scene is trained on: toy-model training renders seeds from its offset on.
    assert max(end for _, end in TOY_SPLITS.values()) <= getattr(training, "TRAIN_SEED_OFFSET", 1_000_000)
    val = ToyEditDataModule(edits=2, split="val", offset=3, kinds=["scribble"], cache_dir=str(tmp_path))
    assert [s.id for s in val.specs] == ["scribble_500003", "scribble_500004"]
    assert json.loads((tmp_path / "s64" / "scribble_500003" / "request.json").read_text())["seed"] == 500_003
    with pytest.raises(ManifestError, match=r"holds seeds 0\.\.499999; offset 499999 \+ 2 edits runs past it"):
        ToyEditDataModule(edits=2, offset=499_999, kinds=["text"], cache_dir=str(tmp_path))
    with pytest.raises(ManifestError, match=r"split must be one of \['test', 'val'\]"):
        ToyEditDataModule(split="train", cache_dir=str(tmp_path))
    with pytest.raises(ManifestError, match=r"kinds \['colour'\] unknown"):
        ToyEditDataModule(kinds=["colour"], cache_dir=str(tmp_path))
