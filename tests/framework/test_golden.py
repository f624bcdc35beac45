"""Golden edits: fixed tiny-model requests whose outputs must not change when the engine is reorganised.

Each case runs one method on the two requests of the `manifest` fixture (a text edit and a pose edit,
64 px) at 6 DDIM steps and compares what it produced with values recorded from the engine before its
stages became plugins: the sha256 of the edit (and guidance image) quantised to uint8, and of the binary
mask, plus the float sum of the edit image (to 1e-5 relative, which a changed DDIM step would exceed by
orders of magnitude) and the UNet sample-evaluations per stage.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from framework.backbones.sd import StableDiffusion
from framework.core.settings import GuidanceConfig, ITOConfig, MaskConfig, SamplingConfig
from framework.io.manifests import load_manifest, load_request

FAST = dict(sampling=SamplingConfig(steps=6), mask=MaskConfig(seeds=2, steps=None, guidance_scale=None),
            ito=ITOConfig(update_steps=4, inner_steps=1, first_step="optimize", balance="none"),
            guidance=GuidanceConfig(update_steps=4, reference="inversion"))
"""The settings the golden values were recorded with: the paper's procedure as printed (the ITO from the first
step, the losses of `_literal_losses`, the mask on the full grid with CFG), so later changes of the defaults
do not move them."""


def _literal_losses():
    from losses import CosineGuidance, MaskedMSEPreservation

    return [MaskedMSEPreservation(reduction="sum"), CosineGuidance(granularity="latent", norm_weight=0.0)]


def _cases():
    """name -> (class path, constructor arguments besides the backbone and conditioners)."""
    refine = GuidanceConfig(update_steps=4, refine=True, refine_update_steps=3, reference="inversion")
    prompts = SamplingConfig(steps=6, inversion_prompt="a red square", negative_prompt="green",
                             inversion_guidance_scale=1.5)
    return {
        "method": ("framework.lightning.module.EditModule", dict(FAST, lam=0.6)),
        "lam1": ("framework.lightning.module.EditModule", dict(FAST, lam=1.0)),
        "refine_prompts": ("framework.lightning.module.EditModule", dict(FAST, lam=0.4, guidance=refine, sampling=prompts,
                                                               mask=MaskConfig(seeds=2, resolution=0.5, steps=None,
                                                                                     guidance_scale=None))),
        "diffedit": ("framework.lightning.baselines.DiffEdit", dict(FAST, mask=MaskConfig(
            seeds=2, compare_at="first", normalize="mean_ratio", threshold=0.2, steps=None, guidance_scale=None))),
        "diffedit_diffusers": ("framework.lightning.baselines.DiffEdit", dict(FAST, alignment="diffusers",
                                                                     sampling=SamplingConfig(steps=6, encode_ratio=0.7))),
        "sdedit": ("framework.lightning.baselines.SDEdit", dict(FAST, sampling=SamplingConfig(steps=6, encode_ratio=0.5))),
    }


# Recorded from the engine before the refactor (same tiny models, same requests).
GOLDEN = {'diffedit': {'pose': {'edit': 'e7fc112a79ab199b',
                       'edit_sum': 6759.961,
                       'guidance': None,
                       'mask': '8667e718294e9e0d',
                       'unet': {'final': 12, 'inversion': 6, 'mask': 8}},
              'text': {'edit': 'bf80a6db55b931b7',
                       'edit_sum': 6770.449,
                       'guidance': None,
                       'mask': '8667e718294e9e0d',
                       'unet': {'final': 12, 'inversion': 6, 'mask': 8}}},
 'diffedit_diffusers': {'pose': {'edit': '39b0f232c55155e0',
                                 'edit_sum': 6730.002,
                                 'guidance': None,
                                 'mask': 'dc51fb02143739c6',
                                 'unet': {'final': 8, 'inversion': 4, 'mask': 24}},
                        'text': {'edit': '38224322d00736c9',
                                 'edit_sum': 6760.609,
                                 'guidance': None,
                                 'mask': '390ed1b7f90cce74',
                                 'unet': {'final': 8, 'inversion': 4, 'mask': 24}}},
 'lam1': {'pose': {'edit': '499892c1c5b40de7',
                   'edit_sum': 6759.104,
                   'guidance': '6649320911a4310a',
                   'mask': 'dc51fb02143739c6',
                   'unet': {'final': 12, 'guidance': 18, 'inversion': 6, 'mask': 24}},
          'text': {'edit': '37692ad86bbfb51d',
                   'edit_sum': 6770.415,
                   'guidance': None,
                   'mask': '390ed1b7f90cce74',
                   'unet': {'final': 12, 'inversion': 6, 'mask': 24}}},
 'method': {'pose': {'edit': '499892c1c5b40de7',
                     'edit_sum': 6759.104,
                     'guidance': '6649320911a4310a',
                     'mask': 'dc51fb02143739c6',
                     'unet': {'final': 12, 'guidance': 18, 'inversion': 6, 'mask': 24}},
            'text': {'edit': 'e903dcf3cad14c2a',
                     'edit_sum': 6771.015,
                     'guidance': 'd527444dd5efe633',
                     'mask': '390ed1b7f90cce74',
                     'unet': {'final': 12, 'guidance': 18, 'inversion': 6, 'mask': 24}}},
 'refine_prompts': {'pose': {'edit': 'fb793983ceb49b30',
                             'edit_sum': 6759.399,
                             'guidance': '3c5fe240af67d461',
                             'mask': 'b3382d035d963a82',
                             'unet': {'final': 12, 'guidance': 48, 'inversion': 12, 'mask': 24}},
                    'text': {'edit': '6a666f90269f68ae',
                             'edit_sum': 6763.047,
                             'guidance': '10d1d313548ba15e',
                             'mask': 'a46a8991df11e0d8',
                             'unet': {'final': 12, 'guidance': 48, 'inversion': 12, 'mask': 24}}},
 'sdedit': {'pose': {'edit': 'a6f2533a3a5d3ad6',
                     'edit_sum': 6767.843,
                     'guidance': None,
                     'mask': 'f5a5fd42d16a2030',
                     'unet': {'final': 6}},
            'text': {'edit': '9376d7bec75e1cbc',
                     'edit_sum': 6754.56,
                     'guidance': None,
                     'mask': 'f5a5fd42d16a2030',
                     'unet': {'final': 6}}}}


def _sha(t: torch.Tensor) -> str:
    quantised = (t.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return hashlib.sha256(quantised.tobytes()).hexdigest()[:16]


def _digest(result) -> dict:
    return {"edit": _sha(result.edit), "edit_sum": round(float(result.edit.double().sum()), 3),
            "guidance": None if result.guidance is None else _sha(result.guidance),
            "mask": _sha(result.mask), "unet": dict(result.record["unet_evaluations"])}


def run_case(name: str, tiny_dirs, manifest) -> dict:
    import importlib

    from conditioners.controlnet import ControlNetConditioner

    path, kwargs = _cases()[name]
    module_name, cls_name = path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), cls_name)
    conditioners = [ControlNetConditioner("pose", str(tiny_dirs["pose"]))]
    module = cls(StableDiffusion(str(tiny_dirs["sd"])), conditioners, losses=_literal_losses(),
                 output_dir=str(manifest.parent / name), **kwargs)
    module.setup("fit")
    out = {}
    for spec in load_manifest(manifest):
        with torch.no_grad():
            out[spec.id] = _digest(module.edit(load_request(spec, None)))
    return out


@pytest.mark.parametrize("name", sorted(_cases()))
def test_golden_edit(name, tiny_dirs, manifest, one_thread):
    got = run_case(name, tiny_dirs, manifest)
    print(name, got)
    want = GOLDEN[name]
    for edit_id, digest in want.items():
        g = got[edit_id]
        assert g["unet"] == digest["unet"], edit_id
        assert g["edit_sum"] == pytest.approx(digest["edit_sum"], rel=1e-5), edit_id
        assert (g["edit"], g["guidance"], g["mask"]) == (digest["edit"], digest["guidance"], digest["mask"]), edit_id
