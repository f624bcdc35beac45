"""The backbone contract: what the procedure needs of a diffusion model, and the text-encoding object.

A backbone is one model family behind one interface (framework.backbones holds the families: SD 1.x in
sd.py, SDXL in sdxl.py). The procedure, the stages, the losses and the conditioners use only what is
written here, so a new family is one file that implements `Backbone`:

| member | what it gives |
|---|---|
| `load()` | reads the weights once (configuration is checked before, in `__init__`) |
| `encode_image(image)` / `decode_latents(latents)` | image (b, 3, H, W) in [0, 1] <-> scaled latents (b, c, H/f, W/f) |
| `encode_prompt(prompt)` | a `TextEncoding` of batch 1 |
| `unet_inputs(latents)` | the family's per-call UNet inputs that do not come from a conditioner (SDXL: `time_ids`) |
| `sampler(steps)` | the run's sampler (timesteps, step and inverse step: framework.core.sampling) |
| `predict(latents, t, inputs)` | the model's prediction (epsilon, or a flow model's velocity) from `UNetInputs` |
| `unet`, `scheduler` | the denoising network (a UNet, or a transformer) and the diffusers scheduler the sampler is read from |
| `vae_scale_factor`, `configure_memory(*extra)`, `prompt_used(prompt)`, `family`, `pretrained` | as named |

`TextEncoding` is what a prompt becomes: the token sequence the UNet's cross-attention reads, plus the
family's extras (SDXL: the pooled embedding `text_embeds`), which go to the UNet as `added_cond_kwargs`.
Stages handle it as one object (batch it, slice it, optimise it), never as a bare tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from framework.core.conditioning import UNetInputs


@dataclass
class TextEncoding:
    """A batch of encoded prompts: `hidden` (b, L, D) for cross-attention and `extras` {name: (b, ...)} that
    the UNet takes as `added_cond_kwargs` (SD 1.x: none; SDXL: `text_embeds`, the pooled embedding (b, P))."""

    hidden: torch.Tensor  # (b, L, D)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "TextEncoding":
        """The same encoding with `fn` applied to every tensor."""
        return TextEncoding(fn(self.hidden), {k: fn(v) for k, v in self.extras.items()})

    @staticmethod
    def cat(items: Sequence["TextEncoding"]) -> "TextEncoding":
        """Stack encodings along the batch (they come from one backbone, so they have the same extras)."""
        return TextEncoding(torch.cat([e.hidden for e in items]),
                            {k: torch.cat([e.extras[k] for e in items]) for k in items[0].extras})

    def repeat(self, n: int) -> "TextEncoding":
        return TextEncoding.cat([self] * n)

    def __getitem__(self, index) -> "TextEncoding":
        """Rows of the batch (a slice or an index tensor)."""
        return self.map(lambda x: x[index])

    def to(self, *args, **kwargs) -> "TextEncoding":
        return self.map(lambda x: x.to(*args, **kwargs))

    def float(self) -> "TextEncoding":
        return self.map(lambda x: x.float())

    def detach(self) -> "TextEncoding":
        return self.map(lambda x: x.detach())

    def clone(self) -> "TextEncoding":
        return self.map(lambda x: x.clone())

    def requires_grad_(self, flag: bool = True) -> "TextEncoding":
        """In place, on every tensor: null-text inversion optimises the whole encoding, pooled part included."""
        for tensor in self.tensors():
            tensor.requires_grad_(flag)
        return self

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor of the encoding (an optimiser's parameters), the token sequence first."""
        return [self.hidden, *self.extras.values()]

    @property
    def batch(self) -> int:
        return self.hidden.shape[0]

    @property
    def length(self) -> int:
        """Number of tokens L (the keys of cross-attention)."""
        return self.hidden.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.hidden.dtype

    def apply(self, inputs: UNetInputs, dtype: Optional[torch.dtype] = None) -> None:
        """Set the UNet inputs this encoding provides, cast to `dtype` (None: as it is)."""
        cast = (lambda x: x) if dtype is None else (lambda x: x.to(dtype))  # noqa: E731
        inputs.encoder_hidden_states = cast(self.hidden)
        if self.extras:
            inputs.added_cond_kwargs = {**(inputs.added_cond_kwargs or {}),
                                        **{k: cast(v) for k, v in self.extras.items()}}


class Backbone(nn.Module):
    """Base class of model families (select one by `class_path`; `StableDiffusion` picks the checkpoint's).

    Subclasses read weights in `load`, after their settings are checked in `__init__`; until then the model
    attributes (`unet`, `vae`, `scheduler` ...) are None. The backbone is frozen: it stays in eval mode.
    """

    family: str = "?"  # the model family, for messages ('SD 1.x', 'SDXL')
    # Set by subclasses (None until `load`): `pretrained` (str), `unet` (called with UNetInputs' keywords),
    # `scheduler` (a diffusers DDIMScheduler: framework.core.ddim.Schedule reads its timesteps and alphas).

    @property
    def loaded(self) -> bool:
        return self.unet is not None

    def load(self) -> "Backbone":
        """Read the weights (once) and return self."""
        raise NotImplementedError

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Image in [0, 1], (b, 3, H, W) -> scaled latents (b, c, H/f, W/f), deterministically."""
        raise NotImplementedError

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> image in [0, 1], (b, 3, H, W)."""
        raise NotImplementedError

    def encode_prompt(self, prompt: str) -> TextEncoding:
        """A prompt -> its text encoding, batch 1."""
        raise NotImplementedError

    def sampler(self, steps: int, size: Optional[tuple[int, int]] = None):
        """The sampler of a run of `steps` steps for an image of `size` (height, width) pixels
        (framework.core.sampling.Sampler: its timesteps and the moves between them; SD 1.x and SDXL: DDIM on the
        checkpoint's noise schedule; SD3: the flow ODE; FLUX's shift depends on the size)."""
        raise NotImplementedError

    def unet_inputs(self, latents: torch.Tensor) -> UNetInputs:
        """A fresh UNet call's inputs for `latents` before the conditioners add theirs (none by default)."""
        return UNetInputs()

    def predict(self, latents: torch.Tensor, t, inputs: UNetInputs) -> torch.Tensor:
        """The model's prediction for `latents` at timestep t with the conditioners' `inputs` (epsilon for DDIM
        families, velocity for flow families): the denoising network called the family's way. By default a
        diffusers UNet: `unet(latents, t, **inputs)`."""
        return self.unet(latents, t, **inputs.as_kwargs(), return_dict=False)[0]

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side."""
        raise NotImplementedError

    def configure_memory(self, *extra: nn.Module) -> None:
        """Apply the memory options to the backbone's models and to those inside `extra` (ControlNets)."""

    def prompt_used(self, prompt: str) -> Optional[str]:
        """The part of `prompt` the text encoder sees when it is cut; None when all of it is used."""
        return None

    def train(self, mode: bool = True) -> "Backbone":
        """The backbone is frozen: it stays in eval mode whatever the Trainer asks."""
        return super().train(False)
