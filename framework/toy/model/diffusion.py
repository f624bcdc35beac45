"""Stage 2 of the toy model: UNet, CLIP text encoder and one ControlNet per layout modality.

There is no pretrained base to freeze, so all of them are trained together from scratch on the
latents of the stage-1 VAE: in each batch a sample is conditioned by text only or, with
`control_probability`, also by one modality's map through that modality's ControlNet (the other
samples get zero residuals). Captions are dropped with `caption_dropout` so that classifier-free
guidance works. Noise follows SD 1.5's scaled-linear schedule with epsilon prediction, and an EMA
of every trained weight is what gets exported.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from framework.toy.model.data import images_to_tensor
from framework.toy.model.stage import TrainingStage, replace_folder
from framework.toy.model.vae import load_stage1_vae
from framework.toy.tiny import build_tokenizer, save_sd_folder, sd15_scheduler

TOY_WORDS = ["a", "and", "on", "figure", "nothing", "striped", "light", "dark", "grey", "background",
             "red", "green", "blue", "yellow", "circle", "square", "triangle"]
"""Caption words that become single tokens (the toy-world grammar)."""


def build_unet(block_out_channels: Sequence[int] = (32, 64, 64), layers_per_block: int = 1,
               cross_attention_dim: int = 64, attention_head_dim: int = 8, sample_size: int = 16,
               attention: Sequence[bool] | None = None):
    """A cross-attention UNet in SD 1.5's layout; `attention[i]` says whether level i (0: the finest)
    has attention blocks, down and up (None: all but the deepest, as SD 1.5). The mid block has them always."""
    from diffusers import UNet2DConditionModel

    blocks = len(block_out_channels)
    attention = [True] * (blocks - 1) + [False] if attention is None else list(attention)
    if len(attention) != blocks:
        from framework.core.errors import ConfigError

        raise ConfigError(f"unet_attention names {len(attention)} levels for a UNet of {blocks} "
                          f"(unet_channels {list(block_out_channels)}): give one true/false per level")
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        cross_attention_dim=cross_attention_dim, attention_head_dim=attention_head_dim,
        norm_num_groups=min(32, block_out_channels[0]),
    )


def build_text_encoder(vocab_size: int, tokenizer, hidden: int = 64, layers: int = 2, max_length: int = 32):
    """A small CLIP text transformer."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def build_controlnet(unet, vae_scale_factor: int):
    """A ControlNet for `unet` whose map embedding downsamples by the VAE's factor."""
    from diffusers import ControlNetModel

    steps = vae_scale_factor.bit_length() - 1
    channels = tuple(16 * 2 ** i for i in range(steps + 1))
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)


def load_export(nets: nn.ModuleDict, root: str, modalities: Sequence[str]) -> None:
    """Copy an earlier export's weights (`root/sd/{unet,text_encoder}`, `root/controlnet-<m>`) into `nets`."""
    from diffusers import ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel

    from framework.core.errors import EditError

    sources = {"unet": (UNet2DConditionModel, Path(root, "sd", "unet")),
               "text_encoder": (CLIPTextModel, Path(root, "sd", "text_encoder"))}
    sources.update({f"controlnet_{m}": (ControlNetModel, Path(root, f"controlnet-{m}")) for m in modalities})
    for name, (cls, folder) in sources.items():
        if not (folder / "config.json").exists():
            raise EditError(f"init_from: no {name} at {str(folder)!r}; give a folder laid out as the stage "
                            "exports it (sd/, controlnet-<modality>/), e.g. outputs/toymodel or "
                            "framework/toy/assets/toyworld")
        state = cls.from_pretrained(folder).state_dict()
        try:
            nets[name].load_state_dict(state)
        except RuntimeError as err:
            first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
            raise EditError(f"init_from: the {name} at {str(folder)!r} does not match this stage's architecture "
                            f"({first}); set unet_channels, layers_per_block, text_hidden, ... as it was "
                            "trained (its config.json)") from None


def weighted_eps_loss(pred: torch.Tensor, noise: torch.Tensor, foreground: torch.Tensor | None,
                      weight: float, sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """MSE of the noise prediction, latent pixels under the foreground weighted `weight`, normalised by the weights.

    `foreground` (b, 1, H, W) is brought to the latent grid by max-pooling: a latent pixel counts as
    foreground when any pixel it covers is. `sample_weights` (b,) multiply each sample's term (the
    timestep weights of `min_snr_weights`); they are not part of the normalisation, so they scale
    each sample's share of the gradient.
    """
    err = (pred - noise).square().mean(dim=1, keepdim=True)
    if weight == 1.0 or foreground is None:
        w = torch.ones_like(err)
    else:
        w = 1 + (weight - 1) * F.adaptive_max_pool2d(foreground.float(), pred.shape[-2:])
    if sample_weights is None:
        return (err * w).sum() / w.sum()
    per_sample = (err * w).flatten(1).sum(1) / w.flatten(1).sum(1)
    return (per_sample * sample_weights).mean()


def min_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights of the epsilon loss: min(SNR(t), gamma) / SNR(t), SNR = a / (1 - a).

    In terms of the clean latents the epsilon loss weights step t by SNR(t), so it spends most of its
    gradient on the low-noise steps where images are nearly clean; capping the weight at gamma moves
    it to the high- and mid-noise steps, where a sample's layout (an object's shape) is decided. The
    weights are 1 wherever SNR <= gamma.
    """
    a = alphas_cumprod[t].float()
    snr = a / (1 - a)
    return snr.clamp(max=gamma) / snr


class DiffusionTraining(TrainingStage):
    """Trains UNet + text encoder + ControlNets on toy-world latents and exports diffusers folders.

    Exports `export_dir/sd` (a Stable Diffusion pipeline folder) and `export_dir/controlnet-<modality>`.
    """

    def __init__(self, vae: str = "outputs/toymodel/vae", unet_channels: tuple[int, ...] = (32, 64, 64),
                 layers_per_block: int = 1, attention_head_dim: int = 8, text_hidden: int = 64,
                 text_layers: int = 2, max_length: int = 32, modalities: tuple[str, ...] = ("pose", "scribble"),
                 control_probability: float = 0.6, caption_dropout: float = 0.1, lr: float = 1e-3,
                 warmup_steps: int = 100, total_steps: int = 4000, text_lr_scale: float = 1.0,
                 ema_decay: float = 0.995, object_weight: float = 1.0, snr_gamma: float | None = None,
                 export_dir: str = "outputs/toymodel", export_every: int = 500, init_from: str | None = None,
                 trained_nets: tuple[str, ...] | None = None, seed: int = 0, schedule_seconds: float | None = None,
                 unet_attention: tuple[bool, ...] | None = None):
        """
        Args:
            vae: Folder of the stage-1 VAE (normalised latents, `scaling_factor` 1).
            unet_channels: UNet widths (also the ControlNets').
            layers_per_block: ResNet/attention layers per UNet block.
            attention_head_dim: Attention head size.
            text_hidden: Text encoder width (= the UNet's cross-attention width).
            text_layers: Text encoder layers.
            max_length: Tokenizer length (toy captions are at most 20 tokens).
            modalities: One ControlNet per modality, trained on the pool's maps.
            control_probability: Chance that a sample is also conditioned on a map.
            caption_dropout: Chance that a caption is replaced by the empty prompt.
            lr: Peak AdamW learning rate (warm-up, then cosine over `total_steps`).
            warmup_steps: Warm-up steps.
            total_steps: Length of the cosine schedule.
            text_lr_scale: The text encoder's learning rate as a multiple of `lr`. Words whose pictures
                differ in few pixels (circle and square) get small gradients and stay close together.
            ema_decay: Decay of the exported exponential moving average.
            object_weight: Weight of the noise-prediction error at latent pixels that hold an object or the
                figure (1: plain MSE). The objects are a few latent pixels each, so under plain MSE their
                shape is a small part of the loss.
            snr_gamma: Weight each timestep's loss by min(SNR, gamma) / SNR (min-SNR weighting; None: equal
                weights). Lower gamma shifts the training towards noisier steps.
            export_dir: Where the diffusers folders are written.
            export_every: Steps between exports (0: only at the end).
            init_from: Start from an earlier export instead of random weights: a folder holding `sd/` and
                `controlnet-<modality>/` as `write` lays them out (`outputs/toymodel`, or the bundled
                `framework/toy/assets/toyworld`). The architecture arguments must match it. The optimiser,
                schedule and step count start afresh (to continue a run exactly, resume its checkpoint).
            trained_nets: The nets that learn, by name: `unet`, `text_encoder`, `controlnet_<modality>`
                (None: all). The others are frozen, so a fine-tune of one ControlNet on an `init_from`
                model leaves the text-to-image model and the other ControlNets bit-identical.
            seed: Weight initialisation seed.
            schedule_seconds: Run the warm-up/cosine schedule on the clock: over this many seconds of
                training, then stop (None: over `total_steps` steps). See `TrainingStage`.
            unet_attention: Which UNet levels have attention blocks, finest first (None: all but the
                deepest, as SD 1.5). Self-attention over 32 x 32 latents costs a CPU edit about 4x the
                UNet time of the rest (docs/toymodel_gpu.md), so the 32 x 32 model has none at its finest level.
        """
        super().__init__()
        self.save_hyperparameters()
        self.vae = load_stage1_vae(vae).requires_grad_(False).eval()
        self.tokenizer = build_tokenizer(TOY_WORDS, max_length)
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        torch.manual_seed(seed)
        unet = build_unet(unet_channels, layers_per_block, text_hidden, attention_head_dim,
                          self.vae.config.sample_size // scale, unet_attention)
        text_encoder = build_text_encoder(len(self.tokenizer), self.tokenizer, text_hidden, text_layers, max_length)
        self.nets = nn.ModuleDict({"unet": unet, "text_encoder": text_encoder})
        for m in modalities:
            self.nets[f"controlnet_{m}"] = build_controlnet(unet, scale)
        if init_from:
            load_export(self.nets, init_from, modalities)
        if trained_nets is not None:
            unknown = sorted(set(trained_nets) - set(self.nets))
            if unknown or not trained_nets:
                from framework.core.errors import ConfigError

                raise ConfigError(f"trained_nets: {unknown or 'an empty list'} names no net of this stage; "
                                f"choose from {sorted(self.nets)} (or leave it out to train them all)")
            for name, net in self.nets.items():
                net.requires_grad_(name in trained_nets)
        self.ema = copy.deepcopy(self.nets).requires_grad_(False)
        self.scheduler = sd15_scheduler()
        self.register_buffer("alphas_cumprod", self.scheduler.alphas_cumprod.clone(), persistent=False)
        self._latents: torch.Tensor | None = None
        self._ids: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ data

    @torch.no_grad()
    def _pool_latents(self) -> torch.Tensor:
        """Posterior mean and std of every pool image, encoded once: (n, 2, 4, h, w), float32.

        Outside autocast: under bf16-mixed the latents, and the noise drawn like them, would otherwise
        be bf16 (3 significant digits) for the whole run.
        """
        if self._latents is None:
            pool = self.trainer.datamodule.pool
            chunks = []
            with torch.autocast(self.device.type, enabled=False):
                for i in range(0, len(pool), 256):
                    x = images_to_tensor(pool.images[i:i + 256], signed=True)
                    dist = self.vae.encode(x.to(self.device)).latent_dist
                    chunks.append(torch.stack([dist.mean, dist.std], 1).float())
            self._latents = torch.cat(chunks)
        return self._latents

    def token_ids(self, captions: Sequence[str]) -> torch.Tensor:
        """Token ids (b, max_length), cached per caption."""
        missing = [c for c in set(captions) if c not in self._ids]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=self.hparams.max_length,
                                 truncation=True, return_tensors="pt").input_ids
            self._ids.update(zip(missing, ids))
        return torch.stack([self._ids[c] for c in captions]).to(self.device)

    # ------------------------------------------------------------------ training

    def control_residuals(self, nets, noisy, t, context, maps: dict, choice: torch.Tensor):
        """Sum of ControlNet residuals, each from the samples assigned to its modality (others zero)."""
        down, mid = None, None
        for k, m in enumerate(self.hparams.modalities):
            rows = (choice == k + 1).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            d, md = nets[f"controlnet_{m}"](noisy[rows], t[rows], encoder_hidden_states=context[rows],
                                            controlnet_cond=maps[m][rows], return_dict=False)
            if down is None:
                down = [noisy.new_zeros((len(noisy),) + r.shape[1:]) for r in d]
                mid = noisy.new_zeros((len(noisy),) + md.shape[1:])
            down = [full.index_add(0, rows, r) for full, r in zip(down, d)]
            mid = mid.index_add(0, rows, md)
        return down, mid

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        h = self.hparams
        batch = self.full_batch(batch)
        stats = self._pool_latents()[batch["index"].to(self.device)]
        latents = stats[:, 0] + stats[:, 1] * torch.randn_like(stats[:, 0])
        b = len(latents)
        captions = [("" if torch.rand(()) < h.caption_dropout else c) for c in batch["caption"]]
        context = self.nets["text_encoder"](self.token_ids(captions))[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, len(self.alphas_cumprod), (b,), device=self.device)
        ab = self.alphas_cumprod[t].view(b, 1, 1, 1)
        noisy = ab.sqrt() * latents + (1 - ab).sqrt() * noise
        # 0: text only; k >= 1: also the map of modality k - 1.
        n_mod = len(h.modalities)
        choice = torch.where(torch.rand(b, device=self.device) < h.control_probability,
                             torch.randint(1, n_mod + 1, (b,), device=self.device), 0) if n_mod else \
            torch.zeros(b, dtype=torch.long, device=self.device)
        down, mid = self.control_residuals(self.nets, noisy, t, context, batch, choice)
        pred = self.nets["unet"](noisy, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                                 mid_block_additional_residual=mid).sample
        weights = None if h.snr_gamma is None else min_snr_weights(self.alphas_cumprod, t, h.snr_gamma)
        loss = weighted_eps_loss(pred, noise, batch.get("foreground"), h.object_weight, weights)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    weight_decay = 0.01

    def trained_parameters(self):
        scale = self.hparams.text_lr_scale
        learning = [name for name, net in self.nets.items() if any(p.requires_grad for p in net.parameters())]
        if scale == 1.0 or "text_encoder" not in learning:
            return [p for name in learning for p in self.nets[name].parameters()]
        text = self.nets["text_encoder"]
        rest = [p for name in learning if name != "text_encoder" for p in self.nets[name].parameters()]
        return [{"params": rest}, {"params": list(text.parameters()), "lr": self.hparams.lr * scale}]

    @torch.no_grad()
    def update_ema(self) -> None:
        decay = min(self.hparams.ema_decay, (1 + self.global_step) / (10 + self.global_step))
        # Frozen nets (trained_nets) keep their EMA equal to their weights without a lerp.
        pairs = [(e, p.detach()) for e, p in zip(self.ema.parameters(), self.nets.parameters()) if p.requires_grad]
        torch._foreach_lerp_([e for e, _ in pairs], [p for _, p in pairs], 1 - decay)

    def after_step(self) -> None:
        self.update_ema()

    # ------------------------------------------------------------------ export

    def write(self, root: Path) -> None:
        """The EMA weights as `sd/` (pipeline folder) and `controlnet-<modality>/` folders."""
        root.mkdir(parents=True, exist_ok=True)
        nets = self.ema
        replace_folder(root / "sd", lambda p: save_sd_folder(
            p, self.vae, nets["unet"], nets["text_encoder"], self.tokenizer, self.scheduler))
        for m in self.hparams.modalities:
            replace_folder(root / f"controlnet-{m}", nets[f"controlnet_{m}"].save_pretrained)
