"""The conditioner contract: what a condition (prompt, pose map, scribble ...) adds to a UNet call.

A conditioner turns one side of a request (source C_0 or edit C_EDIT) into an encoding once per
request (`encode`), then, at every UNet call, adds what it contributes for the batch of latents
(`apply`): text embeddings, ControlNet residuals, adapter features. A list of conditioners is
applied in order, so text + pose + scribble is just three entries; the caller sees one interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import nn

Encoding = Union[torch.Tensor, tuple[torch.Tensor, ...]]


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

    def add_control(self, down: list[torch.Tensor], mid: torch.Tensor) -> None:
        """Sum ControlNet residuals (several ControlNets add up, as in diffusers' MultiControlNet)."""
        if self.down_block_additional_residuals is None:
            self.down_block_additional_residuals = list(down)
            self.mid_block_additional_residual = mid
        else:
            self.down_block_additional_residuals = [
                a + b for a, b in zip(self.down_block_additional_residuals, down)]
            self.mid_block_additional_residual = self.mid_block_additional_residual + mid

    def add_adapter(self, features: tuple[torch.Tensor, ...]) -> None:
        """Sum T2I-Adapter features (a fresh list: the UNet consumes it by popping)."""
        if self.down_intrablock_additional_residuals is None:
            self.down_intrablock_additional_residuals = list(features)
        else:
            self.down_intrablock_additional_residuals = [
                a + b for a, b in zip(self.down_intrablock_additional_residuals, features)]

    def as_kwargs(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None}


class Conditioner(nn.Module):
    """Base class of conditioner plugins (select one in YAML by `class_path`).

    Subclasses set `modality` (the key of their maps in a request, e.g. 'pose'; None for text)
    and implement `encode` and `apply`. Weights load in `load`, after configuration is checked.
    """

    modality: Optional[str] = None
    provides_text: bool = False  # True for the conditioner that sets encoder_hidden_states

    def load(self, backbone) -> None:
        """Read weights; called once before the first edit."""

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


class LayoutConditioner(Conditioner):
    """Shared set-up of conditioners that read a layout map of one modality with a diffusers model."""

    kind = "layout model"  # names the model in messages

    def __init__(self, modality: str, pretrained: str, scale: float = 1.0, start: float = 0.0,
                 end: float = 1.0, revision: Optional[str] = None, variant: Optional[str] = None,
                 allow_pickle: bool = False):
        """
        Args:
            modality: Key of this condition's maps in the manifest ('pose', 'scribble', 'lines', 'depth' ...).
            pretrained: Hub id or local folder of the diffusers model (e.g.
                'lllyasviel/control_v11p_sd15_openpose'), or 'builtin:tiny-random'.
            scale: Conditioning scale: multiplies what the model adds to the UNet.
            start: Fraction of the noise schedule (0 = pure noise) where the condition starts acting.
            end: Fraction where it stops.
            revision: Hub revision.
            variant: Weight variant such as 'fp16'.
            allow_pickle: Also load pickle weights (they can run code; off by default).
        """
        super().__init__()
        from framework.errors import ConfigError
        from framework.models import check_family, check_variant, resolve_pretrained

        if not 0 <= start <= end <= 1:
            raise ConfigError(f"{self.kind} '{modality}': need 0 <= start <= end <= 1, got start={start}, end={end}.")
        self.modality = modality
        self.pretrained = pretrained
        self.scale = scale
        self.start, self.end = start, end
        self.revision, self.variant, self.allow_pickle = revision, variant, allow_pickle
        self._source = resolve_pretrained(pretrained, f"{self.kind} '{modality}'", None, revision)
        check_family(pretrained, f"{self.kind} '{modality}'", revision)  # from its config, before any weights load
        check_variant(pretrained, variant, f"{self.kind} '{modality}'")

    def _folder(self, builtin_kind: str) -> str:
        from framework.models import BUILTIN_PREFIX, builtin_folder

        source = self._source
        return str(builtin_folder(source, builtin_kind, self.modality)) if source.startswith(BUILTIN_PREFIX) else source

    def _load_model(self, cls, builtin_kind: str, check=None, backbone=None):
        """The model, frozen, from a hub id, a local folder or a built-in name.

        `check(config, unet_config, what, source, backbone_name)` runs on its config.json first, so a model
        that does not fit the backbone's UNet is refused before its weights are read."""
        from framework.models import load_component, load_config

        source, what = self._folder(builtin_kind), f"{self.kind} '{self.modality}'"
        unet = getattr(backbone, "unet", None)
        if check is not None and unet is not None:
            check(load_config(cls, source, what, revision=self.revision), unet.config, what, self.pretrained,
                  getattr(backbone, "pretrained", "?"))
        model = load_component(cls, source, what, revision=self.revision,
                               variant=self.variant, allow_pickle=self.allow_pickle)
        return model.requires_grad_(False).eval()

    def _check_loaded(self, model, check, backbone) -> None:
        """The same check for a model given already loaded."""
        unet = getattr(backbone, "unet", None)
        if unet is not None:
            check(model.config, unet.config, f"{self.kind} '{self.modality}'", self.pretrained,
                  getattr(backbone, "pretrained", "?"))
