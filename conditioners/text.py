"""Text condition: the backbone's text encoder(s), as a TextEncoding (framework.core.backbone)."""

from __future__ import annotations

from typing import Optional

import torch

from conditioners.base import Conditioner, ConditionSide, Encoding, UNetInputs
from framework.core.backbone import TextEncoding


class TextConditioner(Conditioner):
    """Encodes the side's prompt with the backbone's `encode_prompt` (SD 1.x: CLIP's last hidden state; SDXL: two
    encoders' penultimate states and a pooled embedding).

    Always present: when a config lists only layout conditioners, the engine puts this one first.
    """

    provides_text = True

    def __init__(self):
        super().__init__()
        self._cache: dict[str, TextEncoding] = {}

    def encode(self, side: ConditionSide, backbone) -> Optional[Encoding]:
        # The same prompt recurs (source, edit, negative); encode each once per request.
        if side.prompt not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[side.prompt] = backbone.encode_prompt(side.prompt)
        return self._cache[side.prompt]

    def apply(self, inputs: UNetInputs, latents: torch.Tensor, t: int, encoding: Encoding,
              progress: float) -> None:
        encoding.apply(inputs, latents.dtype if torch.is_floating_point(latents) else None)

    def clear(self) -> None:
        self._cache.clear()
