"""What a run says about input it uses differently from what was written: far-off sizes, transparency, variants,
unreadable masks, seeds, malformed manifests, and where its files go."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from framework.cli import main
from framework.data import RequestSpec
from framework.errors import EditNote
from framework.preflight import native_size, size_notice
from tests.conftest import draw_scene
from tests.framework.test_cli import FAST, write_config


def _spec(path: Path, request_id: str) -> RequestSpec:
    return RequestSpec(id=request_id, image=path, source_prompt="a", edit_prompt="b", source={}, edit={})


def test_a_request_far_from_the_models_size_gets_one_note_with_the_size_and_the_setting(tmp_path, backbone):
    assert native_size(backbone) == 64  # the tiny model: UNet sample_size 8 x VAE factor 8
    specs = [_spec(draw_scene(tmp_path / f"{side}.png", size=side), f"s{side}") for side in (24, 40, 64, 128, 144)]
    with pytest.warns(EditNote) as notes:
        far = size_notice(backbone, specs, resolution=None)
    assert far == ["s24", "s144"]  # 32..128 px is within 2x of 64 px
    assert len(notes) == 1
    text = str(notes[0].message)
    assert "'s24' at 24x24 px" in text and "'s144' at 144x144 px" in text and "--data.resolution 64" in text
    assert "data.resolution unset" in text
    # data.resolution decides the size used: 512 is far from 64 even for a 64 px input, 100 is not.
    with pytest.warns(EditNote, match=r"data.resolution 512\): 's24' at 512x512 px, 's40' at 512x512 px, 's64' at 512x512 px and 2 more"):
        assert "s64" in size_notice(backbone, specs, resolution=512)
    assert size_notice(backbone, specs, resolution=100) == []


def test_the_quickstart_runs_at_the_toy_models_native_size():
    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "experiments" / "quickstart.yaml").read_text())
    assert config["data"]["init_args"]["resolution"] == 64
