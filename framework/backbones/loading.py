"""Loading diffusers components by hub id or local folder, with errors that say what to do."""

from __future__ import annotations

import importlib
import logging
import os
import socket
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from framework.core.errors import ConfigError, ModelLoadError

BUILTIN_PREFIX = "builtin:"
log = logging.getLogger("framework")
_announced: set[tuple[str, str]] = set()  # built-in models already announced in this process


def _rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))

_HUB_CHECK_TIMEOUT_S = 3.0
_LOAD_OFFLINE: set[str] = set()  # hub ids found in the cache while the Hub was unreachable: no retries


def _looks_like_hub_id(name: str) -> bool:
    """`org/name` with no path decorations; anything else is taken as a local path."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and "\\" not in name


def _hub_reachable() -> bool:
    """A short TCP connect to the Hub endpoint, so an offline machine fails at once instead of hanging."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=_HUB_CHECK_TIMEOUT_S):
            return True
    except OSError:
        return False


def _cached_on_hub(repo_id: str, subfolder: Optional[str], revision: Optional[str]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    filename = f"{subfolder}/config.json" if subfolder else "config.json"
    return isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str)


def resolve_pretrained(pretrained: str, what: str, subfolder: Optional[str] = None,
                       revision: Optional[str] = None) -> str:
    """Check that `pretrained` can be loaded, cheaply, before any model work; return what to load.

    Accepts a local folder, a hub id (cached, or with the Hub reachable) or a `builtin:` name.
    """
    if pretrained.startswith(BUILTIN_PREFIX):
        check_builtin(pretrained)
        return pretrained
    path = Path(pretrained).expanduser()
    if path.exists():
        folder = path / subfolder if subfolder else path
        if not (folder / "config.json").exists() and not (folder / "scheduler_config.json").exists():
            raise ModelLoadError(
                f"{what}: '{folder}' has no config.json; it is not a diffusers model folder. Point "
                f"`pretrained` at a folder written by `save_pretrained` (or a hub snapshot)."
            )
        return str(path)
    if not _looks_like_hub_id(pretrained):
        raise ModelLoadError(
            f"{what}: the folder '{pretrained}' does not exist. Fix the path, or give a hub id "
            f"such as 'stable-diffusion-v1-5/stable-diffusion-v1-5'."
        )
    if _cached_on_hub(pretrained, subfolder, revision):
        if not _hub_reachable():  # load from the cache at once instead of ~200 s of retries
            _LOAD_OFFLINE.add(pretrained)
        return pretrained
    if not _hub_reachable():
        raise ModelLoadError(
            f"{what}: '{pretrained}' is not in the local Hugging Face cache and the Hub cannot be "
            f"reached (offline). Download it where there is network "
            f"(`hf download {pretrained} --local-dir <folder>`) and set `pretrained: <folder>`, "
            f"or copy the cache into HF_HOME."
        )
    return pretrained


def _has_weights(cls) -> bool:
    """diffusers and transformers models take `use_safetensors`; tokenizers and schedulers have no weights."""
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    return issubclass(cls, (ModelMixin, PreTrainedModel))


def _source_kwargs(pretrained: str, subfolder: Optional[str], revision: Optional[str]) -> dict:
    kwargs: dict = {"subfolder": subfolder} if subfolder else {}
    if revision:
        kwargs["revision"] = revision
    if pretrained in _LOAD_OFFLINE:
        kwargs["local_files_only"] = True
    return kwargs


_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pth", ".pt")


def _load_hint(err: Exception, pretrained: str, subfolder: Optional[str], allow_pickle: bool) -> tuple[str, str]:
    """(the library's message without advice that does not fit, the project's hint for this cause)."""
    text = str(err).strip().rstrip(".")
    if "expected shape" in text or "size mismatch" in text or "ignore_mismatched_sizes" in text:
        # diffusers suggests ignore_mismatched_sizes, which would replace the weights with random ones.
        text = text.split(" If you want to instead overwrite", 1)[0].rstrip(".")
        return text, ("The weights do not have the shapes their config.json describes: the folder mixes files of "
                      "different checkpoints. Copy the whole checkpoint again.")
    missing = "no file named" in text or "does not appear to have a file named" in text
    if missing and not allow_pickle:
        folder = Path(pretrained).expanduser() / (subfolder or "")
        pickles = sorted(p.name for p in folder.glob("*") if p.suffix in _PICKLE_SUFFIXES) if folder.is_dir() else []
        if pickles or not folder.is_dir():
            found = f" (this folder has {', '.join(pickles)})" if pickles else ""
            return text, (f"Only safetensors weights load by default{found}: convert them, or set "
                          f"`allow_pickle: true` if you trust the files (pickles can run code).")
        return text, "The folder has no weights file: copy the whole checkpoint."
    return text, ""


def load_component(cls, pretrained: str, what: str, subfolder: Optional[str] = None,
                   revision: Optional[str] = None, variant: Optional[str] = None,
                   allow_pickle: bool = False):
    """`cls.from_pretrained` with the project's conventions: safetensors only unless allowed."""
    kwargs = _source_kwargs(pretrained, subfolder, revision)
    if variant:
        kwargs["variant"] = variant
    if not allow_pickle and _has_weights(cls):
        kwargs["use_safetensors"] = True
    try:
        return cls.from_pretrained(pretrained, **kwargs)
    except (OSError, EnvironmentError, ValueError) as err:
        text, hint = _load_hint(err, pretrained, subfolder, allow_pickle)
        hint = f" {hint}" if hint else ""
        raise ModelLoadError(f"{what}: could not load from '{pretrained}': {text}.{hint}") from err


def load_config(cls, pretrained: str, what: str, subfolder: Optional[str] = None,
                revision: Optional[str] = None) -> dict:
    """The config.json of a diffusers model (no weights read), for checks before loading."""
    try:
        return dict(cls.load_config(pretrained, **_source_kwargs(pretrained, subfolder, revision)))
    except (OSError, EnvironmentError, ValueError) as err:
        raise ModelLoadError(f"{what}: could not read the config of '{pretrained}': {err}") from err


TOYWORLD = "builtin:toyworld"
"""The bundled toy-world model: SD structure, trained by `framework.toy.model`, shipped as safetensors."""

TINY_SD = "builtin:tiny-random"
"""Tiny seeded random weights in SD 1.5's geometry (framework.toy.tiny), built on first use: tests, dry runs."""

TINY_SDXL = "builtin:tiny-random-sdxl"
"""Tiny seeded random weights in SDXL's geometry (framework.toy.tiny_sdxl), built on first use: tests, dry runs."""

TINY_FLUX = "builtin:tiny-random-flux"
"""Tiny seeded random weights in FLUX.1-dev's geometry (framework.toy.tiny_flow), built on first use: tests."""

TINY_SD3 = "builtin:tiny-random-sd3"
"""Tiny seeded random weights in SD3's geometry (framework.toy.tiny_flow), built on first use: tests, dry runs."""

BUILTINS = (TINY_SD, TINY_SDXL, TINY_SD3, TINY_FLUX, TOYWORLD)
_TINY_BUILDERS = {
    TINY_SD: ("framework.toy.tiny", {"sd": "tiny_pipeline_dir", "controlnet": "tiny_controlnet_dir",
                                     "t2i_adapter": "tiny_adapter_dir"}),
    TINY_SDXL: ("framework.toy.tiny_sdxl", {"sd": "tiny_sdxl_dir", "controlnet": "tiny_sdxl_controlnet_dir",
                                            "t2i_adapter": "tiny_sdxl_adapter_dir"}),
    TINY_SD3: ("framework.toy.tiny_flow", {"sd": "tiny_sd3_dir", "controlnet": "tiny_sd3_controlnet_dir"}),
    TINY_FLUX: ("framework.toy.tiny_flow", {"sd": "tiny_flux_dir", "controlnet": "tiny_flux_controlnet_dir"}),
}
"""The tiny random models' parts: functions of framework.toy, imported by name (the toy layer is above this one)."""


def cache_dir() -> Path:
    """Where built-in models are written: $ITO_EDIT_CACHE, else ~/.cache/ito-edit."""
    root = os.environ.get("ITO_EDIT_CACHE") or Path.home() / ".cache" / "ito-edit"
    return Path(root)


def toyworld_folder() -> Path:
    """Where the bundled toy model lives inside the package."""
    return Path(__file__).resolve().parents[1] / "toy" / "assets" / "toyworld"


def check_builtin(name: str) -> None:
    if name not in BUILTINS:
        raise ConfigError(f"unknown built-in model '{name}'; available: {', '.join(repr(b) for b in BUILTINS)}.")


def builtin_folder(name: str, kind: str, modality: Optional[str] = None) -> Path:
    """Resolve a `builtin:` name to a folder (the tiny random models are built on first use).

    kind: 'sd', 'controlnet' (of `modality` for the toy model), 't2i_adapter' or 'classifier'.
    """
    check_builtin(name)
    if name == TOYWORLD:
        return _toyworld_part(kind, modality)
    module, builders = _TINY_BUILDERS[name]
    if kind not in builders:
        raise ConfigError(f"'{name}' has no {kind} model; '{TOYWORLD}' has a classifier.")
    if _rank() == 0 and (name, kind) not in _announced:
        log.warning(
            f"Using '{name}' for the {kind} model: tiny random weights built locally (cached in "
            f"{cache_dir()}). Its edits are noise; they only show the procedure runs. "
            f"Set `pretrained` to a real checkpoint for real edits."
        )
        _announced.add((name, kind))
    return getattr(importlib.import_module(module), builders[kind])()


def _toyworld_part(kind: str, modality: Optional[str]) -> Path:
    root = toyworld_folder()
    parts = {"sd": "sd", "classifier": "classifier", "controlnet": f"controlnet-{modality}"}
    folder = root / parts.get(kind, kind)
    if not folder.is_dir():
        have = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        raise ModelLoadError(
            f"'{TOYWORLD}' has no {kind}{f' for {modality!r}' if modality else ''} model (expected {folder}; the "
            f"bundled toy model has: {', '.join(have) or 'nothing: the package was installed without its assets'}).")
    return folder


# ------------------------------------------------------------------------------ model families
SD1, SDXL, SD3, FLUX = "SD 1.x", "SDXL", "SD3", "FLUX"
FAMILY_CLASSES = {SD1: "framework.backbones.sd.StableDiffusion", SDXL: "framework.backbones.sdxl.StableDiffusionXL",
                  SD3: "framework.backbones.sd3.StableDiffusion3", FLUX: "framework.backbones.flux.Flux"}
"""The families this project runs -> their backbone class (imported by name: sdxl.py builds on sd.py)."""
FAMILY_EXAMPLES = {SD1: "stable-diffusion-v1-5/stable-diffusion-v1-5", SDXL: "stabilityai/stable-diffusion-xl-base-1.0",
                   SD3: "stabilityai/stable-diffusion-3.5-medium", FLUX: "black-forest-labs/FLUX.1-dev"}
RUNS = ", ".join(FAMILY_CLASSES)  # what the backbones run, for messages
BUILTIN_FAMILIES = {TINY_SD: SD1, TOYWORLD: SD1, TINY_SDXL: SDXL, TINY_SD3: SD3, TINY_FLUX: FLUX}
# diffusers class names (a pipeline's, in model_index.json; a model's, in config.json) -> the family. Checked by
# prefix, so img2img, inpaint and ControlNet pipelines count too; the first match wins (SDXL before SD 1.x).
_FAMILIES = (
    ("StableDiffusionXL", SDXL), ("StableDiffusion3", SD3), ("SD3", SD3), ("Flux", FLUX),
    ("StableCascade", "Stable Cascade"), ("Wuerstchen", "Wuerstchen"), ("Kandinsky", "Kandinsky"),
    ("PixArt", "PixArt"), ("Sana", "Sana"), ("HunyuanDiT", "Hunyuan-DiT"), ("AuraFlow", "AuraFlow"),
    ("Lumina", "Lumina"), ("CogView", "CogView"), ("IF", "DeepFloyd IF"), ("StableDiffusionUpscale", "SD x4 upscaler"),
    ("StableDiffusionLatentUpscale", "SD latent upscaler"), ("QwenImage", "Qwen-Image"),
    ("HiDream", "HiDream"), ("Chroma", "Chroma"), ("StableVideoDiffusion", "Stable Video Diffusion"),
)


def class_family(class_name: Optional[str]) -> Optional[str]:
    """The family a diffusers class name names, other than SD 1.x/2.x; None when it names none of them (an SD
    1.x/2.x pipeline, a UNet or a ControlNet: their configs say more)."""
    name = class_name or ""
    for prefix, family in _FAMILIES:
        if name.startswith(prefix) and (prefix != "IF" or name[2:3].isupper()):  # IFPipeline, not e.g. "IFoo"
            return family
    return None


def config_family(config: dict) -> Optional[str]:
    """`class_family` of a model's config.json, or 'SDXL' for a UNet / ControlNet with SDXL's time embeddings or an
    SDXL T2I-Adapter."""
    if config.get("addition_embed_type") == "text_time" or config.get("adapter_type") == "full_adapter_xl":
        return SDXL
    return class_family(config.get("_class_name"))


def _read_json(path: Optional[str]) -> Optional[dict]:
    import json

    if path is None or not Path(path).is_file():
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None  # an unreadable index is the loader's to report, with its own message
    return data if isinstance(data, dict) else None


def checkpoint_file(pretrained: str, filename: str, revision: Optional[str] = None) -> Optional[str]:
    """The local path of `filename` in a local folder or in the Hugging Face cache of a hub id, or None; nothing
    is downloaded."""
    if pretrained.startswith(BUILTIN_PREFIX):
        return None
    folder = Path(pretrained).expanduser()
    if folder.is_dir():
        return str(folder / filename) if (folder / filename).is_file() else None
    if not _looks_like_hub_id(pretrained):
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(pretrained, filename, revision=revision)
    return found if isinstance(found, str) else None


def checkpoint_index(pretrained: str, revision: Optional[str] = None) -> dict:
    """A pipeline's model_index.json in a local folder or the cache ({} when there is none); nothing downloaded."""
    return _read_json(checkpoint_file(pretrained, "model_index.json", revision)) or {}


def checkpoint_family(pretrained: str, revision: Optional[str] = None,
                      subfolder: Optional[str] = None) -> tuple[Optional[str], str]:
    """(the family of a checkpoint, where that was read), from a built-in name, the pipeline's model_index.json
    (`_class_name`) or the model's config.json; (None, '') when nothing local says (a hub id not in the cache).
    A pipeline or UNet of no other family is SD 1.x."""
    if pretrained.startswith(BUILTIN_PREFIX):
        return BUILTIN_FAMILIES.get(pretrained), f"the built-in name {pretrained}"
    index = _read_json(checkpoint_file(pretrained, "model_index.json", revision))
    if index is not None:
        name = index.get("_class_name")
        found = class_family(name)
        if found is None and "transformer" in index and "unet" not in index:
            return "a transformer (DiT) model", "a `transformer` and no `unet` in its model_index.json"
        return found or SD1, f"{name} in its model_index.json"
    config_name = f"{subfolder}/config.json" if subfolder else "config.json"
    config = _read_json(checkpoint_file(pretrained, config_name, revision))
    if config is None:
        return None, ""
    source = (f"adapter_type 'full_adapter_xl' in its {config_name}" if "adapter_type" in config
              and config_family(config) == SDXL
              else f"addition_embed_type 'text_time' in its {config_name}" if config_family(config) == SDXL
              else f"{config.get('_class_name')} in its {config_name}")
    return config_family(config) or SD1, source


def check_family(pretrained: str, what: str, revision: Optional[str] = None, subfolder: Optional[str] = None,
                 runs: Optional[str] = None) -> Optional[str]:
    """Refuse, in one line and before any weights load, a checkpoint of a family this project cannot run (or,
    with `runs`, one other than `runs`, the family of the backbone class asked for); return the family found."""
    found, source = checkpoint_family(pretrained, revision, subfolder)
    if found is None or found == runs:
        return found
    if found not in FAMILY_CLASSES:
        raise ModelLoadError(f"{what}: '{pretrained}' is {found} ({source}); this project runs {RUNS} checkpoints "
                             f"(e.g. {' or '.join(FAMILY_EXAMPLES.values())}): point `pretrained` at one of those.")
    if runs is not None:
        raise ModelLoadError(f"{what}: '{pretrained}' is {found} ({source}), not {runs}: give it to "
                             f"{FAMILY_CLASSES[found]} (or framework.StableDiffusion, which picks the "
                             f"checkpoint's family), or point `pretrained` at an {runs} checkpoint such as "
                             f"{FAMILY_EXAMPLES[runs]}.")
    return found


def backbone_class(pretrained: str, revision: Optional[str] = None) -> type:
    """The backbone class of a checkpoint's family (SD 1.x when nothing local says); a family this project does
    not run is refused in one line."""
    found = check_family(pretrained, "backbone", revision, "unet") or SD1
    module, name = FAMILY_CLASSES[found].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pth", ".pt")


def check_variant(pretrained: str, variant: Optional[str], what: str, parts: tuple[str, ...] = ("",)) -> None:
    """In a local folder, `variant` (e.g. 'fp16') must name weights that exist: diffusers' own error for a missing
    variant reads like a missing checkpoint, while the fix is to drop the setting."""
    folder = Path(pretrained).expanduser()
    if not variant or pretrained.startswith(BUILTIN_PREFIX) or not folder.is_dir():
        return
    for part in parts:
        files = [p.name for p in (folder / part).glob("*") if p.name.endswith(_WEIGHT_SUFFIXES)]
        if files and not any(f".{variant}." in name or f".{variant}-" in name for name in files):
            raise ModelLoadError(
                f"{what}: '{folder / part}' has no '{variant}' variant of its weights (it has "
                f"{', '.join(sorted(files))}); "
                f"drop `variant: {variant}` (or set it to null) to load these.")


