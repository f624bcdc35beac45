"""Which scaling of the ITO losses makes lam the paper's dial (Fig. 5)? A study on toy 'val' edits.

A one-off study script: its numbers live in docs/lam.md; `python -m framework fit-auto-lam` reads its results.json.

    python experiments/studies/lam_study.py --edits 200 --split val --variants default literal ... --repeats 2
    python experiments/studies/lam_study.py --report outputs/lam_study --variants default   # Fig. 5 levels and steps

For each variant (a combination of the scaling settings below) and each lam in 0, 0.2, ..., 1 it
edits the same toy-world requests with the full method on the bundled toy model and scores:
background L1 outside the true mask, target L1 inside it, L1 between the edit and the guidance
image G, and the toy classifier's new-class reading. `--repeats R` reruns every edit with R seeds
(the request's seed + 1000 r): the seed-to-seed spread of the same edit is the noise floor the
lam steps are compared with. Masks are cached on disk (mask.cache_dir) and each edit's guidance
image is made once per variant (it does not depend on lam). The mask is the default Eq. 7 estimate
(n = 4 seeds on a 10-step grid, CFG kept; docs/performance_cost.md). Prints one table per variant and
writes `--out/results.json`.

Settings a variant combines (all are YAML settings of the method):
  reduction    preservation loss: 'sum' (Eq. 4 as printed) | 'mean'
  granularity  guidance cosine: 'latent' (one cosine, Eq. 5) | 'pixel' (per latent pixel, mean)
  balance      ito.balance: 'none' | 'gradient' (each loss's gradient at unit RMS before the lam mix)
  loss_mask    ito.loss_mask: 'binary' | 'soft' (the Eq. 7 map)
  optimizer    'adam' (fresh per step) | 'adam_kept' | 'nsgd' (framework.core.ito.NormalizedSGD)
  first_step   ito.first_step: 'optimize' | 'skip'
  reference    guidance.reference: 'inversion' (g_t = G inverted) | 'decode' (G's own decode latents)
  guide_tu, guide_k, refine, guide_encode
               how G is made: guidance.update_steps, inner_steps, refine (A.5), encode_ratio (None: the
               edit's); the `g_*` variants, scored by G's own target and background L1 (`guide/*`)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from dataclasses import replace
from functools import partial
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402

LITERAL = dict(reduction="sum", granularity="latent", balance="none", loss_mask="binary", optimizer="adam",
               first_step="optimize", reference="inversion", norm_weight=0.0, lr=0.1, inner_steps=1,
               guide_tu=15, guide_k=1, refine=False, guide_encode=None)
SCALED = dict(reduction="mean", granularity="pixel", balance="gradient", first_step="skip")
"""The three scaling settings that make background L1 follow lam (docs/lam.md)."""
NORM_DECODE = dict(SCALED, norm_weight=1.0, reference="decode")
DEFAULT = dict(NORM_DECODE, inner_steps=2)
"""The default: Adam (fresh per step), k = 2, norm term, g_t from G's own decode."""
VARIANTS = {
    "default": DEFAULT,
    # the default before the norm term, the decode reference and k = 2 (docs/lam.md)
    "scaled_k1": SCALED,
    "default_norm": dict(SCALED, norm_weight=1.0),
    "default_norm5": dict(SCALED, norm_weight=5.0),
    "default_norm_decode": NORM_DECODE,
    "default_decode": dict(SCALED, reference="decode"),
    "default_norm_nsgd_decode": dict(NORM_DECODE, optimizer="nsgd"),
    "default_norm2_decode": dict(NORM_DECODE, norm_weight=2.0),
    # the diagnoses of docs/lam.md's table of what brings lam = 0 to G
    "diag_norm_decode_lr02": dict(NORM_DECODE, lr=0.2),
    "diag_norm_decode_first": dict(NORM_DECODE, first_step="optimize"),
    "diag_decode_k2": dict(SCALED, reference="decode", inner_steps=2),
    "diag_norm_decode_sgd_k2": dict(NORM_DECODE, inner_steps=2, optimizer="sgd"),
    "diag_norm_decode_sgd_k4": dict(NORM_DECODE, inner_steps=4, optimizer="sgd"),
    # a better guidance image (docs/lam.md, "What holds ITO back"): A.2's t_u = 20, k = 30; A.5's refinement;
    # a partial noise encoding of G
    "g_a2": dict(DEFAULT, guide_tu=20, guide_k=30),
    "g_refine": dict(DEFAULT, refine=True),
    "g_encode07": dict(DEFAULT, guide_encode=0.7),
    "g_encode05": dict(DEFAULT, guide_encode=0.5),
    "literal": {},
    "mean_pixel": dict(reduction="mean", granularity="pixel"),
    "mean_pixel_skip": dict(reduction="mean", granularity="pixel", first_step="skip"),
    "balanced": dict(balance="gradient"),
    "balanced_skip": dict(balance="gradient", first_step="skip"),
    "mean_pixel_nsgd": dict(reduction="mean", granularity="pixel", optimizer="nsgd"),
    "mean_pixel_nsgd_skip": dict(reduction="mean", granularity="pixel", optimizer="nsgd", first_step="skip"),
    "balanced_nsgd_skip": dict(balance="gradient", optimizer="nsgd", first_step="skip"),
    "mean_pixel_soft": dict(reduction="mean", granularity="pixel", loss_mask="soft"),
    "mean_pixel_soft_skip": dict(reduction="mean", granularity="pixel", loss_mask="soft", first_step="skip"),
    "mean_pixel_kept": dict(reduction="mean", granularity="pixel", optimizer="adam_kept"),
    "mean_latent": dict(reduction="mean", granularity="latent"),
    "mean_pixel_skip_decode": dict(reduction="mean", granularity="pixel", first_step="skip", reference="decode"),
    "balanced_skip_decode": dict(balance="gradient", first_step="skip", reference="decode"),
    "mean_pixel_nsgd_skip_decode": dict(reduction="mean", granularity="pixel", optimizer="nsgd", first_step="skip",
                                        reference="decode"),
    "literal_decode": dict(reference="decode"),
}
LAMS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def apply_variant(module, settings: dict) -> None:
    """Set the module's losses, ITO config and optimiser to a variant's settings."""
    from framework.core.ito import NormalizedSGD
    from framework.core.settings import ITOConfig
    from losses import CosineGuidance, MaskedMSEPreservation

    s = {**LITERAL, **settings}
    module.losses = torch.nn.ModuleList([MaskedMSEPreservation(reduction=s["reduction"]),
                                         CosineGuidance(granularity=s["granularity"], norm_weight=s["norm_weight"])])
    module.ito_cfg = replace(module.ito_cfg, balance=s["balance"], loss_mask=s["loss_mask"],
                             first_step=s["first_step"], keep_optimizer_state=s["optimizer"] == "adam_kept",
                             inner_steps=s["inner_steps"])
    module.guidance_cfg = replace(module.guidance_cfg, reference=s["reference"], update_steps=s["guide_tu"],
                                  inner_steps=s["guide_k"], refine=s["refine"], encode_ratio=s["guide_encode"])
    optimizer = {"nsgd": NormalizedSGD, "sgd": torch.optim.SGD}.get(s["optimizer"], torch.optim.Adam)
    paper = (optimizer, s["lr"]) == (torch.optim.Adam, 0.1)
    module.optimizer_factory = None if paper else partial(optimizer, lr=s["lr"])
    ITOConfig.__post_init__(module.ito_cfg)


def build_module(cache: Path, threshold: float):
    from conditioners import ControlNetConditioner
    from framework.backbones.sd import StableDiffusion
    from framework.core.settings import MaskConfig
    from framework.lightning.module import EditModule

    module = EditModule(backbone=StableDiffusion("builtin:toyworld"),
                        conditioners=[ControlNetConditioner(modality="pose", pretrained="builtin:toyworld"),
                                      ControlNetConditioner(modality="scribble", pretrained="builtin:toyworld")],
                        mask=MaskConfig(threshold=threshold, cache_dir=str(cache)),
                        output_dir=str(cache / "unused"))
    module.setup("test")
    return module


def memoised_guidance(module):
    """The guidance image depends on the request, seed, mask and variant, not on lam: make it once."""
    generator = module.guidance_generator
    original = generator.generate
    store: dict = {}

    def generate(engine, state, level):
        key = (state.request.id, state.seed, module.variant_key)
        if key not in store:
            store[key] = original(engine, state, level)
        return store[key]
    generator.generate = generate
    return store


def digest(obj):
    """A hashable summary of a tensor or a nest of them (the conditioning of a side)."""
    if isinstance(obj, torch.Tensor):
        return tuple(obj.shape), obj.detach().cpu().numpy().tobytes()
    if isinstance(obj, (tuple, list)):
        return tuple(digest(o) for o in obj)
    if isinstance(obj, dict):
        return tuple((k, digest(v)) for k, v in sorted(obj.items()))
    if hasattr(obj, "__dict__"):
        return tuple((k, digest(v)) for k, v in sorted(vars(obj).items()))
    return repr(obj)


def memoised_inversion(module):
    """DDIM inversion depends on the input and the depth, not on lam, the seed or the variant: invert once."""
    inversion = module.inversion
    original = inversion.invert
    store: dict = {}

    def invert(x0, job):
        key = (digest(x0), digest(job.inversion), job.num, job.decode_num)
        if key not in store:
            store[key] = original(x0, job)
        return store[key]
    inversion.invert = invert
    return store


def score(result, request, metrics, guidance=None) -> dict[str, float]:
    """Metrics of one edit; `guidance`: G's image (the edit's own, or, at lam = 1, the one made for the same
    edit at a lam < 1). `guide/target_l1`, `guide/background_l1`: G itself scored against the true target
    and input by `metrics[0]`, the GroundTruthL1."""
    values = {"mask_area": result.record["mask_area"], "prompt_changed": request.changes_prompt}
    for metric in metrics:
        values.update(metric.update(result, request))
    if guidance is not None:
        values["guide/edit_l1"] = float((result.edit - guidance).abs().mean())
        values["guide/input_l1"] = float((result.input - guidance).abs().mean())
        as_edit = metrics[0].update(replace(result, edit=guidance), request)  # G itself scored as an edit
        values.update({f"guide/{k[3:]}": v for k, v in as_edit.items() if k in ("gt/target_l1", "gt/background_l1")})
    return values


def mean(values):
    return statistics.fmean(values) if values else float("nan")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--edits", type=int, default=200)
    p.add_argument("--split", default="val")
    p.add_argument("--variants", nargs="+", default=["literal", "mean_pixel"])
    p.add_argument("--lams", nargs="+", default=[f"{v:g}" for v in LAMS], help="lam values, or 'auto'")
    p.add_argument("--auto-lam", default=None, help="AutoLam constants for 'auto' as JSON, e.g. "
                   "'{\"intercept\": 1.0, \"slope\": -2.0, \"low\": 0.2, \"high\": 1.0}'")
    p.add_argument("--repeats", type=int, default=1, help="seeds per edit (the noise floor needs >= 2)")
    p.add_argument("--threshold", type=float, default=0.5, help="mask tau (the toy sweeps' 0.5)")
    p.add_argument("--report", nargs="+", type=Path, default=None, metavar="FOLDER",
                   help="edit nothing: merge these studies' results.json (e.g. lams split over processes) and print "
                        "the Fig. 5 report of each --variants entry found: levels, steps, noise floors")
    p.add_argument("--out", type=Path, default=Path("outputs/lam_study"))
    p.add_argument("--mask-cache", type=Path, default=None, help="mask cache folder (default: OUT/mask-cache); "
                   "parallel studies of the same edits can share one")
    args = p.parse_args(argv)
    if args.report:
        merged: dict = {}
        for folder in args.report:
            for variant, rows in json.loads((folder / "results.json").read_text()).items():
                merged.setdefault(variant, {}).update(rows)
        for variant in args.variants:
            if variant in merged:
                print(f"# {variant}\n{fig5_report(merged[variant])}\n")
        return
    warnings.filterwarnings("ignore")
    torch.set_grad_enabled(False)

    from framework.evaluation.metrics import GroundTruthL1
    from framework.io.manifests import load_request
    from framework.toy.datasets import ToyEditDataModule
    from framework.toy.model.metric import ToyClassifierAccuracy

    args.out.mkdir(parents=True, exist_ok=True)
    specs = ToyEditDataModule(edits=args.edits, split=args.split).load_specs(None, False)
    requests = [load_request(spec, None) for spec in specs]
    module = build_module(args.mask_cache or args.out / "mask-cache", args.threshold)
    if args.auto_lam:
        from framework.core.settings import AutoLam

        module.auto_lam = AutoLam(**json.loads(args.auto_lam))
    memoised_guidance(module)
    memoised_inversion(module)
    metrics = [GroundTruthL1(), ToyClassifierAccuracy().load("cpu")]
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for variant in args.variants:
        apply_variant(module, VARIANTS[variant])
        module.variant_key = json.dumps({k: v for k, v in {**LITERAL, **VARIANTS[variant]}.items()
                                         if k in ("optimizer", "lr", "loss_mask", "reference", "guide_tu", "guide_k",
                                                 "refine", "guide_encode")}, sort_keys=True)
        start = time.perf_counter()
        rows = results.setdefault(variant, {})
        guidance_images: dict = {}  # (id, seed) -> G's image from this variant's lam < 1 edits, for lam = 1
        for lam in args.lams:
            lam = "auto" if lam == "auto" else float(lam)
            module.lam = lam
            per_edit = []
            for request in requests:
                for r in range(args.repeats):
                    req = replace(request, seed=(request.seed or 0) + 1000 * r)
                    result = module.edit(req)
                    if result.guidance is not None:
                        guidance_images[(request.id, req.seed)] = result.guidance
                    g = guidance_images.get((request.id, req.seed))
                    per_edit.append({"id": request.id, "repeat": r, **score(result, req, metrics, g)})
            rows["auto" if lam == "auto" else f"{lam:g}"] = per_edit
        print(f"# {variant} ({time.perf_counter() - start:.0f} s)", flush=True)
        print(table(rows), flush=True)
        results_path.write_text(json.dumps(results))


def table(rows: dict) -> str:
    keys = ("gt/background_l1", "gt/target_l1", "guide/edit_l1", "guide/input_l1", "guide/target_l1",
            "guide/background_l1", "toy/new_class")
    lines = ["| lam | " + " | ".join(keys) + " | seed spread bg / guide |", "|---" * (len(keys) + 2) + "|"]
    for lam, per_edit in rows.items():
        cells = [f"{mean([e[k] for e in per_edit if k in e]):.4f}" for k in keys]
        lines.append(f"| {lam} | " + " | ".join(cells) + f" | {spread(per_edit, 'gt/background_l1'):.4f} / "
                     f"{spread(per_edit, 'guide/edit_l1'):.4f} |")
    return "\n".join(lines)


def repeat_means(per_edit: list[dict], key: str) -> dict[int, float]:
    """repeat -> the mean of `key` over that repeat's edits."""
    by_repeat: dict[int, list[float]] = {}
    for e in per_edit:
        if key in e:
            by_repeat.setdefault(e["repeat"], []).append(e[key])
    return {r: mean(v) for r, v in by_repeat.items()}


def fig5_report(rows: dict) -> str:
    """Fig. 5's claims, read off one variant's study: each lam's level and each step of lam 1 -> 0.

    A level's noise floor is the seed-to-seed spread of its mean over the edits (std over repeats); a
    step's is the same spread of the step itself (the repeat's mean at lam a minus its mean at lam b, std
    over repeats), and its 95 % interval is a paired bootstrap over the edit-seeds.
    """
    from framework.evaluation.metrics.bootstrap import paired_difference_ci

    lams = sorted(rows, key=float, reverse=True)
    keys = {"background L1": "gt/background_l1", "L1(edit, G)": "guide/edit_l1"}
    lines = ["| lam | background L1 (floor) | L1(edit, G) (floor) | / L1(input, G): of means (per edit) | target L1 | "
             "new class | edit-seeds |",
             "|---|---|---|---|---|---|---|"]
    for lam in lams:
        e = rows[lam]
        cells = []
        for key in keys.values():
            cells.append(f"{mean([x[key] for x in e if key in x]):.4f} ({spread(e, key):.4f})")
        guided = [x for x in e if "guide/edit_l1" in x]
        of_means = mean([x["guide/edit_l1"] for x in guided]) / mean([x["guide/input_l1"] for x in guided])
        ratio = mean([x["guide/edit_l1"] / x["guide/input_l1"] for x in guided])
        cells += [f"{of_means:.2f} ({ratio:.2f})", f"{mean([x['gt/target_l1'] for x in e]):.4f}",
                  f"{100 * mean([x['toy/new_class'] for x in e if 'toy/new_class' in x]):.1f} %", str(len(e))]
        lines.append(f"| {lam} | " + " | ".join(cells) + " |")
    lines += ["", "| step | " + " | ".join(f"change of {name} [95 % CI] (floor)" for name in keys) + " |",
              "|---|---|---|"]
    for a, b in zip(lams, lams[1:]):  # a > b: the step of lam a -> b
        cells = []
        for key in keys.values():
            pa = {(x["id"], x["repeat"]): x[key] for x in rows[a] if key in x}
            pb = {(x["id"], x["repeat"]): x[key] for x in rows[b] if key in x}
            common = sorted(set(pa) & set(pb))
            if not common:
                cells.append("-")
                continue
            diff, low, high = paired_difference_ci([pb[k] for k in common], [pa[k] for k in common])
            floor = spread([{"repeat": k[1], "step": pb[k] - pa[k]} for k in common], "step")
            cells.append(f"{diff:+.4f} [{low:+.4f}, {high:+.4f}] ({floor:.4f})")
        lines.append(f"| {a} -> {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spread(per_edit: list[dict], key: str) -> float:
    """Noise floor of a mean over edits: the std over repeats of the repeat means (nan with one repeat)."""
    means = list(repeat_means(per_edit, key).values())
    return statistics.stdev(means) if len(means) > 1 else float("nan")


if __name__ == "__main__":
    main()
