"""A content-keyed disk cache of soft edit masks, so that runs which share the mask do not recompute it.

The Eq. 7 mask is the most expensive stage of an edit (about 500 UNet sample-evaluations against
about 150 for the rest), and the runs of a sweep over lam, t_u, k or the baselines estimate the
very same mask. With `mask.cache_dir` set, each soft map (before the threshold) is stored under a
key that hashes everything it depends on: the input image and condition maps (their values), the
prompts, the backbone and conditioners (class, settings and a fingerprint of their weights), the
sampling settings it reads (not the encode ratio or the inversion's), the mask settings, the seed,
and the dtype and device kind. Changing any of them makes a new key; nothing is invalidated in place.
The threshold is part of the key only when the early stop reads binary masks.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from framework.core.errors import ConfigError, warn

_VERSION = 1
# Sampling settings the mask does not read (it decodes from its own strength, under C_0 and C_EDIT).
_NOT_IN_MASK = ("encode_ratio", "inversion_guidance_scale", "inversion_prompt")


def plain_fields(obj: Any) -> dict[str, Any]:
    """The class and the public scalar settings of `obj`: how a plugin is described in records and keys."""
    return {"class": f"{type(obj).__module__}.{type(obj).__name__}",
            **{k: v for k, v in vars(obj).items() if not k.startswith("_") and k != "training" and
               isinstance(v, (int, float, str, bool, type(None)))}}


def weights_fingerprint(obj: Any) -> str:
    """A digest of the weights of a loaded model (names, shapes and leading values of every tensor).

    It tells a retrained model from the old one at the same path; computed once per object.
    """
    if not isinstance(obj, torch.nn.Module):
        return ""
    cached = obj.__dict__.get("_weights_fingerprint")
    if cached is None:
        digest = hashlib.sha256()
        for name, t in (*obj.named_parameters(), *obj.named_buffers()):
            head = t.detach().flatten()[:256].float().cpu().contiguous()
            digest.update(f"{name}{tuple(t.shape)}".encode())
            digest.update(head.numpy().tobytes())
        cached = obj.__dict__["_weights_fingerprint"] = digest.hexdigest()[:32]
    return cached


def mask_key(request, backbone, conditioners, sampling, mask_cfg, seed: int, dtype: torch.dtype,
             device: torch.device) -> str:
    """A hex digest of everything the soft mask of `request` depends on."""
    mask = {k: v for k, v in asdict(mask_cfg).items() if k not in ("cache_dir", "given")}
    if mask_cfg.early_stop_iou is None:
        mask.pop("threshold")  # the soft map is thresholded after the cache
    spec = {"version": _VERSION, "backbone": plain_fields(backbone), "weights": weights_fingerprint(backbone),
            "conditioners": [{**plain_fields(c), "weights": weights_fingerprint(c)} for c in conditioners],
            "sampling": {k: v for k, v in asdict(sampling).items() if k not in _NOT_IN_MASK}, "mask": mask,
            "seed": int(seed), "dtype": str(dtype), "device": torch.device(device).type,
            "prompts": [request.source_prompt, request.edit_prompt],
            "maps": [sorted(request.source_maps), sorted(request.edit_maps)]}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode())
    _hash_inputs(digest, request)
    return digest.hexdigest()[:40]


def _hash_inputs(digest, request) -> None:
    """Add the values of the request's image and condition maps (sorted by modality) to `digest`."""
    tensors = [request.image, *(request.source_maps[k] for k in sorted(request.source_maps)),
               *(request.edit_maps[k] for k in sorted(request.edit_maps))]
    for t in tensors:
        t = t.detach().float().cpu().contiguous()
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.numpy().tobytes())


def request_digest(request) -> str:
    """A hex digest of an edit request's inputs: prompts, modalities, and the image's and maps' values."""
    spec = {"prompts": [request.source_prompt, request.edit_prompt],
            "maps": [sorted(request.source_maps), sorted(request.edit_maps)],
            "mask": None if request.mask is None else tuple(request.mask.shape)}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    _hash_inputs(digest, request)
    if request.mask is not None:
        digest.update(request.mask.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def settings_digest(parameters: dict[str, Any], *models: Any) -> str:
    """A hex digest of a run's settings (JSON-able) and the weights of its models (`weights_fingerprint`)."""
    spec = {"parameters": parameters, "weights": [weights_fingerprint(m) for m in models]}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:24]


class MaskCache:
    """Soft masks stored as `<folder>/<key>.pt`, written atomically."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"mask.cache_dir '{folder}' cannot be created ({err.strerror}); "
                              "give a writable folder or null to turn the cache off.") from err

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def get(self, key: str) -> torch.Tensor | None:
        """The stored soft map (h, w), or None when it is absent or damaged (said in one warning line; the caller
        recomputes it and `put` replaces the entry)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            soft = entry["soft"]
            problem = _damage(soft, entry.get("sha256"))
        except Exception as err:  # noqa: BLE001 - a truncated, emptied or foreign file: whatever torch raises
            problem = f"unreadable ({type(err).__name__})"
        if problem is None:
            return soft
        warn(f"mask cache entry '{path}' is {problem}: recomputing the mask and replacing the entry.")
        return None

    def put(self, key: str, soft: torch.Tensor) -> None:
        """Store a soft map, written to a temporary file and renamed, so a reader never sees half of one; a disk
        that cannot take it costs the cache, not the edit."""
        path = self.path(key)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        soft = soft.detach().float().cpu().contiguous()
        try:
            torch.save({"soft": soft, "sha256": _checksum(soft)}, tmp)
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            warn(f"mask cache entry '{path}' could not be written ({err.strerror or err}); the edit goes on "
                 "without caching its mask.")


def _checksum(soft: torch.Tensor) -> str:
    return hashlib.sha256(soft.numpy().tobytes()).hexdigest()


def _damage(soft: Any, checksum: str | None) -> str | None:
    """What is wrong with a stored soft map, or None. Entries written before the checksum have none to compare."""
    if not isinstance(soft, torch.Tensor) or soft.ndim != 2 or soft.dtype != torch.float32:
        return "not a soft mask (h, w)"
    if checksum is not None and _checksum(soft.contiguous()) != checksum:
        return "damaged (its values do not match its checksum)"
    if not torch.isfinite(soft).all():
        return "damaged (non-finite values)"
    return None
