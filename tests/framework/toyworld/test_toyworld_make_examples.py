"""make_examples: manifest format, every path exists, byte-identical reruns, CLI."""

import numpy as np
import yaml
from PIL import Image

from framework.toy.world.edits import make_edit
from framework.toy.world.make_examples import main, write_examples

KINDS = ["text", "pose", "scribble", "text_pose"]
EXPECTED_MODALITIES = {"text": set(), "pose": {"pose"}, "scribble": {"scribble"}, "text_pose": {"pose"}}


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_manifest_paths_exist_and_match_kinds(tmp_path):
    manifest = write_examples(tmp_path / "out", size=64, seed=0, kinds=KINDS, per_kind=2)
    requests = yaml.safe_load(manifest.read_text())["requests"]
    assert [r["id"] for r in requests] == [f"{k}_{i:03d}" for k in KINDS for i in range(2)]
    for request in requests:
        kind = request["id"].rsplit("_", 1)[0]
        assert set(request["source"]) == set(request["edit"]) == EXPECTED_MODALITIES[kind]
        paths = [request["image"], request["target"], request["true_mask"]]
        paths += list(request["source"].values()) + list(request["edit"].values())
        for path in paths:
            assert (manifest.parent / path).is_file(), path
        assert request["seed"] == int(request["id"][-3:])
        assert (request["source_prompt"] != request["edit_prompt"]) == kind.startswith("text")


def test_manifest_text_format(tmp_path):
    manifest = write_examples(tmp_path, size=64, seed=0, kinds=["pose"], per_kind=1)
    lines = manifest.read_text().splitlines()
    assert lines[:3] == ["requests:", "  - id: pose_000", "    image: pose_000/input.png"]
    assert lines[3].startswith('    source_prompt: "a ') and lines[3].endswith(' background"')
    assert lines[5:] == [
        "    source: {pose: pose_000/source_pose.png}",
        "    edit: {pose: pose_000/edit_pose.png}",
        "    target: pose_000/target.png",
        "    true_mask: pose_000/true_mask.png",
        "    seed: 0",
    ]


def test_output_is_byte_identical_on_rerun(tmp_path):
    write_examples(tmp_path / "a", 64, 3, KINDS, 1)
    write_examples(tmp_path / "b", 64, 3, KINDS, 1)
    first = _files(tmp_path / "a")
    assert first == _files(tmp_path / "b")
    write_examples(tmp_path / "a", 64, 3, KINDS, 1)
    assert first == _files(tmp_path / "a")


def test_written_images_match_the_pair(tmp_path):
    write_examples(tmp_path, 64, 5, ["scribble"], 1)
    pair = make_edit(5, "scribble", 64)
    mask = np.asarray(Image.open(tmp_path / "scribble_000" / "true_mask.png")) > 0
    assert np.array_equal(mask, pair.true_mask)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "scribble_000" / "input.png")), pair.source_image)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "scribble_000" / "edit_scribble.png")), pair.edit_maps["scribble"])


def test_cli(tmp_path, capsys):
    manifest = main([str(tmp_path), "--size", "64", "--seed", "0", "--kinds", "text", "pose", "--per-kind", "1"])
    assert manifest == tmp_path / "manifest.yaml" and str(manifest) in capsys.readouterr().out
    assert [r["id"] for r in yaml.safe_load(manifest.read_text())["requests"]] == ["text_000", "pose_000"]
