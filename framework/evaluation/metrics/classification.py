"""Classification accuracy of edits as their new and their original class (FlexIT's DeiT protocol)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from framework.core.errors import ModelLoadError
from framework.evaluation.metrics.base import (
    EditMetric,
    MetricError,
    load_weights,
    meta_of,
    read_state_dict,
    resize_centre_crop,
)
from framework.io.outputs import EditResult

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
