"""PickScore: a CLIP-H preference model's score of each edit against its edit prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from framework.backbones.loading import load_component, resolve_pretrained
from framework.evaluation.metrics.base import EditMetric, MetricError
from framework.io.outputs import EditResult, to_pil


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
