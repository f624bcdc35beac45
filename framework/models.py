"""Loading diffusers components by hub id or local folder, with errors that say what to do."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Literal, Optional, Union
from urllib.parse import urlparse

import torch
from torch import nn

from framework import tiny
from framework.errors import ConfigError, ModelLoadError

BUILTIN_PREFIX = "builtin:"
log = logging.getLogger("framework")
_announced: set[str] = set()  # built-in models already announced in this process


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
"""The bundled toy-world model: SD structure, trained by `framework.toymodel`, shipped as safetensors."""

BUILTINS = (tiny.TINY_SD, TOYWORLD)


def toyworld_folder() -> Path:
    """Where the bundled toy model lives inside the package."""
    return Path(__file__).resolve().parent / "assets" / "toyworld"


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
    builders = {"sd": tiny.tiny_pipeline_dir, "controlnet": tiny.tiny_controlnet_dir,
                "t2i_adapter": tiny.tiny_adapter_dir}
    if kind not in builders:
        raise ConfigError(f"'{name}' has no {kind} model; '{TOYWORLD}' has a classifier.")
    if _rank() == 0 and kind not in _announced:
        log.warning(
            f"Using '{name}' for the {kind} model: tiny random weights built locally (cached in "
            f"{tiny.cache_dir()}). Its edits are noise; they only show the procedure runs. "
            f"Set `pretrained` to a real checkpoint for real edits."
        )
        _announced.add(kind)
    return builders[kind]()


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
RUNS = "SD 1.x"  # what the backbone runs today, for messages
# diffusers class names (a pipeline's, in model_index.json; a model's, in config.json) -> the family, for the
# families the backbone cannot run yet. Checked by prefix, so img2img, inpaint and ControlNet pipelines count too.
_OTHER_FAMILIES = (
    ("StableDiffusionXL", "SDXL"), ("StableDiffusion3", "SD3"), ("SD3", "SD3"), ("Flux", "FLUX"),
    ("StableCascade", "Stable Cascade"), ("Wuerstchen", "Wuerstchen"), ("Kandinsky", "Kandinsky"),
    ("PixArt", "PixArt"), ("Sana", "Sana"), ("HunyuanDiT", "Hunyuan-DiT"), ("AuraFlow", "AuraFlow"),
    ("Lumina", "Lumina"), ("CogView", "CogView"), ("IF", "DeepFloyd IF"), ("StableDiffusionUpscale", "SD x4 upscaler"),
    ("StableDiffusionLatentUpscale", "SD latent upscaler"), ("QwenImage", "Qwen-Image"),
    ("HiDream", "HiDream"), ("Chroma", "Chroma"), ("StableVideoDiffusion", "Stable Video Diffusion"),
)


def class_family(class_name: Optional[str]) -> Optional[str]:
    """The family a diffusers class name belongs to when the backbone cannot run it; None when it can (or when
    the name says nothing: an SD 1.x/2.x pipeline, UNet or ControlNet)."""
    name = class_name or ""
    for prefix, family in _OTHER_FAMILIES:
        if name.startswith(prefix) and (prefix != "IF" or name[2:3].isupper()):  # IFPipeline, not e.g. "IFoo"
            return family
    return None


def config_family(config: dict) -> Optional[str]:
    """`class_family` of a model's config.json, or 'SDXL' for a UNet / ControlNet with SDXL's time embeddings or an
    SDXL T2I-Adapter."""
    if config.get("addition_embed_type") == "text_time" or config.get("adapter_type") == "full_adapter_xl":
        return "SDXL"
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


def check_family(pretrained: str, what: str, revision: Optional[str] = None, subfolder: Optional[str] = None) -> None:
    """Refuse, in one line and before any weights load, a checkpoint of a family the backbone cannot run yet.

    Read from the pipeline's model_index.json (its `_class_name`) and the UNet's or model's config.json."""
    index = _read_json(checkpoint_file(pretrained, "model_index.json", revision))
    config_name = f"{subfolder}/config.json" if subfolder else "config.json"
    config = _read_json(checkpoint_file(pretrained, config_name, revision))
    found, source = None, None
    if index is not None:
        found, source = class_family(index.get("_class_name")), f"{index.get('_class_name')} in its model_index.json"
        if found is None and "transformer" in index and "unet" not in index:
            found, source = "a transformer (DiT) model", "a `transformer` and no `unet` in its model_index.json"
    if found is None and config is not None:
        found = config_family(config)
        source = (f"{config.get('_class_name')} in its {config_name}" if class_family(config.get("_class_name"))
                  else f"adapter_type 'full_adapter_xl' in its {config_name}" if "adapter_type" in config
                  else f"addition_embed_type 'text_time' in its {config_name}")
    if found is not None:
        raise ModelLoadError(f"{what}: '{pretrained}' is {found} ({source}); this project runs {RUNS} "
                             f"checkpoints (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5 and its ControlNets): "
                             f"point `pretrained` at one of those.")


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


_SD_PARTS = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
             "tokenizer": "tokenizer_config.json", "scheduler": "scheduler_config.json"}


def _check_sd_folder(source: str) -> None:
    """A local SD folder must hold every component, so an incomplete copy fails before loading."""
    folder = Path(source).expanduser()
    if source.startswith(BUILTIN_PREFIX) or not folder.is_dir():
        return
    missing = [f"{part}/{name}" for part, name in _SD_PARTS.items() if not (folder / part / name).is_file()]
    if len(missing) == len(_SD_PARTS) and not (folder / "model_index.json").is_file():
        raise ModelLoadError(
            f"Stable Diffusion: '{folder}' is not a diffusers Stable Diffusion folder: it has none of "
            f"{', '.join(missing)} nor model_index.json. Point `pretrained` at a folder written by "
            f"`save_pretrained` (or a hub snapshot).")
    if missing:
        raise ModelLoadError(
            f"Stable Diffusion folder '{folder}' is incomplete: missing {', '.join(missing)}. Copy the "
            f"whole diffusers checkpoint (unet, vae, text_encoder, tokenizer, scheduler).")


def _check_slicing(value: Union[str, int, None]) -> Union[str, int, None]:
    """attention_slicing: None, 'auto', 'max' or a positive int."""
    if value is None or value in ("auto", "max"):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigError(f"attention_slicing must be 'auto', 'max', a positive int or null, got {value!r}.")


def _sliceable(module: nn.Module) -> bool:
    """A whole diffusers model that supports sliced attention (UNet, ControlNet), not one of its layers."""
    from diffusers import ModelMixin

    return isinstance(module, ModelMixin) and hasattr(module, "set_attention_slice")


def _vae_sample_size(vae) -> int:
    size = vae.config.sample_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)


class StableDiffusion(nn.Module):
    """Stable Diffusion 1.x components (VAE, UNet, CLIP text encoder, tokenizer, DDIM scheduler).

    Loaded lazily by `load()` so that configuration errors surface before any weights are read.
    """

    def __init__(self, pretrained: str = "stable-diffusion-v1-5/stable-diffusion-v1-5",
                 revision: Optional[str] = None, variant: Optional[str] = None,
                 allow_pickle: bool = False, attention_slicing: Union[int, Literal["auto", "max"], None] = None,
                 vae_tiling: bool = False, vae_tile_size: Optional[int] = None, vae: Optional[str] = None):
        """
        Args:
            pretrained: Hub id or local folder of a diffusers SD 1.x checkpoint, or
                'builtin:tiny-random' for the tiny random model used by tests and the quickstart.
            revision: Hub revision (branch, tag or commit).
            variant: Weight variant such as 'fp16'.
            allow_pickle: Also load `.bin`/`.ckpt` pickle weights (they can run code; off by default).
            attention_slicing: Sliced attention in the UNet and every ControlNet (diffusers'
                `set_attention_slice`): 'auto' (heads in two halves), 'max' (one at a time), an int
                (heads per slice), or None (off: torch's SDPA, already memory-efficient on torch 2;
                slicing only saves memory against the classic attention processor).
            vae_tiling: Encode and decode images larger than `vae_tile_size` in overlapping tiles
                (diffusers' VAE tiling): bounded VAE memory for large images; each tile is normalised
                on its own, so the result differs from untiled near seams. Smaller images are unaffected.
            vae_tile_size: Tile side in pixels (a multiple of 8); None = the VAE's sample_size (512 for SD 1.5).
            vae: Hub id or folder of an AutoencoderKL that replaces the checkpoint's own (a folder with a `vae/`
                subfolder works too), e.g. a decoder fine-tune such as `stabilityai/sd-vae-ft-mse`; its latent
                space must be the checkpoint's. None: the checkpoint's VAE.
        """
        super().__init__()
        self.pretrained = pretrained
        self.revision = revision
        self.variant = variant
        self.allow_pickle = allow_pickle
        self.attention_slicing = _check_slicing(attention_slicing)
        self.vae_tiling = vae_tiling
        if vae_tile_size is not None and (vae_tile_size < 8 or vae_tile_size % 8):
            raise ConfigError(f"vae_tile_size must be a multiple of 8 pixels (>= 8), got {vae_tile_size}; "
                              f"use e.g. 512, or null for the VAE's own sample size.")
        self.vae_tile_size = vae_tile_size
        check_family(pretrained, "Stable Diffusion", revision, "unet")  # first: an SD3 folder has no unet/ at all
        _check_sd_folder(pretrained)  # then: a missing unet/ is an incomplete folder, like a missing vae/
        check_variant(pretrained, variant, "Stable Diffusion", ("unet", "vae", "text_encoder"))
        self._source = resolve_pretrained(pretrained, "Stable Diffusion", "unet", revision)
        self.vae_source = vae
        if vae is not None and not vae.startswith(BUILTIN_PREFIX) and not _looks_like_hub_id(vae) \
                and not Path(vae).expanduser().is_dir():
            raise ConfigError(f"backbone vae '{vae}' is neither a folder nor a hub id: give the folder of an "
                              "AutoencoderKL (its config.json and weights) or null for the checkpoint's own VAE.")
        self.vae = self.unet = self.text_encoder = None
        self.tokenizer = self.scheduler = None

    @property
    def loaded(self) -> bool:
        return self.unet is not None

    def load(self) -> "StableDiffusion":
        """Read the weights (once)."""
        if self.loaded:
            return self
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        source = self._source
        if source.startswith(BUILTIN_PREFIX):
            source = str(builtin_folder(source, "sd"))
        common = dict(revision=self.revision, allow_pickle=self.allow_pickle)
        self.unet = load_component(UNet2DConditionModel, source, "UNet", "unet", variant=self.variant, **common)
        self.vae = load_component(AutoencoderKL, source, "VAE", "vae", variant=self.variant, **common)
        if self.vae_source is not None:
            self.vae = self._replacement_vae(AutoencoderKL, common)
        self.text_encoder = load_component(CLIPTextModel, source, "text encoder", "text_encoder",
                                           variant=self.variant, **common)
        self.tokenizer = load_component(CLIPTokenizer, source, "tokenizer", "tokenizer", revision=self.revision)
        self.scheduler = load_component(DDIMScheduler, source, "scheduler", "scheduler", revision=self.revision)
        for module in (self.unet, self.vae, self.text_encoder):
            module.requires_grad_(False).eval()
        self.configure_memory()
        return self

    def _replacement_vae(self, cls, common: dict):
        """The `vae` setting's AutoencoderKL, checked against the checkpoint's latent space."""
        source = self.vae_source
        if source.startswith(BUILTIN_PREFIX):
            source = str(builtin_folder(source, "vae"))
        subfolder = "vae" if Path(source, "vae", "config.json").is_file() else None
        vae = load_component(cls, source, "VAE", subfolder, **common)
        own, theirs = self.vae.config, vae.config
        if (own.latent_channels, own.block_out_channels) != (theirs.latent_channels, theirs.block_out_channels):
            raise ConfigError(f"backbone vae '{self.vae_source}' has {theirs.latent_channels} latent channels at "
                              f"/{2 ** (len(theirs.block_out_channels) - 1)}, the checkpoint's VAE "
                              f"{own.latent_channels} at /{2 ** (len(own.block_out_channels) - 1)}: it belongs to "
                              "another model; give a VAE of this checkpoint's latent space or null.")
        return vae

    def configure_memory(self, *extra: nn.Module) -> None:
        """Apply the memory options: attention slicing to the UNet and to every diffusers model inside
        `extra` (the conditioners' ControlNets), VAE tiling to the VAE. Idempotent."""
        models = [self.unet] + [m for module in extra for m in module.modules() if _sliceable(m)]
        if self.attention_slicing is not None:
            for model in models:
                try:
                    model.set_attention_slice(self.attention_slicing)
                except ValueError as err:
                    raise ConfigError(f"attention_slicing {self.attention_slicing!r} does not fit "
                                      f"{type(model).__name__}: {err} Use 'auto', 'max' or a smaller int.") from err
        if self.vae_tiling:
            tile = self.vae_tile_size or _vae_sample_size(self.vae)
            self.vae.tile_sample_min_size = tile
            self.vae.tile_latent_min_size = tile // self.vae_scale_factor
            self.vae.enable_tiling()

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Image in [0, 1], (b, 3, H, W) -> scaled latents (b, 4, H/8, W/8); the posterior mean, so it is
        deterministic."""
        vae_dtype = next(self.vae.parameters()).dtype
        posterior = self.vae.encode((image * 2 - 1).to(vae_dtype)).latent_dist
        return posterior.mean.float() * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> image in [0, 1], (b, 3, H, W)."""
        vae_dtype = next(self.vae.parameters()).dtype
        image = self.vae.decode((latents / self.vae.config.scaling_factor).to(vae_dtype)).sample
        return (image.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """Prompt -> CLIP last hidden states (1, 77, d), as SD 1.x's UNet expects."""
        ids = self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(ids.to(device))[0]

    def prompt_used(self, prompt: str) -> Optional[str]:
        """The part of `prompt` the text encoder sees when it is longer than the tokenizer's limit (CLIP: 77
        tokens with the start and end tokens); None when the whole prompt fits."""
        ids = self.tokenizer(prompt, truncation=False).input_ids
        limit = self.tokenizer.model_max_length
        if len(ids) <= limit:
            return None
        kept = ids[1:limit - 1]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        # CLIP's tokens are bytes: the cut can split a character of several bytes (Japanese, accents, emoji),
        # which decodes to U+FFFD; drop the tokens of that partial character (at most 3 bytes).
        for _ in range(3):
            if not text.endswith("\ufffd") or "\ufffd" in prompt or not kept:
                break
            kept = kept[:-1]
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return text

    def train(self, mode: bool = True) -> "StableDiffusion":
        """The backbone is frozen: it stays in eval mode whatever the Trainer asks."""
        return super().train(False)
