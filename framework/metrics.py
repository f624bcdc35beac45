"""Edit-quality metrics: the paper's Table 1 (DiffEdit/FlexIT ImageNet protocol) and toy-world ground truth.

A metric is an `EditMetric` plugin (chosen in YAML by `class_path`): `load(device)` reads its weights
once, `update(result, request)` returns the values of one edit, `compute()` the values over all edits
so far, `reset()` forgets them. Keys use '/': `edit/l1`, `csfid/class_mean`, `pick/score`.

Class labels come from the request's `meta` (manifest field): `source_class` / `target_class` (names,
used to group edits by class) and `source_id` / `target_id` (the classifier's output indices).

Weights are read from LOCAL files only, safetensors unless `allow_pickle` is set (pickles can run code).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from framework.data import load_image, open_image, read_image, target_size
from framework.errors import EditError, ModelLoadError
from framework.models import load_component, resolve_pretrained
from framework.outputs import EditResult, to_pil

log = logging.getLogger("framework")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class MetricError(EditError, ValueError):
    """A metric cannot be computed from what the run gave it (labels missing, too few edits)."""


# ---------------------------------------------------------------- helpers


def resize_centre_crop(images: torch.Tensor, size: int, mode: str = "bilinear", crop_pct: float = 1.0) -> torch.Tensor:
    """(b, 3, H, W) -> (b, 3, size, size): shorter side resized to size / crop_pct, then centre-cropped."""
    short = int(size / crop_pct)
    h, w = images.shape[-2:]
    if min(h, w) != short:
        scale = short / min(h, w)
        new = (max(short, round(h * scale)), max(short, round(w * scale)))
        images = F.interpolate(images, size=new, mode=mode, antialias=True, align_corners=False).clamp(0, 1)
    top, left = (images.shape[-2] - size) // 2, (images.shape[-1] - size) // 2
    return images[..., top:top + size, left:left + size]


def read_state_dict(path: str | Path, allow_pickle: bool, what: str, how_to_get: str) -> dict[str, torch.Tensor]:
    """A state dict from a local .safetensors file (or a pickle .pth/.pt/.bin when allowed)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"{what}: weights file '{path}' does not exist. {how_to_get}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if not allow_pickle:
        raise ModelLoadError(f"{what}: '{path}' is a pickle file; convert it to .safetensors "
                             f"(safetensors.torch.save_file(state_dict, ...)) or set allow_pickle: true.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    # Training checkpoints wrap the weights; a plain state dict has tensors at the top.
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], what: str, path: Any) -> None:
    """Strict `load_state_dict` whose mismatch names the first offending keys."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelLoadError(f"{what}: '{path}' does not fit the network: {str(err)[:600]}") from err


def meta_of(request) -> dict[str, Any]:
    """The request's free-form `meta` mapping ({} when absent or not a mapping)."""
    meta = request.extra.get("meta") if request.extra else None
    return meta if isinstance(meta, dict) else {}


def class_label(request, side: str) -> Optional[str]:
    """`meta.<side>_class` (a name), else `meta.<side>_id`, as a string; None when neither is given."""
    meta = meta_of(request)
    value = meta.get(f"{side}_class", meta.get(f"{side}_id"))
    return None if value is None else str(value)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2): Fréchet (W2) distance of two Gaussians (Heusel et al. 2017)."""
    values, vectors = np.linalg.eigh(cov1)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    # tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2): a symmetric PSD matrix, so eigvalsh is exact and real.
    inner = root1 @ cov2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * cross)


def diagonal_frechet_distance(mu1: np.ndarray, var1: np.ndarray, mu2: np.ndarray, var2: np.ndarray) -> float:
    """Fréchet distance with covariances reduced to their diagonals: ||mu1 - mu2||^2 + sum (s1 - s2)^2."""
    return float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum())


def gaussian_stats(features: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean and covariance (ddof 1) of (n, d) features; n >= 2 or MetricError."""
    if len(features) < 2:
        raise MetricError(f"{what}: a covariance needs at least 2 images, got {len(features)}.")
    return features.mean(0), np.atleast_2d(np.cov(features, rowvar=False))


# ---------------------------------------------------------------- plugin bases


class EditMetric(nn.Module):
    """Base of metric plugins: per-edit values from `update`, set-level values from `compute`."""

    def __init__(self):
        super().__init__()
        self.device = torch.device("cpu")
        self.loaded = False
        self.values: dict[str, list[float]] = defaultdict(list)

    def load(self, device: str | torch.device = "cpu") -> "EditMetric":
        """Read the weights (once) and move to `device`."""
        self.device = torch.device(device)
        if not self.loaded:
            self._load()
            self.loaded = True
        return self.to(self.device)

    def _load(self) -> None:
        """Subclasses with weights read them here."""

    def update(self, result: EditResult, request) -> dict[str, float]:
        """Values of one edit (keys with '/')."""
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        """Means of the per-edit values over all updates so far, and their count."""
        out = {key: float(np.mean(v)) for key, v in self.values.items()}
        for key, v in self.values.items():  # edits scored per namespace ('gt/...' keys may skip some)
            count = f"{key.split('/')[0]}/count"
            out[count] = max(out.get(count, 0.0), float(len(v)))
        return out

    def reset(self) -> None:
        """Forget all updates."""
        self.values.clear()

    def resume(self, result: EditResult, request, stored: dict[str, float]) -> dict[str, float]:
        """Count an edit that an earlier run wrote (`result` read back from its files) as `update` would.

        The edit is scored again from its written images, so set-level metrics (FID, ...) see it; the
        per-edit values the earlier run stored for the keys that come out replace the new ones (those
        were computed before the images were rounded to 8 bits), so a resumed run's means equal an
        uninterrupted run's.
        """
        values = self.update(result, request)
        kept = {}
        for key, value in values.items():
            if key in stored and self.values.get(key):
                self.values[key][-1] = float(stored[key])
            kept[key] = float(stored.get(key, value))
        return kept

    def record(self, values: dict[str, float]) -> dict[str, float]:
        """Keep per-edit values for `compute` and return them."""
        for key, value in values.items():
            self.values[key].append(value)
        return values

    def ready(self) -> None:
        """Load on first use if the caller did not."""
        if not self.loaded:
            self.load(self.device)


class FeatureExtractor(nn.Module):
    """Base of image feature plugins: `forward(images in [0, 1], (b, 3, H, W)) -> (b, d)`."""

    def load(self, device: str | torch.device = "cpu") -> "FeatureExtractor":
        """Read the weights (once) and move to `device`; features without weights just move."""
        return self.to(device)


# ---------------------------------------------------------------- pixel metrics


class L1Distance(EditMetric):
    """Mean |input - edit| over pixels and channels in [0, 1] (Table 1's 'L1 distance', DiffEdit protocol).

    Both images are resized so the shorter side is `crop` pixels, then centre-cropped to crop x crop,
    as DiffEdit evaluates ImageNet edits at 256 px; an image already crop x crop is used as it is.
    """

    def __init__(self, crop: int = 256):
        """
        Args:
            crop: Side of the square centre crop compared (pixels); 256 as in DiffEdit.
        """
        super().__init__()
        self.crop = crop

    @torch.no_grad()
    def update(self, result: EditResult, request) -> dict[str, float]:
        pair = resize_centre_crop(torch.cat([result.input, result.edit]).float(), self.crop)  # (2, 3, crop, crop)
        return self.record({"edit/l1": float((pair[0] - pair[1]).abs().mean())})


def load_like(path: str | Path, size: tuple[int, int], resolution: Optional[int] = None) -> torch.Tensor:
    """An image file sized like the input (framework.data's rule at `resolution`) if that gives `size`, else resized."""
    h, w = size
    with open_image(Path(path)) as img:
        original = img.size
    # Unknown resolution: the edit's longer side is it when it is a multiple of 8 (else off by < 8 px).
    for guess in ((resolution,) if resolution else (None, max(h, w))):
        if target_size(*original, guess)[1] == (w, h):
            return load_image(Path(path), guess)
    return read_image(path, size)


class GroundTruthL1(EditMetric):
    """L1 against a known answer, for requests with `target` (and `true_mask`), e.g. the toy world.

    `gt/l1`: mean |edit - target| over the image; `gt/background_l1`: mean |edit - input| outside the
    true mask (what should not change); `gt/target_l1`: mean |edit - target| inside it (what should
    change). Target and mask are loaded at the edit's size; requests without a target give {}.
    """

    def __init__(self, resolution: Optional[int] = None):
        """
        Args:
            resolution: The data module's `resolution`, so target and mask are sized exactly like the
                input; None: inferred from the edit's size (exact when unset or a multiple of 8).
        """
        super().__init__()
        self.resolution = resolution

    @torch.no_grad()
    def update(self, result: EditResult, request) -> dict[str, float]:
        extra = request.extra or {}
        if "target" not in extra:
            return {}
        edit = result.edit.float()
        target = load_like(extra["target"], tuple(edit.shape[-2:]), self.resolution)
        values = {"gt/l1": float((edit - target).abs().mean())}
        if "true_mask" in extra:
            inside = load_like(extra["true_mask"], tuple(edit.shape[-2:]), self.resolution)[:, :1] > 0.5
            inside = inside.expand_as(edit)
            if (~inside).any():
                values["gt/background_l1"] = float((edit - result.input.float()).abs()[~inside].mean())
            if inside.any():
                values["gt/target_l1"] = float((edit - target).abs()[inside].mean())
        return self.record(values)


# ---------------------------------------------------------------- Inception features, FID, CSFID

_INCEPTION_HOW = ("Write it where there is network: python -c \"import torchvision; from safetensors.torch import "
                  "save_file; save_file(torchvision.models.inception_v3(weights='DEFAULT').state_dict(), "
                  "'inception_v3.safetensors')\" and set `weights` to that file.")


class InceptionFeatures(FeatureExtractor):
    """2048-d pool features of torchvision's Inception-v3 (the final fc removed), from a local weights file.

    Supply torchvision's ImageNet weights (`inception_v3(weights='DEFAULT')`, IMAGENET1K_V1). Images
    are resized to 299 x 299 (bilinear) and mapped to [-1, 1], which is what those weights see (their
    `transform_input` turns ImageNet-normalised input into exactly 2x - 1). pytorch-fid's FID weights
    (pt_inception-2015-12-05, 1008 classes) are refused: their pooling blocks differ from torchvision's,
    so they would give features of neither network. Values are therefore torchvision-Inception FIDs,
    comparable between runs here but not digit for digit with published pytorch-fid numbers.
    """

    def __init__(self, weights: str, allow_pickle: bool = False):
        """
        Args:
            weights: Local .safetensors file of torchvision's inception_v3 state dict (.pth with allow_pickle).
            allow_pickle: Allow a pickle .pth file (pickles can run code).
        """
        super().__init__()
        if not Path(weights).expanduser().is_file():
            raise ModelLoadError(f"InceptionFeatures: weights file '{weights}' does not exist. {_INCEPTION_HOW}")
        self.weights = weights
        self.allow_pickle = allow_pickle
        self.net: Optional[nn.Module] = None

    def load(self, device: str | torch.device = "cpu") -> "InceptionFeatures":
        if self.net is None:
            import torchvision

            state = read_state_dict(self.weights, self.allow_pickle, "InceptionFeatures", _INCEPTION_HOW)
            if "fc.weight" in state and state["fc.weight"].shape[0] == 1008:
                raise ModelLoadError(f"InceptionFeatures: '{self.weights}' holds pytorch-fid's FID Inception "
                                     f"weights (1008 classes), whose blocks differ from torchvision's. "
                                     f"{_INCEPTION_HOW}")
            net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
            net.fc = nn.Identity()  # (b, 2048) pool features
            # The classifier and the auxiliary head are not used for features.
            state = {k: v for k, v in state.items() if not k.startswith(("fc.", "AuxLogits."))}
            load_weights(net, state, "InceptionFeatures", self.weights)
            self.net = net.eval().requires_grad_(False)
        return self.to(device)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            self.load(images.device)
        x = F.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(x * 2 - 1)  # (b, 2048)


def image_features(features: FeatureExtractor, images: torch.Tensor, device: torch.device) -> np.ndarray:
    """Features of (b, 3, H, W) images as float64 numpy (b, d)."""
    with torch.no_grad():
        return features(images.to(device)).double().cpu().numpy()


class FID(EditMetric):
    """Fréchet distance between the features of all edited images and of all input images (Heusel et al. 2017).

    A set-level value only (`fid/edit_vs_input`). It needs at least 2 edits; with fewer edits than
    feature dimensions (2048 for Inception) the covariances are singular and FID is strongly biased
    upwards, so compare it only between runs with the same number of edits.
    """

    def __init__(self, features: FeatureExtractor):
        """
        Args:
            features: Image features (e.g. InceptionFeatures).
        """
        super().__init__()
        self.features = features
        self.edited: list[np.ndarray] = []
        self.inputs: list[np.ndarray] = []

    def _load(self) -> None:
        self.features.load(self.device)

    def update(self, result: EditResult, request) -> dict[str, float]:
        self.ready()
        feats = image_features(self.features, torch.cat([result.edit, result.input]).float(), self.device)
        self.edited.append(feats[:1])
        self.inputs.append(feats[1:])
        return {}

    def compute(self) -> dict[str, float]:
        if len(self.edited) < 2:
            raise MetricError(f"FID needs at least 2 edits, got {len(self.edited)}.")
        edited = gaussian_stats(np.concatenate(self.edited), "FID (edited images)")
        if len(self.edited) <= len(edited[0]):
            log.warning(f"FID from {len(self.edited)} edits of {len(edited[0])}-d features: singular covariances, "
                        f"biased upwards; compare only runs with as many edits.")
        inputs = gaussian_stats(np.concatenate(self.inputs), "FID (input images)")
        return {"fid/edit_vs_input": frechet_distance(*edited, *inputs), "fid/count": float(len(self.edited))}

    def reset(self) -> None:
        super().reset()
        self.edited, self.inputs = [], []


# Class statistics files: for each class c, '<c>/mean' (d,), '<c>/cov' (d, d), '<c>/count' (1,), float64.


def save_class_statistics(stats: dict[str, tuple[np.ndarray, np.ndarray, int]], path: str | Path) -> Path:
    """Write {class: (mean, cov, count)} to a .npz or .safetensors file (format above)."""
    path = Path(path)
    arrays = {}
    for name, (mean, cov, count) in stats.items():
        arrays.update({f"{name}/mean": np.asarray(mean, np.float64), f"{name}/cov": np.asarray(cov, np.float64),
                       f"{name}/count": np.array([count], np.float64)})
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(arrays, str(path))
    elif path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        raise MetricError(f"class statistics file '{path}': use a .npz or .safetensors name.")
    return path


def load_class_statistics(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Read a file written by `save_class_statistics` -> {class: (mean, cov, count)}."""
    path = Path(path).expanduser()
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        arrays = load_file(str(path))
    else:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    names = {key.rsplit("/", 1)[0] for key in arrays}
    return {n: (arrays[f"{n}/mean"], arrays[f"{n}/cov"], int(arrays[f"{n}/count"][0])) for n in sorted(names)}


def build_class_statistics(root: str | Path, features: FeatureExtractor, out: str | Path, size: int = 299,
                           device: str = "cpu", batch_size: int = 32) -> Path:
    """Per-class feature statistics of real images in `root/<class>/*.png|jpg`, written to `out` for CSFID.

    Folder names are the class labels: they must equal the requests' `meta.target_class` (or
    `target_id`). Images are resized to size x size before the features (Inception resizes to 299).
    """
    folders = sorted(p for p in Path(root).expanduser().iterdir() if p.is_dir())
    features = features.load(device).eval()
    stats = {}
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        feats = []
        for start in range(0, len(files), batch_size):
            batch = torch.cat([read_image(f, (size, size)) for f in files[start:start + batch_size]])
            feats.append(image_features(features, batch, torch.device(device)))
        mean, cov = gaussian_stats(np.concatenate(feats), f"class '{folder.name}' in {root}")
        stats[folder.name] = (mean, cov, len(files))
    if not stats:
        raise MetricError(f"'{root}' has no class folders of images.")
    return save_class_statistics(stats, out)


class CSFID(EditMetric):
    """Class-conditional Fréchet distance of edits (FlexIT's CSFID, Couairon et al. 2022a), averaged over classes.

    Edits are grouped by target class (`meta.target_class`, else `meta.target_id`). Two variants:

    - with `reference` (real-image statistics per class, see `build_class_statistics`): for each
      target class, the Fréchet distance between the edited images' features and the reference
      Gaussian of that class -> `csfid/frechet`. `covariance: diagonal` keeps only the variances, a
      simplification that is stable with the few edits per class. FlexIT's own 'simplified' FID was
      not checked against its code, so do not compare these numbers with Table 1's digit for digit.
    - without: the class-mean distance, for each target class the squared distance between the mean
      feature of its edited images and the mean feature of the *input* images labelled with that
      class (`meta.source_class`) -> `csfid/class_mean`. It measures only the means, so it is not
      an FID; classes with no input of their own are skipped.

    Also `csfid/classes` (classes averaged) and `csfid/skipped_classes`. Classes with fewer than 2
    edits are skipped in the reference variant (a covariance needs 2).
    """

    def __init__(self, features: FeatureExtractor, reference: Optional[str] = None, covariance: str = "full"):
        """
        Args:
            features: Image features (e.g. InceptionFeatures; the reference must use the same).
            reference: .npz/.safetensors file of per-class real-image statistics; None: class-mean variant.
            covariance: 'full' (Fréchet distance) or 'diagonal' (variances only), reference variant.
        """
        super().__init__()
        if covariance not in ("full", "diagonal"):
            raise MetricError(f"CSFID covariance must be 'full' or 'diagonal', got {covariance!r}.")
        if reference is not None and not Path(reference).expanduser().is_file():
            raise MetricError(f"CSFID reference '{reference}' does not exist; build it with "
                              f"framework.metrics.build_class_statistics(folder_per_class, features, out).")
        self.features = features
        self.reference_path = reference
        self.covariance = covariance
        self.reference: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
        self.edited: dict[str, list[np.ndarray]] = defaultdict(list)
        self.inputs: dict[str, list[np.ndarray]] = defaultdict(list)

    def _load(self) -> None:
        self.features.load(self.device)
        if self.reference_path is not None:
            self.reference = load_class_statistics(self.reference_path)

    def update(self, result: EditResult, request) -> dict[str, float]:
        self.ready()
        target, source = class_label(request, "target"), class_label(request, "source")
        if target is None or (self.reference_path is None and source is None):
            raise MetricError(f"CSFID: request '{request.id}' has no class labels; set meta.target_class "
                              f"(and meta.source_class without a reference) in the manifest.")
        images = result.edit if self.reference_path else torch.cat([result.edit, result.input])
        feats = image_features(self.features, images.float(), self.device)
        self.edited[target].append(feats[:1])
        if self.reference_path is None:
            self.inputs[source].append(feats[1:])
        return {}

    def _class_value(self, name: str, edited: np.ndarray) -> Optional[float]:
        """This class's distance, or None when it cannot be computed."""
        if self.reference_path is None:
            if name not in self.inputs:
                return None
            diff = edited.mean(0) - np.concatenate(self.inputs[name]).mean(0)
            return float(diff @ diff)
        if name not in self.reference or len(edited) < 2:
            return None
        mean, cov = gaussian_stats(edited, f"CSFID class '{name}'")
        ref_mean, ref_cov, _ = self.reference[name]
        if self.covariance == "diagonal":
            return diagonal_frechet_distance(mean, np.diag(cov), ref_mean, np.diag(ref_cov))
        return frechet_distance(mean, cov, ref_mean, ref_cov)

    def compute(self) -> dict[str, float]:
        values = {n: self._class_value(n, np.concatenate(f)) for n, f in self.edited.items()}
        kept = [v for v in values.values() if v is not None]
        if not kept:
            why = "none is in the reference with >= 2 edits" if self.reference_path else "none has input images"
            raise MetricError(f"CSFID: no target class can be scored ({len(values)} classes; {why}).")
        key = "csfid/frechet" if self.reference_path else "csfid/class_mean"
        return {key: float(np.mean(kept)), "csfid/classes": float(len(kept)),
                "csfid/skipped_classes": float(len(values) - len(kept))}

    def reset(self) -> None:
        super().reset()
        self.edited.clear()
        self.inputs.clear()


# ---------------------------------------------------------------- classification accuracy

_TIMM_HOW = ("Get it where there is network: `hf download timm/deit_base_distilled_patch16_384.fb_in1k "
             "--local-dir <folder>` (a folder with config.json + model.safetensors), or save_file("
             "timm.create_model(arch, pretrained=True).state_dict(), 'classifier.safetensors').")


def read_class_names(path: str | Path) -> dict[str, int]:
    """Lower-cased name -> output index from a file of one class name per line (line i = output i).

    Comma-separated synonyms on a line ('tench, Tinca tinca') each name that class.
    """
    lookup: dict[str, int] = {}
    for index, line in enumerate(Path(path).expanduser().read_text().splitlines()):
        for name in [line, *line.split(",")]:
            lookup.setdefault(name.strip().lower(), index)
    return lookup


class ClassifierAccuracy(EditMetric):
    """Top-1 accuracy of a timm classifier on the edits, as the new and as the original class (Table 1).

    The argmax is taken over the benchmark's target classes only: `classes` if configured, else
    every `meta.target_id` seen in the run (known only at the end, so then `update` returns {} and
    `compute` gives the values). `classify/new_class` is 1 when the edit is classified as its
    target class, `classify/original_class` when as its source class (fractions; Table 1 shows %).
    """

    def __init__(self, classifier: str, arch: Optional[str] = None, num_classes: int = 1000,
                 classes: Optional[list[int | str]] = None, class_names_file: Optional[str] = None,
                 allow_pickle: bool = False):
        """
        Args:
            classifier: Local timm folder (config.json + model.safetensors) or a weights file.
            arch: timm architecture of a weights file (e.g. 'deit_base_distilled_patch16_384', as FlexIT);
                read from config.json for a folder.
            num_classes: Outputs of a weights file's classifier.
            classes: Candidate class ids (or names, with class_names_file); None: the run's target ids.
            class_names_file: One class name per line in output order; lets meta give names
                (`source_class`/`target_class`) instead of `source_id`/`target_id`.
            allow_pickle: Allow a pickle weights file (pickles can run code).
        """
        super().__init__()
        path = Path(classifier).expanduser()
        if not path.exists():
            raise ModelLoadError(f"ClassifierAccuracy: '{classifier}' does not exist. {_TIMM_HOW}")
        if path.is_file() and arch is None:
            raise ModelLoadError("ClassifierAccuracy: a weights file needs `arch` (the timm model name).")
        self.path, self.arch, self.num_classes, self.allow_pickle = path, arch, num_classes, allow_pickle
        self.names = read_class_names(class_names_file) if class_names_file else {}
        self.candidates = None if classes is None else [self.class_id(c, "classes") for c in classes]
        self.net: Optional[nn.Module] = None
        self.preprocess: dict[str, Any] = {}
        self.logits: list[tuple[torch.Tensor, int, int]] = []

    def class_id(self, value: int | str, where: str) -> int:
        """A class given as an id or (with class_names_file) a name -> output index."""
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            return int(value)
        if str(value).strip().lower() not in self.names:
            raise MetricError(f"ClassifierAccuracy: {where}: unknown class {value!r}; give ids or a "
                              f"class_names_file that names it.")
        return self.names[str(value).strip().lower()]

    def _load(self) -> None:
        import timm

        arch, num_classes, weights = self.arch, self.num_classes, self.path
        if self.path.is_dir():
            config = json.loads((self.path / "config.json").read_text())
            arch, num_classes = config["architecture"], config.get("num_classes", num_classes)
            weights = self.path / ("model.safetensors" if (self.path / "model.safetensors").exists()
                                   else "pytorch_model.bin")
        net = timm.create_model(arch, pretrained=False, num_classes=num_classes)
        load_weights(net, read_state_dict(weights, self.allow_pickle, "ClassifierAccuracy", _TIMM_HOW),
                     "ClassifierAccuracy", weights)
        self.net = net.eval().requires_grad_(False)
        self.preprocess = timm.data.resolve_model_data_config(net)  # the weights' input size, crop, mean/std

    @torch.no_grad()
    def classify(self, image: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) in [0, 1] -> logits (num_classes,), preprocessed as the weights were trained."""
        mode = "bicubic" if self.preprocess.get("interpolation") == "bicubic" else "bilinear"
        x = resize_centre_crop(image.float().to(self.device), self.preprocess["input_size"][-1], mode,
                               self.preprocess.get("crop_pct", 1.0))
        mean = torch.tensor(self.preprocess["mean"], device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess["std"], device=self.device).view(1, 3, 1, 1)
        return self.net((x - mean) / std)[0].float().cpu()

    def scores(self, logits: torch.Tensor, source: int, target: int, candidates: list[int]) -> dict[str, float]:
        """1/0 for new and original class, argmax over `candidates` only."""
        predicted = candidates[int(logits[candidates].argmax())]
        return {"classify/new_class": float(predicted == target), "classify/original_class": float(predicted == source)}

    def update(self, result: EditResult, request) -> dict[str, float]:
        self.ready()
        meta = meta_of(request)
        ids = []
        for side in ("source", "target"):
            value = meta.get(f"{side}_id", meta.get(f"{side}_class"))
            if value is None:
                raise MetricError(f"ClassifierAccuracy: request '{request.id}' has no meta.{side}_id "
                                  f"(or meta.{side}_class with a class_names_file).")
            ids.append(self.class_id(value, f"request '{request.id}' meta.{side}"))
        self.logits.append((self.classify(result.edit), *ids))
        return {} if self.candidates is None else self.scores(self.logits[-1][0], *ids, self.candidates)

    def compute(self) -> dict[str, float]:
        if not self.logits:
            return {"classify/count": 0.0}
        candidates = self.candidates or sorted({target for _, _, target in self.logits})
        rows = [self.scores(logits, source, target, candidates) for logits, source, target in self.logits]
        out = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
        return {**out, "classify/count": float(len(rows)), "classify/classes": float(len(candidates))}

    def reset(self) -> None:
        super().reset()
        self.logits = []


# ---------------------------------------------------------------- PickScore


def resolve_processor(processor: str) -> str:
    """A local processor folder (it has no config.json, which resolve_pretrained requires) or a hub id."""
    return processor if Path(processor).expanduser().is_dir() else resolve_pretrained(processor, "PickScore processor")


class PickScore(EditMetric):
    """PickScore (Kirstain et al. 2023) of each edit with its edit prompt: logit_scale * cos(image, text).

    `pick/score` per edit (about 100 x a cosine) and its mean. Table 1's PickScore (0.31 / 0.27 /
    0.41 for DiffEdit / Prompt-to-prompt / ours) is instead a preference probability between the
    methods: collect each method's per-edit scores and use `pick_probability`.
    Weights: model 'yuvalkirstain/PickScore_v1', processor 'laion/CLIP-ViT-H-14-laion2B-s32B-b79K'
    (local folders, or hub ids already in the cache).
    """

    def __init__(self, model: str, processor: Optional[str] = None, allow_pickle: bool = False):
        """
        Args:
            model: Local folder (or cached hub id) of a transformers CLIPModel (PickScore_v1).
            processor: Folder of its processor (tokenizer + image processor); None: the model's folder.
            allow_pickle: Allow pickle .bin weights (pickles can run code).
        """
        super().__init__()
        self.model_source = resolve_pretrained(model, "PickScore model")
        self.processor_source = self.model_source if processor is None else resolve_processor(processor)
        self.allow_pickle = allow_pickle
        self.net: Optional[nn.Module] = None

    def _load(self) -> None:
        from transformers import AutoProcessor, CLIPModel

        net = load_component(CLIPModel, self.model_source, "PickScore model", allow_pickle=self.allow_pickle)
        self.net = net.eval().requires_grad_(False)
        self.processor = load_component(AutoProcessor, self.processor_source, "PickScore processor")

    @staticmethod
    def _embedding(output) -> torch.Tensor:
        """transformers 5 returns a model output whose pooler_output is the projection; 4.x a tensor."""
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    @torch.no_grad()
    def score(self, image: torch.Tensor, prompt: str) -> float:
        """PickScore of one (1, 3, H, W) image in [0, 1] with one prompt."""
        pixels = self.processor(images=to_pil(image), return_tensors="pt")["pixel_values"].to(self.device)
        text = self.processor(text=[prompt], padding=True, truncation=True, max_length=77, return_tensors="pt")
        text = {key: text[key].to(self.device) for key in ("input_ids", "attention_mask")}
        image_emb = F.normalize(self._embedding(self.net.get_image_features(pixel_values=pixels)), dim=-1)
        text_emb = F.normalize(self._embedding(self.net.get_text_features(**text)), dim=-1)
        return float(self.net.logit_scale.exp() * (image_emb * text_emb).sum())

    def update(self, result: EditResult, request) -> dict[str, float]:
        self.ready()
        return self.record({"pick/score": self.score(result.edit, request.edit_prompt)})


def pick_probability(scores_by_method: dict[str, list[float]]) -> dict[str, float]:
    """Mean over edits of the softmax over methods of their PickScores: Table 1's PickScore row."""
    lengths = {len(v) for v in scores_by_method.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise MetricError(f"pick_probability: every method needs a score for the same edits, got lengths "
                          f"{ {k: len(v) for k, v in scores_by_method.items()} }.")
    scores = torch.tensor([scores_by_method[m] for m in scores_by_method], dtype=torch.float64)  # (methods, edits)
    probs = scores.softmax(dim=0).mean(dim=1)
    return {method: float(p) for method, p in zip(scores_by_method, probs)}
