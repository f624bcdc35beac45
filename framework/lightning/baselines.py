"""Baselines as compositions of the same stages: DiffEdit and ControlNet-SDEdit (paper Sec. 4).

Each is EditModule with other plugins in its slots, nothing else; the same composition is a few lines
of YAML (experiments/eval/toy_table1.yaml writes prompt-to-prompt that way):

    model:
      class_path: framework.EditModule
      init_args:
        decoder: {class_path: framework.stages.MaskBlendDecode}        # DiffEdit
        # SDEdit: decoder framework.stages.NoiseEncodedDecode, mask_estimator framework.stages.NoMask

These two class paths are kept because shipped YAMLs and records name them. Every other setting
(backbone, conditioners, sampling, mask) is shared with EditModule, so comparisons differ only in the
method. ITO with lam = 1 and the full method are EditModule itself.
"""

from __future__ import annotations

from framework.lightning.module import EditModule
from framework.stages import MaskBlendDecode, NoiseEncodedDecode, NoMask


class DiffEdit(EditModule):
    """DiffEdit (Couairon et al. 2022): the inversion, the mask, then decoding with mask blending
    (framework.stages.MaskBlendDecode). No ITO and no guidance image. Set `sampling.encode_ratio` to 0.7
    (DiffEdit's default) or 1.0 (the paper's layout setting)."""

    def __init__(self, *args, alignment: str = "exact", **kwargs):
        """
        Args:
            alignment: 'exact' (blend with the same noise level) or 'diffusers' (as diffusers' pipeline).
        """
        if kwargs.get("decoder") is None:  # the CLI passes every slot, unset ones as None
            kwargs["decoder"] = MaskBlendDecode(alignment)
        super().__init__(*args, **kwargs)
        self.alignment = alignment


class SDEdit(EditModule):
    """ControlNet-SDEdit (Meng et al. 2021): random-noise encoding to the encode ratio, then decoding under
    the edit condition (framework.stages.NoiseEncodedDecode). No inversion, mask or ITO."""

    def __init__(self, *args, **kwargs):
        for slot, default in (("decoder", NoiseEncodedDecode), ("mask_estimator", NoMask)):
            if kwargs.get(slot) is None:  # the CLI passes every slot, unset ones as None
                kwargs[slot] = default()
        super().__init__(*args, **kwargs)
