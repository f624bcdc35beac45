"""Stage plugins of the edit procedure besides the inversion: mask estimators, guidance-image generators, decoders.

Each slot of EditModule is typed by a base class here and filled in YAML by `class_path`:
- `mask_estimator` (MaskEstimator): `estimate(engine, state) -> (mask, soft, source)`.
- `guidance_generator` (GuidanceGenerator): `generate(engine, state, level) -> (G latents, {t: g_t})`.
- `decoder` (Decoder): `decode(engine, state) -> y_0`, the final decode; it declares whether it starts
  from the inversion (`uses_inversion`), uses a guidance image (`uses_guidance`) and runs ITO (`uses_ito`).
A stage reads the engine's settings (`engine.sampling`, `engine.mask_cfg`, `engine.ito_cfg`,
`engine.guidance_cfg`) and calls its helpers (`engine.eps`, `engine.ito_hook`, `engine.optimizer`), so
today's YAML keys (`model.mask.threshold`, `model.ito.update_steps` ...) keep their meaning.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F

from framework.ddim import ddim_decode, ddim_invert, noise_encode, seeded_noise
from framework.errors import ConfigError, EditError, warn
from framework.mask_cache import MaskCache, mask_key
from framework.masks import binary_mask, estimate_soft_mask, gaussian_blur, mask_image_size, mask_schedule

if TYPE_CHECKING:
    from framework.engine import EditEngine, EditState

MaskResult = tuple[torch.Tensor, Optional[torch.Tensor], str]  # binary (1, 1, h, w), soft or None, source


# ------------------------------------------------------------------------------------- masks
class MaskEstimator:
    """Base class of mask estimators: the edit region m (1 = edit) on the latent grid."""

    def estimate(self, engine: "EditEngine", state: "EditState") -> MaskResult:
        raise NotImplementedError


def given_mask(request_mask: torch.Tensor, size: tuple[int, int], rule: str) -> torch.Tensor:
    """A user's mask (1, 1, H, W) on the latent grid (1, 1, h, w): 'cover' (any marked pixel) or 'area' (> half)."""
    if rule == "cover":
        return (F.adaptive_max_pool2d((request_mask.float() > 0.5).float(), size) > 0).float()
    return (F.interpolate(request_mask.float(), size=size, mode="area") > 0.5).float()


def warn_degenerate(mask: torch.Tensor, request_id: str, given: bool = False, rule: str = "cover") -> None:
    """Warn about an empty or full edit mask, with the hint that fits where it came from."""
    from framework.masks import mask_area_hint

    area = float(mask.mean())
    if area in (0.0, 1.0):
        warn(f"Edit '{request_id}': {mask_area_hint(area, given, rule)}")


class GivenMask(MaskEstimator):
    """Only the request's own mask (manifest `mask:`); a request without one is an error."""

    def estimate(self, engine: "EditEngine", state: "EditState") -> MaskResult:
        request = state.request
        if request.mask is None:
            raise EditError(f"Edit '{request.id}' has no mask, but the mask estimator is GivenMask: add a `mask:` "
                            "to the request or use framework.stages.NoiseDifferenceMask.")
        mask = given_mask(request.mask, tuple(state.x0.shape[-2:]), engine.mask_cfg.given)
        warn_degenerate(mask, request.id, given=True, rule=engine.mask_cfg.given)
        return mask, None, "given"


class NoMask(MaskEstimator):
    """An empty mask (nothing marked): for methods that do not use one (SDEdit, prompt-to-prompt)."""

    def estimate(self, engine: "EditEngine", state: "EditState") -> MaskResult:
        return torch.zeros_like(state.x0[:, :1]), None, "none"


class NoiseDifferenceMask(MaskEstimator):
    """Eq. 7 (or DiffEdit's variant, by `model.mask` settings) from noise-prediction differences; a given mask wins.

    Settings come from `model.mask` (MaskConfig): seeds, strength, threshold, smoothing, compare_at and
    normalize (the DiffEdit variant), the cost options and the cache."""

    def __init__(self):
        self._store: Optional[MaskCache] = None  # mask.cache_dir, opened on first use

    def estimate(self, engine: "EditEngine", state: "EditState") -> MaskResult:
        request, x0, cfg = state.request, state.x0, engine.mask_cfg
        if request.mask is not None:
            return GivenMask().estimate(engine, state)
        cache = key = soft = None
        source = "estimated"
        if cfg.cache_dir:
            if self._store is None or self._store.folder != Path(cfg.cache_dir):
                self._store = MaskCache(cfg.cache_dir)  # once per run (it creates the folder)
            cache = self._store
            key = mask_key(request, engine.backbone, engine.conditioners, engine.sampling, cfg, state.seed,
                           x0.dtype, x0.device)
            soft = cache.get(key)
            if soft is not None:
                soft, source = soft.to(x0.device, x0.dtype), "cached"
        if soft is None:
            scale = engine.sampling.guidance_scale if cfg.guidance_scale is None else cfg.guidance_scale
            x_mask, sides = self.inputs(engine, state)
            grid = mask_schedule(state.schedule, engine.backbone.scheduler, cfg)
            soft, _ = estimate_soft_mask(x_mask, engine.denoiser, sides.source, sides.edit, grid, cfg, state.seed,
                                         scale, tuple(x0.shape[-2:]))
            if cache is not None:
                cache.put(key, soft)
        mask = binary_mask(soft, cfg.threshold)
        warn_degenerate(mask, request.id)
        return mask, soft[None, None], source

    @staticmethod
    def inputs(engine: "EditEngine", state: "EditState"):
        """x_0 and the condition sides at `mask.resolution`: the input and its maps resized, re-encoded."""
        from framework.engine import Sides

        request = state.request
        size = mask_image_size(*request.image.shape[-2:], engine.mask_cfg.resolution)
        if size == tuple(request.image.shape[-2:]):
            return state.x0, state.sides
        small = lambda image: F.interpolate(image.float(), size=size, mode="area")  # noqa: E731
        low = replace(request, image=small(request.image),
                      source_maps={k: small(v) for k, v in request.source_maps.items()},
                      edit_maps={k: small(v) for k, v in request.edit_maps.items()})
        return engine.backbone.encode_image(low.image), Sides(engine.denoiser, engine.backbone, low, engine.sampling)


# ---------------------------------------------------------------------------- guidance image
class GuidanceGenerator:
    """Base class of guidance-image generators: G under C_EDIT and its trajectory {t: g_t}."""

    def generate(self, engine: "EditEngine", state: "EditState", level: int):
        raise NotImplementedError


class NoiseEncodedGuidance(GuidanceGenerator):
    """G: random-noise encoding of x_0, decode under C_EDIT with preservation-only ITO (Sec. 3.2); then g_t.

    Settings from `model.guidance` (GuidanceConfig). With `refine` (A.5), ITO at lam = 0 decodes G again
    from g_{t_E} towards the input (G's trajectory updated, the input's as the guidance loss's reference);
    that decode starts from G's inversion, so it is inverted with the model's inversion plugin."""

    def generate(self, engine: "EditEngine", state: "EditState", level: int):
        cfg, schedule, x0 = engine.guidance_cfg, state.schedule, state.x0
        noise = seeded_noise(tuple(x0.shape), state.seed + 1, x0.device)
        start = noise_encode(x0, noise, schedule.alpha(schedule.decode_timesteps(level)[0]))
        eps_edit = engine.eps(state.sides.edit, engine.sampling.guidance_scale)
        optimizer = engine.optimizer(1.0, cfg.inner_steps)
        hook = engine.ito_hook(optimizer, cfg.update_steps, state.x_traj, None, engine.loss_mask(state), "guidance")
        visited: dict[int, torch.Tensor] = {}  # G's own decode: the latents the UNet saw at each timestep

        def guidance_step(i: int, t: int, y_t: torch.Tensor) -> torch.Tensor:
            visited[t] = hook(i, t, y_t)
            return visited[t]
        step = guidance_step if cfg.reference == "decode" else hook
        g0 = ddim_decode(start, eps_edit, schedule, level, step, engine.step_callback("guidance"))
        if not cfg.refine:  # g_t is only the guidance loss's reference: the trajectory is all it needs
            eps_invert = engine.eps(state.sides.edit, engine.sampling.inversion_guidance_scale)
            g_traj = ddim_invert(g0, eps_invert, schedule, state.n_final)
            # guidance.reference 'decode': G's decode where it visited, its inversion elsewhere
            g_traj.update({t: y for t, y in visited.items() if t in g_traj})
            return g0, g_traj
        job = engine.inversion_job(state.sides.edit, state.sides.edit, schedule, state.n_final, state.n_final)
        inverted = engine.inversion.invert(g0, job)
        optimizer = engine.optimizer(0.0, cfg.refine_inner_steps)
        start = inverted.trajectory[schedule.decode_timesteps(state.n_final)[0]]
        g0 = ddim_decode(start, engine.eps(state.sides.edit, engine.sampling.guidance_scale, inverted), schedule,
                         state.n_final,
                         engine.ito_hook(optimizer, cfg.refine_update_steps, inverted.trajectory, state.x_traj,
                                         engine.loss_mask(state), "refine"),
                         after_step=engine.corrections(inverted))
        return g0, engine.inversion.trajectory(g0, job)


# ----------------------------------------------------------------------------- final decode
class Decoder:
    """Base class of final decodes: y_0 from the state."""

    uses_inversion = True  # starts from the inversion trajectory
    uses_guidance = False  # reads a guidance image's trajectory
    uses_ito = False  # runs ITO (t_u and k apply)

    def decode(self, engine: "EditEngine", state: "EditState") -> torch.Tensor:
        raise NotImplementedError


class ITODecode(Decoder):
    """The method (Eq. 6): decode from x_{t_E} under C_EDIT; at each of the first t_u steps, k optimiser
    steps on y_t with lam * L_pres + (1 - lam) * L_guid. Settings from `model.ito`: lam may follow a schedule
    over the ITO steps (`lam_end`); the steps after t_u may blend the background back onto the inversion
    (`blend`, `feather`) and use another CFG scale outside the mask (`outside_guidance_scale`)."""

    uses_guidance = True
    uses_ito = True

    def decode(self, engine: "EditEngine", state: "EditState") -> torch.Tensor:
        cfg, inverted = engine.ito_cfg, state.inverted
        x_traj, t_u = inverted.trajectory, cfg.update_steps
        optimizer = engine.optimizer(state.lam, cfg.inner_steps)
        start = x_traj[state.schedule.decode_timesteps(state.n_final)[0]]
        first = 1 if cfg.first_step == "skip" else 0  # y_t = x_t at step 0: nothing to preserve yet
        lam_at = None if cfg.lam_end is None else linear_lam(state.lam, cfg.lam_end, first, t_u - 1)
        ito = engine.ito_hook(optimizer, t_u, x_traj, state.g_traj, engine.loss_mask(state), first=first,
                              lam_at=lam_at)
        keep = feathered(grown(state.mask, cfg.blend_margin), cfg.feather)  # (1, 1, h, w): 0 = the input's latents
        blend = cfg.blend == "after"
        if blend:  # the blend's weight: lam where ITO left off, unless set (outside the mask: w x_t + (1 - w) y_t)
            weight = cfg.blend_weight
            if weight is None:
                weight = state.lam if lam_at is None else lam_at(t_u - 1)
            keep = 1 - weight * (1 - keep)

        def before_step(i: int, t: int, y_t: torch.Tensor) -> torch.Tensor:
            y_t = ito(i, t, y_t)
            return blend_outside(y_t, x_traj[t], keep) if blend and i >= t_u else y_t

        eps = engine.eps(state.sides.edit, engine.sampling.guidance_scale, inverted)
        if cfg.outside_guidance_scale is not None:
            eps = self.outside_guidance(engine, state, feathered(state.mask, cfg.feather), eps)
        y0 = ddim_decode(start, eps, state.schedule, state.n_final, before_step, engine.step_callback("final"),
                         engine.corrections(inverted))
        return blend_outside(y0, state.x0, keep) if blend else y0

    @staticmethod
    def outside_guidance(engine: "EditEngine", state: "EditState", keep: torch.Tensor, eps):
        """eps with CFG scale ito.outside_guidance_scale outside the mask in the steps after t_u (one UNet batch:
        the scale is a map)."""
        inside = engine.sampling.guidance_scale
        scale = keep * inside + (1 - keep) * engine.ito_cfg.outside_guidance_scale  # (1, 1, h, w)
        after = set(state.schedule.decode_timesteps(state.n_final)[engine.ito_cfg.update_steps:])
        mapped = engine.eps(state.sides.edit, scale, state.inverted)
        return lambda x, t: mapped(x, t) if t in after else eps(x, t)


def linear_lam(lam: float, lam_end: float, first: int, last: int):
    """lam_at(i): lam at step `first`, lam_end at step `last`, linear between (ito.lam_end)."""
    span = max(1, last - first)
    return lambda i: lam + (lam_end - lam) * min(1.0, max(0.0, (i - first) / span))


def grown(mask: torch.Tensor, margin: int) -> torch.Tensor:
    """A binary mask (1, 1, h, w) dilated by `margin` pixels (a square of side 2 margin + 1)."""
    return F.max_pool2d(mask, 2 * margin + 1, stride=1, padding=margin) if margin > 0 else mask


def feathered(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """m * blur(m, sigma) for a binary mask (1, 1, h, w): a soft edge inside the edit region only, 0 outside it."""
    if sigma <= 0:
        return mask
    return mask * gaussian_blur(mask[0, 0], sigma)[None, None]


def blend_outside(y: torch.Tensor, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """keep * y + (1 - keep) * x: the decode inside the mask, the input's latents outside (DiffEdit's blend)."""
    return keep * y + (1 - keep) * x.to(y.dtype)


class MaskBlendDecode(Decoder):
    """DiffEdit's decode (Couairon et al. 2022): after each step, outside the mask the latents are replaced by
    the inversion at the same noise level, y_{t-1} <- m y_{t-1} + (1 - m) x_{t-1}, and by x_0 at the end.

    `alignment: diffusers` reproduces diffusers' StableDiffusionDiffEditPipeline, which blends the result of
    the step from t with the inverted latents at t (one level noisier), and with x_1 instead of x_0 at the end;
    kept for cross-checking against that implementation."""

    def __init__(self, alignment: str = "exact"):
        """
        Args:
            alignment: 'exact' (blend with the same noise level) or 'diffusers' (as diffusers' pipeline).
        """
        if alignment not in ("exact", "diffusers"):
            raise ConfigError(f"DiffEdit.alignment must be 'exact' or 'diffusers', got '{alignment}'.")
        self.alignment = alignment

    def decode(self, engine: "EditEngine", state: "EditState") -> torch.Tensor:
        schedule, mask, inverted = state.schedule, state.mask, state.inverted
        x_traj = inverted.trajectory
        timesteps = schedule.decode_timesteps(state.n_final)
        lag = 1 if self.alignment == "diffusers" else 0

        def blend(i: int, t: int, y: torch.Tensor) -> torch.Tensor:
            return y if i == 0 else blend_outside(y, x_traj[timesteps[i - lag]], mask)

        eps = engine.eps(state.sides.edit, engine.sampling.guidance_scale, inverted)
        y0 = ddim_decode(x_traj[timesteps[0]], eps, schedule, state.n_final, blend, engine.step_callback("final"),
                         engine.corrections(inverted))
        last = x_traj[timesteps[-1]] if lag else state.x0
        return blend_outside(y0, last, mask)


class NoiseEncodedDecode(Decoder):
    """ControlNet-SDEdit's decode (Meng et al. 2021): random-noise encoding of x_0 to the encode ratio, then
    DDIM decoding under the edit condition (ControlNets included). No inversion, mask or ITO."""

    uses_inversion = False

    def decode(self, engine: "EditEngine", state: "EditState") -> torch.Tensor:
        schedule, x0 = state.schedule, state.x0
        noise = seeded_noise(tuple(x0.shape), state.seed + 1, x0.device)
        start = noise_encode(x0, noise, schedule.alpha(schedule.decode_timesteps(state.n_final)[0]))
        eps = engine.eps(state.sides.edit, engine.sampling.guidance_scale)
        return ddim_decode(start, eps, schedule, state.n_final, None, engine.step_callback("final"))
