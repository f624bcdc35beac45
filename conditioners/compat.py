"""Does a ControlNet or T2I-Adapter fit the backbone's UNet? Checked from the configs, before the weights load.

A ControlNet of another model family loads without complaint and fails only at the first UNet call
(an SD 2.x one with `mat1 and mat2 shapes cannot be multiplied (77x768 and 1024x320)`, an SDXL one
with a TypeError about `added_cond_kwargs`). The configs say it at once: the cross-attention width
(the text encoder's: SD 1.x 768, SD 2.x 1024, SDXL 2048), the block channels (where the residuals
are added) and the addition embeddings (SDXL's `text_time`).
"""

from __future__ import annotations

from typing import Any, Optional

from framework.core.errors import ModelLoadError

FAMILIES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
EXAMPLES = {  # checkpoints that fit each family, for the message
    "SD 1.x": "an SD 1.5 one such as lllyasviel/control_v11p_sd15_openpose",
    "SD 2.x": "an SD 2.1 one such as thibaud/controlnet-sd21-openpose-diffusers",
    "SDXL": "an SDXL one such as xinsir/controlnet-openpose-sdxl-1.0",
}
ADAPTER_EXAMPLES = {
    "SD 1.x": "an SD 1.4/1.5 one such as TencentARC/t2iadapter_openpose_sd14v1",
    "SDXL": "an SDXL one such as TencentARC/t2i-adapter-openpose-sdxl-1.0",
}


def _get(config: Any, key: str, default=None):
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def family(config: Any) -> str:
    """'SD 1.x', 'SD 2.x', 'SDXL', or 'a model with cross-attention N' from a UNet or ControlNet config."""
    if _get(config, "addition_embed_type") == "text_time":
        return "SDXL"
    dim = _get(config, "cross_attention_dim")
    dim = dim[0] if isinstance(dim, (list, tuple)) else dim
    return FAMILIES.get(dim, f"a model with cross-attention {dim}")


def _fix(fits: str, examples: dict[str, str], kind: str) -> str:
    return examples.get(fits, f"a {kind} made from this UNet (e.g. ControlNetModel.from_unet)"
                        if kind == "ControlNet" else f"a {kind} whose channels are the UNet's block_out_channels")


def controlnet_mismatch(controlnet: Any, unet: Any) -> Optional[str]:
    """What differs between a ControlNet config and the UNet's (None: it fits)."""
    differences = []
    for key in ("cross_attention_dim", "addition_embed_type"):
        a, b = _get(controlnet, key), _get(unet, key)
        if a != b:
            differences.append(f"{key} {a} vs the UNet's {b}")
    a, b = tuple(_get(controlnet, "block_out_channels") or ()), tuple(_get(unet, "block_out_channels") or ())
    if a != b:
        differences.append(f"block_out_channels {list(a)} vs the UNet's {list(b)}")
    return "; ".join(differences) or None


def check_controlnet(controlnet: Any, unet: Any, what: str, source: str, backbone: str) -> None:
    """ModelLoadError naming the ControlNet's family, the UNet's and a checkpoint that fits."""
    differences = controlnet_mismatch(controlnet, unet)
    if differences is None:
        return
    made_for, fits = family(controlnet), family(unet)
    raise ModelLoadError(
        f"{what} ({source}) was made for {made_for} but the backbone ({backbone}) is {fits} ({differences}): "
        f"use a ControlNet for {fits}, {_fix(fits, EXAMPLES, 'ControlNet')}.")


def adapter_mismatch(adapter: Any, unet: Any) -> Optional[str]:
    """What differs between a T2I-Adapter config and the UNet's (None: it fits)."""
    differences = []
    xl_adapter = _get(adapter, "adapter_type") == "full_adapter_xl"
    xl_unet = _get(unet, "addition_embed_type") == "text_time"
    if xl_adapter != xl_unet:
        differences.append(f"adapter_type {_get(adapter, 'adapter_type')} for "
                           f"{'SDXL' if xl_adapter else 'SD 1.x/2.x'} UNets")
    channels = list(_get(adapter, "channels") or [])
    blocks = list(_get(unet, "block_out_channels") or [])
    if channels and channels != blocks[: len(channels)]:
        differences.append(f"channels {channels} vs the UNet's block_out_channels {blocks}")
    return "; ".join(differences) or None


def check_adapter(adapter: Any, unet: Any, what: str, source: str, backbone: str) -> None:
    """ModelLoadError naming what differs and a T2I-Adapter that fits."""
    differences = adapter_mismatch(adapter, unet)
    if differences is None:
        return
    fits = family(unet)
    made_for = "SDXL" if _get(adapter, "adapter_type") == "full_adapter_xl" else "another UNet"
    raise ModelLoadError(
        f"{what} ({source}) was made for {made_for} but the backbone ({backbone}) is {fits} ({differences}): "
        f"use a T2I-Adapter for {fits}, {_fix(fits, ADAPTER_EXAMPLES, 'T2I-Adapter')}.")
