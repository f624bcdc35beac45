"""Every shipped experiment YAML parses and runs, with the models swapped for the tiny ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from framework.cli import main
from tests.conftest import ROOT

EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
SMALL = ["--model.sampling.steps", "5", "--model.mask.seeds", "2", "--model.ito.update_steps", "3",
         "--model.guidance.update_steps", "3", "--data.resolution", "64", "--data.limit", "1"]


def swap_models(config: dict, tiny_dirs, out: Path) -> dict:
    """Point every model at the tiny ones and every output into `out`; keep the rest as shipped."""
    args = config["model"]["init_args"]
    args["backbone"]["init_args"]["pretrained"] = str(tiny_dirs["sd"])
    for conditioner in args.get("conditioners") or []:
        modality = conditioner["init_args"]["modality"]
        conditioner["init_args"]["pretrained"] = str(tiny_dirs.get(modality, tiny_dirs["pose"]))
    args["output_dir"] = str(out / "edits")
    logger = config.get("trainer", {}).get("logger")
    if logger:
        logger.setdefault("init_args", {})["save_dir"] = str(out / "logs")
    config["data"]["init_args"]["manifest"] = str(ROOT / config["data"]["init_args"]["manifest"])
    return config


def test_every_paper_setting_is_shipped():
    names = {p.stem for p in EXPERIMENTS}
    assert {"quickstart", "pose", "scribble", "text", "lines", "text_pose", "text_scribble", "lam1", "refine"} <= names


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_runs_on_tiny_model(path, tmp_path, tiny_dirs, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = swap_models(yaml.safe_load(path.read_text()), tiny_dirs, tmp_path)
    swapped = tmp_path / path.name
    swapped.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(swapped), *SMALL])
    summary = json.loads((tmp_path / "edits" / "summary.json").read_text())
    record = summary["edits"][0]
    shipped = yaml.safe_load(path.read_text())["model"]["init_args"]
    assert record["lam"] == shipped.get("lam", 0.6)
    assert record["guidance_image"] == (record["lam"] < 1)
    assert summary["parameters"]["guidance"]["refine"] == shipped.get("guidance", {}).get("refine", False)
    assert (tmp_path / "edits" / record["id"] / "edit.png").exists()
    if "WandbLogger" in str(config["trainer"]["logger"]["class_path"]):
        assert list((tmp_path / "logs" / "wandb").glob("offline-run-*"))


def test_paper_settings_are_the_defaults():
    from framework.config import GuidanceConfig, ITOConfig, MaskConfig, SamplingConfig
    from framework.module import EditModule
    import inspect

    assert inspect.signature(EditModule).parameters["lam"].default == 0.6
    assert (SamplingConfig().steps, SamplingConfig().encode_ratio) == (25, 1.0)
    assert (ITOConfig().update_steps, ITOConfig().inner_steps) == (15, 1)
    assert (MaskConfig().threshold, MaskConfig().seeds) == (0.1, 10)
    assert (GuidanceConfig().refine_update_steps, GuidanceConfig().refine_inner_steps) == (6, 1)


PAPER_SETTINGS = [p for p in EXPERIMENTS if p.stem != "quickstart"]
PHOTOS = ROOT / "experiments" / "examples" / "photos"


@pytest.mark.parametrize("path", PAPER_SETTINGS, ids=[p.stem for p in PAPER_SETTINGS])
def test_paper_setting_edits_a_licensed_photograph(path):
    """Each paper setting reads a real photograph whose licence is stated beside it, with maps in its frame."""
    from framework.data import load_manifest, load_request

    manifest = ROOT / yaml.safe_load(path.read_text())["data"]["init_args"]["manifest"]
    assert manifest.parent == PHOTOS
    licences = (PHOTOS / "README.md").read_text()
    for spec in load_manifest(manifest):
        assert f"`{spec.image.name}`" in licences and ("public domain" in licences and "CC0" in licences)
        request = load_request(spec, resolution=512)  # as the experiments read them
        assert max(request.image.shape[-2:]) == 512
        for maps in (request.source_maps, request.edit_maps):
            for image in maps.values():
                assert image.shape[-2:] == request.image.shape[-2:] and float(image.max()) > 0.5
        if path.stem in ("pose", "scribble", "lines", "text_pose", "text_scribble"):
            changed = [float((request.edit_maps[k] - request.source_maps[k]).abs().amax()) for k in request.edit_maps]
            assert changed and min(changed) > 0.5  # the edit asks for a new layout
        if path.stem.startswith("text"):
            assert spec.edit_prompt != spec.source_prompt


def test_photos_are_what_their_script_makes(tmp_path):
    """`python -m framework.photos` rebuilds the shipped folder: maps, keypoints and manifests byte for byte."""
    import numpy as np
    from PIL import Image

    from framework.photos import main as make_photos

    make_photos([str(tmp_path)])
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted(p.name for p in PHOTOS.iterdir() if p.name != "README.md")
    for name in made:
        if name.endswith(".jpg"):  # JPEG bytes depend on the encoder build; the pixels barely
            ours, shipped = (np.asarray(Image.open(d / name), dtype=float) for d in (tmp_path, PHOTOS))
            assert ours.shape == shipped.shape and max(ours.shape[:2]) == 512 and np.abs(ours - shipped).mean() < 1.0
        else:
            assert (tmp_path / name).read_bytes() == (PHOTOS / name).read_bytes(), name
    assert sum(p.stat().st_size for p in PHOTOS.iterdir()) < 400_000
