"""Quality measures of a trained toy model, on held-out toy-world scenes (seeds below one million).

Used by `python -m framework gates`. Every measure reads images the way the evaluation does:
with the toy classifier at a box, or with masks of the world's palette.

- VAE: PSNR of reconstructions; classifier accuracy on reconstructions vs on renders.
- Inversion: DDIM inversion then reconstruction (25 steps, guidance 1) against the render.
- Text: samples from single-object captions; the object is found as the largest saturated region
  and the classifier reads its colour and shape.
- Pose: samples from a pose map; IoU of the figure's pixels (those whose nearest colour of the world is
  a figure colour) with the rendered figure, against the same IoU for a mismatched figure (chance) and
  for the VAE's reconstruction of the true render (what the decoder allows), and the classifier's
  arm-pose class.
- Scribble: samples from a scribble map (flat-background scenes); IoU of the sample's outlines with
  the map's strokes, both dilated by one pixel (a one-pixel tolerance), against a mismatched map.
- Two-object text edits: the method's edit (the quickstart's settings) of one object's colour or shape
  in a scene of two or three; the classifier reads whether the named object took the new class and
  whether the others kept theirs. A model that does not bind a word to its object changes both or
  neither.

Diagnostics of the prompted shape (not gates): `shape_by_noise_level` starts the sampler from the
render itself noised to a level and reads the shape drawn (where along the schedule the shape is
lost), with the confusion matrix; `caption_distances` measures how far apart the text encoder puts
captions that differ in one word (a shape word against a colour word).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from framework.core.masks import mask_iou as iou
from framework.toy.model.classifier import COLOUR_NAMES, ToyClassifier, accuracy_on_scenes, pose_class
from framework.toy.model.data import images_to_tensor
from framework.toy.world import caption, condition_maps, render, sample_scene
from framework.toy.world.conditions import outline
from framework.toy.world.scenes import (
    COLOURS,
    SHAPES,
    SHIRT,
    SKIN,
    STRIPE_COLOURS,
    TROUSERS,
    figure_box,
    figure_mask,
)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> (1, 3, H, W) in [0, 1]."""
    return images_to_tensor(image)[None]


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> uint8 HxWx3."""
    return (image[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().cpu().numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2) / 255 ** 2
    return float(10 * np.log10(1 / max(mse, 1e-12)))


@torch.no_grad()
def background_tint(sd, levels: Sequence[int] = (80, 110, 140, 170, 200), scenes: int = 8) -> dict[int, np.ndarray]:
    """The VAE's colour error on flat greys: per grey level, the signed mean RGB error (0-1) of its round trip on
    the background pixels of held-out scenes (seeds 0..scenes-1) redrawn on that grey. (A whole-image flat grey is
    no toy scene: the VAE's group norms see zero variance there.)"""
    from dataclasses import replace

    from framework.toy.world.scenes import Background

    out = {}
    for level in levels:
        errors = []
        for seed in range(scenes):
            image, masks = render(replace(sample_scene(seed, 64), background=Background(kind="flat", grey=level)), 64)
            back = to_uint8(sd.decode_latents(sd.encode_image(to_tensor(image))))
            errors.append((back.astype(np.float64) - image)[np.asarray(masks["background"], bool)] / 255)
        out[level] = np.concatenate(errors).mean(axis=0)
    return out


def dilate(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Binary dilation with a (2r+1)^2 square."""
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, np.ones((2 * radius + 1,) * 2, bool))


def saturated_box(image: np.ndarray, min_saturation: float = 0.5, min_value: int = 60):
    """Normalised box of the largest saturated region (objects are saturated; backgrounds are not)."""
    from scipy.ndimage import label

    rgb = image.astype(np.float64)
    high, low = rgb.max(2), rgb.min(2)
    mask = (high >= min_value) & ((high - low) / np.maximum(high, 1) >= min_saturation)
    labels, count = label(mask)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    ys, xs = np.nonzero(labels == 1 + int(sizes.argmax()))
    h, w = mask.shape
    return (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)


def palette_distance(image: np.ndarray, colours: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """Per pixel, the RGB distance to the nearest of `colours`."""
    rgb = image.astype(np.float64)
    return np.stack([np.linalg.norm(rgb - np.asarray(c, np.float64), axis=2) for c in colours]).min(0)


def palette_mask(image: np.ndarray, colours: Sequence[tuple[int, int, int]], tolerance: float = 60.0) -> np.ndarray:
    """Pixels within `tolerance` (RGB distance) of any of `colours`."""
    return palette_distance(image, colours) <= tolerance


def figure_pixels(image: np.ndarray, tolerance: float = 60.0) -> np.ndarray:
    """Pixels whose nearest colour of the world is one of the figure's, within `tolerance` (RGB distance).

    The world's colours are the figure's (shirt, skin, trousers), the objects', the stripes' and every
    grey (the distance to a grey is the distance to the grey axis). A radius alone does not separate
    the figure from the background: a dark grey lies 39 from the trousers and the cream stripe 60
    from the skin, so `palette_mask` of an exact render marks background as figure (its IoU with the
    figure is 0.78 on the pose gate's scenes, where this measure gives 1.0).
    """
    rgb = image.astype(np.float64)
    figure = palette_distance(image, (SHIRT, SKIN, TROUSERS))
    grey = np.linalg.norm(rgb - rgb.mean(2, keepdims=True), axis=2)
    other = np.minimum(palette_distance(image, [*COLOURS.values(), *STRIPE_COLOURS.values()]), grey)
    return (figure <= tolerance) & (figure < other)


def foreground_outline(image: np.ndarray, threshold: float = 50.0, width: int = 1) -> np.ndarray:
    """Outline of the pixels far from the background (estimated as the median of the border)."""
    rgb = image.astype(np.float64)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background = np.median(border, axis=0)
    fg = np.linalg.norm(rgb - background, axis=2) > threshold
    return outline(fg, width)


@dataclass
class ToyModel:
    """The bundled (or any) toy model: SD folder and ControlNets, sampled with the engine's code."""

    root: Path
    steps: int = 25
    controlnet_scale: float = 1.0
    """Conditioning scale of the ControlNets (the residuals they add to the UNet are multiplied by it)."""

    def __post_init__(self):
        from conditioners.controlnet import ControlNetConditioner
        from conditioners.text import TextConditioner
        from framework.backbones import StableDiffusion
        from framework.core.ddim import Schedule
        from framework.core.denoiser import Denoiser

        self.root = Path(self.root)
        self.backbone = StableDiffusion(str(self.root / "sd")).load()
        conditioners = [TextConditioner()]
        for m in ("pose", "scribble"):
            if (self.root / f"controlnet-{m}").exists():
                conditioners.append(ControlNetConditioner(m, str(self.root / f"controlnet-{m}"),
                                                          scale=self.controlnet_scale))
        for c in conditioners[1:]:
            c.load(self.backbone)
        self.denoiser = Denoiser(self.backbone.unet, conditioners, self.backbone.scheduler.config.num_train_timesteps)
        self.schedule = Schedule.from_scheduler(self.backbone.scheduler, self.steps)

    @torch.no_grad()
    def text_states(self, prompt: str) -> torch.Tensor:
        """The text encoder's last hidden states of `prompt`: (tokens, width)."""
        return self.backbone.encode_prompt(prompt).hidden[0]

    def _cond(self, prompt: str, maps: dict):
        from conditioners.base import ConditionSide

        side = ConditionSide(prompt, maps)
        return (self.denoiser.encode(side, self.backbone),
                self.denoiser.encode(side.unconditional(""), self.backbone))

    @torch.no_grad()
    def sample(self, prompt: str, maps: dict | None = None, seed: int = 0, guidance: float = 5.0,
               size: int = 64) -> np.ndarray:
        """DDIM sample from noise under a prompt and layout maps ({modality: uint8 HxWx3})."""
        from framework.core.ddim import ddim_decode, seeded_noise

        cond, uncond = self._cond(prompt, {m: to_tensor(v) for m, v in (maps or {}).items()})
        scale = self.backbone.vae_scale_factor
        x = seeded_noise((1, 4, size // scale, size // scale), seed)
        z = ddim_decode(x, lambda x, t: self.denoiser(x, t, cond, uncond, guidance), self.schedule, self.steps)
        return to_uint8(self.backbone.decode_latents(z))

    @torch.no_grad()
    def resample(self, image: np.ndarray, prompt: str, steps_left: int, seed: int = 0,
                 guidance: float = 5.0) -> np.ndarray:
        """Noise the image's latents to the level `steps_left` steps before the end of the DDIM grid and
        decode from there under `prompt`. At all 25 steps (t = 961) SD's schedule keeps 0.07 of the
        image's latents against 1.0 of noise."""
        from framework.core.ddim import ddim_decode, noise_encode, seeded_noise

        z0 = self.backbone.encode_image(to_tensor(image))
        num = min(steps_left, self.steps)
        start = self.schedule.decode_timesteps(num)[0]
        x = noise_encode(z0, seeded_noise(tuple(z0.shape), seed), self.schedule.alpha(start))
        cond, uncond = self._cond(prompt, {})
        z = ddim_decode(x, lambda x, t: self.denoiser(x, t, cond, uncond, guidance), self.schedule, num)
        return to_uint8(self.backbone.decode_latents(z))

    @torch.no_grad()
    def reconstruct(self, image: np.ndarray, prompt: str, invert: bool = True) -> np.ndarray:
        """VAE round trip, or DDIM inversion and reconstruction at guidance 1 when `invert`."""
        from framework.core.ddim import ddim_decode, ddim_invert

        z = self.backbone.encode_image(to_tensor(image))
        if invert:
            cond, _ = self._cond(prompt, {})
            eps = lambda x, t: self.denoiser(x, t, cond)
            z = ddim_invert(z, eps, self.schedule, self.steps)[self.schedule.timesteps[0]]
            z = ddim_decode(z, eps, self.schedule, self.steps)
        return to_uint8(self.backbone.decode_latents(z))


def held_out(count: int, size: int, want, start: int = 0) -> list[int]:
    """The first `count` seeds from `start` whose scene satisfies `want(scene)`."""
    seeds, seed = [], start
    while len(seeds) < count:
        if want(sample_scene(seed, size)):
            seeds.append(seed)
        seed += 1
    return seeds


def measure_vae(model: ToyModel, classifier: ToyClassifier, n: int = 64, size: int = 64, invert_n: int = 16):
    seeds = list(range(n))
    renders = [render(sample_scene(s, size), size)[0] for s in seeds]
    recons = [model.reconstruct(r, "", invert=False) for r in renders]
    on_recon = accuracy_on_scenes(classifier, seeds, size, [to_tensor(r)[0] for r in recons])
    on_render = accuracy_on_scenes(classifier, seeds, size, [to_tensor(r)[0] for r in renders])
    inv = [psnr(model.reconstruct(renders[i], caption(sample_scene(i, size))), renders[i]) for i in range(invert_n)]
    return {
        "vae_psnr": float(np.mean([psnr(a, b) for a, b in zip(recons, renders)])),
        **{f"vae_{k}_gap": on_render[k] - on_recon[k] for k in ("colour", "shape")},
        **{f"render_{k}": on_render[k] for k in on_render}, **{f"recon_{k}": on_recon[k] for k in on_recon},
        "inversion_psnr": float(np.mean(inv)),
    }


def measure_text(model: ToyModel, classifier: ToyClassifier, n: int = 48, size: int = 64, guidance: float = 5.0):
    seeds = held_out(n, size, lambda s: len(s.objects) == 1 and s.figure is None)
    colour, shape, found = [], [], 0
    for i, seed in enumerate(seeds):
        scene = sample_scene(seed, size)
        image = model.sample(caption(scene), seed=i, guidance=guidance, size=size)
        box = saturated_box(image)
        if box is None:
            colour.append(False)
            shape.append(False)
            continue
        found += 1
        pred = classifier.classify(to_tensor(image), torch.tensor([box], dtype=torch.float32))
        obj = scene.objects[0]
        colour.append(COLOUR_NAMES[int(pred["colour"])] == obj.colour)
        shape.append(SHAPES[int(pred["shape"])] == obj.shape)
    return {"text_colour": float(np.mean(colour)), "text_shape": float(np.mean(shape)),
            "text_found": found / len(seeds), "text_n": len(seeds)}


def measure_pose(model: ToyModel, classifier: ToyClassifier, n: int = 32, size: int = 64, guidance: float = 5.0):
    seeds = held_out(n, size, lambda s: s.figure is not None)
    scenes = [sample_scene(s, size) for s in seeds]
    masks = [figure_mask(s.figure, size) for s in scenes]
    matched, mismatched, radius_only, reconstructed, pose_hits = [], [], [], [], []
    for i, scene in enumerate(scenes):
        image = model.sample(caption(scene), {"pose": condition_maps(scene, size)["pose"]}, seed=i,
                             guidance=guidance, size=size)
        body = figure_pixels(image)
        matched.append(iou(body, masks[i]))
        mismatched.append(iou(body, masks[(i + 1) % len(scenes)]))
        radius_only.append(iou(palette_mask(image, (SHIRT, SKIN, TROUSERS)), masks[i]))
        recon = model.reconstruct(render(scene, size)[0], "", invert=False)
        reconstructed.append(iou(figure_pixels(recon), masks[i]))
        pred = classifier.classify(to_tensor(image), torch.tensor([figure_box(scene.figure)], dtype=torch.float32))
        pose_hits.append(int(pred["pose"]) == pose_class(scene.figure))
    return {"pose_iou": float(np.mean(matched)), "pose_iou_mismatched": float(np.mean(mismatched)),
            "pose_iou_radius_only": float(np.mean(radius_only)), "pose_iou_vae": float(np.mean(reconstructed)),
            "pose_class": float(np.mean(pose_hits))}


def measure_scribble(model: ToyModel, n: int = 32, size: int = 64, guidance: float = 5.0):
    # Flat backgrounds: stripes are edges of the image but not strokes of the scribble.
    seeds = held_out(n, size, lambda s: s.background.kind == "flat")
    scenes = [sample_scene(s, size) for s in seeds]
    strokes = [condition_maps(s, size)["scribble"][..., 0] > 127 for s in scenes]
    matched, mismatched = [], []
    for i, scene in enumerate(scenes):
        image = model.sample(caption(scene), {"scribble": condition_maps(scene, size)["scribble"]}, seed=i,
                             guidance=guidance, size=size)
        edges = dilate(foreground_outline(image))
        matched.append(iou(edges, dilate(strokes[i])))
        mismatched.append(iou(edges, dilate(strokes[(i + 1) % len(scenes)])))
    return {"scribble_edge_iou": float(np.mean(matched)), "scribble_edge_iou_mismatched": float(np.mean(mismatched))}


def two_object_text_edits(n: int, size: int = 64, start: int = 0) -> list:
    """The first `n` toy text edits (`make_edit(seed, "text")`, seeds from `start`) whose scene holds two
    or more objects."""
    from framework.toy.world import make_edit

    pairs, seed = [], start
    while len(pairs) < n:
        try:
            pair = make_edit(seed, "text", size)
        except RuntimeError:  # no valid edit for this seed
            pair = None
        if pair is not None and len(pair.source.objects) >= 2:
            pairs.append(pair)
        seed += 1
    return pairs


def edit_module(root: Path, output_dir: str | Path, lam: float = 0.6, mask_threshold: float = 0.5):
    """The method as the quickstart runs it (`experiments/quickstart.yaml`: lam 0.6, mask tau 0.5, the
    paper's defaults otherwise) on the toy model at `root`."""
    from conditioners.controlnet import ControlNetConditioner
    from framework.backbones import StableDiffusion
    from framework.core.settings import MaskConfig
    from framework.lightning.module import EditModule

    conditioners = [ControlNetConditioner(m, str(root / f"controlnet-{m}")) for m in ("pose", "scribble")
                    if (root / f"controlnet-{m}").exists()]
    module = EditModule(StableDiffusion(str(root / "sd")), conditioners, lam=lam,
                        mask=MaskConfig(threshold=mask_threshold), output_dir=str(output_dir))
    module.setup("fit")
    return module


@torch.no_grad()
def measure_two_object_edits(root: str | Path, classifier: ToyClassifier, n: int = 24, size: int = 64,
                             module=None) -> dict:
    """Text edits of one object in scenes of two or three, by the method at the quickstart's settings.

    `two_object_named`: share of edits whose named object reads as its new class (colour and shape);
    `two_object_others_kept`: share of the other objects that still read as their own class;
    `two_object_bound`: share of edits where both hold. Each read is the classifier's at the object's box.
    """
    import tempfile

    from framework.lightning.data import EditRequest
    from framework.toy.world.scenes import object_box

    root = Path(root)
    module = module or edit_module(root, tempfile.mkdtemp(prefix="two-object-"))
    named, kept, bound = [], [], []
    for i, pair in enumerate(two_object_text_edits(n, size)):
        request = EditRequest(f"two_object_{i:03d}", to_tensor(pair.source_image), pair.source_prompt,
                              pair.edit_prompt, {}, {}, None, pair.seed, None, {})
        edit = module.edit(request).edit.float().cpu()
        objects = list(zip(pair.source.objects, pair.target.objects))
        boxes = torch.tensor([object_box(after) for _, after in objects], dtype=torch.float32)
        read = classifier.classify(edit.expand(len(objects), -1, -1, -1), boxes)
        hits = [COLOUR_NAMES[int(read["colour"][j])] == after.colour and SHAPES[int(read["shape"][j])] == after.shape
                for j, (_, after) in enumerate(objects)]
        changed = [(b.colour, b.shape) != (a.colour, a.shape) for b, a in objects]
        named.append(all(h for h, c in zip(hits, changed) if c))
        others = [h for h, c in zip(hits, changed) if not c]
        kept.extend(others)
        bound.append(named[-1] and all(others))
    return {"two_object_named": float(np.mean(named)), "two_object_others_kept": float(np.mean(kept)),
            "two_object_bound": float(np.mean(bound)), "two_object_n": len(named)}


def _read_shape(classifier: ToyClassifier, image: np.ndarray) -> int | None:
    """The classifier's shape index for the largest saturated region; None when there is none."""
    box = saturated_box(image)
    if box is None:
        return None
    return int(classifier.classify(to_tensor(image), torch.tensor([box], dtype=torch.float32))["shape"])


def shape_by_noise_level(model: ToyModel, classifier: ToyClassifier, steps_left: Sequence[int] = (25, 15, 10, 5),
                         n: int = 36, size: int = 64, guidance: float = 5.0) -> dict:
    """Prompted-shape accuracy when sampling starts from the render noised `k` steps before the end.

    At k = all steps the start is almost pure noise (as in the text gate); at small k the noisy latents
    still hold the true shape, so a drop between two levels says where the model loses it. Returns
    {k: {"shape": accuracy, "confusion": rows true shape, columns drawn shape (SHAPES order)}}.
    """
    seeds = held_out(n, size, lambda s: len(s.objects) == 1 and s.figure is None)
    out = {}
    for k in steps_left:
        confusion = np.zeros((len(SHAPES), len(SHAPES)), int)
        for i, seed in enumerate(seeds):
            scene = sample_scene(seed, size)
            drawn = _read_shape(classifier, model.resample(render(scene, size)[0], caption(scene), k, seed=i,
                                                           guidance=guidance))
            if drawn is not None:
                confusion[SHAPES.index(scene.objects[0].shape), drawn] += 1
        out[k] = {"shape": float(np.trace(confusion) / len(seeds)), "confusion": confusion.tolist()}
    return out


def caption_distances(model: ToyModel, base: str = "a red circle on a light grey background",
                      swaps: Sequence[tuple[str, str]] = (("circle", "square"), ("circle", "triangle"),
                                                          ("red", "blue"), ("red", "green"))) -> dict:
    """Summed per-token L2 distance of the text encoder's states between `base` and `base` with one
    word swapped, e.g. {"circle->square": 26.0, "red->blue": 162.0}: words the encoder keeps close
    give the UNet little to tell them apart by."""
    ref = model.text_states(base)
    return {f"{a}->{b}": float((model.text_states(base.replace(a, b)) - ref).norm(dim=-1).sum()) for a, b in swaps}


def score_edit_folder(folder: str | Path, root: str | Path = ".") -> dict[str, dict[str, float]]:
    """Per edit of a finished run's output folder, against the request's ground truth.

    For every `<folder>/<id>/result.json` whose request named a `target` and `true_mask` (toy-world
    requests do), with the evaluation's `GroundTruthL1`: `edit_to_target` and `input_to_target` (mean
    L1 inside the true mask: what should change, and how far the input was from it), `background`
    (mean L1 of edit - input outside it: what should not change), `background_grown` and `shift` (BackgroundShift:
    L1 outside the true mask grown by 4 px, and the signed mean RGB change there). Images are [0, 1]; the ratio
    edit/input below 1 means the edit moved towards the true answer. Relative target and mask paths
    are read from `root` (the directory the run was started in).
    """
    from dataclasses import replace
    from types import SimpleNamespace

    from framework.evaluation.metrics import BackgroundShift, GroundTruthL1
    from framework.io.outputs import read_edit

    scores = {}
    for path in sorted(Path(folder).glob("*/result.json")):
        record = json.loads(path.read_text())
        extra = record.get("extra") or {}
        if not {"target", "true_mask"} <= extra.keys():
            continue
        request = SimpleNamespace(extra={k: Path(root) / extra[k] for k in ("target", "true_mask")})
        result = read_edit(path.parent, record)
        edit = GroundTruthL1().update(result, request)
        unedited = GroundTruthL1().update(replace(result, edit=result.input), request)
        seen = BackgroundShift().update(result, request)
        scores[path.parent.name] = {"edit_to_target": edit["gt/target_l1"],
                                    "input_to_target": unedited["gt/target_l1"],
                                    "background": edit["gt/background_l1"], "background_grown": seen["bg/l1"],
                                    "shift": tuple(seen[f"bg/shift_{c}"] for c in "rgb")}
    return scores
