"""Golden edits of the SHIPPED DEFAULTS: outputs that must stay byte-identical when framework/ is reorganised.

tests/framework/test_golden.py pins the paper-literal path (its FAST settings); this file pins what a user
gets without settings:

- `test_quickstart_golden`: the quickstart's four toy-world edits (experiments/quickstart.yaml with
  experiments/examples/manifest.yaml, the bundled `builtin:toyworld` model at 64 px), through the public
  Python API `EditPipeline.from_config(...)` and `pipe.edit(load_request(...))`, at the config's own
  settings (20 DDIM steps and every other setting as the YAML or the defaults give it; nothing reduced:
  about 3 s an edit on one thread).
- `test_plugin_golden`: one edit pair (the `manifest` fixture's text and pose requests on the tiny random
  models, as test_golden.py) per stage plugin, at EditModule's defaults: 20 DDIM steps, the default mask,
  ITO, guidance, losses and optimiser, lam 1. Nothing is reduced for speed but NullTextInversion's
  `inner_steps` (2 instead of 10). The pose request carries `lam: 0.8` and `seed: 3` in the manifest, so
  it runs at lam 0.8 (a guidance image is made) whatever the module's lam; the text request runs at the
  module's lam. `mask_given` adds `mask: mask.png` (a disc) to both requests.
- `test_config_class_paths`: the DiffEdit decode built from a config dict whose class paths are strings
  (as YAML names them), through `EditPipeline.from_config`, gives the `decoder_mask_blend` values.

Every class is named by its import path of today as a string and imported with importlib, so the old
paths are exercised after the move too (they must keep resolving, to the same classes).

Per edit: sha256[:16] of the edit and of the guidance image quantised to uint8 (None without one), of the
binary mask (latent grid), the float sum of the edit (compared to 1e-5 relative), the lam the edit ran
with, and the UNet sample-evaluations per stage.

Re-record (only when an output is meant to change): `python tests/framework/test_golden_defaults.py` runs
this file under pytest with GOLDEN_DEFAULTS_RECORD set, which writes each test's digests to a JSON file
before its assertions, and prints the merged dict to paste below.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"
QUICKSTART_MANIFEST = ROOT / "experiments" / "examples" / "manifest.yaml"
RECORD_ENV = "GOLDEN_DEFAULTS_RECORD"

DEFAULT_SLOTS = {"inversion": "framework.inversion.DDIMInversion",
                 "mask_estimator": "framework.stages.NoiseDifferenceMask",
                 "guidance_generator": "framework.stages.NoiseEncodedGuidance",
                 "decoder": "framework.stages.ITODecode"}
"""The stage plugins an EditModule (and EditPipeline) gets when no slot is set."""

MODULE = "framework.module.EditModule"

# name -> (module class path, {slot: (plugin class path, constructor kwargs)}, other module kwargs,
#          whether the requests carry a mask)
CASES = {
    # Nothing set: the shipped defaults (lam 1, the DEFAULT_SLOTS plugins).
    "default": (MODULE, {}, {}, False),
    # The method with a guidance image on both requests: ITODecode and NoiseEncodedGuidance, lam 0.6.
    "ito_lam0.6": (MODULE, {"decoder": ("framework.stages.ITODecode", {}),
                            "guidance_generator": ("framework.stages.NoiseEncodedGuidance", {})}, {"lam": 0.6}, False),
    # ITODecode at lam 1 and the default inversion and mask, each named: the same edits as `default`.
    "ito_lam1_named": (MODULE, {"decoder": ("framework.stages.ITODecode", {}),
                                "inversion": ("framework.inversion.DDIMInversion", {}),
                                "mask_estimator": ("framework.stages.NoiseDifferenceMask", {})}, {"lam": 1.0}, False),
    "inversion_negative_prompt": (MODULE, {"inversion": ("framework.inversion.NegativePromptInversion", {})}, {},
                                  False),
    "inversion_null_text": (MODULE, {"inversion": ("framework.inversion.NullTextInversion", {"inner_steps": 2})}, {},
                            False),
    "inversion_direct": (MODULE, {"inversion": ("framework.inversion.DirectInversion", {})}, {}, False),
    "mask_given": (MODULE, {"mask_estimator": ("framework.stages.GivenMask", {})}, {}, True),
    "mask_none": (MODULE, {"mask_estimator": ("framework.stages.NoMask", {})}, {}, False),
    "decoder_mask_blend": (MODULE, {"decoder": ("framework.stages.MaskBlendDecode", {})}, {}, False),
    "decoder_noise_encoded": (MODULE, {"decoder": ("framework.stages.NoiseEncodedDecode", {})}, {}, False),
    "decoder_prompt_to_prompt": (MODULE, {"decoder": ("framework.prompt_to_prompt.PromptToPrompt", {})}, {}, False),
    "lam_auto": (MODULE, {}, {"lam": "auto"}, False),
    # The baseline classes of shipped YAMLs and records, with no setting.
    "baseline_diffedit": ("framework.baselines.DiffEdit", {}, {}, False),
    "baseline_sdedit": ("framework.baselines.SDEdit", {}, {}, False),
}

# Recorded at 828b96f (before framework/ moved into sub-packages), one thread, CPU; re-recorded on purpose for the
# 20-step defaults, then for n = 3 mask seeds and G's decode stopped at t_u (issue 33; the second moved no edit
# pixel of a given mask, only G and the guidance counts).
GOLDEN_QUICKSTART = {'pose_000': {'edit': '080fdcd773eeaef0',
              'edit_sum': 8161.011,
              'guidance': 'c2657e1d313f028e',
              'lam': 0.8,
              'mask': 'bac71b1c9738ee9b',
              'unet': {'final': 40, 'guidance': 28, 'inversion': 20, 'mask': 60}},
 'scribble_000': {'edit': '2309dec2586d6b43',
                  'edit_sum': 8288.812,
                  'guidance': '7afd3e9d5d47e9b9',
                  'lam': 0.8,
                  'mask': '36db4467ba151626',
                  'unet': {'final': 40, 'guidance': 28, 'inversion': 20, 'mask': 60}},
 'text_000': {'edit': '0523d00957f59921',
              'edit_sum': 8329.467,
              'guidance': 'ddf1a39330b4ca0f',
              'lam': 0.8,
              'mask': '29a2d144f46e6749',
              'unet': {'final': 40, 'guidance': 28, 'inversion': 20, 'mask': 60}},
 'text_pose_000': {'edit': '036afecdefab2f08',
                   'edit_sum': 8173.662,
                   'guidance': 'b759204f55d4aa2a',
                   'lam': 0.8,
                   'mask': 'c7763f239fe69632',
                   'unet': {'final': 40, 'guidance': 28, 'inversion': 20, 'mask': 60}}}
GOLDEN = {'baseline_diffedit': {'pose': {'edit': '2ea75f5ae3178079',
                                'edit_sum': 6766.284,
                                'guidance': None,
                                'lam': 0.8,
                                'mask': 'fbd73f5950de8c80',
                                'unet': {'final': 40, 'inversion': 20, 'mask': 60}},
                       'text': {'edit': 'f3ce98645b56ab9f',
                                'edit_sum': 6756.896,
                                'guidance': None,
                                'lam': 1.0,
                                'mask': '096efce3ce0d7a9d',
                                'unet': {'final': 40, 'inversion': 20, 'mask': 60}}},
 'baseline_sdedit': {'pose': {'edit': 'a736e17fbeea294f',
                              'edit_sum': 6780.977,
                              'guidance': None,
                              'lam': 0.8,
                              'mask': 'f5a5fd42d16a2030',
                              'unet': {'final': 40}},
                     'text': {'edit': 'ea856047da282582',
                              'edit_sum': 6789.971,
                              'guidance': None,
                              'lam': 1.0,
                              'mask': 'f5a5fd42d16a2030',
                              'unet': {'final': 40}}},
 'decoder_mask_blend': {'pose': {'edit': '2ea75f5ae3178079',
                                 'edit_sum': 6766.284,
                                 'guidance': None,
                                 'lam': 0.8,
                                 'mask': 'fbd73f5950de8c80',
                                 'unet': {'final': 40, 'inversion': 20, 'mask': 60}},
                        'text': {'edit': 'f3ce98645b56ab9f',
                                 'edit_sum': 6756.896,
                                 'guidance': None,
                                 'lam': 1.0,
                                 'mask': '096efce3ce0d7a9d',
                                 'unet': {'final': 40, 'inversion': 20, 'mask': 60}}},
 'decoder_noise_encoded': {'pose': {'edit': 'a736e17fbeea294f',
                                    'edit_sum': 6780.977,
                                    'guidance': None,
                                    'lam': 0.8,
                                    'mask': 'fbd73f5950de8c80',
                                    'unet': {'final': 40, 'mask': 60}},
                           'text': {'edit': 'ea856047da282582',
                                    'edit_sum': 6789.971,
                                    'guidance': None,
                                    'lam': 1.0,
                                    'mask': '096efce3ce0d7a9d',
                                    'unet': {'final': 40, 'mask': 60}}},
 'decoder_prompt_to_prompt': {'pose': {'edit': '4cf0dbb20251cc09',
                                       'edit_sum': 6766.606,
                                       'guidance': None,
                                       'lam': 0.8,
                                       'mask': 'fbd73f5950de8c80',
                                       'unet': {'final': 80, 'inversion': 20, 'mask': 60}},
                              'text': {'edit': 'a28ab5324ab403b5',
                                       'edit_sum': 6753.673,
                                       'guidance': None,
                                       'lam': 1.0,
                                       'mask': '096efce3ce0d7a9d',
                                       'unet': {'final': 80, 'inversion': 20, 'mask': 60}}},
 'default': {'pose': {'edit': '68ed8f04580ce13f',
                      'edit_sum': 6787.993,
                      'guidance': 'b373f8688cb6fe12',
                      'lam': 0.8,
                      'mask': 'fbd73f5950de8c80',
                      'unet': {'final': 40, 'guidance': 28, 'inversion': 20, 'mask': 60}},
             'text': {'edit': 'a842bb5697136e7a',
                      'edit_sum': 6757.058,
                      'guidance': None,
                      'lam': 1.0,
                      'mask': '096efce3ce0d7a9d',
                      'unet': {'final': 40, 'inversion': 20, 'mask': 60}}},
 'inversion_direct': {'pose': {'edit': '53ae217632e31636',
                               'edit_sum': 6790.157,
                               'guidance': 'b373f8688cb6fe12',
                               'lam': 0.8,
                               'mask': 'fbd73f5950de8c80',
                               'unet': {'final': 40, 'guidance': 28, 'inversion': 60, 'mask': 60}},
                      'text': {'edit': '634d004c13570a7b',
                               'edit_sum': 6766.123,
                               'guidance': None,
                               'lam': 1.0,
                               'mask': '096efce3ce0d7a9d',
                               'unet': {'final': 40, 'inversion': 60, 'mask': 60}}},
 'inversion_negative_prompt': {'pose': {'edit': 'eec3b8d7fdf964c6',
                                        'edit_sum': 6787.946,
                                        'guidance': 'b373f8688cb6fe12',
                                        'lam': 0.8,
                                        'mask': 'fbd73f5950de8c80',
                                        'unet': {'final': 40, 'guidance': 28, 'inversion': 20, 'mask': 60}},
                               'text': {'edit': '44fb1eb905834950',
                                        'edit_sum': 6762.226,
                                        'guidance': None,
                                        'lam': 1.0,
                                        'mask': '096efce3ce0d7a9d',
                                        'unet': {'final': 40, 'inversion': 20, 'mask': 60}}},
 'inversion_null_text': {'pose': {'edit': 'ed658000368b98ba',
                                  'edit_sum': 6788.662,
                                  'guidance': 'b373f8688cb6fe12',
                                  'lam': 0.8,
                                  'mask': 'fbd73f5950de8c80',
                                  'unet': {'final': 40, 'guidance': 28, 'inversion': 100, 'mask': 60}},
                         'text': {'edit': 'be12844f17b42178',
                                  'edit_sum': 6755.529,
                                  'guidance': None,
                                  'lam': 1.0,
                                  'mask': '096efce3ce0d7a9d',
                                  'unet': {'final': 40, 'inversion': 100, 'mask': 60}}},
 'ito_lam0.6': {'pose': {'edit': '68ed8f04580ce13f',
                         'edit_sum': 6787.993,
                         'guidance': 'b373f8688cb6fe12',
                         'lam': 0.8,
                         'mask': 'fbd73f5950de8c80',
                         'unet': {'final': 40, 'guidance': 28, 'inversion': 20, 'mask': 60}},
                'text': {'edit': '54939cd862d7760b',
                         'edit_sum': 6789.054,
                         'guidance': '6e26a970cab113b6',
                         'lam': 0.6,
                         'mask': '096efce3ce0d7a9d',
                         'unet': {'final': 40, 'guidance': 28, 'inversion': 20, 'mask': 60}}},
 'ito_lam1_named': {'pose': {'edit': '68ed8f04580ce13f',
                             'edit_sum': 6787.993,
                             'guidance': 'b373f8688cb6fe12',
                             'lam': 0.8,
                             'mask': 'fbd73f5950de8c80',
                             'unet': {'final': 40, 'guidance': 28, 'inversion': 20, 'mask': 60}},
                    'text': {'edit': 'a842bb5697136e7a',
                             'edit_sum': 6757.058,
                             'guidance': None,
                             'lam': 1.0,
                             'mask': '096efce3ce0d7a9d',
                             'unet': {'final': 40, 'inversion': 20, 'mask': 60}}},
 'lam_auto': {'pose': {'edit': '68ed8f04580ce13f',
                       'edit_sum': 6787.993,
                       'guidance': 'b373f8688cb6fe12',
                       'lam': 0.8,
                       'mask': 'fbd73f5950de8c80',
                       'unet': {'final': 40, 'guidance': 28, 'inversion': 20, 'mask': 60}},
              'text': {'edit': '0c1051db599df4f6',
                       'edit_sum': 6791.055,
                       'guidance': '6e26a970cab113b6',
                       'lam': 0.3,
                       'mask': '096efce3ce0d7a9d',
                       'unet': {'final': 40, 'guidance': 28, 'inversion': 20, 'mask': 60}}},
 'mask_given': {'pose': {'edit': 'f1d8143bf8713797',
                         'edit_sum': 6752.322,
                         'guidance': 'a0078797a0b91606',
                         'lam': 0.8,
                         'mask': '866c78b41a1b4a21',
                         'unet': {'final': 40, 'guidance': 28, 'inversion': 20}},
                'text': {'edit': '36a6c77c0495a29f',
                         'edit_sum': 6704.618,
                         'guidance': None,
                         'lam': 1.0,
                         'mask': '866c78b41a1b4a21',
                         'unet': {'final': 40, 'inversion': 20}}},
 'mask_none': {'pose': {'edit': '535a118fb7ea9b08',
                        'edit_sum': 6761.33,
                        'guidance': '53edb5cb4fc80884',
                        'lam': 0.8,
                        'mask': 'f5a5fd42d16a2030',
                        'unet': {'final': 40, 'guidance': 28, 'inversion': 20}},
               'text': {'edit': 'eff92b391910c500',
                        'edit_sum': 6759.06,
                        'guidance': None,
                        'lam': 1.0,
                        'mask': 'f5a5fd42d16a2030',
                        'unet': {'final': 40, 'inversion': 20}}}}

def import_path(path: str):
    """The object at a dotted import path ('framework.inversion.NullTextInversion')."""
    module_name, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module_name), name)


def _sha(t: torch.Tensor) -> str:
    quantised = (t.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return hashlib.sha256(quantised.tobytes()).hexdigest()[:16]


def _digest(result) -> dict:
    return {"edit": _sha(result.edit), "edit_sum": round(float(result.edit.double().sum()), 3),
            "guidance": None if result.guidance is None else _sha(result.guidance),
            "mask": _sha(result.mask), "lam": result.record["lam"], "unet": dict(result.record["unet_evaluations"])}


def _record(key: str, got: dict) -> None:
    """With GOLDEN_DEFAULTS_RECORD set, add `got` under `key` to that JSON file (before any assertion)."""
    target = os.environ.get(RECORD_ENV)
    if target:
        path = Path(target)
        data = json.loads(path.read_text()) if path.exists() else {}
        data[key] = got
        path.write_text(json.dumps(data, indent=1, sort_keys=True))


def _compare(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for edit_id, digest in want.items():
        g = got[edit_id]
        assert g["unet"] == digest["unet"], edit_id
        assert g["lam"] == pytest.approx(digest["lam"], rel=1e-6), edit_id
        assert g["edit_sum"] == pytest.approx(digest["edit_sum"], rel=1e-5), edit_id
        assert (g["edit"], g["guidance"], g["mask"]) == (digest["edit"], digest["guidance"], digest["mask"]), edit_id


# ------------------------------------------------------------------------------------------------ quickstart
def run_quickstart() -> dict:
    from framework.data import load_manifest, load_request

    pipeline_cls = import_path("framework.EditPipeline")
    pipe = pipeline_cls.from_config(str(QUICKSTART))
    config = yaml.safe_load(QUICKSTART.read_text())
    manifest = ROOT / config["data"]["init_args"]["manifest"]
    assert manifest == QUICKSTART_MANIFEST
    out = {}
    for spec in load_manifest(manifest):
        with torch.no_grad():
            out[spec.id] = _digest(pipe.edit(load_request(spec, pipe.resolution)))
    return out


def test_quickstart_golden(one_thread, monkeypatch):
    monkeypatch.chdir(ROOT)  # the YAML's paths are relative to the repository's root, as in the docs
    got = run_quickstart()
    print("quickstart", got)
    _record("quickstart", got)
    assert sorted(got) == ["pose_000", "scribble_000", "text_000", "text_pose_000"]
    _compare(got, GOLDEN_QUICKSTART)


# ---------------------------------------------------------------------------------------------- plugin cases
def masked_manifest(manifest: Path) -> Path:
    """The manifest with `mask: mask.png` (a white disc on black, 64 px) on every request."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(image).ellipse((4, 4, 34, 34), fill=255)
    image.save(manifest.parent / "mask.png")
    data = yaml.safe_load(manifest.read_text())
    for row in data["requests"]:
        row["mask"] = "mask.png"
    path = manifest.parent / "manifest_masked.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _conditioners(tiny_dirs):
    controlnet = import_path("conditioners.controlnet.ControlNetConditioner")
    return [controlnet("pose", str(tiny_dirs["pose"]))]


def _edits(edit, manifest: Path) -> dict:
    from framework.data import load_manifest, load_request

    out = {}
    for spec in load_manifest(manifest):
        with torch.no_grad():
            out[spec.id] = _digest(edit(load_request(spec, None)))
    return out


def run_plugin_case(name: str, tiny_dirs, manifest: Path) -> dict:
    module_path, slots, settings, masked = CASES[name]
    backbone = import_path("framework.models.StableDiffusion")(str(tiny_dirs["sd"]))
    plugins = {slot: import_path(path)(**kwargs) for slot, (path, kwargs) in slots.items()}
    module = import_path(module_path)(backbone, _conditioners(tiny_dirs), output_dir=str(manifest.parent / name),
                                      **plugins, **settings)
    for slot in slots:  # the plugin objects given are the ones that run
        assert getattr(module.pipeline, slot) is plugins[slot], slot
    if name == "default":  # the defaults are the classes named by DEFAULT_SLOTS, exactly
        for slot, path in DEFAULT_SLOTS.items():
            assert type(getattr(module.pipeline, slot)) is import_path(path), slot
        assert module.pipeline.lam == 1.0
    module.setup("fit")
    return _edits(module.edit, masked_manifest(manifest) if masked else manifest)


@pytest.mark.parametrize("name", list(CASES))
def test_plugin_golden(name, tiny_dirs, manifest, one_thread):
    got = run_plugin_case(name, tiny_dirs, manifest)
    print(name, got)
    _record(name, got)
    _compare(got, GOLDEN[name])


def test_config_class_paths(tiny_dirs, manifest, one_thread):
    """The class paths as strings in a config (as YAML names them), resolved by jsonargparse: MaskBlendDecode in
    EditModule's decoder slot gives the edits of `decoder_mask_blend`."""
    config = {"model": {"class_path": MODULE, "init_args": {
        "backbone": {"class_path": "framework.models.StableDiffusion",
                     "init_args": {"pretrained": str(tiny_dirs["sd"])}},
        "conditioners": [{"class_path": "conditioners.controlnet.ControlNetConditioner",
                          "init_args": {"modality": "pose", "pretrained": str(tiny_dirs["pose"])}}],
        "decoder": {"class_path": "framework.stages.MaskBlendDecode"},
        "output_dir": str(manifest.parent / "config")}}}
    pipe = import_path("framework.pipeline.EditPipeline").from_config(config)
    assert type(pipe.decoder) is import_path("framework.stages.MaskBlendDecode")
    assert type(pipe.inversion) is import_path("framework.inversion.DDIMInversion")
    got = _edits(pipe.edit, manifest)
    print("config_mask_blend", got)
    _record("config_mask_blend", got)
    _compare(got, GOLDEN["decoder_mask_blend"])


if __name__ == "__main__":  # record: run the tests above with GOLDEN_DEFAULTS_RECORD and print what they produced
    import pprint
    import subprocess
    import sys
    import tempfile

    target = Path(tempfile.mkdtemp()) / "golden_defaults.json"
    # A fresh `python -m pytest` in the repository's root, so the code recorded is this checkout's.
    subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "--tb=line", *sys.argv[1:]], cwd=ROOT,
                   env={**os.environ, RECORD_ENV: str(target)}, check=False)
    recorded = json.loads(target.read_text())
    print("GOLDEN_QUICKSTART =", pprint.pformat(recorded.pop("quickstart", None), width=110))
    config_run = recorded.pop("config_mask_blend", None)
    print("GOLDEN =", pprint.pformat(recorded, width=110))
    print("# config_mask_blend equals decoder_mask_blend:", config_run == recorded.get("decoder_mask_blend"))
