"""The conditioner contract: what a condition (prompt, pose map, scribble ...) adds to a UNet call.

A conditioner turns one side of a request (source C_0 or edit C_EDIT) into an encoding once per
request (`encode`), then, at every UNet call, adds what it contributes for the batch of latents
(`apply`): text embeddings, ControlNet residuals, adapter features. A list of conditioners is
applied in order, so text + pose + scribble is just three entries; the caller sees one interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

Encoding = Any  # a tensor, a tuple of tensors or a TextEncoding (framework.core.backbone), batch-first


@dataclass
class ConditionSide:
    """One side of an edit request: a prompt and layout maps by modality, each (1, 3, H, W) in [0, 1]."""

    prompt: str
    maps: dict[str, torch.Tensor] = field(default_factory=dict)

    def unconditional(self, negative_prompt: str) -> "ConditionSide":
        """The classifier-free-guidance partner: the negative prompt, the same layout maps."""
        return ConditionSide(negative_prompt, self.maps)


@dataclass
class UNetInputs:
    """Keyword arguments of one `UNet2DConditionModel` call, built up by the conditioners."""

    encoder_hidden_states: Optional[torch.Tensor] = None
    down_block_additional_residuals: Optional[list[torch.Tensor]] = None
    mid_block_additional_residual: Optional[torch.Tensor] = None
    down_intrablock_additional_residuals: Optional[list[torch.Tensor]] = None
    block_controlnet_hidden_states: Optional[list[torch.Tensor]] = None  # a transformer's ControlNet blocks (SD3, FLUX)
    single_block_controlnet_hidden_states: Optional[list[torch.Tensor]] = None  # FLUX's single-stream blocks
    added_cond_kwargs: Optional[dict[str, torch.Tensor]] = None  # a family's extras (SDXL: text_embeds, time_ids)
    control_samples: int = 0
    """ControlNet sample-evaluations behind these inputs (each ControlNet counts its batch)."""

    def add_control(self, down: list[torch.Tensor], mid: torch.Tensor) -> None:
        """Sum ControlNet residuals (several ControlNets add up, as in diffusers' MultiControlNet)."""
        self.control_samples += int(mid.shape[0])
        if self.down_block_additional_residuals is None:
            self.down_block_additional_residuals = list(down)
            self.mid_block_additional_residual = mid
        else:
            self.down_block_additional_residuals = [
                a + b for a, b in zip(self.down_block_additional_residuals, down)]
            self.mid_block_additional_residual = self.mid_block_additional_residual + mid

    def add_blocks(self, blocks, single=None) -> None:
        """Sum a transformer ControlNet's block samples (several add up, as in diffusers' multi-ControlNets)."""
        def summed(current, new):
            return None if new is None else list(new) if current is None else [a + b for a, b in zip(current, new)]
        self.control_samples += int(blocks[0].shape[0])
        self.block_controlnet_hidden_states = summed(self.block_controlnet_hidden_states, blocks)
        self.single_block_controlnet_hidden_states = summed(self.single_block_controlnet_hidden_states, single) \
            if single is not None else self.single_block_controlnet_hidden_states

    def add_adapter(self, features: tuple[torch.Tensor, ...]) -> None:
        """Sum T2I-Adapter features (a fresh list: the UNet consumes it by popping)."""
        if self.down_intrablock_additional_residuals is None:
            self.down_intrablock_additional_residuals = list(features)
        else:
            self.down_intrablock_additional_residuals = [
                a + b for a, b in zip(self.down_intrablock_additional_residuals, features)]

    def as_kwargs(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None and k != "control_samples"}


class Conditioner(nn.Module):
    """Base class of conditioner plugins (select one in YAML by `class_path`).

    Subclasses set `modality` (the key of their maps in a request, e.g. 'pose'; None for text)
    and implement `encode` and `apply`. Weights load in `load`, after configuration is checked.
    """

    modality: Optional[str] = None
    provides_text: bool = False  # True for the conditioner whose encoding is the TextEncoding (cross-attention)

    def load(self, backbone) -> None:
        """Read weights; called once before the first edit."""

    def check_backbone(self, backbone) -> None:
        """Refuse a backbone this conditioner cannot serve, before any weights load (nothing to check by default)."""

    def encode(self, side: ConditionSide, backbone) -> Optional[Encoding]:
        """Encode one side of a request (batch 1); None when the request does not use this condition."""
        raise NotImplementedError

    def apply(self, inputs: UNetInputs, latents: torch.Tensor, t: int, encoding: Encoding,
              progress: float) -> None:
        """Add this condition's contribution for `latents` (b, 4, h, w) at timestep t.

        `encoding` has batch b. `progress` in [0, 1] is how far along the noise schedule t is
        (0 = pure noise, 1 = clean), used by start/end windows.
        """
        raise NotImplementedError

    def map_for(self, side: ConditionSide) -> Optional[torch.Tensor]:
        return side.maps.get(self.modality) if self.modality else None

    def train(self, mode: bool = True) -> "Conditioner":
        """Conditioners are frozen: they stay in eval mode."""
        return super().train(False)


def in_window(progress: float, start: float, end: float) -> bool:
    """Whether a condition acts at this point of the schedule (ControlNet's guidance start/end)."""
    return start <= progress <= end


