"""Captioners: write the source prompt (a caption of the input image) when a request has none.

A captioner is a plugin chosen in YAML by `class_path`. `BlipCaptioner` wraps BLIP image
captioning from `transformers`; `build_tiny_blip` writes a tiny random BLIP for tests, loaded
by the same code as a real checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from PIL import Image
from torch import nn

from framework.backbones.loading import resolve_pretrained
from framework.core.errors import ConfigError, ModelLoadError

_CHUNK = 16  # images per generate() call: bounds memory when a manifest has many uncaptioned rows
_SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


class Captioner(nn.Module):
    """Plugin base: `caption(images)` returns one caption per image; `load()` reads weights once."""

    def __init__(self):
        super().__init__()
        # Follows `.to(device/dtype)` even before load(), so weights read later land there too.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

    @property
    def loaded(self) -> bool:
        """Whether `load()` has run (a captioner without weights is always loaded)."""
        return True

    @property
    def device(self) -> torch.device:
        """Where the captioner runs: where `.to()` last put it."""
        return self._anchor.device

    def load(self) -> "Captioner":
        """Read the weights (once); called lazily, after the configuration has been checked."""
        return self

    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image, in order."""
        raise NotImplementedError(f"{type(self).__name__} must implement caption(images).")

    def forward(self, images: list[Image.Image]) -> list[str]:
        """`captioner(images)` is `captioner.caption(images)`."""
        return self.caption(images)

    def train(self, mode: bool = True) -> "Captioner":
        """Captioners are frozen: they stay in eval mode whatever a Trainer asks."""
        return super().train(False)


def _check_images(images: Sequence[Image.Image]) -> list[Image.Image]:
    """A list of PIL images, as RGB (captioners are trained on RGB)."""
    if isinstance(images, Image.Image):
        raise TypeError("caption() takes a list of images; wrap a single image in a list.")
    out = []
    for n, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise TypeError(f"caption(): image {n} is a {type(image).__name__}, not a PIL image.")
        out.append(image if image.mode == "RGB" else image.convert("RGB"))
    return out


def _check_weights(folder: Path, allow_pickle: bool) -> None:
    """A local folder must hold loadable weights, so a pickle-only copy fails before loading."""
    if any((folder / name).is_file() for name in _SAFE_WEIGHTS):
        return
    has_pickle = any((folder / name).is_file() for name in _PICKLE_WEIGHTS)
    if has_pickle and not allow_pickle:
        raise ModelLoadError(
            f"captioner: '{folder}' has only pickle weights (pytorch_model.bin), which can run code when "
            f"loaded. Convert them to model.safetensors, or set `allow_pickle: true` if you trust the folder."
        )
    if not has_pickle:
        raise ModelLoadError(
            f"captioner: '{folder}' has no model.safetensors; point `pretrained` at a folder written by "
            f"`save_pretrained` (or a hub snapshot)."
        )


class BlipCaptioner(Captioner):
    """BLIP image captioning (`BlipForConditionalGeneration`), deterministic beam search."""

    def __init__(self, pretrained: str = "Salesforce/blip-image-captioning-base", prompt: Optional[str] = None,
                 max_new_tokens: int = 30, num_beams: int = 3, revision: Optional[str] = None,
                 allow_pickle: bool = False):
        """
        Args:
            pretrained: Hub id or local folder of a BLIP captioning checkpoint (model and processor).
            prompt: Text the caption continues, such as 'a photograph of'; it is removed from the result.
            max_new_tokens: Longest caption, in tokens.
            num_beams: Beam-search width (1: greedy). Generation never samples, so captions are repeatable.
            revision: Hub revision (branch, tag or commit).
            allow_pickle: Also load `.bin` pickle weights (they can run code; off by default).
        """
        super().__init__()
        if max_new_tokens < 1:
            raise ConfigError(f"captioner: max_new_tokens must be >= 1, got {max_new_tokens}.")
        if num_beams < 1:
            raise ConfigError(f"captioner: num_beams must be >= 1, got {num_beams}.")
        self.pretrained = pretrained
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.revision = revision
        self.allow_pickle = allow_pickle
        # Cheap checks only: a bad path or an offline hub fails here, before any weights are read.
        self._source = resolve_pretrained(pretrained, "captioner", None, revision)
        if Path(self._source).expanduser().is_dir():
            _check_weights(Path(self._source).expanduser(), allow_pickle)
        self.model = None
        self.processor = None

    @property
    def loaded(self) -> bool:
        """Whether the model and processor have been read."""
        return self.model is not None

    def _from_pretrained(self, cls, hint: str = "", **kwargs):
        """`cls.from_pretrained` with the project's error convention: a ModelLoadError ending in `hint`."""
        from safetensors import SafetensorError

        if self.revision:
            kwargs["revision"] = self.revision
        try:
            return cls.from_pretrained(self._source, **kwargs)
        except (OSError, ValueError, SafetensorError) as err:  # SafetensorError: a corrupt or truncated file
            reason = str(err).rstrip(".")
            where = f"captioner: could not load {cls.__name__} from '{self._source}'"
            raise ModelLoadError(f"{where}: {reason}.{hint}") from err

    def load(self) -> "BlipCaptioner":
        """Read the model and processor (once), onto the captioner's device."""
        if self.loaded:
            return self
        from transformers import BlipForConditionalGeneration, BlipProcessor

        # The processor first: it is small, so a folder without one fails before the weights are read.
        processor = self._from_pretrained(BlipProcessor, " It needs the processor files (preprocessor and "
                                          "tokenizer configs) saved next to the model.")
        if self.allow_pickle:
            model = self._from_pretrained(BlipForConditionalGeneration)
        else:
            model = self._from_pretrained(BlipForConditionalGeneration, " Only safetensors weights load unless "
                                          "`allow_pickle: true` is set.", use_safetensors=True)
        self.processor = processor
        anchor = self._anchor
        model = model.to(device=anchor.device, dtype=anchor.dtype if anchor.is_floating_point() else None)
        self.model = model.requires_grad_(False).eval()  # a submodule from here on: `.to()` moves it
        return self

    def _prompt_ids(self, n: int) -> Optional[torch.Tensor]:
        """The conditional prompt tokenised once per image, or None for unconditional captions."""
        if not self.prompt:
            return None
        return self.processor.tokenizer([self.prompt] * n, return_tensors="pt").input_ids

    @torch.no_grad()
    def _caption_chunk(self, images: list[Image.Image]) -> list[str]:
        """Caption up to `_CHUNK` images in one generate() call."""
        weight = next(self.model.parameters())  # the model's own device, even if moved on its own
        device, dtype = weight.device, weight.dtype
        pixels = self.processor.image_processor(images=images, return_tensors="pt").pixel_values
        inputs = {"pixel_values": pixels.to(device=device, dtype=dtype)}
        prompt_ids = self._prompt_ids(len(images))
        if prompt_ids is not None:
            inputs["input_ids"] = prompt_ids.to(device)
        out = self.model.generate(**inputs, do_sample=False, num_beams=self.num_beams,
                                  max_new_tokens=self.max_new_tokens)
        # BLIP drops the prompt's final [SEP] and swaps [CLS] for its [DEC] start token, so the
        # output starts with len(prompt) - 1 tokens (1 without a prompt) that are not the caption.
        start = 1 if prompt_ids is None else prompt_ids.shape[1] - 1
        texts = self.processor.tokenizer.batch_decode(out[:, start:], skip_special_tokens=True)
        return [text.strip() for text in texts]

    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image, without the conditional prompt; the same images give the same text."""
        images = _check_images(images)
        if not images:
            return []
        self.load()
        captions: list[str] = []
        for i in range(0, len(images), _CHUNK):
            captions += self._caption_chunk(images[i:i + _CHUNK])
        return captions


# A vocabulary that captions the toy world in whole words; letters and ##-pieces spell anything else.
_TINY_WORDS = (
    "a an the of on in with and photo picture image figure person man woman dog cat red green blue "
    "yellow white black grey orange purple circle square triangle disc background striped flat "
    "arm arms leg legs left right up down standing sitting"
).split()
_TINY_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")


def _write_tiny_vocab(path: Path) -> Path:
    """A BERT WordPiece vocabulary: specials, words, letters and their ##-continuations, one per line."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = list(_TINY_SPECIALS) + _TINY_WORDS + letters + [f"##{c}" for c in letters]
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n", encoding="utf-8")
    return path


def _tiny_processor(vocab_file: Path, image_size: int):
    """BlipProcessor: a BERT tokenizer with BLIP's `[DEC]` start token, and a small image processor."""
    from transformers import BertTokenizer, BlipImageProcessor, BlipProcessor

    # BLIP's decoder starts every caption with [DEC] (the tokenizer's bos); decoding skips it.
    tokenizer = BertTokenizer(vocab=str(vocab_file), bos_token="[DEC]", model_max_length=64)
    images = BlipImageProcessor(size={"height": image_size, "width": image_size})
    return BlipProcessor(image_processor=images, tokenizer=tokenizer)


def _tiny_config(tokenizer, image_size: int):
    """BlipConfig with 32-wide, 2-layer vision and text transformers; token ids from the tokenizer."""
    from transformers import BlipConfig

    width = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text = dict(width, vocab_size=len(tokenizer), max_position_embeddings=64, projection_dim=32,
                bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                sep_token_id=tokenizer.sep_token_id, eos_token_id=tokenizer.sep_token_id)
    # BLIP's vision default initialises near 1e-10, which makes every image look alike; use 0.02.
    vision = dict(width, image_size=image_size, patch_size=8, projection_dim=32, initializer_range=0.02)
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=32, image_text_hidden_size=32)


def _only_words(model, tokenizer) -> None:
    """Random weights would often emit [SEP] or other specials first (an empty caption); forbid them."""
    special = torch.tensor(tokenizer.all_special_ids)
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[special] = -1e4


def build_tiny_blip(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random BLIP captioner (about 60k parameters, 32 px images) to `path`; return it.

    Its captions are word salad of `max_new_tokens` words: it checks the plumbing, not captioning.
    """
    from transformers import BlipForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    image_size = 32
    processor = _tiny_processor(_write_tiny_vocab(path / "vocab.txt"), image_size)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(_tiny_config(processor.tokenizer, image_size)).eval()
    _only_words(model, processor.tokenizer)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
