"""PIE-Bench's metrics (Ju et al. 2024, "PnP Inversion"), in the definitions of the benchmark's evaluation.

Structure: the distance between the DINO ViT self-similarity of input and edit. Background
preservation: PSNR, LPIPS, MSE and SSIM of input and edit *outside* the annotated edit region, each
computed on the two whole images with the region blacked out (multiplied by 1 - mask) - so the
region's pixels count as equal, not as absent. Edit fidelity: CLIP similarity of the target prompt
with the whole edit and with the edit blacked out outside the region.

The region is the request's `true_mask` (framework.evaluation.datasets.PIEBenchDataModule writes it) plus, as
the benchmark's scorer does "to avoid annotation errors in boundary", the image's 1-pixel frame.
PIE-Bench's tables print structure x 1e3, LPIPS x 1e3, MSE x 1e4, SSIM x 1e2; these metrics report
the raw values. PSNR, SSIM, MSE, LPIPS and the CLIP score are torchmetrics' implementations.
Weights (DINO, the LPIPS backbone, CLIP) are read from local paths only; each error says how to get them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from framework.core.errors import ModelLoadError
from framework.evaluation.metrics.base import EditMetric, MetricError, load_weights, read_state_dict
from framework.evaluation.metrics.pixel import load_like
from framework.io.outputs import EditResult

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_DINO_HOW = ("Get DINO ViT-B/8 (the benchmark's 'dino_vitb8') where there is network: `hf download "
             "facebook/dino-vitb8 --local-dir models/dino-vitb8`, and set `dino` to that folder.")
_CLIP_HOW = ("Get CLIP ViT-L/14 (the benchmark's) where there is network: `hf download openai/clip-vit-large-patch14 "
             "--local-dir models/clip-vit-large-patch14`, and set `model` to that folder.")
_SQUEEZE_HOW = ("Get torchvision's SqueezeNet 1.1 ImageNet weights (LPIPS's 'squeeze' backbone) where there is "
                "network: https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth, then convert: python -c "
                "\"import torch, safetensors.torch as s; s.save_file(torch.load('squeezenet1_1-b8a52dc0.pth'), "
                "'models/squeezenet1_1.safetensors')\".")


# ---------------------------------------------------------------- shared maths


def with_frame(mask: torch.Tensor) -> torch.Tensor:
    """(b, 1, H, W) mask with its 1-pixel image frame set to 1, as PIE-Bench's scorer does."""
    mask = mask.clone()
    mask[..., 0, :] = mask[..., -1, :] = 1
    mask[..., :, 0] = mask[..., :, -1] = 1
    return mask


def edit_region(request, size: tuple[int, int], resolution: Optional[int], frame: bool, what: str) -> torch.Tensor:
    """The request's true edit region at the edit's `size` (H, W): (1, 1, H, W) in {0, 1}."""
    path = (request.extra or {}).get("true_mask")
    if path is None:
        raise MetricError(f"{what}: request '{request.id}' has no true_mask (the annotated edit region); use "
                          f"framework.evaluation.datasets.PIEBenchDataModule, or give true_mask in the manifest.")
    mask = (load_like(path, size, resolution)[:, :1] > 0.5).float()
    return with_frame(mask) if frame else mask


def self_similarity(keys: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(b, t, d) token keys -> (b, t, t) cosine similarities, the norm product clamped at eps (the protocol's)."""
    norms = keys.norm(dim=-1, keepdim=True)
    return keys @ keys.transpose(1, 2) / (norms @ norms.transpose(1, 2)).clamp(min=eps)


def resize_shorter(images: torch.Tensor, size: int, max_size: Optional[int] = None) -> torch.Tensor:
    """Bilinear (antialiased) resize of (b, c, H, W): shorter side to `size`, longer side at most `max_size`.

    The sizes follow torchvision's `Resize(size, max_size=...)` (integer truncation of the longer side).
    """
    h, w = images.shape[-2:]
    short, long = min(h, w), max(h, w)
    new_short, new_long = size, int(size * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    new = (new_short, new_long) if h <= w else (new_long, new_short)
    if new == (h, w):
        return images
    return F.interpolate(images, size=new, mode="bilinear", antialias=True, align_corners=False)


def local_folder(path: str, what: str, how: str) -> Path:
    """A local model folder (with config.json), else an error saying how to get it."""
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        state = "has no config.json" if folder.is_dir() else "does not exist"
        raise ModelLoadError(f"{what}: '{folder}' {state}. {how}")
    return folder


# ---------------------------------------------------------------- structure


class StructureDistance(EditMetric):
    """PIE-Bench's structure distance: MSE between the DINO ViT key self-similarities of input and edit.

    Both images are resized (shorter side `size`, longer at most `max_size`), normalised with ImageNet's
    mean and std, and passed through DINO; the keys of every token (class token included, heads
    concatenated) at `layer` give a (t, t) cosine self-similarity matrix per image (Tumanyan et al.
    2022's structure measure); the value is the mean squared difference of the two matrices.
    `pixel_scale` 255: the benchmark's code normalises pixel values in 0..255, not 0..1, before DINO
    (its published numbers are so computed); set 1.0 for the textbook [0, 1] input. Key: `structure/distance`.
    """

    def __init__(self, dino: str, layer: int = -1, size: int = 224, max_size: Optional[int] = 480,
                 pixel_scale: float = 255.0, allow_pickle: bool = False):
        """
        Args:
            dino: Local folder of a transformers ViTModel of DINO (facebook/dino-vitb8, the benchmark's).
            layer: Transformer layer whose keys are compared (-1: the last, the benchmark's layer 11 of 12).
            size: Shorter side of DINO's input (224, the benchmark's).
            max_size: Longest side of DINO's input (480, the benchmark's); None: no bound.
            pixel_scale: Pixel values are multiplied by this before ImageNet normalisation (255: as the
                benchmark's code; 1.0: images in [0, 1]).
            allow_pickle: Allow pickle weights (pytorch_model.bin); pickles can run code.
        """
        super().__init__()
        self.folder = local_folder(dino, "StructureDistance", _DINO_HOW)
        self.layer, self.size, self.max_size, self.pixel_scale = layer, size, max_size, pixel_scale
        self.allow_pickle = allow_pickle
        self.net: Optional[nn.Module] = None
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _load(self) -> None:
        from transformers import ViTModel

        try:
            net = ViTModel.from_pretrained(self.folder, add_pooling_layer=False, use_safetensors=not self.allow_pickle)
        except (OSError, ValueError) as err:
            hint = "" if self.allow_pickle else " Only safetensors weights load unless `allow_pickle: true` is set."
            raise ModelLoadError(f"StructureDistance: could not load DINO from '{self.folder}': {err}.{hint} "
                                 f"{_DINO_HOW}") from err
        layers = vit_layers(net)
        if not -len(layers) <= self.layer < len(layers):
            raise MetricError(f"StructureDistance: layer {self.layer} does not exist; the model has {len(layers)}.")
        self.net = net.eval().requires_grad_(False)

    @torch.no_grad()
    def keys(self, images: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W) in [0, 1] -> keys (b, tokens, heads * head_dim) of `layer`, as DINO sees the images."""
        x = resize_shorter(images.float().to(self.device) * self.pixel_scale, self.size, self.max_size)
        x = (x - self.mean) / self.std
        captured = []
        hook = key_projection(vit_layers(self.net)[self.layer]).register_forward_hook(
            lambda module, inputs, output: captured.append(output))
        try:
            self.net(pixel_values=x, interpolate_pos_encoding=True)
        finally:
            hook.remove()
        return captured[0]

    def update(self, result: EditResult, request) -> dict[str, float]:
        self.ready()
        similarity = self_similarity(self.keys(torch.cat([result.input, result.edit])).double())  # (2, t, t)
        return self.record({"structure/distance": float(((similarity[0] - similarity[1]) ** 2).mean())})


def vit_layers(net: nn.Module) -> nn.ModuleList:
    """The transformer layers of a transformers ViTModel (`layers` in transformers 5, `encoder.layer` in 4)."""
    layers = getattr(net, "layers", None)
    return layers if layers is not None else net.encoder.layer


def key_projection(layer: nn.Module) -> nn.Module:
    """The linear map giving a ViT layer's attention keys (`k_proj` in transformers 5, `attention.key` in 4)."""
    attention = layer.attention
    return attention.k_proj if hasattr(attention, "k_proj") else attention.attention.key


# ---------------------------------------------------------------- background preservation


def outside(result: EditResult, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Input and edit (1, 3, H, W) with the edit region blacked out: the benchmark's 'unedited part'."""
    keep = 1 - region
    return result.input.float() * keep, result.edit.float() * keep


class BackgroundPreservation(EditMetric):
    """PSNR, MSE and SSIM of input and edit outside the edit region (PIE-Bench's 'unedit part').

    Both images are multiplied by 1 - region (the annotation plus the image frame) and compared whole,
    with torchmetrics' PSNR and SSIM (data range 1, SSIM's 11-pixel Gaussian window) and MSE, in [0, 1].
    Keys `background/psnr` (dB), `background/mse`, `background/ssim`; an edit whose region covers
    the whole image gets none (the benchmark's 'nan').
    """

    def __init__(self, resolution: Optional[int] = None, frame: bool = True):
        """
        Args:
            resolution: The data module's `resolution`, so the mask is sized exactly like the input;
                None: inferred from the edit's size.
            frame: Count the 1-pixel image frame as edit region, as the benchmark's scorer does.
        """
        super().__init__()
        self.resolution, self.frame = resolution, frame

    @torch.no_grad()
    def update(self, result: EditResult, request) -> dict[str, float]:
        from torchmetrics.functional import mean_squared_error
        from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

        region = edit_region(request, tuple(result.edit.shape[-2:]), self.resolution, self.frame,
                             "BackgroundPreservation")
        if bool((region == 1).all()):
            return {}
        source, edit = outside(result, region)
        return self.record({
            "background/psnr": float(peak_signal_noise_ratio(edit, source, data_range=1.0)),
            "background/mse": float(mean_squared_error(edit, source)),
            "background/ssim": float(structural_similarity_index_measure(edit, source, data_range=1.0)),
        })


class BackgroundLPIPS(EditMetric):
    """LPIPS (Zhang et al. 2018, SqueezeNet backbone, the benchmark's) of input and edit outside the edit region.

    As `BackgroundPreservation`: both images blacked out inside the region, then compared whole, in
    [-1, 1]. torchmetrics' LPIPS network; its linear layers ship with torchmetrics, the ImageNet
    backbone is read from `backbone` (torchvision's squeezenet1_1 state dict). Key `background/lpips`.
    """

    def __init__(self, backbone: str, resolution: Optional[int] = None, frame: bool = True,
                 allow_pickle: bool = False):
        """
        Args:
            backbone: torchvision SqueezeNet 1.1 ImageNet weights, .safetensors (or .pth with allow_pickle).
            resolution: The data module's `resolution` (see BackgroundPreservation).
            frame: Count the 1-pixel image frame as edit region, as the benchmark's scorer does.
            allow_pickle: Allow a pickle .pth backbone file (pickles can run code).
        """
        super().__init__()
        self.backbone = Path(backbone).expanduser()
        if not self.backbone.is_file():
            raise ModelLoadError(f"BackgroundLPIPS: backbone weights '{self.backbone}' do not exist. {_SQUEEZE_HOW}")
        self.resolution, self.frame, self.allow_pickle = resolution, frame, allow_pickle
        self.net: Optional[nn.Module] = None

    def _load(self) -> None:
        self.net = lpips_squeeze(read_state_dict(self.backbone, self.allow_pickle, "BackgroundLPIPS", _SQUEEZE_HOW),
                                 self.backbone)

    @torch.no_grad()
    def update(self, result: EditResult, request) -> dict[str, float]:
        self.ready()
        region = edit_region(request, tuple(result.edit.shape[-2:]), self.resolution, self.frame, "BackgroundLPIPS")
        if bool((region == 1).all()):
            return {}
        source, edit = outside(result, region)
        value = self.net(edit.to(self.device) * 2 - 1, source.to(self.device) * 2 - 1)
        return self.record({"background/lpips": float(value.squeeze())})


def lpips_squeeze(state: dict[str, torch.Tensor], where) -> nn.Module:
    """torchmetrics' LPIPS network (SqueezeNet) with its ImageNet backbone loaded from `state`, not downloaded.

    torchmetrics builds the backbone from torchvision's `squeezenet1_1().features` modules, kept under
    their feature index in its slices; the weights are loaded into a torchvision model first (strict:
    a wrong file fails here) and its features copied index by index.
    """
    import torchvision
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    reference = torchvision.models.squeezenet1_1(weights=None)
    load_weights(reference, state, "BackgroundLPIPS", where)
    net = _NoTrainLpips(net="squeeze", pnet_rand=True)  # linear layers: torchmetrics' bundled squeeze.pth
    for part in net.net.slices:
        for index, module in part.named_children():
            module.load_state_dict(reference.features[int(index)].state_dict())
    return net.eval().requires_grad_(False)


# ---------------------------------------------------------------- CLIP


class _ProjectedCLIP(nn.Module):
    """A CLIPModel whose get_*_features return the projected embeddings as tensors (torchmetrics expects
    tensors; transformers 5 returns a model output with them as `pooler_output`)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip
        self.config = clip.config

    @staticmethod
    def _tensor(output) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.clip.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.clip.get_text_features(*args, **kwargs))


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1] -> (3, H, W) uint8, as an 8-bit image file holds it."""
    return (image[0].float().clamp(0, 1) * 255).round().to(torch.uint8)


class CLIPSimilarity(EditMetric):
    """PIE-Bench's CLIP similarity of the target prompt with the whole edit and with its edited region.

    torchmetrics' CLIPScore: 100 x max(cos(image embedding, text embedding), 0), with the benchmark's
    CLIP ViT-L/14. `clip/whole`: the edit; `clip/edited`: the edit blacked out outside the region
    (annotation plus image frame). The prompt is the request's edit prompt (markup removed).
    """

    def __init__(self, model: str, processor: Optional[str] = None, resolution: Optional[int] = None,
                 frame: bool = True, allow_pickle: bool = False):
        """
        Args:
            model: Local folder of a transformers CLIPModel (openai/clip-vit-large-patch14, the benchmark's).
            processor: Folder of its processor (tokenizer + image processor); None: the model's folder.
            resolution: The data module's `resolution` (see BackgroundPreservation).
            frame: Count the 1-pixel image frame as edit region, as the benchmark's scorer does.
            allow_pickle: Allow pickle .bin weights (pickles can run code).
        """
        super().__init__()
        self.model_folder = local_folder(model, "CLIPSimilarity", _CLIP_HOW)
        self.processor_folder = self.model_folder if processor is None else Path(processor).expanduser()
        if not self.processor_folder.is_dir():
            raise ModelLoadError(f"CLIPSimilarity: processor folder '{self.processor_folder}' does not exist. "
                                 f"{_CLIP_HOW}")
        self.resolution, self.frame, self.allow_pickle = resolution, frame, allow_pickle
        self.scorer: Optional[nn.Module] = None

    def _load(self) -> None:
        from torchmetrics.multimodal import CLIPScore
        from transformers import CLIPModel, CLIPProcessor

        from framework.backbones.loading import load_component

        clip = load_component(CLIPModel, str(self.model_folder), "CLIPSimilarity", allow_pickle=self.allow_pickle)
        processor = load_component(CLIPProcessor, str(self.processor_folder), "CLIPSimilarity processor")
        self.scorer = CLIPScore(model_name_or_path=lambda: (_ProjectedCLIP(clip.eval().requires_grad_(False)),
                                                            processor))

    @torch.no_grad()
    def score(self, image: torch.Tensor, prompt: str) -> float:
        """CLIPScore of one (1, 3, H, W) image in [0, 1] with one prompt."""
        self.scorer.reset()
        self.scorer.update(to_uint8(image).to(self.device), [prompt])
        return float(self.scorer.compute())

    def update(self, result: EditResult, request) -> dict[str, float]:
        self.ready()
        values = {"clip/whole": self.score(result.edit, request.edit_prompt)}
        if (request.extra or {}).get("true_mask") is not None:
            region = edit_region(request, tuple(result.edit.shape[-2:]), self.resolution, self.frame,
                                 "CLIPSimilarity")
            # The benchmark multiplies the 8-bit edit by the mask: pixels outside the region become black.
            values["clip/edited"] = self.score(result.edit.float() * region, request.edit_prompt)
        return self.record(values)
