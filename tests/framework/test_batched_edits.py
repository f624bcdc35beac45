"""Batched edits (EditPipeline.edit_batch, data.batch_size > 1) equal edits one at a time.

Each edit of a batch keeps its own mask, lam, seed, guidance image and ITO (its own optimiser and losses); only the
UNet and ControlNet calls are joined, so the outputs differ from one at a time by the float rounding of a larger
UNet batch only: on the tiny model, edited images within 1e-4 (pixels in [0, 1]) and masks identical.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from framework.core.settings import GuidanceConfig, ITOConfig, SamplingConfig
from framework.io.manifests import load_manifest, load_request

pytestmark = pytest.mark.usefixtures("one_thread")
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def pipeline(tiny_dirs, tmp_path_factory):
    from conditioners.controlnet import ControlNetConditioner
    from framework.backbones.sd import StableDiffusion
    from framework.lightning.module import EditModule

    module = EditModule(StableDiffusion(str(tiny_dirs["sd"])), [ControlNetConditioner("pose", str(tiny_dirs["pose"]))],
                        sampling=SamplingConfig(steps=8), ito=ITOConfig(update_steps=4),
                        guidance=GuidanceConfig(update_steps=4), output_dir=str(tmp_path_factory.mktemp("out")))
    module.setup("fit")
    return module.pipeline


def _requests(manifest):
    text, pose = (load_request(spec, None) for spec in load_manifest(manifest))
    # text at the module's lam (1: no guidance image), text at lam 0.6 with another seed, pose at lam 0.8 seed 3
    return [text, replace(text, id="text_lam0.6", lam=0.6, seed=7), pose]


def test_a_batch_equals_its_edits_one_at_a_time(pipeline, manifest):
    requests = _requests(manifest)
    with torch.no_grad():
        alone = [pipeline.edit(r) for r in requests]
        calls_alone = sum(sum(r.record["unet_calls"].values()) for r in alone)
        batched = pipeline.edit_batch(requests)
    assert [r.record["id"] for r in batched] == [r.id for r in requests]
    for a, b in zip(alone, batched):
        assert torch.equal(a.mask, b.mask)
        assert (a.edit - b.edit).abs().max() <= TOLERANCE
        assert (a.guidance is None) == (b.guidance is None)
        if a.guidance is not None:
            assert (a.guidance - b.guidance).abs().max() <= TOLERANCE
        # each edit counts its own samples, as alone
        assert a.record["unet_evaluations"] == b.record["unet_evaluations"]
        assert a.record["controlnet_evaluations"] == b.record["controlnet_evaluations"]
        assert (a.record["lam"], a.record["seed"]) == (b.record["lam"], b.record["seed"])
    assert [r.record["lam"] for r in batched] == [1.0, 0.6, 0.8]
    # the same samples in fewer UNet calls: the text edits share every call, the pose edit (a ControlNet map)
    # joins neither (another conditioning layout)
    assert pipeline.last_batch["unet_samples"] == sum(sum(r.record["unet_evaluations"].values()) for r in alone)
    assert pipeline.last_batch["unet_calls"] < calls_alone


def test_an_error_in_one_edit_leaves_the_others(pipeline, manifest):
    requests = _requests(manifest)
    broken = replace(requests[0], id="broken", lam=1.5)
    with torch.no_grad():
        results = pipeline.edit_batch([broken, requests[1]])
    assert isinstance(results[0], Exception) and "lam" in str(results[0])
    assert results[1].record["id"] == "text_lam0.6"


def test_data_batch_size_edits_the_manifest_side_by_side(tmp_path, tiny_dirs, manifest):
    import json

    import numpy as np
    from PIL import Image

    from tests.framework.test_cli import FAST, run, write_config

    images, records = {}, {}
    for size in (1, 2):
        out = tmp_path / f"b{size}"
        run("--config", write_config(tmp_path / f"b{size}.yaml", tiny_dirs, manifest, out), *FAST,
            "--data.batch_size", str(size))
        images[size] = {e: np.asarray(Image.open(out / e / "edit.png")).astype(int) for e in ("text", "pose")}
        records[size] = {e: json.loads((out / e / "result.json").read_text()) for e in ("text", "pose")}
        assert json.loads((out / "summary.json").read_text())["totals"]["edits"] == 2
    for e in ("text", "pose"):
        assert np.abs(images[1][e] - images[2][e]).max() <= 1  # 8-bit pixels: at most one level of rounding
        assert records[1][e]["unet_evaluations"] == records[2][e]["unet_evaluations"]
        assert records[1][e]["lam"] == records[2][e]["lam"]
