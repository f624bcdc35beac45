"""The Lightning data module over a manifest: requests loaded and sized in workers, one edit per batch."""

from __future__ import annotations

from typing import Optional

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from framework.core.errors import ManifestError
from framework.core.request import EditRequest
from framework.io.captioning import Captioner
from framework.io.manifests import RequestSpec, check_requests, load_image, load_manifest, load_request, to_pil_image


class EditDataset(Dataset):
    def __init__(self, specs: list[RequestSpec], resolution: Optional[int]):
        self.specs = specs
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, index: int) -> Optional[EditRequest]:
        spec = self.specs[index]
        return None if spec is None else load_request(spec, self.resolution, index)


def _single(item: Optional[EditRequest]) -> Optional[EditRequest]:
    return item


def _several(items: list[Optional[EditRequest]]) -> list[Optional[EditRequest]]:
    return list(items)


class EditDataModule(pl.LightningDataModule):
    """Serves the requests of a manifest, one edit per step, in order; validated at construction."""

    def __init__(self, manifest: str, resolution: Optional[int] = None, limit: Optional[int] = None,
                 num_workers: int = 0, annotators: Optional[str] = None, allow_pickle: bool = False,
                 captioner: Optional[Captioner] = None, batch_size: int = 1):
        """
        Args:
            manifest: Path of a .yaml (list or `requests:` list) or .jsonl manifest of edit requests.
            resolution: Resize inputs so the longer side is this many pixels (None: keep the size).
                Sides are then cropped to multiples of 8.
            limit: Edit only the first `limit` requests.
            num_workers: DataLoader workers reading images.
            annotators: Local folder of lllyasviel/Annotators weights, for manifest maps made by the
                mlsd, hed, scribble and openpose detectors (never downloaded).
            allow_pickle: Allow loading those weights, which are pickle .pth files (pickles can run code).
            captioner: Writes the source prompt of requests that have none (e.g.
                framework.io.captioning.BlipCaptioner); the caption is recorded in the outputs.
            batch_size: Requests edited side by side in one set of UNet calls (each keeps its own mask, lam,
                seed and ITO; results as one at a time up to float rounding); raise it as far as memory allows.
        """
        super().__init__()
        if resolution is not None and resolution < 8:
            raise ManifestError(f"resolution must be >= 8 pixels, got {resolution}.")
        self.manifest = manifest
        self.resolution = resolution
        self.num_workers = num_workers
        self.captioner = captioner
        if batch_size < 1:
            raise ManifestError(f"batch_size must be >= 1, got {batch_size}.")
        self.batch_size = batch_size
        self.specs = self.load_specs(annotators, allow_pickle)[:limit]
        check_requests(self.specs, resolution)  # every file opened now, before any weights load

    def load_specs(self, annotators: Optional[str], allow_pickle: bool) -> list[RequestSpec]:
        """The validated requests to serve; subclasses (framework.evaluation.datasets) build them from other sources."""
        return load_manifest(self.manifest, annotators, allow_pickle, self.captioner is not None)

    def setup(self, stage: str) -> None:
        """Caption this process's requests that have no source prompt (before the editor loads)."""
        todo = [s for s in self.shard() if s is not None and s.source_prompt is None]
        if not todo:
            return
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        captioner = self.captioner.to(device).load()
        captions = captioner.caption([to_pil_image(load_image(s.image, self.resolution)) for s in todo])
        for spec, text in zip(todo, captions):
            spec.source_prompt = text
            spec.edit_prompt = text if spec.edit_prompt is None else spec.edit_prompt
            name = f"{type(captioner).__module__}.{type(captioner).__qualname__}"
            spec.extra["caption"] = {"text": text, "captioner": name,
                                     "pretrained": getattr(captioner, "pretrained", None)}
        self.captioner.to("cpu")  # free accelerator memory for the editor

    def transfer_batch_to_device(self, batch: Optional[EditRequest], device, dataloader_idx: int):
        if isinstance(batch, list):
            return [None if r is None else r.to(device) for r in batch]
        return None if batch is None else batch.to(device)

    def shard(self) -> list[Optional[RequestSpec]]:
        """This process's requests: every world_size-th from its rank, so none is edited twice.

        Shards are padded with None (a step that edits nothing) to equal length, because
        Lightning's loop synchronises the processes at every step.
        """
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size == 1:
            return self.specs
        shard: list[Optional[RequestSpec]] = self.specs[trainer.global_rank::trainer.world_size]
        return shard + [None] * (-(-len(self.specs) // trainer.world_size) - len(shard))

    def _loader(self) -> DataLoader:
        several = self.batch_size > 1
        return DataLoader(EditDataset(self.shard(), self.resolution), batch_size=self.batch_size if several else None,
                          shuffle=False, num_workers=self.num_workers, collate_fn=_several if several else _single)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()
