"""Feature-distribution metrics: Inception features, FID and the per-class CSFID of FlexIT/DiffEdit."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from framework.core.errors import ModelLoadError
from framework.evaluation.metrics.base import (
    IMAGE_SUFFIXES,
    EditMetric,
    FeatureExtractor,
    MetricError,
    class_label,
    image_features,
    load_weights,
    read_state_dict,
)
from framework.io.manifests import read_image
from framework.io.outputs import EditResult

log = logging.getLogger("framework")


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
                              f"framework.evaluation.metrics.build_class_statistics(folder_per_class, features, out).")
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
