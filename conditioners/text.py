"""Text condition: the CLIP text encoder of the Stable Diffusion checkpoint."""

from __future__ import annotations

from typing import Optional

import torch

from conditioners.base import Conditioner, ConditionSide, Encoding, UNetInputs


class TextConditioner(Conditioner):
    """Encodes the side's prompt with the backbone's CLIP text encoder (SD 1.x: last hidden state).

    Always present: when a config lists only layout conditioners, the engine puts this one first.
    """

    provides_text = True

    def __init__(self):
        super().__init__()
        self._cache: dict[str, torch.Tensor] = {}

    def encode(self, side: ConditionSide, backbone) -> Optional[Encoding]:
        # The same prompt recurs (source, edit, negative); encode each once per request.
        if side.prompt not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[side.prompt] = backbone.encode_prompt(side.prompt)
        return self._cache[side.prompt]

    def apply(self, inputs: UNetInputs, latents: torch.Tensor, t: int, encoding: Encoding,
              progress: float) -> None:
        inputs.encoder_hidden_states = encoding.to(latents.dtype) if torch.is_floating_point(latents) else encoding

    def clear(self) -> None:
        self._cache.clear()
