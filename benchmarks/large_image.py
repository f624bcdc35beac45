"""Peak memory of a large-image edit with and without the backbone's memory options, side by side.

    python -m benchmarks.large_image                                   # GPU: SD 1.5 size, 1024 px, fp16
    python -m benchmarks.large_image --attention classic               # against diffusers' classic attention
    python -m benchmarks.large_image --device cpu --tiny --size 512 --steps 3 --seeds 2   # CPU check (tiny)

The models are benchmarks/gpu_sd15.py's (SD 1.5-size UNet, ControlNet, VAE and CLIP text encoder
from their published configs with random weights, or `--tiny`: framework.toy.tiny's). The edit is
gpu_sd15.py's whole paper-setting edit (encode, inversion, Eq. 7 mask under the pose ControlNet,
guidance image, final decode with ITO, VAE decodes), with `--steps` and `--seeds` to shorten it.
Variants: `off`; `attention_slicing` (the backbone's `attention_slicing: --slice`, on the UNet
and the ControlNet, through `StableDiffusion.configure_memory`); `vae_tiling` (`vae_tiling: true`,
tiles of `--tile-size` px, default the VAE's sample_size: 512 for SD 1.5); `both`.

Each variant runs in a fresh child process, so no allocator state carries over. Memory:
- CUDA: `torch.cuda.max_memory_allocated`, reset before each stage (the peak of the edit is the
  largest stage peak); the models' own weights are included.
- CPU: the process's peak resident set (`getrusage(RUSAGE_SELF).ru_maxrss`, a high-water mark)
  after each stage, minus the resident set just before the edit (weights and libraries loaded):
  the memory the edit itself added. tracemalloc cannot see torch's allocations, so RSS is used.
Seconds are wall-clock (synchronised on CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

from benchmarks import common as C  # noqa: E402

VARIANTS = ("off", "attention_slicing", "vae_tiling", "both")
GIB = 2 ** 30


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=1024, help="image side in pixels (multiple of 8)")
    p.add_argument("--tiny", action="store_true", help="framework.toy.tiny's models instead of SD 1.5 size")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default=None, help="default: fp16 on CUDA, fp32 on CPU")
    p.add_argument("--steps", type=int, default=C.STEPS, help="DDIM steps (paper: 25)")
    p.add_argument("--seeds", type=int, default=C.MASK_SEEDS, help="mask seeds n (paper: 10)")
    p.add_argument("--chunk-size", type=int, default=None, help="unet_chunk_size: most samples per UNet call")
    p.add_argument("--slice", default="auto", help="attention_slicing of the sliced variants: auto, max or an int")
    p.add_argument("--tile-size", type=int, default=None, help="vae_tile_size in pixels (default: the VAE's own)")
    p.add_argument("--attention", choices=["sdpa", "classic"], default="sdpa", help="processor of the unsliced runs")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=None,
                   help="default: all four; with --vae-only: off and vae_tiling")
    p.add_argument("--vae-only", action="store_true",
                   help="only the VAE: encode the image and decode its latents (what VAE tiling acts on)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU runs)")
    p.add_argument("--timeout", type=float, default=540, help="seconds allowed for all variants together")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def options(variant: str, args) -> dict:
    """The backbone's memory options of a variant."""
    slicing = int(args.slice) if args.slice.isdigit() else args.slice
    chosen = {}
    if variant in ("attention_slicing", "both"):
        chosen["attention_slicing"] = slicing
    if variant in ("vae_tiling", "both"):
        chosen.update(vae_tiling=True, vae_tile_size=args.tile_size)
    return chosen


def vae_child(args, device, dtype) -> dict:
    """One variant, VAE only: VAE-encode the toy image at --size and decode its latents, each measured."""
    from diffusers import AutoencoderKL

    from benchmarks import gpu_sd15 as G
    from framework.backbones.sd import StableDiffusion
    from framework.toy.tiny import TINY_SD, build_tiny_models

    torch.manual_seed(0)
    with torch.device(device):
        vae = build_tiny_models(0)[0] if args.tiny else AutoencoderKL(**G.SD15_VAE)
    backbone = StableDiffusion(TINY_SD)
    backbone.vae = vae.to(device, dtype).requires_grad_(False).eval()
    for key, value in options(args.child, args).items():
        setattr(backbone, key, value)
    backbone.configure_memory()
    image = C.toy_request(args.size)["image"].to(device)
    before = C.current_rss()
    stage = C.StageClock(device, rss=True)
    start = time.perf_counter()
    x0 = stage("encode", lambda: backbone.encode_image(image))
    stage("decode", lambda: backbone.decode_latents(x0))
    return {"variant": args.child, "options": options(args.child, args), "rss_before": before,
            "seconds": time.perf_counter() - start, "stages": stage.stages, "processors": [],
            "vae_tiling": bool(vae.use_tiling)}


def child(args) -> dict:
    """One variant in this process: build, apply the options, run the edit once, measure."""
    from benchmarks import gpu_sd15 as G

    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = G.DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    if args.vae_only:
        return vae_child(args, device, dtype)
    vae, unet, text_encoder, tokenizer, scheduler, controlnet = G.build_models(args.tiny, device)
    for module in (vae, unet, text_encoder, controlnet):
        module.to(dtype)
    backbone, conditioners = G.wire(vae, unet, text_encoder, tokenizer, scheduler, controlnet)
    G.set_attention((unet, controlnet, vae), args.attention)
    for key, value in options(args.child, args).items():
        setattr(backbone, key, value)  # as if set in YAML: StableDiffusion(attention_slicing=..., vae_tiling=...)
    backbone.configure_memory(*conditioners)
    ours = C.OurStages(backbone, conditioners, device, args.steps, unet_chunk_size=args.chunk_size)
    counters = C.EvalCounter(unet), C.EvalCounter(controlnet)
    req = C.toy_request(args.size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    before = C.current_rss()
    start = time.perf_counter()
    stages = G.our_full_edit(ours, req, device, *counters, mask_cfg=replace(C.PAPER_MASK, seeds=args.seeds))
    return {"variant": args.child, "options": options(args.child, args), "rss_before": before,
            "seconds": time.perf_counter() - start, "stages": {k: v for k, v in stages.items() if k != "_finite"},
            "finite": stages["_finite"],
            "processors": sorted({type(p).__name__ for p in unet.attn_processors.values()}),
            "vae_tiling": bool(vae.use_tiling)}


def peak(result: dict, device_type: str) -> tuple[float, str]:
    """(peak GiB of the edit, the stage that set it)."""
    stages = result["stages"]
    if device_type == "cuda":
        name = max(stages, key=lambda k: stages[k]["peak"])
        return stages[name]["peak"] / GIB, name
    top = max(s["maxrss"] for s in stages.values())  # a high-water mark: the first stage to reach it set it
    name = next(k for k, s in stages.items() if s["maxrss"] == top)
    return (top - result["rss_before"]) / GIB, name


def run_children(args, argv: list[str]) -> list[dict]:
    deadline = time.perf_counter() + args.timeout
    results = []
    for variant in args.variants:
        left = deadline - time.perf_counter()
        if left <= 0:
            print(f"[{variant}] skipped: past --timeout", flush=True)
            continue
        command = [sys.executable, "-m", "benchmarks.large_image", *argv, "--child", variant]
        try:
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=left,
                                  cwd=Path(__file__).resolve().parents[1])  # stderr shows
        except subprocess.TimeoutExpired:
            print(f"[{variant}] stopped: past --timeout", flush=True)
            continue
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            tail = done.stdout.strip().splitlines()[-3:] or ["see the error above"]
            print(f"[{variant}] failed (exit {done.returncode}): {' | '.join(tail)}", flush=True)
            results.append({"variant": variant, "error": tail})
            continue
        results.append(json.loads(lines[-1][len("RESULT "):]))
        r = results[-1]
        print(f"[{variant}] {r['seconds']:.1f} s; attention {r['processors']}, VAE tiling {r['vae_tiling']}",
              flush=True)
    return results


def format_table(results: list[dict], args) -> str:
    kind = "torch.cuda.max_memory_allocated" if args.device.startswith("cuda") else "peak RSS - RSS before the edit"
    device_type = "cuda" if args.device.startswith("cuda") else "cpu"
    ok = [r for r in results if "error" not in r]
    base = next((r for r in ok if r["variant"] == "off"), None)
    base_peak = peak(base, device_type)[0] if base else None
    what = "VAE encode + decode" if args.vae_only else (f"edit, {args.steps} steps, n = {args.seeds}, chunk "
                                                        f"{args.chunk_size}, attention {args.attention}")
    lines = [f"\n== {args.size} px {what}, {'tiny' if args.tiny else 'SD 1.5 size'}; memory: {kind} ==",
             "| variant | options | peak GiB | set by stage | x off | s | x off | VAE decode s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in ok:
        gib, stage = peak(r, device_type)
        ratio = f"{gib / base_peak:.2f}" if base_peak else "-"
        time_ratio = f"{r['seconds'] / base['seconds']:.2f}" if base else "-"
        lines.append(f"| {r['variant']} | {r['options'] or '-'} | {gib:.3f} | {stage} | {ratio} | {r['seconds']:.1f} | "
                     f"{time_ratio} | {r['stages']['decode']['s']:.2f} |")
    lines += [f"| {r['variant']} | failed: {' | '.join(r['error'])} |||||||" for r in results if "error" in r]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.variants = args.variants or (["off", "vae_tiling"] if args.vae_only else list(VARIANTS))
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return None
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    print(f"device {name}; torch {torch.__version__}; variants {args.variants}, each in its own process", flush=True)
    results = run_children(args, argv)
    print(format_table(results, args), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "device": name,
                                         "results": results}, indent=2))
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
