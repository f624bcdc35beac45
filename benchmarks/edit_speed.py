"""Edit speed on the CPU, per stage, ours against diffusers on the same tiny SD-geometry model.

    python -m benchmarks.edit_speed --sizes 64 256 --repeats 3 [--threads 2] [--json out.json]

The tiny model (`framework.toy.tiny`: UNet (32, 64), /8 VAE, CLIP text, a ControlNet) is written to a
temporary folder and loaded through `framework.backbones.loading.StableDiffusion` and the project's
conditioners; diffusers' `StableDiffusionDiffEditPipeline` (DDIMScheduler + DDIMInverseScheduler)
and `StableDiffusionControlNetImg2ImgPipeline` are built from the very same modules. Every stage
is run at the product's defaults, read from framework.core.settings (today 25 steps, CFG 7.5, inversion
guidance 1, t_u = 15, k = 2), with lam = 0.6 and the paper's mask (n = 10 from strength 0.5, DiffEdit's own
setting) on both sides of the mask rows, ours and diffusers' interleaved, `--repeats` times (the order
reverses every repeat); the table shows medians. Per-stage rows give diffusers the same VAE
latents x0 as ours (their VAE encode is skipped), so they time the denoising loops; the 'total'
rows run whole procedures from pixels (EditModule.edit against generate_mask + invert + __call__,
VAE encode and decode included on both sides), twice: with the module's defaults (the reduced mask:
n = 4 on a 10-step grid) and with the paper-literal mask and guidance settings of
experiments/paper_literal.yaml (n = 10 on the 25-step grid), each edit's ratio to DiffEdit
printed at the end.

UNet and ControlNet sample-evaluations are counted by forward hooks on the shared modules, so
both sides are counted the same way. Torch threads are set explicitly with --threads (default 2).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from benchmarks import common as C  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="image sizes in pixels (multiples of 8)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of every task (median reported)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2, this machine's cores)")
    p.add_argument("--steps", type=int, default=C.STEPS)
    p.add_argument("--no-total", action="store_true", help="skip the whole-edit rows (EditModule.edit, DiffEdit)")
    p.add_argument("--total-kinds", nargs="+", choices=["text", "text+pose"], default=["text", "text+pose"],
                   help="edits of the whole-edit rows (text: the like-for-like one against DiffEdit)")
    p.add_argument("--total-settings", nargs="+", choices=["default", "paper-literal"],
                   default=["default", "paper-literal"], help="settings of the whole-edit rows")
    p.add_argument("--total-only", action="store_true",
                   help="only the whole-edit rows (defaults and paper-literal against DiffEdit)")
    p.add_argument("--no-embedding", action="store_true",
                   help="skip the ControlNet-embedding rows (precomputed per request vs per UNet call)")
    p.add_argument("--embedding-only", action="store_true", help="only the ControlNet-embedding rows")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--quiet", action="store_true", help="no per-run log lines")
    return p.parse_args(argv)


def build(tmp: Path, device: torch.device):
    """Tiny SD + ControlNet written to `tmp` and loaded through the project's own loaders."""
    from conditioners.controlnet import ControlNetConditioner
    from conditioners.text import TextConditioner
    from framework.backbones.sd import StableDiffusion
    from framework.toy.tiny import save_tiny_controlnet, save_tiny_pipeline

    sd_dir = save_tiny_pipeline(tmp / "sd")
    cn_dir = save_tiny_controlnet(tmp / "controlnet", sd_dir)
    backbone = StableDiffusion(str(sd_dir)).load().to(device)
    text = TextConditioner()
    pose = ControlNetConditioner("pose", str(cn_dir))
    pose.load(backbone)
    pose.to(device)
    return backbone, [text, pose]


def paper_literal_settings() -> dict:
    """The `mask`, `guidance`, `sampling` and `ito` settings of experiments/paper_literal.yaml, as the module's
    config objects (25 steps, t_u 15: the defaults are 20 and 12)."""
    import yaml

    from framework.core.settings import GuidanceConfig, ITOConfig, MaskConfig, SamplingConfig

    args = yaml.safe_load((ROOT / "experiments/paper_literal.yaml").read_text())["model"]["init_args"]
    return {"mask": MaskConfig(**args["mask"]), "guidance": GuidanceConfig(**args["guidance"]),
            "sampling": SamplingConfig(**args["sampling"]), "ito": ITOConfig(**args["ito"])}


# (task suffix, label): the module's defaults and the paper-literal mask / guidance settings
SETTINGS = (("", "default"), (":paper", "paper-literal"))


def bench_size(size: int, args, backbone, conditioners, tmp: Path, device, log) -> dict:
    from framework.io.manifests import EditRequest
    from framework.lightning.module import EditModule

    req = C.toy_request(size)
    ours = C.OurStages(backbone, conditioners, device, args.steps)
    theirs = C.DiffusersStages(backbone, conditioners[1].controlnet, device, args.steps)
    unet_counter, cn_counter = C.EvalCounter(backbone.unet), C.EvalCounter(conditioners[1].controlnet)
    tasks, rows = ([], []) if args.total_only else C.stage_tasks(ours, theirs, req, size, log)

    module_stages: dict[str, list] = {}
    if not args.no_total:
        # Whole edits from pixels: the engine's EditModule.edit (defaults, and paper-literal) against DiffEdit's
        # three calls.
        modules = {"": EditModule(backbone=backbone, conditioners=conditioners, output_dir=str(tmp / "out")),
                   ":paper": EditModule(backbone=backbone, conditioners=conditioners, output_dir=str(tmp / "paper"),
                                        **paper_literal_settings())}
        for module in modules.values():
            module.setup("fit")
        image = req["image"].to(device)
        maps = {"source_maps": {"pose": req["source_pose"].to(device)},
                "edit_maps": {"pose": req["edit_pose"].to(device)}}
        nomaps = {"source_maps": {}, "edit_maps": {}}
        sp, ep = req["source_prompt"], req["edit_prompt"]

        def edit(name, kw, module):
            request = EditRequest(id=f"bench{size}", image=image, source_prompt=sp, edit_prompt=ep, mask=None,
                                  seed=0, lam=None, extra={}, **kw)

            def run():
                record = module.edit(request).record
                module_stages.setdefault(name, []).append(record)
                return record
            return run

        tasks.append(C.Task("diffedit.full", lambda: theirs.full(image, sp, ep, output_type="pt"), "diffusers"))
        for suffix, label in ((s, lb) for s, lb in SETTINGS if lb in args.total_settings):
            for kind, kw in ((k, kw) for k, kw in (("text", nomaps), ("text+pose", maps)) if k in args.total_kinds):
                name = f"EditModule.edit[{kind}{suffix}]"
                tasks.append(C.Task(name, edit(name, kw, modules[suffix]), "ours"))
                rows.append(C.Row("total", f"EditModule.edit, {kind}, {label}", name, "diffedit.full",
                                  "DiffEdit mask+invert+call", "no: + guidance, Eq. 7 mask"
                                  + (", ControlNet" if kind != "text" else "")))

    C.interleaved(tasks, args.repeats, device, unet_counter, cn_counter, log=(lambda s: None) if args.quiet else log)
    unet_counter.remove()
    cn_counter.remove()
    by = {t.name: t for t in tasks}
    result = {"size": size, "rows": [C.row_dict(r, by) for r in rows],
              "ito_overhead_pct": None if args.total_only else C.ito_overhead(by)}
    if module_stages:
        stages = {}
        for name, records in module_stages.items():
            keys = [k for k in records[0]["seconds"] if k != "total"] + ["total"]
            stages[name] = {k: round(statistics.median(r["seconds"].get(k, 0.0) for r in records), 4) for k in keys}
            stages[name]["unet_evaluations"] = records[-1]["unet_evaluations"]
        result["module_stages"] = stages
    return result


def embedding_comparison(size: int, args, backbone, conditioners, device, log) -> list[dict]:
    """The text+pose stages with the pose ControlNet's map embedding precomputed once per request side
    (`ControlNetConditioner(precompute_embedding=True)`, the default) against embedded at every UNet call,
    the same ControlNet module on both sides; interleaved, medians, paired ratios."""
    from conditioners.controlnet import ControlNetConditioner

    text, pose = conditioners
    per_call = ControlNetConditioner("pose", pose.pretrained, precompute_embedding=False)
    per_call.controlnet = pose.controlnet
    req = C.toy_request(size)
    image, sp, ep = req["image"].to(device), req["source_prompt"], req["edit_prompt"]
    maps = {"pose": req["source_pose"].to(device)}, {"pose": req["edit_pose"].to(device)}
    tasks = []
    for label, cond in (("precomputed", pose), ("per-call", per_call)):
        ours = C.OurStages(backbone, [text, cond], device, args.steps)
        x0, src, edit = ours.encode(image, sp, ep, *maps)
        x_traj = ours.invert(x0, src)
        mask = ours.mask(x0, src, edit, C.PAPER_MASK)
        g_traj = ours.guidance(x0, x_traj, mask, edit)[1]
        tasks += [C.Task(f"inversion[{label}]", lambda o=ours, x=x0, s=src: o.invert(x, s), label),
                  C.Task(f"mask[{label}]", lambda o=ours, x=x0, s=src, e=edit: o.mask(x, s, e, C.PAPER_MASK), label),
                  C.Task(f"final[{label}]", lambda o=ours, xt=x_traj, gt=g_traj, m=mask, e=edit: o.final(xt, gt, m, e),
                         label)]
    counters = C.EvalCounter(backbone.unet), C.EvalCounter(pose.controlnet)
    C.interleaved(tasks, args.repeats, device, *counters, log=(lambda s: None) if args.quiet else log)
    for counter in counters:
        counter.remove()
    by = {t.name: t for t in tasks}
    rows = []
    for stage in ("inversion", "mask", "final"):
        on, off = by[f"{stage}[precomputed]"], by[f"{stage}[per-call]"]
        pairs = [a.cpu_seconds / b.cpu_seconds for a, b in zip(on.samples, off.samples) if b.cpu_seconds]
        rows.append({"stage": f"{stage} (text+pose)", "precomputed_cpu_s": round(on.median().cpu_seconds, 4),
                     "per_call_cpu_s": round(off.median().cpu_seconds, 4), "unet": on.median().unet,
                     "ratio_paired_cpu": round(statistics.median(pairs), 3) if pairs else None})
    return rows


def format_embedding(rows: list[dict], size: int) -> str:
    lines = [f"\n== {size} px: ControlNet map embedding precomputed per request vs per UNet call (CPU seconds, "
             f"median; paired = median of per-repeat ratios; below 1: precomputing is faster) ==",
             "| stage | UNet samples | precomputed cpu s | per-call cpu s | cpu paired |", "|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['unet']} | {r['precomputed_cpu_s']:.3f} | {r['per_call_cpu_s']:.3f} | "
              f"{r['ratio_paired_cpu']:.3f} |" for r in rows]
    return "\n".join(lines)


def print_result(res: dict, threads: int) -> str:
    text = [C.format_table(res["rows"], f"\n== {res['size']} px, CPU, {threads} torch threads, median of runs; "
                                       f"ratio = ours s / diffusers s (wall; cpu: process CPU time) ==", cpu=True)]
    o = res["ito_overhead_pct"]
    if o:
        text.append("ITO overhead (final decode, t_u=15 vs t_u=0, same UNet evaluations), wall / cpu: "
                    f"text {o['text']:+.1f} % / {o['text cpu']:+.1f} %, text+pose {o['text+pose']:+.1f} % / "
                    f"{o['text+pose cpu']:+.1f} %; the optimiser steps alone: {o['alone']:.1f} % / "
                    f"{o['alone cpu']:.1f} % of the text+pose decode")
    for name, stages in res.get("module_stages", {}).items():
        parts = ", ".join(f"{k} {v:.3f}" for k, v in stages.items() if k != "unet_evaluations")
        text.append(f"{name} per stage (s, median): {parts}; UNet samples {stages['unet_evaluations']}")
    totals = [r for r in res["rows"] if r.get("stage") == "total"]
    if totals:
        text.append(f"Whole edit / DiffEdit at {res['size']} px (paired per repeat, median; wall / cpu; UNet samples "
                    f"ours / DiffEdit's):")
        text += [f"  {r['variant']}: {r['ratio_paired']:.2f}x / {r['ratio_paired_cpu']:.2f}x "
                 f"({r['ours_unet']} / {r['diffusers_unet']})" for r in totals]
    return "\n".join(text)


def main(argv=None) -> dict:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    import diffusers
    import transformers

    log = lambda s: print(s, flush=True)  # noqa: E731
    log(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
        f"python {platform.python_version()}; torch.set_num_threads({args.threads}) -> {torch.get_num_threads()} "
        f"threads (os.cpu_count() = {os.cpu_count()})")
    results = {"config": {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "diffusers": diffusers.__version__, "steps": args.steps, "cfg": C.CFG,
                          "mask_seeds": C.MASK_SEEDS, "mask_strength": C.MASK_STRENGTH, "t_u": C.T_U, "k": C.K,
                          "lam": C.LAM, "repeats": args.repeats, "model": "framework.toy.tiny (UNet (32, 64), /8 VAE)"},
               "sizes": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        backbone, conditioners = build(tmp, device)
        printed = []
        for size in args.sizes:
            if not args.embedding_only:
                res = bench_size(size, args, backbone, conditioners, tmp, device, log)
                results["sizes"].append(res)
                printed.append(print_result(res, torch.get_num_threads()))
                log(printed[-1])
            if not args.no_embedding:
                rows = embedding_comparison(size, args, backbone, conditioners, device, log)
                results.setdefault("embedding", {})[size] = rows
                printed.append(format_embedding(rows, size))
                log(printed[-1])
    print("\n\n".join(["\n######## summary ########"] + printed), flush=True)
    C.write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
