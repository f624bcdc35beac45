"""Mask cost reduction: each reduced mask against the unreduced Eq. 7 mask, IoU and cost side by side.

A one-off study script: its numbers live in docs/performance_cost.md (the mask rows that chose today's defaults).

    python experiments/studies/mask_reduction.py                                   # tiny model, bundled examples
    python experiments/studies/mask_reduction.py --generate 8 --size 64            # 8 fresh toy-world edits per kind
    python experiments/studies/mask_reduction.py --pretrained path/to/sd --controlnet pose=path/to/cn ...
    python experiments/studies/mask_reduction.py --variant seeds=4,steps=10 --variant early_stop_iou=0.95,seed_group=2

The mask is the engine's own stage (`EditModule._mask`: `estimate_soft_mask` on the mask's DDIM grid,
at `mask.resolution`, with seed groups and the early stop), run per request for the unreduced config
(the paper's: n = 10 seeds, the 25-step grid (12 decode steps), full resolution) and for each
variant, a `MaskConfig` with some fields changed. Per variant it prints the IoU of its binary mask
with the unreduced one (mean and worst over the requests), the UNet sample-evaluations of the mask
stage and their ratio to the unreduced, and the CPU-time ratio (seconds of this process, so other
load on the machine does not count; the runs are interleaved, order reversed every repeat). Where a
request has a ground-truth edit mask (toy world), the IoU of each mask with it is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
ROOT = Path(__file__).resolve().parents[2]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from framework.core.masks import mask_image_size, mask_iou  # noqa: E402
from framework.core.settings import MaskConfig, paper_literal_mask  # noqa: E402

DEFAULT_VARIANTS = ["seeds=5", "seeds=3", "steps=10", "steps=6", "resolution=0.5", "early_stop_iou=0.9",
                    "early_stop_iou=0.95", "seeds=5,steps=10"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrained", default="builtin:tiny-random", help="SD 1.x folder, hub id or builtin name")
    p.add_argument("--controlnet", action="append", default=None, metavar="MODALITY=PATH",
                   help="a ControlNet per layout modality (default: pose and scribble, builtin:tiny-random)")
    p.add_argument("--manifest", type=Path, default=ROOT / "experiments/examples/manifest.yaml")
    p.add_argument("--generate", type=int, default=0, metavar="N",
                   help="instead of the manifest: N toy-world edits per kind (make_edit(seed, kind, size))")
    p.add_argument("--kinds", nargs="+", default=["text", "pose", "scribble", "text_pose"])
    p.add_argument("--size", type=int, default=64, help="image size of generated edits (pixels)")
    p.add_argument("--resolution", type=int, default=None, help="resize manifest images (longer side)")
    p.add_argument("--steps", type=int, default=25, help="sampling.steps (the unreduced mask's grid)")
    p.add_argument("--seeds", type=int, default=10, help="n of the unreduced mask")
    p.add_argument("--threshold", type=float, default=MaskConfig.threshold,
                   help="tau of every mask (a mask covering most of the image makes any IoU high)")
    p.add_argument("--variant", action="append", default=None, metavar="KEY=VALUE[,KEY=VALUE]",
                   help=f"MaskConfig fields to change (repeatable); default: {' '.join(DEFAULT_VARIANTS)}")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per (request, variant); median CPU time")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def parse_variant(text: str, base: MaskConfig) -> tuple[str, MaskConfig]:
    """'seeds=5,steps=10' -> a MaskConfig with those fields changed (numbers parsed, 'null' = None)."""
    changes = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key.strip() not in MaskConfig.__dataclass_fields__:
            raise SystemExit(f"unknown MaskConfig field '{key}' in --variant {text!r}; fields: "
                             f"{sorted(MaskConfig.__dataclass_fields__)}")
        changes[key.strip()] = _value(value.strip())
    return text, replace(base, **changes)


def _value(text: str):
    if text in ("null", "None"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def build_module(args, device):
    """EditModule (paper settings) on the given SD model and ControlNets; only its mask stage is used."""
    from conditioners.controlnet import ControlNetConditioner
    from framework.backbones.sd import StableDiffusion
    from framework.core.settings import GuidanceConfig, ITOConfig, SamplingConfig
    from framework.lightning.module import EditModule

    controlnets = args.controlnet or [f"{m}=builtin:tiny-random" for m in ("pose", "scribble")]
    conditioners = [ControlNetConditioner(*spec.split("=", 1)) for spec in controlnets]
    t_u = min(15, args.steps)  # ITO and guidance are not run here; only checked against the steps
    module = EditModule(StableDiffusion(args.pretrained), conditioners, sampling=SamplingConfig(steps=args.steps),
                        mask=paper_literal_mask(seeds=args.seeds, threshold=args.threshold), ito=ITOConfig(update_steps=t_u),
                        guidance=GuidanceConfig(update_steps=t_u), output_dir=tempfile.mkdtemp(prefix="masks-"))
    module.setup("fit")
    return module.to(device)


def _tensor(array: np.ndarray) -> torch.Tensor:
    array = np.ascontiguousarray(array)
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(array).permute(2, 0, 1)[None].float() / (255 if array.dtype == np.uint8 else 1)


def load_requests(args, modalities: set[str]):
    """(request, true mask (1, 1, H, W) or None) pairs: the manifest's, or generated toy-world edits."""
    from framework.io.manifests import EditRequest, load_image, load_manifest, load_request

    if args.generate:
        from framework.toy.world.edits import make_edit

        out = []
        for kind in args.kinds:
            for seed in range(args.generate):
                pair = make_edit(seed, kind, args.size)
                maps = lambda d: {k: _tensor(v) for k, v in d.items() if k in modalities}  # noqa: E731
                request = EditRequest(f"{kind}_{seed:03d}", _tensor(pair.source_image), pair.source_prompt,
                                      pair.edit_prompt, maps(pair.source_maps), maps(pair.edit_maps), None, seed,
                                      None, {})
                out.append((request, _tensor(pair.true_mask.astype(np.float32))))
        return out
    out = []
    for index, spec in enumerate(load_manifest(args.manifest)):
        request = load_request(spec, args.resolution, index)
        truth = spec.extra.get("true_mask")
        truth = load_image(Path(truth), args.resolution)[:, :1] if truth else None
        out.append((request, truth))
    return out


def run_mask(module, request, cfg: MaskConfig):
    """The engine's mask stage for one request under `cfg`: (binary mask (h, w), UNet samples, CPU s, wall s)."""
    engine = module.engine
    module.mask_cfg = cfg  # the pipeline's mask stage with these settings
    engine.mask_estimator = module.mask_estimator
    denoiser = engine.denoiser
    seed = module.seed if request.seed is None else request.seed
    state = engine.start(request, 1.0, seed)
    engine.encode(state)
    x0 = state.x0
    denoiser.reset_counts()
    denoiser.stage = "mask"
    cpu, wall = time.process_time(), time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty/full-mask warnings: expected with random weights
        engine.estimate_mask(state)
        mask = state.mask
    if x0.device.type == "cuda":
        torch.cuda.synchronize(x0.device)
    return mask[0, 0], denoiser.samples["mask"], time.process_time() - cpu, time.perf_counter() - wall


def truth_iou(mask: torch.Tensor, truth) -> float | None:
    if truth is None:
        return None
    small = F.interpolate(truth.float(), size=tuple(mask.shape), mode="area")[0, 0] > 0.5
    return mask_iou(mask, small.float())


def measure(module, requests, variants, repeats: int, log=print) -> list[dict]:
    """Per variant and request: IoU with the unreduced mask (and the truth), samples, CPU/wall seconds."""
    configs = [("unreduced", module.mask_cfg)] + variants
    rows = {name: [] for name, _ in configs}
    device = module.device
    run_mask(module, requests[0][0].to(device), configs[0][1])  # warm-up
    for index, (request, truth) in enumerate(requests):
        request = request.to(device)
        runs = {name: [] for name, _ in configs}
        for rep in range(repeats):
            for name, cfg in (configs if rep % 2 == 0 else configs[::-1]):
                runs[name].append(run_mask(module, request, cfg))
        reference = runs["unreduced"][0][0]
        for name, cfg in configs:
            mask, samples = runs[name][0][:2]
            h, w = mask_image_size(*request.image.shape[-2:], cfg.resolution)
            rows[name].append({"id": request.id, "iou": mask_iou(mask, reference), "truth_iou": truth_iou(mask, truth),
                               "area": float(mask.mean()), "samples": samples, "cells": samples * (h // 8) * (w // 8),
                               "cpu_s": statistics.median(r[2] for r in runs[name]),
                               "wall_s": statistics.median(r[3] for r in runs[name])})
        log(f"[{index + 1}/{len(requests)}] {request.id}: " + ", ".join(
            f"{name} IoU {rows[name][-1]['iou']:.3f}" for name, _ in configs[1:]))
    return summarise(configs, rows)


def summarise(configs, rows) -> list[dict]:
    base = rows["unreduced"]
    out = []
    for name, cfg in configs:
        r = rows[name]
        truths = [x["truth_iou"] for x in r if x["truth_iou"] is not None]
        out.append({"variant": name, "config": asdict(cfg), "requests": r,
                    "iou_mean": statistics.mean(x["iou"] for x in r), "iou_min": min(x["iou"] for x in r),
                    "truth_iou_mean": statistics.mean(truths) if truths else None,
                    "samples_mean": statistics.mean(x["samples"] for x in r),
                    "samples_ratio": sum(x["samples"] for x in r) / sum(x["samples"] for x in base),
                    "cells_ratio": sum(x["cells"] for x in r) / sum(x["cells"] for x in base),
                    "cpu_ratio": sum(x["cpu_s"] for x in r) / sum(x["cpu_s"] for x in base),
                    "wall_ratio": sum(x["wall_s"] for x in r) / sum(x["wall_s"] for x in base),
                    "area_mean": statistics.mean(x["area"] for x in r)})
    return out


def format_table(summary: list[dict], title: str) -> str:
    f = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [title, "| variant | IoU vs unreduced (mean / min) | IoU vs truth | mask area | UNet samples | "
                    "samples ratio | sample x latent px ratio | cpu ratio | wall ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['variant']} | {f(s['iou_mean'])} / {f(s['iou_min'])} | {f(s['truth_iou_mean'])} | "
                     f"{f(s['area_mean'], 2)} | {s['samples_mean']:.0f} | {f(s['samples_ratio'], 2)} | "
                     f"{f(s['cells_ratio'], 2)} | {f(s['cpu_ratio'], 2)} | {f(s['wall_ratio'], 2)} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    module = build_module(args, device)
    base = module.mask_cfg
    variants = [parse_variant(v, base) for v in (args.variant or DEFAULT_VARIANTS)]
    modalities = {c.modality for c in module.conditioners if c.modality}
    requests = load_requests(args, modalities)
    print(f"model {args.pretrained}, ControlNets {sorted(modalities)}; {len(requests)} requests; unreduced mask: "
          f"n = {base.seeds}, {args.steps}-step grid, strength {base.strength}, tau {base.threshold}; torch threads "
          f"{torch.get_num_threads()}, device {device}", flush=True)
    summary = measure(module, requests, variants, args.repeats)
    print(format_table(summary, f"\n== mask cost reduction, {len(requests)} requests; ratios = variant / unreduced "
                                f"(sums over requests) =="), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary},
                                        indent=2))
        print(f"wrote {args.json}")
    return summary


if __name__ == "__main__":
    main()
