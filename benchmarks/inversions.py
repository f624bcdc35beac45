"""Reconstruction of each inversion under CFG: invert the input, decode under C_0, compare with the input.

    python -m benchmarks.inversions [--edits 40] [--split test] [--steps 25] [--cfg 7.5] [--json out.json]
    python -m benchmarks.inversions --quickstart     # the quickstart's four edits, whole, per inversion

For every toy-world edit of the split (framework.toy.datasets.ToyEditDataModule's seeds), the input is
VAE-encoded, inverted with each inversion plugin (framework.stages.inversions) and decoded under the source
condition (prompt and maps) at CFG `--cfg` through the engine's own decode (framework.stages.ITODecode
with t_u = 0, i.e. the final decode without ITO). It prints, side by side in one run: PSNR to the input
of that decode and of the VAE's own reconstruction (the ceiling), the background colour shift of the
decode (mean RGB difference to the input outside the true edit region, in 0-255 levels), the UNet
sample-evaluations of the inversion and its seconds.

`--quickstart` runs the whole edit of experiments/quickstart.yaml (its model, settings and four
requests) once per inversion and prints, per edit and on average, the background L1 to the input
outside the true edit region and the signed mean RGB shift there (the colour cast, 0-255 levels).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

INVERSIONS = {
    "ddim": ("DDIMInversion", {}),
    "negative_prompt": ("NegativePromptInversion", {}),
    "null_text": ("NullTextInversion", {}),
    "direct": ("DirectInversion", {}),
}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).mean())
    return 10 * math.log10(1 / max(mse, 1e-12))


def build_engine(pretrained: str, steps: int, cfg: float, inversion):
    from conditioners.controlnet import ControlNetConditioner
    from conditioners.text import TextConditioner
    from framework.backbones.sd import StableDiffusion
    from framework.core.procedure import EditEngine
    from framework.core.settings import ITOConfig, SamplingConfig
    from framework.stages import ITODecode, method_slots

    backbone = StableDiffusion(pretrained).load()
    conditioners = [TextConditioner(), *(ControlNetConditioner(m, pretrained) for m in ("pose", "scribble"))]
    for c in conditioners:
        c.load(backbone)
    return EditEngine(backbone, conditioners, [], **method_slots(inversion, decoder=ITODecode()),
                      sampling=SamplingConfig(steps=steps, guidance_scale=cfg), ito=ITOConfig(update_steps=0))


def reconstruct(engine, request):
    """(decoded image, VAE image, inversion UNet samples, inversion seconds) for one request under C_0."""
    from dataclasses import replace

    source = replace(request, edit_prompt=request.source_prompt, edit_maps=request.source_maps)
    state = engine.start(source, 1.0, 0)
    engine.encode(state)
    state.mask = torch.zeros_like(state.x0[:, :1])
    start = time.perf_counter()
    engine.denoiser.stage = "inversion"
    engine.invert(state)
    seconds = time.perf_counter() - start
    samples = engine.denoiser.samples["inversion"]
    y0 = engine.final(state)
    return engine.backbone.decode_latents(y0), engine.backbone.decode_latents(state.x0), samples, seconds


def background_shift(image: torch.Tensor, reference: torch.Tensor, keep: torch.Tensor) -> list[float]:
    """Mean RGB difference (image - reference) outside the edit region, in 0-255 levels, per channel."""
    keep = keep.expand_as(image)
    return [round(255 * float((image - reference)[:, c][keep[:, c]].mean()), 2) for c in range(3)]


def quickstart(names: list[str]) -> dict:
    """The quickstart's edits with each inversion: background L1 and RGB shift outside the true region."""
    import yaml

    import framework.stages.inversions as inv
    from conditioners.controlnet import ControlNetConditioner
    from framework.backbones.sd import StableDiffusion
    from framework.core.settings import MaskConfig
    from framework.evaluation.metrics.pixel import load_like
    from framework.io.manifests import load_manifest, load_request
    from framework.lightning.module import EditModule

    config = yaml.safe_load((ROOT / "experiments/quickstart.yaml").read_text())["model"]["init_args"]
    specs = load_manifest(ROOT / "experiments/examples/manifest.yaml")
    rows = {}
    for name in names:
        cls, kwargs = INVERSIONS[name]
        import tempfile

        module = EditModule(StableDiffusion("builtin:toyworld"),
                            [ControlNetConditioner(m, "builtin:toyworld") for m in ("pose", "scribble")],
                            lam=config["lam"], mask=MaskConfig(**config["mask"]),
                            inversion=getattr(inv, cls)(**kwargs), output_dir=tempfile.mkdtemp())
        module.setup("fit")
        per_edit = {}
        for spec in specs:
            request = load_request(spec, None)
            start = time.perf_counter()
            with torch.no_grad():
                result = module.edit(request)
            keep = ~(load_like(request.extra["true_mask"], tuple(result.edit.shape[-2:]))[:, :1] > 0.5)
            diff = (result.edit - request.image)
            per_edit[spec.id] = {
                "background_l1": round(float(diff.abs()[keep.expand_as(diff)].mean()), 4),
                "shift_rgb": background_shift(result.edit, request.image, keep),
                "inversion_unet": result.record["unet_evaluations"].get("inversion", 0),
                "seconds": round(time.perf_counter() - start, 2)}
        mean = lambda key: round(statistics.mean(e[key] for e in per_edit.values()), 4)  # noqa: E731
        rows[name] = {"edits": per_edit, "background_l1": mean("background_l1"),
                      "shift_rgb": [round(statistics.mean(e["shift_rgb"][c] for e in per_edit.values()), 2)
                                    for c in range(3)], "seconds": mean("seconds")}
        print(name, json.dumps(rows[name]), flush=True)
    print("\n| inversion | background L1 | RGB shift outside the edit | s per edit |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['background_l1']} | {r['shift_rgb']} | {r['seconds']} |")
    return rows


def main(argv=None) -> dict:
    import framework.stages.inversions as inv
    from framework.core.settings import SamplingConfig
    from framework.toy.datasets import ToyEditDataModule

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=40)
    parser.add_argument("--split", default="test")
    parser.add_argument("--steps", type=int, default=SamplingConfig().steps, help="DDIM steps (default: the product's)")
    parser.add_argument("--cfg", type=float, default=SamplingConfig().guidance_scale,
                        help="CFG scale of the decode (default: the product's)")
    parser.add_argument("--pretrained", default="builtin:toyworld")
    parser.add_argument("--only", nargs="*", default=list(INVERSIONS))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quickstart", action="store_true", help="the quickstart's whole edits per inversion")
    args = parser.parse_args(argv)
    if args.quickstart:
        rows = quickstart(args.only)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(rows, indent=2))
        return rows
    torch.manual_seed(0)
    from framework.evaluation.metrics.pixel import load_like
    from framework.io.manifests import load_request

    specs = ToyEditDataModule(edits=args.edits, split=args.split, size=64).specs
    requests = [load_request(spec, None) for spec in specs]
    rows = {}
    for name in args.only:
        cls, kwargs = INVERSIONS[name]
        engine = build_engine(args.pretrained, args.steps, args.cfg, getattr(inv, cls)(**kwargs))
        out = {"psnr": [], "vae_psnr": [], "unet": [], "seconds": [], "shift": []}
        for request in requests:
            with torch.no_grad():
                image, vae, samples, seconds = reconstruct(engine, request)
            true_mask = load_like(request.extra["true_mask"], tuple(image.shape[-2:]))[:, :1] > 0.5
            keep = ~true_mask
            out["psnr"].append(psnr(image, request.image))
            out["vae_psnr"].append(psnr(vae, request.image))
            out["unet"].append(samples)
            out["seconds"].append(seconds)
            out["shift"].append(background_shift(image, request.image, keep))
        shift = [round(statistics.mean(s[c] for s in out["shift"]), 2) for c in range(3)]
        rows[name] = {"edits": len(requests), "psnr": round(statistics.mean(out["psnr"]), 2),
                      "psnr_sd": round(statistics.stdev(out["psnr"]), 2) if len(requests) > 1 else 0.0,
                      "vae_psnr": round(statistics.mean(out["vae_psnr"]), 2),
                      "unet": statistics.mean(out["unet"]), "seconds": round(statistics.mean(out["seconds"]), 3),
                      "background_shift_rgb": shift}
        print(name, rows[name], flush=True)
    print("\n| inversion | PSNR dB (sd) | VAE PSNR dB | gap dB | background shift R,G,B | UNet evals | s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['psnr']} ({r['psnr_sd']}) | {r['vae_psnr']} | {r['vae_psnr'] - r['psnr']:.2f} | "
              f"{r['background_shift_rgb']} | {r['unet']:.0f} | {r['seconds']} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
