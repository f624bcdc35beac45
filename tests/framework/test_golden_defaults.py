"""Golden edits of the SHIPPED DEFAULTS: outputs that must stay byte-identical when framework/ is reorganised.

tests/framework/test_golden.py pins the paper-literal path (its FAST settings); this file pins what a user
gets without settings:

- `test_quickstart_golden`: the quickstart's four toy-world edits (experiments/quickstart.yaml with
  experiments/examples/manifest.yaml, the bundled `builtin:toyworld` model at 64 px), through the public
  Python API `EditPipeline.from_config(...)` and `pipe.edit(load_request(...))`, at the config's own
  settings (25 DDIM steps and every other setting as the YAML or the defaults give it; nothing reduced:
  about 3 s an edit on one thread).
- `test_plugin_golden`: one edit pair (the `manifest` fixture's text and pose requests on the tiny random
  models, as test_golden.py) per stage plugin, at EditModule's defaults: 25 DDIM steps, the default mask,
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

# Recorded at 828b96f (before framework/ moved into sub-packages), one thread, CPU.
GOLDEN_QUICKSTART = {'pose_000': {'edit': 'fd914815153d6e91',
              'edit_sum': 8160.221,
              'guidance': '82cd8f2ea69eab97',
              'lam': 0.8,
              'mask': '0a3282356d7e6f36',
              'unet': {'final': 50, 'guidance': 50, 'inversion': 25, 'mask': 80}},
 'scribble_000': {'edit': '166c9ad7204b9373',
                  'edit_sum': 8289.651,
                  'guidance': '317f3241de46ea00',
                  'lam': 0.8,
                  'mask': '36db4467ba151626',
                  'unet': {'final': 50, 'guidance': 50, 'inversion': 25, 'mask': 80}},
 'text_000': {'edit': 'ba6a726778d32b23',
              'edit_sum': 8331.06,
              'guidance': '7397508b829d652b',
              'lam': 0.8,
              'mask': '29a2d144f46e6749',
              'unet': {'final': 50, 'guidance': 50, 'inversion': 25, 'mask': 80}},
 'text_pose_000': {'edit': '9b56eb64a36dae86',
                   'edit_sum': 8157.31,
                   'guidance': '286cb64cab8e2845',
                   'lam': 0.8,
                   'mask': '1650a4702989fa89',
                   'unet': {'final': 50, 'guidance': 50, 'inversion': 25, 'mask': 80}}}

GOLDEN = {'baseline_diffedit': {'pose': {'edit': '2ba86effbe342ffe',
                                'edit_sum': 6754.278,
                                'guidance': None,
                                'lam': 0.8,
                                'mask': '87f2078dd9a208b8',
                                'unet': {'final': 50, 'inversion': 25, 'mask': 80}},
                       'text': {'edit': '6853291d6672c5ab',
                                'edit_sum': 6735.837,
                                'guidance': None,
                                'lam': 1.0,
                                'mask': '7805dbd22c03057b',
                                'unet': {'final': 50, 'inversion': 25, 'mask': 80}}},
 'baseline_sdedit': {'pose': {'edit': 'fe557d20e1d0c83b',
                              'edit_sum': 6781.236,
                              'guidance': None,
                              'lam': 0.8,
                              'mask': 'f5a5fd42d16a2030',
                              'unet': {'final': 50}},
                     'text': {'edit': '13733f8009c1ed4d',
                              'edit_sum': 6790.079,
                              'guidance': None,
                              'lam': 1.0,
                              'mask': 'f5a5fd42d16a2030',
                              'unet': {'final': 50}}},
 'decoder_mask_blend': {'pose': {'edit': '2ba86effbe342ffe',
                                 'edit_sum': 6754.278,
                                 'guidance': None,
                                 'lam': 0.8,
                                 'mask': '87f2078dd9a208b8',
                                 'unet': {'final': 50, 'inversion': 25, 'mask': 80}},
                        'text': {'edit': '6853291d6672c5ab',
                                 'edit_sum': 6735.837,
                                 'guidance': None,
                                 'lam': 1.0,
                                 'mask': '7805dbd22c03057b',
                                 'unet': {'final': 50, 'inversion': 25, 'mask': 80}}},
 'decoder_noise_encoded': {'pose': {'edit': 'fe557d20e1d0c83b',
                                    'edit_sum': 6781.236,
                                    'guidance': None,
                                    'lam': 0.8,
                                    'mask': '87f2078dd9a208b8',
                                    'unet': {'final': 50, 'mask': 80}},
                           'text': {'edit': '13733f8009c1ed4d',
                                    'edit_sum': 6790.079,
                                    'guidance': None,
                                    'lam': 1.0,
                                    'mask': '7805dbd22c03057b',
                                    'unet': {'final': 50, 'mask': 80}}},
 'decoder_prompt_to_prompt': {'pose': {'edit': 'cc73faaa4f116da5',
                                       'edit_sum': 6758.777,
                                       'guidance': None,
                                       'lam': 0.8,
                                       'mask': '87f2078dd9a208b8',
                                       'unet': {'final': 100, 'inversion': 25, 'mask': 80}},
                              'text': {'edit': '705a0d9936acf396',
                                       'edit_sum': 6754.018,
                                       'guidance': None,
                                       'lam': 1.0,
                                       'mask': '7805dbd22c03057b',
                                       'unet': {'final': 100, 'inversion': 25, 'mask': 80}}},
 'default': {'pose': {'edit': '49ce7522e7cd854f',
                      'edit_sum': 6785.352,
                      'guidance': '82f45a0310a05fe0',
                      'lam': 0.8,
                      'mask': '87f2078dd9a208b8',
                      'unet': {'final': 50, 'guidance': 50, 'inversion': 25, 'mask': 80}},
             'text': {'edit': '7dfdfdce9f53b2a0',
                      'edit_sum': 6734.609,
                      'guidance': None,
                      'lam': 1.0,
                      'mask': '7805dbd22c03057b',
                      'unet': {'final': 50, 'inversion': 25, 'mask': 80}}},
 'inversion_direct': {'pose': {'edit': '026d638ff2894722',
                               'edit_sum': 6785.112,
                               'guidance': '82f45a0310a05fe0',
                               'lam': 0.8,
                               'mask': '87f2078dd9a208b8',
                               'unet': {'final': 50, 'guidance': 50, 'inversion': 75, 'mask': 80}},
                      'text': {'edit': '38198847273051a5',
                               'edit_sum': 6729.698,
                               'guidance': None,
                               'lam': 1.0,
                               'mask': '7805dbd22c03057b',
                               'unet': {'final': 50, 'inversion': 75, 'mask': 80}}},
 'inversion_negative_prompt': {'pose': {'edit': 'f95dd125a4617d8e',
                                        'edit_sum': 6785.34,
                                        'guidance': '82f45a0310a05fe0',
                                        'lam': 0.8,
                                        'mask': '87f2078dd9a208b8',
                                        'unet': {'final': 50, 'guidance': 50, 'inversion': 25, 'mask': 80}},
                               'text': {'edit': '27843887f2c6f331',
                                        'edit_sum': 6724.083,
                                        'guidance': None,
                                        'lam': 1.0,
                                        'mask': '7805dbd22c03057b',
                                        'unet': {'final': 50, 'inversion': 25, 'mask': 80}}},
 'inversion_null_text': {'pose': {'edit': 'aa246c4825600e24',
                                  'edit_sum': 6784.365,
                                  'guidance': '82f45a0310a05fe0',
                                  'lam': 0.8,
                                  'mask': '87f2078dd9a208b8',
                                  'unet': {'final': 50, 'guidance': 50, 'inversion': 125, 'mask': 80}},
                         'text': {'edit': '8a5f8d9e255c1d5e',
                                  'edit_sum': 6727.796,
                                  'guidance': None,
                                  'lam': 1.0,
                                  'mask': '7805dbd22c03057b',
                                  'unet': {'final': 50, 'inversion': 125, 'mask': 80}}},
 'ito_lam0.6': {'pose': {'edit': '49ce7522e7cd854f',
                         'edit_sum': 6785.352,
                         'guidance': '82f45a0310a05fe0',
                         'lam': 0.8,
                         'mask': '87f2078dd9a208b8',
                         'unet': {'final': 50, 'guidance': 50, 'inversion': 25, 'mask': 80}},
                'text': {'edit': '3ddeadc60767596d',
                         'edit_sum': 6786.74,
                         'guidance': '4acfd250a50522f9',
                         'lam': 0.6,
                         'mask': '7805dbd22c03057b',
                         'unet': {'final': 50, 'guidance': 50, 'inversion': 25, 'mask': 80}}},
 'ito_lam1_named': {'pose': {'edit': '49ce7522e7cd854f',
                             'edit_sum': 6785.352,
                             'guidance': '82f45a0310a05fe0',
                             'lam': 0.8,
                             'mask': '87f2078dd9a208b8',
                             'unet': {'final': 50, 'guidance': 50, 'inversion': 25, 'mask': 80}},
                    'text': {'edit': '7dfdfdce9f53b2a0',
                             'edit_sum': 6734.609,
                             'guidance': None,
                             'lam': 1.0,
                             'mask': '7805dbd22c03057b',
                             'unet': {'final': 50, 'inversion': 25, 'mask': 80}}},
 'lam_auto': {'pose': {'edit': '49ce7522e7cd854f',
                       'edit_sum': 6785.352,
                       'guidance': '82f45a0310a05fe0',
                       'lam': 0.8,
                       'mask': '87f2078dd9a208b8',
                       'unet': {'final': 50, 'guidance': 50, 'inversion': 25, 'mask': 80}},
              'text': {'edit': '9181772406da39e4',
                       'edit_sum': 6786.543,
                       'guidance': '4acfd250a50522f9',
                       'lam': 0.3,
                       'mask': '7805dbd22c03057b',
                       'unet': {'final': 50, 'guidance': 50, 'inversion': 25, 'mask': 80}}},
 'mask_given': {'pose': {'edit': '5ed4b85a3129708e',
                         'edit_sum': 6739.022,
                         'guidance': 'f100c2e1ef26c2d1',
                         'lam': 0.8,
                         'mask': '866c78b41a1b4a21',
                         'unet': {'final': 50, 'guidance': 50, 'inversion': 25}},
                'text': {'edit': '88951710717869dc',
                         'edit_sum': 6717.199,
                         'guidance': None,
                         'lam': 1.0,
                         'mask': '866c78b41a1b4a21',
                         'unet': {'final': 50, 'inversion': 25}}},
 'mask_none': {'pose': {'edit': 'ce54dc76de7dcfcd',
                        'edit_sum': 6759.953,
                        'guidance': '4af449ffee98689c',
                        'lam': 0.8,
                        'mask': 'f5a5fd42d16a2030',
                        'unet': {'final': 50, 'guidance': 50, 'inversion': 25}},
               'text': {'edit': 'eff92b391910c500',
                        'edit_sum': 6759.06,
                        'guidance': None,
                        'lam': 1.0,
                        'mask': 'f5a5fd42d16a2030',
                        'unet': {'final': 50, 'inversion': 25}}}}


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
