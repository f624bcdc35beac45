"""The conditioned noise predictor eps_theta(x_t, t, C): UNet + conditioners + classifier-free guidance."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

from framework.core.backbone import TextEncoding
from framework.core.conditioning import Conditioner, ConditionSide, Encoding, UNetInputs


def _cat(items: Sequence[Encoding]) -> Encoding:
    if isinstance(items[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*items))
    if isinstance(items[0], TextEncoding):
        return TextEncoding.cat(items)
    return torch.cat(list(items))


def _rows(encoding: Encoding, start: int, stop: int) -> Encoding:
    """Rows start:stop of an encoding's batch."""
    if isinstance(encoding, tuple):
        return tuple(part[start:stop] for part in encoding)
    return encoding[start:stop]


@dataclass
class Conditioning:
    """Encodings of a batch of condition sides: one entry per conditioner, batch-first (None = unused)."""

    parts: list[Optional[Encoding]]

    @staticmethod
    def cat(items: Sequence["Conditioning"]) -> "Conditioning":
        """Stack conditionings along the batch (all from one request, so the same parts are used)."""
        parts = []
        for column in zip(*(c.parts for c in items)):
            parts.append(None if column[0] is None else _cat(column))
        return Conditioning(parts)

    def slice(self, start: int, stop: int) -> "Conditioning":
        """Samples start:stop of every part."""
        return Conditioning([None if p is None else _rows(p, start, stop) for p in self.parts])

    def repeat(self, n: int) -> "Conditioning":
        return Conditioning.cat([self] * n)

    def with_part(self, index: int, encoding: Encoding) -> "Conditioning":
        """The same conditioning with the part of conditioner `index` replaced (e.g. the text embedding)."""
        parts = list(self.parts)
        parts[index] = encoding
        return Conditioning(parts)

    @property
    def batch(self) -> int:
        first = next(p for p in self.parts if p is not None)
        if isinstance(first, TextEncoding):
            return first.batch
        return (first[0] if isinstance(first, tuple) else first).shape[0]


def rescale_guidance(eps: torch.Tensor, eps_cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2024, Eq. 16): the CFG prediction brought towards the per-sample std of
    the conditional one, mixed by phi; large CFG scales inflate the prediction's std, which shifts colours."""
    dims = tuple(range(1, eps.ndim))
    rescaled = eps * (eps_cond.std(dim=dims, keepdim=True) / eps.std(dim=dims, keepdim=True).clamp_min(1e-12))
    return phi * rescaled + (1 - phi) * eps


class Denoiser:
    """Noise prediction for batches of latents under batches of conditions, counting UNet evaluations.

    Classifier-free guidance runs the unconditional and conditional halves as one UNet batch.
    `chunk_size` caps the samples per UNet call to bound memory (the result is the same).
    """

    def __init__(self, unet, conditioners: Sequence[Conditioner], num_train_timesteps: int,
                 chunk_size: Optional[int] = None, unet_inputs: Optional[Callable[[torch.Tensor], UNetInputs]] = None,
                 predict: Optional[Callable[[torch.Tensor, int, UNetInputs], torch.Tensor]] = None):
        """`unet_inputs(latents)`: the backbone's own inputs of a UNet call (Backbone.unet_inputs; None: none).
        `predict(latents, t, inputs)`: how the network is called (Backbone.predict; None: a diffusers UNet)."""
        self.predict = predict or (lambda x, t, inputs: unet(x, t, **inputs.as_kwargs(), return_dict=False)[0])
        self.unet = unet
        self.unet_inputs = unet_inputs or (lambda latents: UNetInputs())
        self.conditioners = list(conditioners)
        self.num_train_timesteps = num_train_timesteps
        self.chunk_size = chunk_size
        self.samples = Counter()  # stage -> UNet sample-evaluations
        self.calls = Counter()  # stage -> UNet calls
        self.control_samples = Counter()  # stage -> ControlNet sample-evaluations (every ControlNet counts)
        self.stage = "other"
        self.guidance_rescale = 0.0  # sampling.guidance_rescale (phi); 0 = plain CFG
        self.batcher = None  # framework.core.batching.UNetBatcher: this edit's UNet calls join other edits'
        self.order = 0  # this edit's place in the batch

    @property
    def text_index(self) -> int:
        """Position of the conditioner that provides the TextEncoding (the engine puts it first)."""
        return next(i for i, c in enumerate(self.conditioners) if c.provides_text)

    def encode(self, side: ConditionSide, backbone) -> Conditioning:
        return Conditioning([c.encode(side, backbone) for c in self.conditioners])

    def progress(self, t: int) -> float:
        return min(1.0, max(0.0, 1.0 - (t + 1) / self.num_train_timesteps))  # a flow's t = 1000 is the start

    def forward(self, latents: torch.Tensor, t: int, cond: Conditioning) -> tuple[torch.Tensor, int]:
        """One network call (with the backbone's and the conditioners' inputs), uncounted: (the prediction, the
        ControlNet samples it took)."""
        inputs = self.unet_inputs(latents)
        progress = self.progress(t)
        for conditioner, encoding in zip(self.conditioners, cond.parts):
            if encoding is not None:
                conditioner.apply(inputs, latents, t, encoding, progress)
        return self.predict(latents, t, inputs), inputs.control_samples

    def _unet(self, latents: torch.Tensor, t: int, cond: Conditioning) -> torch.Tensor:
        if self.batcher is not None and not torch.is_grad_enabled():
            out, control = self.batcher.unet(self, self.order, latents, t, cond)
        else:
            out, control = self.forward(latents, t, cond)
        self.samples[self.stage] += latents.shape[0]
        self.calls[self.stage] += 1
        if control:
            self.control_samples[self.stage] += control
        return out

    def _chunked(self, latents: torch.Tensor, t: int, cond: Conditioning) -> torch.Tensor:
        size = self.chunk_size or latents.shape[0]
        if size >= latents.shape[0]:
            return self._unet(latents, t, cond)
        outs = []
        for start in range(0, latents.shape[0], size):
            outs.append(self._unet(latents[start:start + size], t, cond.slice(start, start + size)))
        return torch.cat(outs)

    def __call__(self, latents: torch.Tensor, t: int, cond: Conditioning, uncond: Optional[Conditioning] = None,
                 guidance_scale: Union[float, torch.Tensor] = 1.0, grad: bool = False) -> torch.Tensor:
        """eps for latents (b, 4, h, w) with `cond` of batch b; CFG when guidance_scale != 1 (a tensor scale is a
        map, e.g. (1, 1, h, w): ito.outside_guidance_scale).

        `grad=True` keeps the autograd graph (null-text inversion differentiates through the UNet with
        respect to an embedding); by default no graph is built."""
        with torch.set_grad_enabled(grad):
            return self._eps(latents, t, cond, uncond, guidance_scale)

    def _eps(self, latents: torch.Tensor, t: int, cond: Conditioning, uncond: Optional[Conditioning],
             guidance_scale: Union[float, torch.Tensor]) -> torch.Tensor:
        unet_dtype = next(self.unet.parameters()).dtype  # ModelMixin.dtype walks every submodule per call
        x = latents.to(unet_dtype) if not torch.is_autocast_enabled(latents.device.type) else latents
        if uncond is None or (not torch.is_tensor(guidance_scale) and guidance_scale == 1.0):
            return self._chunked(x, t, cond).float()
        eps_uncond, eps_cond = self._chunked(torch.cat([x, x]), t, Conditioning.cat([uncond, cond])).float().chunk(2)
        eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)  # a scale may be a map (1, 1, h, w)
        return rescale_guidance(eps, eps_cond, self.guidance_rescale) if self.guidance_rescale else eps

    def reset_counts(self) -> None:
        self.samples.clear()
        self.calls.clear()
        self.control_samples.clear()
