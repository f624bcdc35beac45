"""Stage 1 of the toy model: a KL autoencoder in Stable Diffusion's structure.

The reconstruction loss weights object and figure pixels by `object_weight` (ramped from its first
to its second value over training): with plain MSE the flat background dominates and objects come
back as colourless blobs (FACTS.md). On export the latent channels are normalised to zero mean and
unit variance by folding the statistics into `quant_conv` and `post_quant_conv`, so the saved VAE
is an ordinary `AutoencoderKL` with `scaling_factor` 1.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch

from framework.toy.model.data import images_to_tensor
from framework.toy.model.stage import TrainingStage, cosine_lr, replace_folder  # noqa: F401  (cosine_lr: re-exported)


def build_vae(block_out_channels: Sequence[int] = (32, 64, 64), layers_per_block: int = 1,
              latent_channels: int = 4, size: int = 64):
    """An `AutoencoderKL` that downsamples by 2 ** (len(block_out_channels) - 1)."""
    from diffusers import AutoencoderKL

    blocks = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block, latent_channels=latent_channels,
        norm_num_groups=min(32, block_out_channels[0]), sample_size=size,
    )


def weighted_reconstruction(recon: torch.Tensor, image: torch.Tensor, foreground: torch.Tensor,
                            weight: float) -> torch.Tensor:
    """Mean of (|e| + e^2) with foreground pixels weighted `weight`, normalised by the weights."""
    error = recon - image
    per_pixel = (error.abs() + error.square()).mean(dim=1, keepdim=True)
    w = 1 + (weight - 1) * foreground
    return (per_pixel * w).sum() / w.sum()


@torch.no_grad()
def normalised_vae(vae, images: torch.Tensor, batch: int = 256):
    """A copy of `vae` whose posterior mean has zero mean and unit std per channel on `images`.

    z' = (z - m) / s is folded into quant_conv (mean and log-variance rows) and the inverse into
    post_quant_conv, so decode(encode(x)) is unchanged and `scaling_factor` becomes 1.
    """
    vae = copy.deepcopy(vae).eval()
    means = torch.cat([vae.encode(images[i:i + batch]).latent_dist.mean for i in range(0, len(images), batch)])
    m = means.mean(dim=(0, 2, 3)).double()
    s = means.std(dim=(0, 2, 3)).double().clamp_min(1e-6)
    c = len(m)
    quant, post = vae.quant_conv, vae.post_quant_conv
    wq, bq = quant.weight.double(), quant.bias.double()
    wq[:c] /= s[:, None, None, None]
    bq[:c] = (bq[:c] - m) / s
    bq[c:] -= 2 * torch.log(s)
    wp, bp = post.weight.double(), post.bias.double()
    bp += wp[:, :, 0, 0] @ m
    wp *= s[None, :, None, None]
    for conv, w, b in ((quant, wq, bq), (post, wp, bp)):
        conv.weight.copy_(w.to(conv.weight.dtype))
        conv.bias.copy_(b.to(conv.bias.dtype))
    vae.register_to_config(scaling_factor=1.0)
    return vae


def load_stage1_vae(path: str):
    """The exported stage-1 VAE at `path`, or an error that says how to train it."""
    from diffusers import AutoencoderKL

    if not Path(path, "config.json").exists():
        from framework.core.errors import EditError

        raise EditError(f"no VAE at {path!r}: train stage 1 first "
                        "(python -m framework.toy.model fit --config experiments/toyworld/train_vae.yaml)")
    return AutoencoderKL.from_pretrained(path)


class ReconstructionStage(TrainingStage):
    """What stage 1 and decoder tuning share: an object-weighted reconstruction of posterior samples.

    The foreground weight ramps linearly from `object_weight[0]` to `object_weight[1]` over
    `total_steps`. Subclasses hold `self.vae`; `train_encoder` says whether the encoder learns, and
    a `kl_weight` hparam (stage 1) adds the KL term.
    """

    train_encoder = True

    def object_weight_at(self, step: float) -> float:
        first, last = self.hparams.object_weight
        return first + (last - first) * min(1.0, step / max(1, self.hparams.total_steps))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        batch = self.full_batch(batch)
        image, foreground = batch["image"], batch["foreground"]
        with torch.set_grad_enabled(self.train_encoder):
            posterior = self.vae.encode(image).latent_dist
        recon = self.vae.decode(posterior.sample()).sample
        weight = self.object_weight_at(self.schedule_step(self.global_step))
        loss = weighted_reconstruction(recon, image, foreground, weight)
        if self.hparams.get("kl_weight"):
            loss = loss + self.hparams.kl_weight * posterior.kl().mean() / image[0].numel()
        with torch.no_grad():
            psnr = -10 * torch.log10(((recon.clamp(-1, 1) - image) / 2).square().mean())
        self.log_dict({"train/loss": loss, "train/psnr": psnr, "train/object_weight": weight}, prog_bar=True)
        return loss


class VAETraining(ReconstructionStage):
    """Trains the toy VAE; writes a normalised diffusers `AutoencoderKL` folder to `export_dir`."""

    def __init__(self, block_out_channels: tuple[int, ...] = (32, 64, 64), layers_per_block: int = 1,
                 latent_channels: int = 4, size: int = 64, lr: float = 1e-3, warmup_steps: int = 50,
                 total_steps: int = 2000, object_weight: tuple[float, float] = (10.0, 2.0),
                 kl_weight: float = 1e-6, export_dir: str = "outputs/toymodel/vae", export_every: int = 250,
                 stats_images: int = 1024, seed: int = 0, schedule_seconds: float | None = None):
        """
        Args:
            block_out_channels: Encoder/decoder widths; 3 blocks downsample by 4.
            layers_per_block: ResNet layers per block.
            latent_channels: Latent channels (4, as SD).
            size: Training image size.
            lr: Peak AdamW learning rate (warm-up, then cosine over `total_steps`).
            warmup_steps: Warm-up steps.
            total_steps: Length of the cosine schedule and of the weight ramp.
            object_weight: Foreground weight at the first and at the last step (linear ramp).
            kl_weight: Weight of the KL term.
            export_dir: Where the normalised VAE is written (periodically and at the end).
            export_every: Steps between exports (0: only at the end).
            stats_images: Pool images used for the latent statistics.
            seed: Weight initialisation seed.
            schedule_seconds: Run the schedule and the weight ramp on the clock: over this many seconds of
                training, then stop (None: over `total_steps` steps). See `TrainingStage`.
        """
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(seed)
        self.vae = build_vae(block_out_channels, layers_per_block, latent_channels, size)

    def trained_parameters(self):
        return self.vae.parameters()

    def write(self, root: Path) -> None:
        """The normalised VAE (safetensors, diffusers layout)."""
        pool = self.trainer.datamodule.pool
        n = min(self.hparams.stats_images, len(pool))
        images = images_to_tensor(pool.images[:n], signed=True).to(self.device)
        was_training = self.vae.training
        vae = normalised_vae(self.vae, images)
        self.vae.train(was_training)
        replace_folder(root, vae.save_pretrained)


class DecoderTuning(ReconstructionStage):
    """Trains only the decoder of an exported VAE; the encoder, and so the latent space, stay as they are.

    The diffusion model is trained on the encoder's latents, so a better decoder can be swapped into
    a trained model without retraining stage 2. The decoder learns from posterior samples, as in
    stage 1, with the same object-weighted loss. The export is the whole VAE: the encoder and
    `quant_conv` are bit-identical to `vae`'s.
    """

    def __init__(self, vae: str = "outputs/toymodel/vae", lr: float = 5e-4, warmup_steps: int = 50,
                 total_steps: int = 1500, object_weight: tuple[float, float] = (4.0, 2.0),
                 export_dir: str = "outputs/toymodel/vae-decoder", export_every: int = 250):
        """
        Args:
            vae: Folder of the exported (normalised) stage-1 VAE.
            lr: Peak AdamW learning rate (warm-up, then cosine over `total_steps`).
            warmup_steps: Warm-up steps.
            total_steps: Length of the cosine schedule and of the weight ramp.
            object_weight: Foreground weight at the first and at the last step (linear ramp).
            export_dir: Where the VAE with the tuned decoder is written.
            export_every: Steps between exports (0: only at the end).
        """
        super().__init__()
        self.save_hyperparameters()
        self.vae = load_stage1_vae(vae)
        self.vae.encoder.requires_grad_(False)
        self.vae.quant_conv.requires_grad_(False)

    train_encoder = False

    def trained_parameters(self):
        return [p for p in self.vae.parameters() if p.requires_grad]

    def write(self, root: Path) -> None:
        """The VAE with the tuned decoder (safetensors, diffusers layout)."""
        replace_folder(root, self.vae.save_pretrained)
