"""The improved toy model trained on one GPU in one run, packed for the trip back, unpacked for scoring.

    python experiments/studies/toymodel_gpu_run.py --out $OUT                 # on the GPU machine (about 7 minutes)
    python experiments/studies/toymodel_gpu_run.py --dry-run --out /tmp/dry   # the same run on the CPU at a tiny size
    python experiments/studies/toymodel_gpu_run.py --unpack FILES --to outputs/toymodel/h200   # here: tars -> model folder
    python -m framework gates --model outputs/toymodel/h200            # then score it
    python experiments/studies/toymodel_gpu_run.py --estimate                 # CPU cost of a step per stage, full size

Stages (configs in `experiments/toyworld/h200/`): the classifier in a child process from the start (it
renders its own crops on one CPU core), and in this process the /2 VAE, then UNet + text encoder +
ControlNets on its latents. The VAE and diffusion schedules run on the clock (`schedule_seconds`), so
the run ends on time whatever the step rate; `--minutes` bounds the whole and shortens the diffusion
stage if the earlier ones ran long. Whatever was exported is packed even when a stage failed.

`--out` receives at most 7 files, each checked against the 16 MiB a file may have to come back: one
tar per component (`sd.tar`: VAE, text encoder, tokenizer, scheduler; `unet.tar`;
`controlnet-pose.tar`; `controlnet-scribble.tar`; `classifier.tar`), `logs.tar` (this run's log,
each stage's metrics.csv and config, `timings.json` with seconds, steps and measured seconds per step
and FLOPs per step of each stage) and `timings.json` itself. `--unpack` extracts them into a folder
laid out as the bundled model (sd/, controlnet-*/, classifier/).

`--dry-run` runs every stage for 3 steps at tiny widths and 16 scenes on the CPU (the configs,
overrides, exports, packing and unpacking all exercised), and checks the full-size nets against the
size limits (each tar under 16 MiB, the bundle under 40 MB) by building them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CONFIGS = ROOT / "experiments" / "toyworld" / "h200"
STAGES = ("classifier", "vae", "diffusion")
FILE_LIMIT = 16 * 2 ** 20
"""Largest file that comes back from the GPU machine."""
BUNDLE_LIMIT = 40e6
"""Largest bundled model (issue's bundling criteria)."""
RESERVE_SECONDS = 40
"""Kept back from `--minutes` for the last export, packing and the classifier's join."""

DRY = {
    "all": ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.max_steps", "3",
            "--trainer.log_every_n_steps", "1"],
    "vae": ["--model.init_args.block_out_channels", "[8, 16]", "--data.init_args.pool_size", "16",
            "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
            "--data.init_args.render_workers", "1", "--model.init_args.stats_images", "16"],
    "diffusion": ["--model.init_args.unet_channels", "[8, 16, 16]", "--model.init_args.text_hidden", "16",
                  "--model.init_args.text_layers", "2", "--data.init_args.pool_size", "16",
                  "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
                  "--data.init_args.render_workers", "1"],
    "classifier": ["--data.init_args.scenes", "8", "--trainer.max_epochs", "1", "--model.init_args.width", "8",
                   "--data.init_args.batch_size", "4"],
}
"""Overrides of the dry run: the configs' structure at tiny widths, 3 steps, 16 scenes, on the CPU."""


def clock(seconds: float) -> str:
    """Lightning's max_time format, DD:HH:MM:SS."""
    s = int(seconds)
    return f"00:{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def stage_args(stage: str, work: Path, dry_run: bool, seconds: float | None = None) -> list[str]:
    """CLI arguments of one stage: its config, with every output under `work`."""
    run = work / "runs" / stage
    export = {"vae": work / "vae", "diffusion": work / "model", "classifier": work / "model" / "classifier"}[stage]
    args = ["--config", str(CONFIGS / f"{stage}.yaml"), "--trainer.default_root_dir", str(run),
            "--trainer.logger.init_args.save_dir", str(run), "--model.init_args.export_dir", str(export)]
    if stage == "diffusion":
        args += ["--model.init_args.vae", str(work / "vae")]
    if seconds is not None:
        args += ["--model.init_args.schedule_seconds", f"{seconds:.0f}", "--trainer.max_time", clock(seconds + 60)]
    if dry_run:
        args += DRY["all"] + DRY[stage]
    return args


class StepCost:
    """A Lightning callback: wall seconds per step after a warm-up, and the FLOPs and the operators of one
    step's forward and backward, counted by torch's dispatch modes up to the optimiser step.

    Operators that only make views are not counted; each of the others is about one GPU kernel launch.
    The optimiser, the gradient clipping and the EMA are left out: on the CPU AdamW loops over the
    parameters, on CUDA it and the EMA use torch's multi-tensor (foreach) kernels, a few dozen launches.
    """

    def __init__(self, count_step: int = 2, warmup: int = 5):
        self.count_step, self.warmup = count_step, warmup
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.flops = self.ops = None
        self._modes = None

    def as_callback(self):
        import lightning as L

        cost = self

        class _Callback(L.Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                cost._cpu = time.process_time()
                if len(cost.times) == cost.count_step:
                    cost._start_counting()

            def on_before_optimizer_step(self, trainer, module, optimizer):
                if cost._modes is not None:
                    cost._stop_counting()

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if cost._modes is not None:  # no optimiser step in this batch
                    cost._stop_counting()
                cost.times.append(time.perf_counter())
                cost.cpu_times.append(time.process_time() - cost._cpu)

        return _Callback()

    def _start_counting(self):
        self._modes = []
        try:
            self._enter_modes()
        except Exception as err:  # noqa: BLE001 - a measurement must not end a training run
            print(f"step cost: not counted ({type(err).__name__}: {err})")
            for mode in reversed(self._modes):
                mode.__exit__(None, None, None)
            self._modes = None

    def _enter_modes(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import FlopCounterMode

        cost = self

        class _Ops(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                cost.ops += not getattr(func, "is_view", False)
                return func(*args, **(kwargs or {}))

        self.ops = 0
        for mode in (FlopCounterMode(display=False), _Ops()):
            mode.__enter__()
            self._modes.append(mode)

    def _stop_counting(self):
        for mode in reversed(self._modes):
            mode.__exit__(None, None, None)
        self.flops = self._modes[0].get_total_flops()
        self._modes = None

    def summary(self) -> dict:
        """Steps run, mean wall seconds per step after the warm-up (the counted step excluded), CPU seconds."""
        t = self.times
        skip = max(self.warmup, self.count_step + 1)
        per_step = (t[-1] - t[skip]) / (len(t) - 1 - skip) if len(t) > skip + 1 else None
        cpu = self.cpu_times[skip:] or self.cpu_times
        return {"steps": len(t), "seconds_per_step": per_step,
                "cpu_seconds_per_step": sum(cpu) / len(cpu) if cpu else None,
                "flops_per_step": self.flops, "ops_per_step": self.ops}


def run_stage(args: list[str], cost: StepCost | None = None) -> None:
    """One stage in this process, through the same LightningCLI as `python -m framework.toy.model fit`."""
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    cli = LightningCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       args=args, run=False, save_config_kwargs={"overwrite": True})
    if cost is not None:
        cli.trainer.callbacks.append(cost.as_callback())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def logged_steps(run: Path) -> int | None:
    """The last step in a stage's metrics.csv."""
    steps = [int(row["step"]) for f in run.rglob("metrics.csv") for row in csv.DictReader(f.open()) if row.get("step")]
    return max(steps) + 1 if steps else None


# ---------------------------------------------------------------------------- sizes


def config_args(stage: str) -> dict:
    import yaml

    return yaml.safe_load((CONFIGS / f"{stage}.yaml").read_text())["model"]["init_args"]


def full_size_bytes() -> dict[str, int]:
    """fp32 bytes of each component the full-size configs build (untrained), by tar."""
    import torch

    from framework.toy.model.classifier import ToyClassifier
    from framework.toy.model.diffusion import TOY_WORDS, build_controlnet, build_text_encoder, build_unet
    from framework.toy.model.vae import build_vae
    from framework.toy.tiny import build_tokenizer

    def size(*nets):
        return sum(p.numel() * 4 for net in nets for p in net.parameters())

    v, d, c = config_args("vae"), config_args("diffusion"), config_args("classifier")
    torch.manual_seed(0)
    vae = build_vae(v["block_out_channels"], v.get("layers_per_block", 1), v.get("latent_channels", 4), v.get("size", 64))
    scale = 2 ** (len(v["block_out_channels"]) - 1)
    tokenizer = build_tokenizer(TOY_WORDS, d.get("max_length", 32))
    text = build_text_encoder(len(tokenizer), tokenizer, d["text_hidden"], d["text_layers"], d.get("max_length", 32))
    unet = build_unet(d["unet_channels"], d.get("layers_per_block", 1), d["text_hidden"], d.get("attention_head_dim", 8),
                      v.get("size", 64) // scale, d.get("unet_attention"))
    controlnet = build_controlnet(unet, scale)
    sizes = {"sd": size(vae, text), "unet": size(unet), "classifier": size(ToyClassifier(c["width"], c["crop"]))}
    sizes.update({f"controlnet-{m}": size(controlnet) for m in d["modalities"]})
    return sizes


def check_sizes(sizes: dict[str, int]) -> list[str]:
    """Problems with the sizes: a tar that would not come back, a bundle over its limit."""
    problems = [f"{name}.tar would hold {b / 2**20:.1f} MiB of weights (limit 16 MiB a file): narrow it"
                for name, b in sizes.items() if b > FILE_LIMIT - 2**20]
    total = sum(sizes.values())
    if total > BUNDLE_LIMIT:
        problems.append(f"the bundle would be {total / 1e6:.1f} MB (limit 40 MB)")
    return problems


# ---------------------------------------------------------------------------- packing


def pack(work: Path, out: Path) -> dict[str, int]:
    """One tar per component under `out`; returns their sizes. Folders that are missing are skipped."""
    model = work / "model"
    parts = {"sd": (model, "sd", lambda name: not name.startswith("sd/unet")), "unet": (model, "sd/unet", None),
             "classifier": (model, "classifier", None), "logs": (work, "logs", None)}
    for folder in sorted(model.glob("controlnet-*")):
        parts[folder.name] = (model, folder.name, None)
    written = {}
    for name, (base, member, keep) in parts.items():
        if not (base / member).exists():
            continue
        path = out / f"{name}.tar"
        with tarfile.open(path, "w") as tar:
            tar.add(base / member, arcname=member,
                    filter=None if keep is None else (lambda info, keep=keep: info if keep(info.name) else None))
        written[path.name] = path.stat().st_size
    return written


def unpack(files: Path, to: Path) -> Path:
    """Extract every tar in `files` into `to` (the bundled model's layout, with logs/)."""
    tars = sorted(Path(files).glob("*.tar"))
    if not tars:
        raise SystemExit(f"error: no .tar files in {files}; give the folder the GPU run's files came back to")
    to.mkdir(parents=True, exist_ok=True)
    for path in tars:
        with tarfile.open(path) as tar:
            tar.extractall(to, filter="data")
    missing = [p for p in ("sd/unet", "sd/vae", "sd/text_encoder", "classifier") if not (to / p).is_dir()]
    if missing:
        print(f"warning: {', '.join(missing)} missing under {to} (a stage failed: see {to / 'logs' / 'log.txt'})")
    return to


# ---------------------------------------------------------------------------- the run


class Log:
    def __init__(self, path: Path):
        self.path, self.start = path, time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def __call__(self, text: str) -> None:
        line = f"[{self.elapsed():6.1f} s] {text}"
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")


def train(work: Path, out: Path, dry_run: bool, minutes: float, serial: bool) -> int:
    """The whole run: classifier beside, VAE then diffusion here, then packing. Returns the exit status."""
    import torch

    log = Log(work / "logs" / "log.txt")
    timings: dict = {"dry_run": dry_run, "minutes": minutes, "stages": {}}
    if torch.cuda.is_available():
        timings["device"] = torch.cuda.get_device_name()
        torch.set_float32_matmul_precision("high")
    log(f"work {work}, out {out}, device {timings.get('device', 'cpu')}, budget {minutes} min")
    if dry_run:
        sizes = full_size_bytes()
        timings["full_size_bytes"] = sizes
        log("full-size weights (fp32): " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items())
            + f"; bundle {sum(sizes.values()) / 1e6:.1f} MB")
        problems = check_sizes(sizes)
        for problem in problems:
            log(f"SIZE: {problem}")
        if problems:
            return 1
    failed = []
    child = None
    classifier = ["fit", *stage_args("classifier", work, dry_run)]
    if not serial:
        child_log = (work / "logs" / "classifier.txt").open("w")
        child = subprocess.Popen([sys.executable, "-m", "framework.toy.model", *classifier], cwd=ROOT,
                                 stdout=child_log, stderr=subprocess.STDOUT)
        log(f"classifier: started in process {child.pid} (its output: logs/classifier.txt)")
    deadline = minutes * 60 - RESERVE_SECONDS
    plan = {"vae": config_args("vae")["schedule_seconds"], "diffusion": config_args("diffusion")["schedule_seconds"]}
    for stage in ("vae", "diffusion"):
        seconds = plan[stage]
        if stage == "diffusion" and not dry_run:
            setup = 30  # pool read, latents of the pool, CLI and model start-up, the last export
            seconds = max(30.0, min(seconds, deadline - log.elapsed() - setup))
        cost = StepCost(count_step=1, warmup=2) if dry_run else StepCost(count_step=20, warmup=30)
        log(f"{stage}: start, schedule {seconds:.0f} s")
        began = time.perf_counter()
        try:
            run_stage(stage_args(stage, work, dry_run, seconds), cost)
        except Exception as err:  # noqa: BLE001 - record, pack what exists, report at the end
            failed.append(stage)
            log(f"{stage}: FAILED: {type(err).__name__}: {err}\n{traceback.format_exc()}")
        summary = {**cost.summary(), "seconds": time.perf_counter() - began, "schedule_seconds": seconds}
        timings["stages"][stage] = summary
        log(f"{stage}: done in {summary['seconds']:.0f} s, {summary['steps']} steps, "
            f"{summary['seconds_per_step'] or float('nan'):.4f} s/step, FLOPs/step {summary['flops_per_step']}, "
            f"ops/step {summary['ops_per_step']}")
        if stage == "vae" and "vae" in failed:
            break
    began = time.perf_counter()
    if serial:
        try:
            from framework.toy.model.__main__ import main as fit

            fit(classifier)
        except (Exception, SystemExit) as err:  # noqa: BLE001
            failed.append("classifier")
            log(f"classifier: FAILED: {err}\n{traceback.format_exc()}")
    else:
        try:
            code = child.wait(timeout=max(5.0, minutes * 60 - log.elapsed() - 15))
        except subprocess.TimeoutExpired:
            child.kill()
            code = "killed at the time limit"
        if code != 0:
            failed.append("classifier")
        log(f"classifier: exit {code}")
    timings["stages"]["classifier"] = {"seconds": time.perf_counter() - began,
                                       "steps": logged_steps(work / "runs" / "classifier")}
    for stage in STAGES:
        run = work / "runs" / stage
        for name in run.rglob("*"):
            if name.name in ("metrics.csv", "config.yaml", "hparams.yaml"):
                target = work / "logs" / stage / name.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(name.read_bytes())
    timings["failed"] = failed
    timings["seconds"] = log.elapsed()
    (work / "logs" / "timings.json").write_text(json.dumps(timings, indent=2))
    log(f"packing into {out}" + (f"; FAILED stages: {failed}" if failed else ""))
    out.mkdir(parents=True, exist_ok=True)
    written = pack(work, out)
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    for name, size in written.items():
        log(f"  {name}: {size / 2**20:.2f} MiB" + ("  TOO LARGE to come back" if size > FILE_LIMIT else ""))
    log(f"total {log.elapsed():.0f} s")
    return 1 if failed or any(size > FILE_LIMIT for size in written.values()) else 0


# ---------------------------------------------------------------------------- estimate


def estimate(work: Path, steps: int) -> dict:
    """Each stage at full width on the CPU for a few steps at a small batch: seconds, FLOPs and dispatched
    operators per step, scaled to the configs' batches."""
    import torch
    import yaml

    torch.set_num_threads(1)
    rows = {}
    for stage in ("vae", "diffusion", "classifier"):
        data = yaml.safe_load((CONFIGS / f"{stage}.yaml").read_text())["data"]["init_args"]
        batch = 8
        args = [*stage_args(stage, work, False), *DRY["all"], "--trainer.max_steps", str(steps),
                "--data.init_args.batch_size", str(batch)]
        if stage == "classifier":
            args += ["--data.init_args.scenes", str(8 * steps)]
        else:
            args += ["--data.init_args.pool_size", "64", "--data.init_args.num_workers", "0",
                     "--data.init_args.render_workers", "1", "--model.init_args.schedule_seconds", "null"]
        cost = StepCost(count_step=1, warmup=2)
        run_stage(args, cost)
        rows[stage] = {**cost.summary(), "batch": batch, "gpu_batch": data["batch_size"]}
    return rows


def print_estimate(rows: dict) -> None:
    """CPU costs and an H200 estimate per stage (bounds from FLOPs and from per-operator overhead)."""
    peak, launch = 790e12, (5e-6, 10e-6)
    print(f"{'stage':11s} {'CPU s/step':>10s} {'batch':>5s} {'GFLOP/step':>10s} {'CPU GFLOP/s':>11s} {'ops/step':>8s}"
          f" | H200 at its batch: FLOP-bound at 10-30 % of 790 TFLOP/s; operator-bound at 5-10 us an op")
    for stage, r in rows.items():
        scale = r["gpu_batch"] / r["batch"]
        flops = r["flops_per_step"] * scale
        compute = (flops / (0.3 * peak), flops / (0.1 * peak))
        ops = (r["ops_per_step"] * launch[0], r["ops_per_step"] * launch[1])
        low, high = max(compute[0], ops[0]), max(compute[1], ops[1])
        print(f"{stage:11s} {r['cpu_seconds_per_step']:10.3f} {r['batch']:5d} {r['flops_per_step'] / 1e9:10.2f} "
              f"{r['flops_per_step'] / r['cpu_seconds_per_step'] / 1e9:11.1f} {r['ops_per_step']:8d} | batch "
              f"{r['gpu_batch']}: {flops / 1e9:8.1f} GFLOP, {1e3 * compute[0]:.1f}-{1e3 * compute[1]:.1f} ms by FLOPs, "
              f"{1e3 * ops[0]:.1f}-{1e3 * ops[1]:.1f} ms by ops -> {1e3 * low:.0f}-{1e3 * high:.0f} ms/step")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/toymodel/h200_out")),
                        help="where the tars go (default: $OUT)")
    parser.add_argument("--work", type=Path, default=None, help="training folder (default: a fresh one in /tmp)")
    parser.add_argument("--dry-run", action="store_true", help="3 steps per stage, tiny widths, 16 scenes, CPU")
    parser.add_argument("--serial", action="store_true",
                        help="the classifier in this process, after the others (the dry run's default)")
    parser.add_argument("--parallel", action="store_true", help="the classifier in a child process in the dry run too")
    parser.add_argument("--minutes", type=float, default=8.0, help="bound on the whole run (the diffusion stage shrinks)")
    parser.add_argument("--unpack", type=Path, default=None, help="a folder of the tars that came back")
    parser.add_argument("--to", type=Path, default=Path("outputs/toymodel/h200"), help="where --unpack extracts")
    parser.add_argument("--estimate", action="store_true", help="CPU step costs at full width, and an H200 estimate")
    parser.add_argument("--estimate-steps", type=int, default=6)
    args = parser.parse_args(argv)
    if args.unpack is not None:
        to = unpack(args.unpack, args.to)
        print(f"unpacked into {to}; score it with: python -m framework gates --model {to}")
        return 0
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="toymodel-h200-"))
    os.environ.setdefault("ITO_EDIT_CACHE", str(work / "cache"))  # the scene pool is rendered once, here
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_VERBOSITY", "error"), ("WANDB_MODE", "offline")):
        os.environ.setdefault(name, value)
    if args.estimate:
        rows = estimate(work, args.estimate_steps)
        (work / "estimate.json").write_text(json.dumps(rows, indent=2))
        print_estimate(rows)
        return 0
    return train(work, args.out, args.dry_run, args.minutes, args.serial or (args.dry_run and not args.parallel))


if __name__ == "__main__":
    raise SystemExit(main())
