"""mask.cache_dir: runs that share the mask read it instead of recomputing it, and nothing else changes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from framework.core.settings import GuidanceConfig, ITOConfig, MaskConfig, SamplingConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def request_():
    from framework.io.manifests import load_manifest, load_request
    from tests.conftest import ROOT

    return load_request(load_manifest(ROOT / "experiments/examples/manifest.yaml")[3], 64)  # text + pose


def _module(tiny_dirs, tmp_path, cache, lam=0.6, **mask):
    from conditioners import ControlNetConditioner
    from framework.backbones.sd import StableDiffusion
    from framework.lightning.module import EditModule

    module = EditModule(StableDiffusion(str(tiny_dirs["sd"])), [ControlNetConditioner("pose", str(tiny_dirs["pose"]))],
                        lam=lam, sampling=SamplingConfig(steps=6),
                        mask=MaskConfig(**{"seeds": 2, "threshold": 0.3, **mask}, cache_dir=cache and str(cache)),
                        ito=ITOConfig(update_steps=2), guidance=GuidanceConfig(update_steps=2),
                        output_dir=str(tmp_path / "out"))
    module.setup("fit")
    return module


def test_a_cached_mask_gives_the_same_edit_without_the_mask_stage(tiny_dirs, tmp_path, request_):
    cache = tmp_path / "masks"
    plain = {lam: _module(tiny_dirs, tmp_path, None, lam).edit(request_) for lam in (0.6, 1.0)}
    first = _module(tiny_dirs, tmp_path, cache, 0.6).edit(request_)  # estimates and stores
    second = _module(tiny_dirs, tmp_path, cache, 1.0).edit(request_)  # another run: reads it
    assert len(list(cache.glob("*.pt"))) == 1
    assert first.record["mask_source"] == "estimated" and second.record["mask_source"] == "cached"
    assert first.record["unet_evaluations"]["mask"] == 3 * 2 * 2 * 2  # 3 steps, 2 seeds, 2 conditions, CFG
    assert "mask" not in second.record["unet_evaluations"]
    for result, reference in ((first, plain[0.6]), (second, plain[1.0])):
        assert torch.equal(result.soft_mask, reference.soft_mask) and torch.equal(result.mask, reference.mask)
        assert torch.equal(result.edit, reference.edit)


def test_anything_the_mask_depends_on_makes_a_new_entry(tiny_dirs, tmp_path, request_):
    cache = tmp_path / "masks"
    base = _module(tiny_dirs, tmp_path, cache)
    base.edit(request_)
    base.edit(replace(request_, edit_prompt=request_.edit_prompt + " red"))
    base.edit(replace(request_, seed=7))
    maps = {k: v.flip(-1) for k, v in request_.edit_maps.items()}
    base.edit(replace(request_, edit_maps=maps))
    _module(tiny_dirs, tmp_path, cache, strength=0.7).edit(request_)
    assert len(list(cache.glob("*.pt"))) == 5
    guided = _module(tiny_dirs, tmp_path, cache)
    guided.sampling = replace(guided.sampling, guidance_scale=3.0)
    guided.edit(request_)
    assert len(list(cache.glob("*.pt"))) == 6
    # The encode ratio of the final decode does not enter the mask: DiffEdit at 0.7 and 1.0 share it.
    shallow = _module(tiny_dirs, tmp_path, cache)
    shallow.sampling = replace(shallow.sampling, encode_ratio=0.5)
    assert shallow.edit(request_).record["mask_source"] == "cached"
    # Only the threshold differs: the soft map is reused (the threshold applies after the cache) ...
    other = _module(tiny_dirs, tmp_path, cache, threshold=0.6)
    assert other.edit(request_).record["mask_source"] == "cached"
    # ... and retrained weights at the same path are a different model.
    retrained = _module(tiny_dirs, tmp_path, cache)
    with torch.no_grad():
        next(retrained.backbone.unet.parameters()).add_(0.01)
    assert retrained.edit(request_).record["mask_source"] == "estimated"
    assert len(list(cache.glob("*.pt"))) == 7


def _tamper(entry):
    stored = torch.load(entry, weights_only=True)
    stored["soft"][0, 0] += 0.5  # a flipped value: the file still loads
    torch.save(stored, entry)


@pytest.mark.parametrize("damage, said", [
    (lambda entry: entry.write_bytes(b"garbage"), "is unreadable"),
    (lambda entry: entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2]), "is unreadable"),
    (_tamper, "values do not match its checksum"),
])
def test_a_damaged_entry_is_said_in_one_line_recomputed_and_replaced(tiny_dirs, tmp_path, request_, damage, said):
    from framework.core.errors import EditWarning

    cache = tmp_path / "masks"
    reference = _module(tiny_dirs, tmp_path, cache).edit(request_)
    (entry,) = cache.glob("*.pt")
    damage(entry)
    with pytest.warns(EditWarning) as warned:
        again = _module(tiny_dirs, tmp_path, cache).edit(request_)
    (line,) = [str(w.message) for w in warned]
    assert said in line and str(entry) in line and "recomputing" in line and "\n" not in line
    assert again.record["mask_source"] == "estimated" and torch.equal(again.soft_mask, reference.soft_mask)
    assert _module(tiny_dirs, tmp_path, cache).edit(request_).record["mask_source"] == "cached"


def test_an_unwritable_cache_dir_is_named(tiny_dirs, tmp_path, request_):
    from framework.core.errors import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="mask.cache_dir"):
        _module(tiny_dirs, tmp_path, blocker / "masks").edit(request_)
