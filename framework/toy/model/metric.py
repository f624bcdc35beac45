"""`ToyClassifierAccuracy`: the toy world's stand-in for Table 1's classification accuracy.

The toy classifier reads the edited image where the edit should have acted, using the request's
`meta` (written by `framework.toy.datasets.ToyEditDataModule`):

- text edits: colour and shape at the object's box; `toy/new_class` is 1 when both are the target
  class, `toy/original_class` when both are the source class;
- pose edits whose arm-pose class changes: the arm-pose class at the figure's box, new vs original;
- scribble edits: the moved object's class at its new box (`toy/new_class`) and, when the old and
  new boxes barely overlap (IoU < 0.3), whether the old place still shows it (`toy/original_class`).

Values are also kept per kind (`toy/<kind>/new_class`). Edits without such meta give {}.
"""

from __future__ import annotations

import torch

from framework.evaluation.metrics import EditMetric
from framework.io.outputs import EditResult
from framework.toy.model.classifier import COLOUR_NAMES, POSE_CLASSES, ToyClassifier
from framework.toy.world.scenes import SHAPES

BUILTIN_CLASSIFIER = "builtin:toyworld"


def _box_iou(a, b) -> float:
    """IoU of two normalised (x0, y0, x1, y1) boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class ToyClassifierAccuracy(EditMetric):
    """Accuracy of toy edits as their new and as their original class, read by the toy classifier."""

    def __init__(self, classifier: str = BUILTIN_CLASSIFIER):
        """
        Args:
            classifier: Folder of a trained `ToyClassifier`, or 'builtin:toyworld' (the bundled one).
        """
        super().__init__()
        self.classifier = classifier
        self.net: ToyClassifier | None = None

    def _load(self) -> None:
        path = self.classifier
        if path == BUILTIN_CLASSIFIER:
            from framework.backbones import builtin_folder

            path = builtin_folder(BUILTIN_CLASSIFIER, "classifier")
        self.net = ToyClassifier.from_pretrained(path).to(self.device)

    def _read(self, image: torch.Tensor, box) -> dict[str, int]:
        pred = self.net.classify(image, torch.tensor([box], dtype=torch.float32, device=image.device))
        return {k: int(v) for k, v in pred.items()}

    def _object_is(self, read: dict[str, int], cls: str) -> bool:
        colour, shape = cls.split()
        return COLOUR_NAMES[read["colour"]] == colour and SHAPES[read["shape"]] == shape

    @torch.no_grad()
    def update(self, result: EditResult, request) -> dict[str, float]:
        self.ready()
        meta = (request.extra or {}).get("meta") or {}
        kind = meta.get("kind")
        edit = result.edit.float().to(self.device)
        values: dict[str, float] = {}
        if "target_class" in meta and "target_box" in meta:
            read = self._read(edit, meta["target_box"])
            values = {"new_class": float(self._object_is(read, meta["target_class"])),
                      "original_class": float(self._object_is(read, meta["source_class"]))}
        elif "object_class" in meta and "target_box" in meta:
            new = self._read(edit, meta["target_box"])
            values = {"new_class": float(self._object_is(new, meta["object_class"]))}
            if _box_iou(meta["source_box"], meta["target_box"]) < 0.3:  # moved away: is it still at the old place?
                old = self._read(edit, meta["source_box"])
                values["original_class"] = float(self._object_is(old, meta["object_class"]))
        elif meta.get("source_pose") not in (None, meta.get("target_pose")) and "figure_box" in meta:
            pose = POSE_CLASSES[self._read(edit, meta["figure_box"])["pose"]]
            values = {"new_class": float(pose == meta["target_pose"]),
                      "original_class": float(pose == meta["source_pose"])}
        if not values:
            return {}
        out = {f"toy/{k}": v for k, v in values.items()}
        if kind:
            out.update({f"toy/{kind}/{k}": v for k, v in values.items()})
        return self.record(out)
