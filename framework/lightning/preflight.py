"""Notices given once the weights are loaded and before the first edit: what the run will not do as written.

The files of every request were checked when the data module was built (`framework.io.manifests.check_requests`);
what needs the tokenizer or the whole configuration is checked here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from PIL import Image

from framework.core.errors import EditWarning, note, warn
from framework.io.manifests import target_size


class PromptTruncated(EditWarning):
    """A prompt is longer than the text encoder reads; the edit uses its beginning only."""


def _notice(text: str) -> None:
    if int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))) == 0:  # every process checks every request
        note(text)


def warn_long_prompts(backbone: Any, specs: list) -> dict[str, dict[str, str]]:
    """Warn once per request whose prompts the tokenizer cuts; return {id: {field: text used}}."""
    used_by = getattr(backbone, "prompt_used", None)
    if used_by is None or getattr(backbone, "tokenizer", None) is None:
        return {}
    cut: dict[str, dict[str, str]] = {}
    for spec in specs:
        if spec is None:
            continue
        prompts = {"source_prompt": spec.source_prompt, "edit_prompt": spec.edit_prompt}
        used = {k: used_by(p) for k, p in prompts.items() if isinstance(p, str)}
        used = {k: v for k, v in used.items() if v is not None}
        if used:
            cut[spec.id] = used
            limit = backbone.tokenizer.model_max_length
            fields = " and ".join(used)
            warn(f"Request '{spec.id}': its {fields} is longer than the text encoder's {limit} tokens; "
                 f"only its first tokens are used (up to '...{next(iter(used.values()))[-40:]}'). "
                 f"result.json records the text used under prompts_used.", PromptTruncated)
    return cut


def seed_notice(seed: int, specs: list) -> None:
    """Say when `model.seed` is set but requests set their own seed (a request's seed wins)."""
    own = [s for s in specs if s is not None and s.seed is not None]
    if seed == 0 or not own:  # 0: the default, nothing was asked of it
        return
    if len(own) == len([s for s in specs if s is not None]):
        _notice(f"model.seed {seed} has no effect: every request of the manifest sets its own `seed` (a request's "
                f"seed wins). Remove `seed` from the manifest to vary it from the command line.")
    else:
        _notice(f"model.seed {seed} applies to {len(specs) - len(own)} of {len(specs)} requests; the others set "
                f"their own `seed` in the manifest.")


def native_size(backbone: Any) -> Optional[int]:
    """The image side the backbone was trained at: the UNet's sample_size (latent pixels) x the VAE's scale factor
    (SD 1.5: 64 x 8 = 512; the bundled toy model: 16 x 4 = 64); None when the backbone does not say."""
    unet = getattr(backbone, "unet", None)
    size = getattr(getattr(unet, "config", None), "sample_size", None)
    if size is None or getattr(backbone, "vae", None) is None:
        return None
    size = size[0] if isinstance(size, (list, tuple)) else size
    return int(size) * int(backbone.vae_scale_factor)


def size_notice(backbone: Any, specs: list, resolution: Optional[int]) -> list[str]:
    """Say (in one line) which requests run at a size more than twice or under half the backbone's native size,
    the size used and the setting to change; return their ids. Far from its size a model gives noise, and a large
    image is slow (a 512 px photo through the 64 px toy model: ~7 minutes for a 4-step edit on 2 CPU cores)."""
    native = native_size(backbone)
    if native is None:
        return []
    far = []
    for spec in specs:
        if spec is None or not isinstance(getattr(spec, "image", None), Path):
            continue
        try:
            with Image.open(spec.image) as img:  # the header only (the files were decoded when checked); the
                size = img.size  # EXIF orientation may swap the sides, which leaves the longer one as it is
        except OSError:
            continue
        _, (width, height) = target_size(*size, resolution)
        if not native / 2 <= max(width, height) <= native * 2:
            far.append((spec.id, width, height))
    if far:
        shown = ", ".join(f"'{i}' at {w}x{h} px" for i, w, h in far[:3]) + (
            f" and {len(far) - 3} more" if len(far) > 3 else "")
        where = "data.resolution " + (str(resolution) if resolution else "unset (each image at its own size)")
        _notice(f"{len(far)} request(s) run far from the model's native {native} px (more than 2x off; {where}): "
                f"{shown}. Set --data.resolution {native} (the longer side in pixels) to edit at the model's size; "
                f"far from it edits are slow and can be noise.")
    return [i for i, _, _ in far]


def after_load(module: Any, datamodule: Any) -> None:
    """The checks that need the loaded model, on this run's requests."""
    specs = list(getattr(datamodule, "specs", []) or [])
    warn_long_prompts(getattr(module, "backbone", None), specs)
    seed_notice(int(getattr(module, "seed", 0) or 0), specs)
    size_notice(getattr(module, "backbone", None), specs, getattr(datamodule, "resolution", None))
