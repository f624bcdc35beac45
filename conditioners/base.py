"""The conditioners' shared base: `LayoutConditioner`, a layout map of one modality read by a diffusers model.

The contract every conditioner fulfils (`Conditioner`, `ConditionSide`, `UNetInputs`) lives in
framework.core.conditioning, the procedure's layer; it is re-exported here for the old imports.
"""

from __future__ import annotations

from typing import Optional

from framework.backbones.loading import (
    BUILTIN_PREFIX,
    SD3,
    SDXL,
    builtin_folder,
    check_family,
    check_variant,
    checkpoint_family,
    load_component,
    load_config,
    resolve_pretrained,
)
from framework.core.conditioning import Conditioner, ConditionSide, Encoding, UNetInputs, in_window  # noqa: F401
from framework.core.errors import ConfigError, ModelLoadError

FITTING = {  # a layout model of each family for each kind, for the wrong-family message
    ("ControlNet", "SD 1.x"): "lllyasviel/control_v11p_sd15_openpose",
    ("ControlNet", SDXL): "xinsir/controlnet-openpose-sdxl-1.0",
    ("T2I-Adapter", "SD 1.x"): "TencentARC/t2iadapter_openpose_sd14v1",
    ("T2I-Adapter", SDXL): "TencentARC/t2i-adapter-openpose-sdxl-1.0",
    ("ControlNet", SD3): "InstantX/SD3-Controlnet-Pose",
}


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

    def check_backbone(self, backbone) -> None:
        """Refuse, in one line and from the configs alone (before any weights load), a model of the other family
        than the backbone's: an SD 1.x ControlNet on SDXL or an SDXL one on SD 1.x. Finer mismatches (SD 2.x
        widths, channels) are caught from the configs when the model loads (conditioners.compat)."""
        mine, _ = checkpoint_family(self.pretrained, self.revision)
        theirs = getattr(backbone, "family", None)
        if mine is None or theirs is None or mine == theirs:
            return
        example = FITTING.get((self.kind, theirs))
        raise ModelLoadError(
            f"{self.kind} '{self.modality}' ({self.pretrained}) is an {mine} model but the backbone "
            f"({getattr(backbone, 'pretrained', '?')}) is {theirs}: use a {self.kind} for {theirs}"
            f"{f' such as {example}' if example else ''}, or an {mine} checkpoint as the backbone's `pretrained`.")

    def _folder(self, builtin_kind: str) -> str:

        source = self._source
        return str(builtin_folder(source, builtin_kind, self.modality)) if source.startswith(BUILTIN_PREFIX) else source

    def _load_model(self, cls, builtin_kind: str, check=None, backbone=None):
        """The model, frozen, from a hub id, a local folder or a built-in name.

        `check(config, unet_config, what, source, backbone_name)` runs on its config.json first, so a model
        that does not fit the backbone's UNet is refused before its weights are read."""

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
