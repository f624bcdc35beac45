"""The toy world's classifier: object colour and shape, and the figure's arm pose, from a crop.

It plays the part ImageNet classifiers play in the paper's evaluation: it reads what an edited
image shows at a place. Input is an image and a normalised box (x0, y0, x1, y1); the box is
widened by a margin, cropped and resized to `crop` px. Training crops jitter their boxes and add
noise and blur, so the classifier also reads decoded (slightly blurry) images.

Pose classes: each arm is "up" when its wrist is above its shoulder: 0 none, 1 right, 2 left, 3 both.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from framework.toy.model.data import TRAIN_SEED_OFFSET, images_to_tensor
from framework.toy.world import render, sample_scene
from framework.toy.world.scenes import COLOURS, L_SHO, L_WRI, R_SHO, R_WRI, SHAPES, figure_box, object_box

COLOUR_NAMES = tuple(COLOURS)
POSE_CLASSES = ("arms down", "right arm up", "left arm up", "both arms up")


def pose_class(figure) -> int:
    """0 none, 1 right, 2 left, 3 both arms up (wrist above shoulder; y grows downwards)."""
    right = figure[R_WRI][1] < figure[R_SHO][1]
    left = figure[L_WRI][1] < figure[L_SHO][1]
    return int(right) + 2 * int(left)


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, crop: int = 24, margin: float = 0.2) -> torch.Tensor:
    """Crops (b, 3, crop, crop) of `images` (b, 3, H, W) at normalised `boxes` (b, 4), widened by `margin`."""
    x0, y0, x1, y1 = boxes.unbind(1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = torch.maximum(x1 - x0, y1 - y0) / 2 * (1 + margin)
    # Sample at the crop's pixel centres.
    lin = (torch.arange(crop, device=images.device, dtype=images.dtype) + 0.5) / crop * 2 - 1
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    # grid_sample coordinates: -1..1 spans the image (align_corners=False).
    x = (cx[:, None, None] + half[:, None, None] * gx) * 2 - 1
    y = (cy[:, None, None] + half[:, None, None] * gy) * 2 - 1
    grid = torch.stack([x, y], -1).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class ToyClassifier(nn.Module):
    """A small CNN with three heads: colour (4), shape (3) and pose (4)."""

    def __init__(self, width: int = 32, crop: int = 24, margin: float = 0.2):
        super().__init__()
        self.config = {"width": width, "crop": crop, "margin": margin}
        w = width

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU())

        self.features = nn.Sequential(block(3, w), block(w, w), nn.AvgPool2d(2), block(w, 2 * w),
                                      block(2 * w, 2 * w), nn.AvgPool2d(2), block(2 * w, 2 * w),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({"colour": nn.Linear(2 * w, len(COLOUR_NAMES)),
                                    "shape": nn.Linear(2 * w, len(SHAPES)),
                                    "pose": nn.Linear(2 * w, len(POSE_CLASSES))})

    def forward(self, crops: torch.Tensor) -> dict[str, torch.Tensor]:
        """Crops in [0, 1] -> logits per head."""
        z = self.features(crops * 2 - 1)
        return {name: head(z) for name, head in self.heads.items()}

    @torch.no_grad()
    def classify(self, images: torch.Tensor, boxes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images (b, 3, H, W) in [0, 1] and boxes (b, 4) -> predicted class index per head."""
        param = next(self.parameters())
        crops = crop_boxes(images.to(param), boxes.to(param), self.config["crop"], self.config["margin"])
        return {k: v.argmax(1) for k, v in self(crops).items()}

    def save_pretrained(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, path / "model.safetensors")
        labels = {"colour": list(COLOUR_NAMES), "shape": list(SHAPES), "pose": list(POSE_CLASSES)}
        (path / "config.json").write_text(json.dumps({**self.config, "labels": labels}, indent=2))
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ToyClassifier:
        from safetensors.torch import load_file

        from framework.core.errors import EditError

        path = Path(path)
        if not (path / "config.json").exists() or not (path / "model.safetensors").exists():
            raise EditError(f"no toy classifier at '{path}' (config.json and model.safetensors expected); "
                            "train one with python -m framework.toy.model fit "
                            "--config experiments/toyworld/train_classifier.yaml")
        config = json.loads((path / "config.json").read_text())
        model = cls(config["width"], config["crop"], config["margin"])
        model.load_state_dict(load_file(path / "model.safetensors"))
        return model.eval()


# ---------------------------------------------------------------------------- training data


def scene_items(scene, size: int):
    """(box, colour, shape, pose) per object and figure; -1 marks a head that does not apply."""
    items = [(object_box(o), COLOUR_NAMES.index(o.colour), SHAPES.index(o.shape), -1) for o in scene.objects]
    if scene.figure is not None:
        items.append((figure_box(scene.figure), -1, -1, pose_class(scene.figure)))
    return items


def render_crops(count: int, size: int = 64, seed_offset: int = TRAIN_SEED_OFFSET, crop: int = 24,
                 margin: float = 0.2, jitter: float = 0.1, seed: int = 0) -> TensorDataset:
    """Crops and labels from scenes `seed_offset ...` (about 2 per scene) with box jitter."""
    rng = np.random.default_rng(seed)
    images, boxes, labels = [], [], []
    for i in range(count):
        scene = sample_scene(seed_offset + i, size)
        image = images_to_tensor(render(scene, size)[0])
        for box, colour, shape, pose in scene_items(scene, size):
            w = max(box[2] - box[0], box[3] - box[1])
            box = np.asarray(box) + rng.uniform(-jitter, jitter, 4) * w
            images.append(image)
            boxes.append(torch.tensor(box, dtype=torch.float32))
            labels.append(torch.tensor([colour, shape, pose]))
    crops = torch.cat([crop_boxes(torch.stack(images[i:i + 512]), torch.stack(boxes[i:i + 512]), crop, margin)
                       for i in range(0, len(images), 512)])
    return TensorDataset(crops, torch.stack(labels))


class CropData(L.LightningDataModule):
    """Labelled crops of rendered training scenes."""

    def __init__(self, scenes: int = 6000, size: int = 64, batch_size: int = 128, crop: int = 24,
                 margin: float = 0.2, seed_offset: int = TRAIN_SEED_OFFSET, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.dataset: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            h = self.hparams
            self.dataset = render_crops(h.scenes, h.size, h.seed_offset, h.crop, h.margin, seed=h.seed)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True,
                          generator=torch.Generator().manual_seed(self.hparams.seed))


def degrade(crops: torch.Tensor, noise: float = 0.04) -> torch.Tensor:
    """Random blur (half the batch) and Gaussian noise, like an imperfect decoder's output."""
    blurred = F.avg_pool2d(F.pad(crops, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    pick = (torch.rand(len(crops), 1, 1, 1, device=crops.device) < 0.5).to(crops.dtype)
    out = pick * blurred + (1 - pick) * crops
    return (out + noise * torch.rand(len(crops), 1, 1, 1, device=crops.device) * torch.randn_like(out)).clamp(0, 1)


class ClassifierTraining(L.LightningModule):
    """Trains `ToyClassifier` with a cross-entropy per applicable head; exports to `export_dir`."""

    def __init__(self, width: int = 32, crop: int = 24, margin: float = 0.2, lr: float = 2e-3,
                 export_dir: str = "outputs/toymodel/classifier"):
        super().__init__()
        self.save_hyperparameters()
        self.model = ToyClassifier(width, crop, margin)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        crops, labels = batch
        logits = self.model(degrade(crops))
        loss = crops.new_zeros(())
        for k, name in enumerate(("colour", "shape", "pose")):
            rows = labels[:, k] >= 0
            if rows.any():
                loss = loss + F.cross_entropy(logits[name][rows], labels[rows, k])
                acc = (logits[name][rows].argmax(1) == labels[rows, k]).float().mean()
                self.log(f"train/acc_{name}", acc, prog_bar=True)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        total = self.trainer.estimated_stepping_batches
        return {"optimizer": opt, "lr_scheduler": {
            "scheduler": torch.optim.lr_scheduler.OneCycleLR(opt, self.hparams.lr, total_steps=total),
            "interval": "step"}}

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            self.model.save_pretrained(self.hparams.export_dir)


@torch.no_grad()
def accuracy_on_scenes(model: ToyClassifier, seeds: Sequence[int], size: int = 64, images=None) -> dict[str, float]:
    """Accuracy per head over the objects and figures of scenes `seeds` (renders, or `images[i]`)."""
    hits: dict[str, list[bool]] = {"colour": [], "shape": [], "pose": []}
    for i, seed in enumerate(seeds):
        scene = sample_scene(seed, size)
        image = images[i] if images is not None else images_to_tensor(render(scene, size)[0])
        items = scene_items(scene, size)
        boxes = torch.tensor([it[0] for it in items], dtype=torch.float32)
        pred = model.classify(image[None].expand(len(items), -1, -1, -1).float(), boxes)
        for j, (_, colour, shape, pose) in enumerate(items):
            for name, label in (("colour", colour), ("shape", shape), ("pose", pose)):
                if label >= 0:
                    hits[name].append(int(pred[name][j]) == label)
    return {k: float(np.mean(v)) if v else float("nan") for k, v in hits.items()}
