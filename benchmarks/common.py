"""Shared pieces of the benchmarks: our edit stages, diffusers' counterparts, counters, timing, tables.

Our stages are the engine's own (framework.core.procedure.EditEngine and its default plugins: DDIM inversion,
the Eq. 7 mask, the noise-encoded guidance image, the ITO decode), called one at a time on an
EditState, so a benchmark times exactly what `EditModule.edit` runs; diffusers' stages call
`StableDiffusionDiffEditPipeline` and `StableDiffusionControlNetImg2ImgPipeline` built from the very
same modules.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from conditioners.base import ConditionSide
from framework.core.denoiser import Conditioning
from framework.core.procedure import EditEngine, EditState, Sides
from framework.core.settings import GuidanceConfig, ITOConfig, MaskConfig, SamplingConfig, paper_literal_mask, step_count
from framework.io.manifests import EditRequest
from framework.stages import ITODecode, NoiseDifferenceMask, NoiseEncodedGuidance, method_slots
from framework.stages.inversions import Inverted
from losses.guidance import CosineGuidance
from losses.preservation import MaskedMSEPreservation

ROOT = Path(__file__).resolve().parents[1]
# Every setting is the product's default, read from its settings (nothing restated here).
SAMPLING, ITO, GUIDANCE = SamplingConfig(), ITOConfig(), GuidanceConfig()
STEPS = SAMPLING.steps
CFG = SAMPLING.guidance_scale
INVERSION_CFG = SAMPLING.inversion_guidance_scale
T_U = step_count(ITO.update_steps, STEPS)  # t_u in steps of the default decode (a fraction of them by default)
K = ITO.inner_steps
LAM = 0.6  # not the default (1: no guidance image): the paper's Fig. 1 setting, so the guidance stage runs and is timed
PAPER_MASK = paper_literal_mask()
MASK_SEEDS = PAPER_MASK.seeds  # DiffEdit's generate_mask runs the paper's n (its own default is 10 too)
MASK_STRENGTH = PAPER_MASK.strength  # Eq. 7 unreduced: n 10, full grid, CFG; last step, min-max, tau 0.1, sigma 1
DIFFEDIT_MASK = paper_literal_mask(compare_at="first", normalize="mean_ratio", threshold=0.5)  # DiffEdit's mask variant


# ------------------------------------------------------------------------------------ counting
class EvalCounter:
    """Counts the samples (batch rows) and calls of a module's forward, whoever calls it."""

    def __init__(self, module: Optional[torch.nn.Module]):
        self.samples = 0
        self.calls = 0
        self._handle = None
        if module is not None:
            self._handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample")
        self.samples += int(sample.shape[0])
        self.calls += 1

    def reset(self) -> None:
        self.samples = self.calls = 0

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()


def max_rss() -> int:
    """Peak resident memory of this process so far, in bytes (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    """Resident memory of this process now, in bytes (/proc/self/statm; 0 where it is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


def write_json(path: Optional[Path], results: dict) -> None:
    """Write a benchmark's results as JSON (nothing when `path` is None), creating its folder."""
    if path is None:
        return
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageClock:
    """Runs stages one by one and records each one's seconds, UNet / ControlNet sample-evaluations and
    peak GPU memory in `stages[name]`; with `rss`, also the process's peak resident memory after the
    stage ('maxrss', bytes: a high-water mark that never falls, the CPU's stand-in for peak memory)."""

    def __init__(self, device: torch.device, unet_counter: Optional["EvalCounter"] = None,
                 cn_counter: Optional["EvalCounter"] = None, rss: bool = False):
        self.device, self.unet_counter, self.cn_counter, self.rss = device, unet_counter, cn_counter, rss
        self.stages: dict = {}

    def __call__(self, name: str, fn):
        for counter in (self.unet_counter, self.cn_counter):
            if counter is not None:
                counter.reset()
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        sync(self.device)
        start = time.perf_counter()
        value = fn()
        sync(self.device)
        self.stages[name] = {"s": time.perf_counter() - start,
                             "peak": torch.cuda.max_memory_allocated(self.device) if cuda else None}
        if self.unet_counter is not None:
            self.stages[name]["unet"] = self.unet_counter.samples
        if self.cn_counter is not None:
            self.stages[name]["cn"] = self.cn_counter.samples
        if self.rss:
            self.stages[name]["maxrss"] = max_rss()
        return value


@dataclass
class Sample:
    seconds: float  # wall clock
    unet: int
    controlnet: int
    peak_bytes: Optional[int] = None
    cpu_seconds: Optional[float] = None  # CPU time of this process (all its threads)


@dataclass
class Task:
    """One timed unit of work; samples collect over repeats."""

    name: str
    fn: Callable[[], object]
    side: str  # 'ours' or 'diffusers'
    samples: list[Sample] = field(default_factory=list)
    result: object = None

    def median(self) -> Optional[Sample]:
        if not self.samples:
            return None
        peaks = [s.peak_bytes for s in self.samples if s.peak_bytes is not None]
        return Sample(statistics.median(s.seconds for s in self.samples), self.samples[-1].unet,
                      self.samples[-1].controlnet, max(peaks) if peaks else None,
                      statistics.median(s.cpu_seconds for s in self.samples))


def run_task(task: Task, device: torch.device, unet_counter: EvalCounter, cn_counter: EvalCounter,
             record: bool = True) -> Sample:
    """Run one task once, timed (synchronised on CUDA), counting UNet / ControlNet samples."""
    unet_counter.reset()
    cn_counter.reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    task.result = task.fn()
    sync(device)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    sample = Sample(seconds, unet_counter.samples, cn_counter.samples, peak, cpu)
    if record:
        task.samples.append(sample)
    return sample


def interleaved(tasks: list[Task], repeats: int, device, unet_counter, cn_counter,
                deadline: Optional[float] = None, log: Callable[[str], None] = print) -> None:
    """Repeat every task `repeats` times, alternating the order (forward, then backward) per repeat,
    so ours and diffusers' runs share the machine's state and drift evenly."""
    for rep in range(repeats):
        order = tasks if rep % 2 == 0 else list(reversed(tasks))
        for task in order:
            if deadline is not None and time.perf_counter() > deadline and task.samples:
                continue  # out of time: keep what we have (at least one sample per task)
            s = run_task(task, device, unet_counter, cn_counter)
            log(f"  rep {rep + 1}/{repeats} {task.side:9s} {task.name:28s} {s.seconds:8.3f} s "
                f"(cpu {s.cpu_seconds:8.3f})  UNet {s.unet:4d}  CN {s.controlnet:4d}")


# ------------------------------------------------------------------------------------ inputs
def toy_request(size: int, seed: int = 0):
    """A toy-world text + pose edit: image, prompts and pose maps as (1, 3, H, W) tensors in [0, 1]."""
    from framework.toy.world.edits import make_edit

    pair = make_edit(seed, "text_pose", size)
    # contiguous, as framework.io.manifests loads images (a permuted view would reach the convolutions channels-last)
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].contiguous().float() / 255  # noqa: E731
    return dict(image=to_t(pair.source_image), source_prompt=pair.source_prompt, edit_prompt=pair.edit_prompt,
                source_pose=to_t(pair.source_maps["pose"]), edit_pose=to_t(pair.edit_maps["pose"]))


# ------------------------------------------------------------------------------------ our stages
class OurStages:
    """The engine's stages at the paper's steps, t_u, k and CFG scales, on one backbone + conditioners, one stage
    per call. The losses and ITO options are the project's defaults (docs/lam.md), not the printed paper's: they
    change no UNet work, which is what these benchmarks time."""

    def __init__(self, backbone, conditioners, device, steps: int = STEPS, unet_chunk_size=None):
        self.backbone = backbone
        self.conditioners = list(conditioners)
        self.device = device
        self.engine = EditEngine(
            backbone, self.conditioners, [MaskedMSEPreservation(), CosineGuidance()],
            **method_slots(ito=ITOConfig(update_steps=min(T_U, steps)),
                           guidance=GuidanceConfig(update_steps=min(step_count(GUIDANCE.update_steps, steps), steps))),
            sampling=SamplingConfig(steps=steps, guidance_scale=CFG, inversion_guidance_scale=INVERSION_CFG),
            unet_chunk_size=unet_chunk_size)
        self.denoiser = self.engine.denoiser
        self.steps = steps
        self.request: Optional[EditRequest] = None  # the last encoded one (the mask reads its image size)

    def sides(self, prompt: str, maps: dict) -> tuple[Conditioning, Conditioning]:
        """One side's (cond, uncond) pair, as the engine's Sides encodes it."""
        return Sides.encode_pair(self.denoiser, self.backbone, ConditionSide(prompt, maps),
                                 self.engine.sampling.negative_prompt)

    def _state(self, x0, source=None, edit=None, x_traj=None, mask=None, g_traj=None, lam: float = LAM,
               seed: int = 0) -> EditState:
        state = self.engine.start(self.request, lam, seed)
        state.x0, state.sides = x0, Sides.of(source, edit)
        state.inverted = None if x_traj is None else Inverted(x0, x_traj)
        state.mask, state.g_traj = mask, g_traj
        return state

    def encode(self, image, source_prompt, edit_prompt, source_maps, edit_maps):
        """Encode stage: the condition sides and x0 (VAE posterior mean)."""
        for c in self.conditioners:
            if hasattr(c, "clear"):
                c.clear()  # the text conditioner caches prompts: time a cold encode
        self.request = EditRequest("benchmark", image, source_prompt, edit_prompt, source_maps, edit_maps, None, 0,
                                   None, {})
        state = self.engine.start(self.request, LAM, 0)
        self.engine.encode(state)
        return state.x0, state.sides.source, state.sides.edit

    def n_final(self) -> int:
        return self.engine.start(self.request, LAM, 0).n_final

    def invert(self, x0, side, scale: float = INVERSION_CFG):
        """The inversion stage (the engine's default plugin, DDIM) under `side`: {t: x_t}."""
        self.engine.sampling = SamplingConfig(**{**vars(self.engine.sampling), "inversion_guidance_scale": scale})
        state = self._state(x0, side)
        self.engine.invert(state)
        return state.x_traj

    def mask(self, x0, src, edit, cfg: MaskConfig, seed: int = 0, scale: float = CFG):
        """The mask stage (Eq. 7 by `cfg`, its own grid, seed groups and early stop) at full resolution."""
        self.engine.mask_estimator = NoiseDifferenceMask(**{**asdict(cfg), "guidance_scale": scale})
        state = self._state(x0, src, edit, seed=seed)
        self.engine.estimate_mask(state)
        return state.mask

    def guidance(self, x0, x_traj, mask, edit, seed: int = 0, scale: float = CFG,
                 update_steps: int = step_count(GUIDANCE.update_steps, STEPS)):
        """The guidance-image stage: random-noise encoding, decode under C_EDIT with lam = 1 ITO, invert G."""
        self.engine.guidance_generator = NoiseEncodedGuidance(update_steps=update_steps)
        state = self._state(x0, None, edit, x_traj, mask, seed=seed)
        self.engine.make_guidance(state)
        return state.g0, state.g_traj

    def final(self, x_traj, g_traj, mask, edit, lam: float = LAM, update_steps: int = T_U, scale: float = CFG):
        """The final decode from x_{t_E} under C_EDIT with ITO on the first t_u steps (Eq. 6)."""
        self.engine.decoder = ITODecode(update_steps=update_steps)
        x0 = next(iter(x_traj.values()))
        return self.engine.final(self._state(x0, None, edit, x_traj, mask, g_traj, lam))

    def ito_alone(self, x_traj, g_traj, mask, lam: float = LAM, update_steps: int = T_U):
        """Only the optimiser steps of a final decode (t_u of them, k each), on the trajectory's latents."""
        optimizer = self.engine.tools.optimizer(lam, K, ITOConfig())
        for t in sorted(x_traj, reverse=True)[:update_steps]:
            optimizer(x_traj[t], x_t=x_traj[t], g_t=g_traj[t], mask=mask, t=t)

    def decode(self, y0):
        return self.backbone.decode_latents(y0)


# ------------------------------------------------------------------------------------ diffusers
class DiffusersStages:
    """DiffEdit and ControlNet img2img built from the same modules (same UNet, VAE, text encoder)."""

    def __init__(self, backbone, controlnet, device, steps: int = STEPS):
        from diffusers import (
            DDIMInverseScheduler,
            DDIMScheduler,
            StableDiffusionControlNetImg2ImgPipeline,
            StableDiffusionDiffEditPipeline,
        )

        config = backbone.scheduler.config
        common = dict(vae=backbone.vae, text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer,
                      unet=backbone.unet, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        self.diffedit = StableDiffusionDiffEditPipeline(scheduler=DDIMScheduler.from_config(config),
                                                        inverse_scheduler=DDIMInverseScheduler.from_config(config),
                                                        **common)
        self.diffedit.set_progress_bar_config(disable=True)
        self.img2img = None
        if controlnet is not None:
            self.img2img = StableDiffusionControlNetImg2ImgPipeline(
                controlnet=controlnet, scheduler=DDIMScheduler.from_config(config), **common)
            self.img2img.set_progress_bar_config(disable=True)
        self.device = device
        self.steps = steps

    def generator(self, seed: int = 0):
        return torch.Generator(device=self.device).manual_seed(seed)

    def invert(self, image, prompt):
        """DDIM inversion over the full schedule, guidance 1 (as ours); image or latents (b, 4, h, w)."""
        return self.diffedit.invert(prompt=prompt, image=image, num_inference_steps=self.steps, inpaint_strength=1.0,
                                    guidance_scale=INVERSION_CFG, generator=self.generator()).latents

    def generate_mask(self, image, source_prompt, edit_prompt):
        return self.diffedit.generate_mask(image=image, target_prompt=edit_prompt, source_prompt=source_prompt,
                                           num_maps_per_mask=MASK_SEEDS, mask_encode_strength=MASK_STRENGTH,
                                           num_inference_steps=self.steps, guidance_scale=CFG,
                                           generator=self.generator())

    def call(self, prompt, mask, inverted, output_type: str = "latent"):
        return self.diffedit(prompt=prompt, mask_image=mask, image_latents=inverted, inpaint_strength=1.0,
                             num_inference_steps=self.steps, guidance_scale=CFG, generator=self.generator(),
                             output_type=output_type).images

    def cn_img2img(self, image, control, prompt, height: int, width: int, output_type: str = "latent"):
        """ControlNet img2img from full noise (strength 1), the same steps and CFG as our decodes."""
        return self.img2img(prompt=prompt, image=image, control_image=control, height=height, width=width,
                            strength=1.0, num_inference_steps=self.steps, guidance_scale=CFG,
                            generator=self.generator(), output_type=output_type).images

    def full(self, image, source_prompt, edit_prompt, output_type: str = "latent"):
        """The whole DiffEdit procedure: generate_mask + invert + __call__."""
        mask = self.generate_mask(image, source_prompt, edit_prompt)
        inverted = self.invert(image, source_prompt)
        return self.call(edit_prompt, mask, inverted, output_type)


# ------------------------------------------------------------------------------------ the comparison
def stage_tasks(ours: OurStages, theirs: DiffusersStages, req: dict, size: int, log=print):
    """The per-stage tasks (ours and diffusers', like-for-like where possible) and the rows pairing them.

    Inputs of later stages are computed once first, which also warms every kernel shape up.
    Diffusers' stages get the same VAE latents x0 as ours, so each row times the denoising loop.
    """
    device = ours.device
    image = req["image"].to(device)
    src_pose, edit_pose = req["source_pose"].to(device), req["edit_pose"].to(device)
    sp, ep = req["source_prompt"], req["edit_prompt"]
    t0 = time.perf_counter()
    x0, src_p, edit_p = ours.encode(image, sp, ep, {"pose": src_pose}, {"pose": edit_pose})
    src_t, edit_t = ours.sides(sp, {}), ours.sides(ep, {})
    x_traj_t, x_traj_p = ours.invert(x0, src_t), ours.invert(x0, src_p)
    mask_t = ours.mask(x0, src_t, edit_t, DIFFEDIT_MASK)
    mask_p = ours.mask(x0, src_p, edit_p, DIFFEDIT_MASK)
    g_traj_t = ours.guidance(x0, x_traj_t, mask_t, edit_t)[1]
    g_traj_p = ours.guidance(x0, x_traj_p, mask_p, edit_p)[1]
    d_inverted = theirs.invert(x0, sp)
    d_mask = theirs.generate_mask(x0, sp, ep)
    theirs.cn_img2img(x0, edit_pose, ep, size, size)
    sync(device)
    log(f"[{size} px] stage inputs and warm-up: {time.perf_counter() - t0:.1f} s")

    T = Task
    tasks = [
        T("encode", lambda: ours.encode(image, sp, ep, {"pose": src_pose}, {"pose": edit_pose}), "ours"),
        T("inversion[text]", lambda: ours.invert(x0, src_t), "ours"),
        T("diffedit.invert", lambda: theirs.invert(x0, sp), "diffusers"),
        T("inversion[text+pose]", lambda: ours.invert(x0, src_p), "ours"),
        T("mask[first,text]", lambda: ours.mask(x0, src_t, edit_t, DIFFEDIT_MASK), "ours"),
        T("diffedit.generate_mask", lambda: theirs.generate_mask(x0, sp, ep), "diffusers"),
        T("mask[last,text]", lambda: ours.mask(x0, src_t, edit_t, PAPER_MASK), "ours"),
        T("guidance[text+pose]", lambda: ours.guidance(x0, x_traj_p, mask_p, edit_p), "ours"),
        T("cn_img2img+diffedit.invert",
          lambda: theirs.invert(theirs.cn_img2img(x0, edit_pose, ep, size, size), ep), "diffusers"),
        T("final[text,ito]", lambda: ours.final(x_traj_t, g_traj_t, mask_t, edit_t), "ours"),
        T("diffedit.__call__", lambda: theirs.call(ep, d_mask, d_inverted), "diffusers"),
        T("final[text,no-ito]", lambda: ours.final(x_traj_t, g_traj_t, mask_t, edit_t, update_steps=0), "ours"),
        T("final[text+pose,ito]", lambda: ours.final(x_traj_p, g_traj_p, mask_p, edit_p), "ours"),
        T("cn_img2img", lambda: theirs.cn_img2img(x0, edit_pose, ep, size, size), "diffusers"),
        T("final[text+pose,no-ito]",
          lambda: ours.final(x_traj_p, g_traj_p, mask_p, edit_p, update_steps=0), "ours"),
        T("ito-alone", lambda: ours.ito_alone(x_traj_p, g_traj_p, mask_p), "ours"),
    ]
    R = Row
    rows = [
        R("encode", "VAE encode + prompts + maps", "encode", None, "-", "diffusers folds it into each call"),
        R("inversion", "text", "inversion[text]", "diffedit.invert", "DiffEdit.invert", "yes"),
        R("inversion", "text+pose (ControlNet)", "inversion[text+pose]", "diffedit.invert", "DiffEdit.invert",
          "no: + ControlNet"),
        R("mask", "first (DiffEdit variant), text", "mask[first,text]", "diffedit.generate_mask",
          "DiffEdit.generate_mask", "yes"),
        R("mask", "last (Eq. 7, paper), text", "mask[last,text]", "diffedit.generate_mask",
          "DiffEdit.generate_mask", "no: decodes 12 steps"),
        R("guidance", f"text+pose, lam=1 ITO t_u={step_count(GUIDANCE.update_steps, STEPS)}", "guidance[text+pose]", "cn_img2img+diffedit.invert",
          "CN img2img + DiffEdit.invert", "~: our invert + ControlNet"),
        R("final", f"text, ITO t_u={T_U}", "final[text,ito]", "diffedit.__call__", "DiffEdit.__call__", "yes"),
        R("final", "text, ITO off (t_u=0)", "final[text,no-ito]", "diffedit.__call__", "DiffEdit.__call__", "yes"),
        R("final", f"text+pose, ITO t_u={T_U}", "final[text+pose,ito]", "cn_img2img", "CN img2img", "yes"),
        R("final", "text+pose, ITO off (t_u=0)", "final[text+pose,no-ito]", "cn_img2img", "CN img2img", "yes"),
        R("final", f"ITO steps alone (t_u={T_U}, k={K})", "ito-alone", None, "-", "-"),
    ]
    return tasks, rows


def ito_overhead(tasks: dict[str, Task]) -> dict[str, float]:
    """Final decode with ITO (t_u = 15) against without (t_u = 0): the same UNet evaluations."""
    def pct(on, off, attr):
        a, b = getattr(tasks[on].median(), attr), getattr(tasks[off].median(), attr)
        return round(100 * (a - b) / b, 1) if a is not None and b else None
    out = {f"{cond}{suffix}": pct(f"final[{cond},ito]", f"final[{cond},no-ito]", attr)
           for cond in ("text", "text+pose") for suffix, attr in (("", "seconds"), (" cpu", "cpu_seconds"))}
    if "ito-alone" in tasks:  # the optimiser steps timed on their own: a noise-free overhead estimate
        alone, base = tasks["ito-alone"].median(), tasks["final[text+pose,no-ito]"].median()
        out["alone"] = round(100 * alone.seconds / base.seconds, 1)
        if alone.cpu_seconds is not None and base.cpu_seconds:
            out["alone cpu"] = round(100 * alone.cpu_seconds / base.cpu_seconds, 1)
    return out


# ------------------------------------------------------------------------------------ tables
@dataclass
class Row:
    stage: str
    variant: str
    ours: str  # task names
    theirs: Optional[str]
    diffusers_label: str
    like_for_like: str  # 'yes' or why not


def row_dict(row: Row, tasks: dict[str, Task]) -> dict:
    o = tasks[row.ours].median()
    d = tasks[row.theirs].median() if row.theirs else None
    out = {"stage": row.stage, "variant": row.variant, "diffusers": row.diffusers_label,
           "like_for_like": row.like_for_like,
           "ours_s": round(o.seconds, 4), "ours_cpu_s": round(o.cpu_seconds, 4), "ours_unet": o.unet,
           "ours_controlnet": o.controlnet, "ours_runs": [round(s.seconds, 4) for s in tasks[row.ours].samples]}
    if o.peak_bytes is not None:
        out["ours_peak_gib"] = round(o.peak_bytes / 2 ** 30, 3)
    if d is not None:
        out.update(diffusers_s=round(d.seconds, 4), diffusers_cpu_s=round(d.cpu_seconds, 4), diffusers_unet=d.unet,
                   diffusers_controlnet=d.controlnet,
                   diffusers_runs=[round(s.seconds, 4) for s in tasks[row.theirs].samples],
                   ratio=round(o.seconds / d.seconds, 3) if d.seconds > 0 else None,
                   ratio_cpu=round(o.cpu_seconds / d.cpu_seconds, 3) if d.cpu_seconds > 0 else None)
        # Ratio of the runs made side by side in the same repeat, then the median: robust to drift in load.
        pairs = [a.seconds / b.seconds for a, b in zip(tasks[row.ours].samples, tasks[row.theirs].samples)
                 if b.seconds > 0]
        out["ratio_paired"] = round(statistics.median(pairs), 3) if pairs else None
        pairs = [a.cpu_seconds / b.cpu_seconds for a, b in zip(tasks[row.ours].samples, tasks[row.theirs].samples)
                 if a.cpu_seconds is not None and b.cpu_seconds]
        out["ratio_paired_cpu"] = round(statistics.median(pairs), 3) if pairs else None
        if d.peak_bytes is not None:
            out["diffusers_peak_gib"] = round(d.peak_bytes / 2 ** 30, 3)
    return out


def format_table(rows: list[dict], title: str, memory: bool = False, cpu: bool = False) -> str:
    """Markdown table of row dicts; `memory` adds peak GPU GiB, `cpu` adds process CPU seconds and their ratio."""
    f3 = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    f2 = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    cols = [("stage", lambda r: r["stage"]), ("variant", lambda r: r["variant"]),
            ("ours s", lambda r: f3(r["ours_s"]))]
    if cpu:
        cols.append(("ours cpu s", lambda r: f3(r.get("ours_cpu_s"))))
    cols += [("UNet", lambda r: str(r["ours_unet"])), ("CN", lambda r: str(r["ours_controlnet"]))]
    if memory:
        cols.append(("ours GiB", lambda r: f2(r.get("ours_peak_gib"))))
    cols += [("diffusers", lambda r: r.get("diffusers") or "-"), ("diff s", lambda r: f3(r.get("diffusers_s")))]
    if cpu:
        cols.append(("diff cpu s", lambda r: f3(r.get("diffusers_cpu_s"))))
    cols += [("UNet", lambda r: str(r.get("diffusers_unet", "-"))),
             ("CN", lambda r: str(r.get("diffusers_controlnet", "-")))]
    if memory:
        cols.append(("diff GiB", lambda r: f2(r.get("diffusers_peak_gib"))))
    cols.append(("ratio", lambda r: f2(r.get("ratio"))))
    if cpu:
        cols.append(("cpu ratio", lambda r: f2(r.get("ratio_cpu"))))
    if cpu:
        cols.append(("cpu paired", lambda r: f2(r.get("ratio_paired_cpu"))))
    else:
        cols.append(("paired", lambda r: f2(r.get("ratio_paired"))))
    cols.append(("like-for-like", lambda r: r["like_for_like"]))
    head = [c[0] for c in cols]
    lines = [[fn(r) for _, fn in cols] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [title, fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt(c) for c in lines]
    return "\n".join(out)
