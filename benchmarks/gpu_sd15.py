"""A full paper-setting edit at SD 1.5 size on one GPU, ours against diffusers' DiffEdit, per stage.

    python -m benchmarks.gpu_sd15                                  # H100: 512 px, fp16 and bf16
    python -m benchmarks.gpu_sd15 --channels-last --compile --dtypes fp16
    python -m benchmarks.gpu_sd15 --device cpu --size 64 --tiny    # a quick check on the CPU
    python -m benchmarks.gpu_sd15 --model sdxl                     # SDXL at 1024 px, fp16: ours per stage
    python -m benchmarks.gpu_sd15 --model sdxl --device cpu --size 64 --tiny   # its dry run on the CPU
    python -m benchmarks.gpu_sd15 --model sd3                      # SD3 medium at 1024 px, bf16: ours per stage
    python -m benchmarks.gpu_sd15 --model flux                     # FLUX.1-dev at 1024 px, bf16 (weights 35 GiB)
    python -m benchmarks.gpu_sd15 --model flux --device cpu --size 64 --tiny --steps 6   # dry run (sd3 alike)
    python -m benchmarks.gpu_sd15 --model flux --device meta --params-only   # parameter counts, nothing allocated
    python -m benchmarks.gpu_sd15 --dtypes fp16 --no-stages --batch-sizes 1 2 4 8   # + batched edits per minute

No downloads: the SD 1.5 UNet, its ControlNet (`ControlNetModel.from_unet`), the VAE and the CLIP
ViT-L/14 text encoder are built from their published configs (written below) with random weights,
so timings and memory are those of the real networks; the tokenizer is the project's small one
(token ids do not change the cost: prompts are padded to 77 tokens). `--tiny` uses
`framework.toy.tiny`'s models instead.

Per precision (weights cast to fp16 / bf16, as diffusers' `torch_dtype`): the whole edit at the
paper's settings (25 steps, encode ratio 1, mask from n = 10 seeds decoded from strength 0.5 with
CFG 7.5 (Eq. 7) under the pose ControlNet, guidance image, final decode with ITO at the defaults of
framework.core.settings.ITOConfig),
timed per stage with peak GPU memory (torch.cuda.max_memory_allocated, reset per stage), against
DiffEdit's generate_mask + invert + __call__ from the same pixels; then the per-stage like-for-like
table of benchmarks/edit_speed.py. One untimed warm-up first (it also compiles, with --compile),
then --repeats runs, ours and diffusers' interleaved; medians. `--max-seconds` (default 540) stops
starting new runs once passed, so the script ends inside a 10-minute slot.

`--model sdxl`: the same whole edit on SDXL base 1.0's networks (UNet, the two text encoders, the VAE in the
fp16-fix's architecture, so fp16 needs no upcast; a ControlNet from the UNet, as xinsir's), default 1024 px, fp16;
ours only (diffusers has no SDXL DiffEdit), per stage with peak memory (docs/sdxl.md has the estimate it checks).

`--model sd3` / `--model flux`: the whole default edit of experiments/sd3_pose.yaml / flux_pose.yaml (28 steps,
CFG 7 / FLUX.1-dev's one pass per step with its distilled guidance 3.5, lam 0.6, the pose ControlNet at 0.7 / 0.9
until 65 %) on SD3 medium's networks (MMDiT, CLIP-L, OpenCLIP-bigG, T5-XXL, the 16-channel VAE; InstantX's 6-layer
pose ControlNet) or FLUX.1-dev's (transformer, CLIP-L, T5-XXL, VAE; Shakker Labs' 6-block union ControlNet Pro
2.0), made with random weights in bf16 directly on the device (FLUX's 12B transformer is never in fp32), default
1024 px, bf16; run through `framework.pipeline.EditPipeline` around the built modules, each stage's seconds and
transformer / ControlNet evaluations read from the edit's record, its peak memory measured around it. `--tiny` uses
framework.toy.tiny_flow's models (the CPU at 64 px); `--device meta --params-only` counts the real-size parameters
without allocating them (docs/flow.md has the estimate). `--attention` and `--channels-last` are for the UNets.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

from benchmarks import common as C  # noqa: E402

# --------------------------------------------------------------------------- published configs
# stable-diffusion-v1-5/stable-diffusion-v1-5, unet/config.json
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)
# stable-diffusion-v1-5/stable-diffusion-v1-5, vae/config.json
SD15_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)
# openai/clip-vit-large-patch14, text_config (SD 1.5's text_encoder/config.json)
CLIP_L14_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
)
# stable-diffusion-v1-5/stable-diffusion-v1-5, scheduler/scheduler_config.json (DDIM)
SD15_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1,
)
# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                                      "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(320, 640, 1280),
    layers_per_block=2, transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, norm_num_groups=32,
)
# its vae/config.json (madebyollin/sdxl-vae-fp16-fix has the same architecture, with force_upcast false)
SDXL_VAE = dict(SD15_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=False)
# its text_encoder_2/config.json (OpenCLIP ViT-bigG/14); text_encoder is CLIP ViT-L/14 as SD 1.5's
CLIP_BIGG_TEXT = dict(
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=1280,
)
# lllyasviel/control_v11p_sd15_*: ControlNetModel.from_unet(unet) with its default
# conditioning_embedding_out_channels (16, 32, 96, 256), as the published ControlNets.

# --- the flow families. diffusers 0.42's SD3Transformer2DModel / FluxTransformer2DModel defaults and docstrings do not
# hold SD3 medium's sizes (its defaults are 18 layers x 18 heads); the FLUX transformer's defaults are FLUX.1's except
# guidance_embeds, and diffusers.utils.remote_utils lists the FLUX VAE's 0.3611 / 0.1159. The rest is written from the
# checkpoints' config.json files (not readable here: no network).
# stabilityai/stable-diffusion-3-medium-diffusers, transformer/config.json (2.0B parameters)
SD3_TRANSFORMER = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=192,
)
# its vae/config.json: SD's VAE with 16 latent channels, no quant convs, a shift (FLUX.1's has the same architecture)
SD3_VAE = dict(SD15_VAE, latent_channels=16, sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609,
               use_quant_conv=False, use_post_quant_conv=False)
FLUX_VAE = dict(SD3_VAE, scaling_factor=0.3611, shift_factor=0.1159)
# its text_encoder_3/config.json (google/t5-v1_1-xxl's encoder); FLUX.1's text_encoder_2 is the same
T5_XXL = dict(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
              layer_norm_epsilon=1e-6, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
# InstantX/SD3-Controlnet-Pose, config.json: the transformer's geometry with 6 layers (as InstantX's Canny / Tile)
SD3_CONTROLNET = dict(SD3_TRANSFORMER, num_layers=6, extra_conditioning_channels=0)
# black-forest-labs/FLUX.1-dev, transformer/config.json (11.9B parameters)
FLUX_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)
# Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro-2.0, config.json: 6 double blocks, no single blocks, no mode embedding
FLUX_CONTROLNET = dict(FLUX_TRANSFORMER, num_layers=6, num_single_layers=0, num_mode=None)
# experiments/sd3_pose.yaml and flux_pose.yaml: 28 steps, CFG 7 (FLUX.1-dev: 1, its distilled guidance 3.5 given to
# the model), lam 0.6, the pose ControlNet at scale 0.7 (SD3) / 0.9 until 65 % of the steps (FLUX)
FLOW_STEPS = 28
FLOW_SETTINGS = {"sd3": dict(guidance_scale=7.0, control=dict(scale=0.7)),
                 "flux": dict(guidance_scale=1.0, control=dict(scale=0.9, end=0.65))}
FLOW_LAM = 0.6

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def precisions(dtypes, modules, device: torch.device, deadline: float):
    """Each dtype name in turn, the modules cast to it and the CUDA cache emptied; past `deadline`, skipped."""
    for name in dtypes:
        if time.perf_counter() > deadline:
            print(f"[{name}] skipped: past --max-seconds", flush=True)
            continue
        for module in modules:
            module.to(DTYPES[name])
        if device.type == "cuda":
            torch.cuda.empty_cache()
        yield name


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", choices=["sd15", "sdxl", "sd3", "flux"], default="sd15",
                   help="the network sizes (and family): SD 1.5, SDXL base, SD3 medium, FLUX.1-dev")
    p.add_argument("--size", type=int, default=None,
                   help="image side in pixels, a multiple of 8 (512; SDXL, SD3, FLUX 1024; FLUX: of 16)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"sampling steps of the SD3 / FLUX edit (default {FLOW_STEPS}, the flow experiments')")
    p.add_argument("--params-only", action="store_true",
                   help="SD3 / FLUX: build, print the parameter counts and stop (with --device meta: nothing "
                        "allocated)")
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=None,
                   help="precisions, in order (default: fp16 bf16 on CUDA, SDXL fp16, SD3 and FLUX bf16; fp32 on the "
                        "CPU)")
    p.add_argument("--tiny", action="store_true", help="framework.toy.tiny's models instead of SD 1.5 size")
    p.add_argument("--repeats", type=int, default=2, help="timed runs after the warm-up (median reported)")
    p.add_argument("--attention", choices=["sdpa", "classic"], default="sdpa",
                   help="sdpa: torch's scaled_dot_product_attention (diffusers' default with torch 2); "
                        "classic: diffusers' AttnProcessor (explicit softmax(QK^T)V)")
    p.add_argument("--channels-last", action="store_true", help="UNet, ControlNet and VAE in channels_last")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (in place: both sides use it)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    p.add_argument("--no-stages", action="store_true", help="only the whole edit, not the per-stage table")
    p.add_argument("--max-seconds", type=float, default=540, help="start no new run after this (whole script)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU runs)")
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[],
                   help="also time EditPipeline.edit_batch (data.batch_size) on this many copies of the edit each, "
                        "at the shipped defaults: edits per minute against batch size")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.size = args.size or (512 if args.model == "sd15" else 1024)
    return args


# --------------------------------------------------------------------------- building
def build_models(tiny: bool, device: torch.device):
    """(vae, unet, text_encoder, tokenizer, scheduler, controlnet), fp32, random weights, on `device`."""
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from framework.toy.tiny import build_tiny_controlnet, build_tiny_models, build_tokenizer

    if tiny:
        vae, unet, text_encoder, tokenizer, scheduler = build_tiny_models(0)
        controlnet = build_tiny_controlnet(unet, 0)
        return [m.to(device) for m in (vae, unet, text_encoder)] + [tokenizer, scheduler, controlnet.to(device)]
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU: seconds instead of a minute of CPU init
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L14_TEXT, bos_token_id=tokenizer.bos_token_id,
                                                    eos_token_id=tokenizer.eos_token_id,
                                                    pad_token_id=tokenizer.pad_token_id))
        controlnet = ControlNetModel.from_unet(unet)
    return vae.to(device), unet.to(device), text_encoder.to(device), tokenizer, DDIMScheduler(**SD15_SCHEDULER), \
        controlnet.to(device)


def wire(vae, unet, text_encoder, tokenizer, scheduler, controlnet):
    """The project's backbone and conditioners around already-built modules (no weights read)."""
    from conditioners.controlnet import ControlNetConditioner
    from conditioners.text import TextConditioner
    from framework.backbones.sd import StableDiffusion
    from framework.toy.tiny import TINY_SD

    backbone = StableDiffusion(TINY_SD)  # a built-in name resolves without touching disk or network ...
    backbone.vae, backbone.unet, backbone.text_encoder = vae, unet, text_encoder  # ... and is filled here
    backbone.tokenizer, backbone.scheduler = tokenizer, scheduler
    for module in (vae, unet, text_encoder, controlnet):
        module.requires_grad_(False).eval()
    pose = ControlNetConditioner("pose", TINY_SD)
    pose.controlnet = controlnet  # load() then keeps it
    return backbone, [TextConditioner(), pose]


def build_sdxl(tiny: bool, device: torch.device):
    """The project's SDXL backbone and [text, pose ControlNet] around SDXL-size modules (random weights, fp32), or
    the tiny SDXL model's; no weights read."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from conditioners.controlnet import ControlNetConditioner
    from conditioners.text import TextConditioner
    from framework.backbones.sdxl import StableDiffusionXL
    from framework.toy.tiny import build_tokenizer
    from framework.toy.tiny_sdxl import TINY_SDXL, build_tiny_sdxl

    backbone = StableDiffusionXL(TINY_SDXL)  # a built-in name resolves without touching disk or network
    tiny_pipe = build_tiny_sdxl(0)  # its scheduler (SDXL's Euler config, read as DDIM) and tokenizers
    if tiny:
        parts = tiny_pipe
        vae, unet, te, te2 = parts.vae, parts.unet, parts.text_encoder, parts.text_encoder_2
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 32))
    else:
        tok = build_tokenizer()
        ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        with torch.device(device):
            unet = UNet2DConditionModel(**SDXL_UNET)
            vae = AutoencoderKL(**SDXL_VAE)
            te = CLIPTextModel(CLIPTextConfig(**CLIP_L14_TEXT, **ids))
            te2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG_TEXT, **ids))
            controlnet = ControlNetModel.from_unet(unet)
    from diffusers import DDIMScheduler

    backbone.vae, backbone.unet, backbone.text_encoder, backbone.text_encoder_2 = (m.to(device) for m in
                                                                                   (vae, unet, te, te2))
    backbone.tokenizer, backbone.tokenizer_2 = tiny_pipe.tokenizer, tiny_pipe.tokenizer_2
    backbone.scheduler = DDIMScheduler.from_config(tiny_pipe.scheduler.config, set_alpha_to_one=False,
                                                   clip_sample=False)
    backbone.zero_empty_prompt = True
    for module in (vae, unet, te, te2, controlnet):
        module.requires_grad_(False).eval()
    pose = ControlNetConditioner("pose", TINY_SDXL)
    pose.controlnet = controlnet.to(device)
    return backbone, [TextConditioner(), pose]


def sdxl_main(args, device, dtypes, gpu, log, deadline) -> dict:
    """The whole edit on SDXL-size networks, ours only, per stage with peak memory."""
    t0 = time.perf_counter()
    backbone, conditioners = build_sdxl(args.tiny, device)
    controlnet = conditioners[1].controlnet
    modules = {"unet": backbone.unet, "controlnet": controlnet, "vae": backbone.vae,
               "text_encoder": backbone.text_encoder, "text_encoder_2": backbone.text_encoder_2}
    n_params = {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in modules.items()}
    print(f"SDXL built in {time.perf_counter() - t0:.1f} s; parameters (M): "
          + ", ".join(f"{k} {v:.1f}" for k, v in n_params.items()), flush=True)
    set_attention((backbone.unet, controlnet, backbone.vae), args.attention)
    req = C.toy_request(args.size)
    results = {"config": {"model": "sdxl", "size": args.size, "tiny": args.tiny, "dtypes": dtypes,
                          "device_name": gpu, "params_m": n_params}, "precisions": {}}
    for name in precisions(dtypes, modules.values(), device, deadline):
        ours = C.OurStages(backbone, conditioners, device)
        unet_counter, cn_counter = C.EvalCounter(backbone.unet), C.EvalCounter(controlnet)
        runs = []
        for rep in range(1 + args.repeats):  # the first is the warm-up
            if time.perf_counter() > deadline and runs:
                break
            runs.append(our_full_edit(ours, req, device, unet_counter, cn_counter))
            log(f"[sdxl {name}] run {rep}: " + ", ".join(f"{k} {v['s']:.3f}" for k, v in runs[-1].items()
                                                        if not k.startswith("_")))
        unet_counter.remove()
        cn_counter.remove()
        timed = runs[1:] or runs
        summary = summarise(timed)
        peak = {k: v["peak_gib"] for k, v in summary.items()}
        results["precisions"][name] = {"whole_edit": summary, "finite": all(r.get("_finite", True) for r in timed)}
        print(f"\n== SDXL whole edit, {name}, {args.size} px, {gpu}, median of {len(timed)} ==\n"
              + "\n".join(f"{k:10s} {v}" for k, v in summary.items()) + f"\npeak GiB per stage: {peak}", flush=True)
    return results


# --------------------------------------------------------------------------- the flow families (SD3, FLUX.1)
@contextmanager
def _default_dtype(dtype: torch.dtype):
    """Parameters are created in `dtype` (bf16: FLUX's 12B transformer never exists in fp32)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _placed(modules: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """Frozen, in eval mode, on `device` in `dtype` (buffers made in float32, e.g. the sin-cos position table, too)."""
    if device.type != "meta":
        modules = {k: m.to(device=device, dtype=dtype) for k, m in modules.items()}
    for m in modules.values():
        m.requires_grad_(False).eval()
    return modules


def _clip_ids(tokenizer) -> dict:
    return dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)


def build_sd3(tiny: bool, device: torch.device, dtype: torch.dtype = torch.bfloat16):
    """The project's SD3 backbone and [text, pose ControlNet] around SD3-medium-size modules (random weights, made in
    `dtype` on `device`), or the tiny SD3 model's (framework.toy.tiny_flow); no weights read. The tokenizers are the
    tiny model's (prompts are padded to 77 CLIP and 256 T5 tokens: the ids do not change the cost)."""
    from diffusers import AutoencoderKL, SD3ControlNetModel, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from conditioners.controlnet import ControlNetConditioner
    from conditioners.text import TextConditioner
    from framework.backbones.loading import TINY_SD3
    from framework.backbones.sd3 import StableDiffusion3
    from framework.toy.tiny_flow import _randomise_zero_projections, build_tiny_sd3

    backbone = StableDiffusion3(TINY_SD3)  # a built-in name resolves without touching disk or network ...
    parts = build_tiny_sd3(0)  # its scheduler (SD3's: shift 3) and tokenizers
    if tiny:
        modules = {k: parts[k] for k in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")}
        torch.manual_seed(0)
        modules["controlnet"] = SD3ControlNetModel.from_transformer(parts["transformer"], num_layers=1,
                                                                    num_extra_conditioning_channels=0)
        _randomise_zero_projections(modules["controlnet"], 0)
    else:
        ids = _clip_ids(parts["tokenizer"])
        torch.manual_seed(0)
        with torch.device(device), _default_dtype(dtype):
            modules = {"transformer": SD3Transformer2DModel(**SD3_TRANSFORMER), "vae": AutoencoderKL(**SD3_VAE),
                       "text_encoder": CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L14_TEXT, **ids)),
                       "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG_TEXT, **ids)),
                       "text_encoder_3": T5EncoderModel(T5Config(**T5_XXL)),
                       "controlnet": SD3ControlNetModel(**SD3_CONTROLNET)}
    modules = _placed(modules, device, dtype)
    backbone.unet, backbone.vae = modules["transformer"], modules["vae"]  # ... and is filled here (load() keeps them)
    for n in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        setattr(backbone, n, modules[n])
    backbone.tokenizer, backbone.tokenizer_2, backbone.tokenizer_3 = (parts[k] for k in
                                                                      ("tokenizer", "tokenizer_2", "tokenizer_3"))
    backbone.scheduler = parts["scheduler"]
    pose = ControlNetConditioner("pose", TINY_SD3, **FLOW_SETTINGS["sd3"]["control"])
    pose.controlnet = modules["controlnet"]  # load() then keeps it
    return backbone, [TextConditioner(), pose], modules


def build_flux(tiny: bool, device: torch.device, dtype: torch.dtype = torch.bfloat16):
    """The project's FLUX backbone and [text, pose ControlNet] around FLUX.1-dev-size modules (random weights, made
    in `dtype` on `device`), or the tiny FLUX.1-dev-geometry model's; no weights read. Tokenizers: the tiny model's
    (77 CLIP and 512 T5 tokens per prompt)."""
    from diffusers import AutoencoderKL, FluxControlNetModel, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from conditioners.controlnet import ControlNetConditioner
    from conditioners.text import TextConditioner
    from framework.backbones.flux import Flux
    from framework.backbones.loading import TINY_FLUX
    from framework.toy.tiny_flow import _randomise_zero_projections, build_tiny_flux

    backbone = Flux(TINY_FLUX)
    parts = build_tiny_flux(0, guidance_embeds=True)  # its scheduler (FLUX.1-dev's dynamic shift) and tokenizers
    if tiny:
        modules = {k: parts[k] for k in ("transformer", "vae", "text_encoder", "text_encoder_2")}
        torch.manual_seed(0)
        modules["controlnet"] = FluxControlNetModel.from_transformer(
            parts["transformer"], num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2)
        _randomise_zero_projections(modules["controlnet"], 0)
    else:
        torch.manual_seed(0)
        with torch.device(device), _default_dtype(dtype):
            modules = {"transformer": FluxTransformer2DModel(**FLUX_TRANSFORMER), "vae": AutoencoderKL(**FLUX_VAE),
                       "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L14_TEXT, **_clip_ids(parts["tokenizer"]))),
                       "text_encoder_2": T5EncoderModel(T5Config(**T5_XXL)),
                       "controlnet": FluxControlNetModel(**FLUX_CONTROLNET)}
    modules = _placed(modules, device, dtype)
    backbone.unet, backbone.vae = modules["transformer"], modules["vae"]
    backbone.text_encoder, backbone.text_encoder_2 = modules["text_encoder"], modules["text_encoder_2"]
    backbone.tokenizer, backbone.tokenizer_2, backbone.scheduler = (parts[k] for k in
                                                                    ("tokenizer", "tokenizer_2", "scheduler"))
    pose = ControlNetConditioner("pose", TINY_FLUX, **FLOW_SETTINGS["flux"]["control"])
    pose.controlnet = modules["controlnet"]
    return backbone, [TextConditioner(), pose], modules


def _metered(engine, device: torch.device, peaks: dict) -> None:
    """Wrap the engine's stage clock so that it also records each stage's peak GPU memory in `peaks` (reset per
    stage, as StageClock does); the timing and the counts stay the engine's own."""
    clock = engine.stage

    @contextmanager
    def stage(name, state):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with clock(name, state):
            yield
        peaks[name] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    engine.stage = stage


def flow_edit(pipe, request, peaks: dict) -> dict:
    """One whole edit through EditPipeline.edit; per stage: seconds (the record's, synchronised on CUDA), transformer
    and ControlNet sample-evaluations (the record's counts) and peak GPU memory (bytes)."""
    for c in pipe.conditioners:
        if hasattr(c, "clear"):
            c.clear()  # the text conditioner caches prompts: time a cold encode
    peaks.clear()
    with torch.no_grad():
        result = pipe.edit(request)
    record = result.record
    out = {name: {"s": s, "unet": record["unet_evaluations"].get(name, 0),
                  "cn": record["controlnet_evaluations"].get(name, 0), "peak": peaks.get(name)}
           for name, s in record["seconds"].items() if name != "total"}
    out["_finite"] = bool(torch.isfinite(result.edit).all())
    return out


def flow_main(args, device, dtypes, gpu, log, deadline) -> dict:
    """The whole default edit on SD3-medium- or FLUX.1-dev-size networks (or the tiny ones), ours only, through
    EditPipeline at the flow experiments' settings, per stage with peak memory, for each precision in `dtypes`."""
    from framework.core.request import EditRequest
    from framework.core.settings import SamplingConfig
    from framework.pipeline import EditPipeline

    label = {"sd3": "SD3 medium", "flux": "FLUX.1-dev"}[args.model]
    t0 = time.perf_counter()
    build = build_sd3 if args.model == "sd3" else build_flux
    backbone, conditioners, modules = build(args.tiny, device, DTYPES[dtypes[0]])
    n_params = {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in modules.items()}
    weights = sum(p.numel() * p.element_size() for m in modules.values() for p in m.parameters()) / 2 ** 30
    print(f"{label}{' (tiny)' if args.tiny else ''} built in {time.perf_counter() - t0:.1f} s on {device} in "
          f"{dtypes[0]}; parameters (M): " + ", ".join(f"{k} {v:.1f}" for k, v in n_params.items())
          + f"; total {sum(n_params.values()) / 1e3:.2f} B, weights {weights:.2f} GiB", flush=True)
    steps = args.steps or FLOW_STEPS
    settings = FLOW_SETTINGS[args.model]
    results = {"config": {"model": args.model, "size": args.size, "tiny": args.tiny, "dtypes": dtypes, "steps": steps,
                          "guidance_scale": settings["guidance_scale"], "lam": FLOW_LAM, "device_name": gpu,
                          "params_m": n_params, "weights_gib": round(weights, 3)}, "precisions": {}}
    if args.params_only:
        return results
    pipe = EditPipeline(backbone, conditioners, lam=FLOW_LAM,
                        sampling=SamplingConfig(steps=steps, guidance_scale=settings["guidance_scale"])).load()
    peaks: dict = {}
    _metered(pipe.engine, device, peaks)
    req = C.toy_request(args.size)
    request = EditRequest("flow", req["image"], req["source_prompt"], req["edit_prompt"], {"pose": req["source_pose"]},
                          {"pose": req["edit_pose"]}, None, 0, None, {})
    for name in precisions(dtypes, modules.values(), device, deadline):
        runs = []
        for rep in range(1 + args.repeats):  # the first is the warm-up
            if time.perf_counter() > deadline and runs:
                break
            runs.append(flow_edit(pipe, request, peaks))
            log(f"[{args.model} {name}] run {rep}: " + ", ".join(
                f"{k} {v['s']:.3f} s ({v['unet']}/{v['cn']})" for k, v in runs[-1].items() if not k.startswith("_")))
        timed = runs[1:] or runs
        summary = summarise(timed)
        peak = {k: v["peak_gib"] for k, v in summary.items()}
        results["precisions"][name] = {"whole_edit": summary, "finite": all(r["_finite"] for r in timed)}
        print(f"\n== {label} whole edit, {name}, {args.size} px, {steps} steps, CFG {settings['guidance_scale']}, "
              f"lam {FLOW_LAM}, {gpu}, median of {len(timed)} ==\n"
              + "\n".join(f"{k:10s} {v['s']:.3f} s, transformer {v['unet']}, ControlNet {v['cn']}, peak GiB "
                          f"{v['peak_gib']}" for k, v in summary.items())
              + f"\npeak GiB per stage: {peak}", flush=True)
    return results


def set_attention(modules, kind: str) -> None:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    for m in modules:
        if hasattr(m, "set_attn_processor"):
            m.set_attn_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())


# --------------------------------------------------------------------------- the whole edit
STAGES = ("encode", "inversion", "mask", "guidance", "final", "decode")


def our_full_edit(ours: C.OurStages, req: dict, device, unet_counter, cn_counter, mask_cfg=C.PAPER_MASK) -> dict:
    """EditModule.edit's procedure at the paper's settings, from pixels, stage by stage, timed with
    peak memory (the Lightning module itself is not needed for this)."""
    image = req["image"].to(device)
    maps = {"pose": req["source_pose"].to(device)}, {"pose": req["edit_pose"].to(device)}
    stage = C.StageClock(device, unet_counter, cn_counter, rss=True)
    x0, src, edit = stage("encode", lambda: ours.encode(image, req["source_prompt"], req["edit_prompt"], *maps))
    x_traj = stage("inversion", lambda: ours.invert(x0, src))
    mask = stage("mask", lambda: ours.mask(x0, src, edit, mask_cfg))
    g0, g_traj = stage("guidance", lambda: ours.guidance(x0, x_traj, mask, edit))
    y0 = stage("final", lambda: ours.final(x_traj, g_traj, mask, edit))
    picture = stage("decode", lambda: (ours.decode(y0), ours.decode(g0)))
    out = stage.stages
    out["_finite"] = bool(torch.isfinite(y0).all()) and bool(torch.isfinite(picture[0]).all())
    return out


def diffedit_full(theirs: C.DiffusersStages, req: dict, device, unet_counter, cn_counter) -> dict:
    """DiffEdit from the same pixels: generate_mask, invert, __call__ ('call', with the VAE decode), each timed."""
    image = req["image"].to(device)
    sp, ep = req["source_prompt"], req["edit_prompt"]
    stage = C.StageClock(device, unet_counter, cn_counter)
    mask = stage("generate_mask", lambda: theirs.generate_mask(image, sp, ep))
    inverted = stage("invert", lambda: theirs.invert(image, sp))
    stage("call", lambda: theirs.call(ep, mask, inverted, output_type="pt"))
    return stage.stages


def summarise(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if not k.startswith("_")]
    out = {}
    for k in keys:
        peaks = [r[k]["peak"] for r in runs if r[k]["peak"] is not None]
        out[k] = {"s": round(statistics.median(r[k]["s"] for r in runs), 4), "unet": runs[-1][k]["unet"],
                  "cn": runs[-1][k]["cn"], "peak_gib": round(max(peaks) / 2 ** 30, 3) if peaks else None,
                  "runs": [round(r[k]["s"], 4) for r in runs]}
    out["total"] = {"s": round(sum(out[k]["s"] for k in keys), 4), "unet": sum(out[k]["unet"] for k in keys),
                    "cn": sum(out[k]["cn"] for k in keys),
                    "peak_gib": max((out[k]["peak_gib"] or 0) for k in keys) if out[keys[0]]["peak_gib"] is not None
                    else None}
    return out


def format_full(ours: dict, theirs: dict, title: str) -> str:
    gib = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [title, "| ours stage | s | UNet | CN | peak GiB |", "|---|---|---|---|---|"]
    for k, v in ours.items():
        lines.append(f"| {k} | {v['s']:.3f} | {v['unet']} | {v['cn']} | {gib(v['peak_gib'])} |")
    lines += ["", "| DiffEdit stage | s | UNet | CN | peak GiB |", "|---|---|---|---|---|"]
    for k, v in theirs.items():
        lines.append(f"| {k} | {v['s']:.3f} | {v['unet']} | {v['cn']} | {gib(v['peak_gib'])} |")
    lines.append(f"whole edit: ours {ours['total']['s']:.3f} s / DiffEdit {theirs['total']['s']:.3f} s = "
                 f"{ours['total']['s'] / theirs['total']['s']:.2f}x (ours adds the guidance image, decodes the mask "
                 f"12 steps (Eq. 7) and runs the ControlNet; DiffEdit is text-only)")
    return "\n".join(lines)


def batch_throughput(backbone, conditioners, req: dict, device, sizes, log) -> list[dict]:
    """Edits per minute of EditPipeline.edit_batch at the shipped defaults (lam 1: inversion, mask, final decode),
    `size` copies of the text + pose edit (seeds 0, 1, ...) per batch; one untimed warm-up batch per size."""
    from dataclasses import replace

    from framework.core.request import EditRequest
    from framework.pipeline import EditPipeline

    pipe = EditPipeline(backbone, conditioners).load()
    base = EditRequest("batch", req["image"].to(device), req["source_prompt"], req["edit_prompt"],
                       {"pose": req["source_pose"].to(device)}, {"pose": req["edit_pose"].to(device)}, None, 0, None, {})
    rows = []
    for size in sizes:
        batch = [replace(base, id=f"batch_{i}", seed=i) for i in range(size)]
        with torch.no_grad():
            pipe.edit_batch(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            results = pipe.edit_batch(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise errors[0]
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
        calls = pipe.last_batch["unet_calls"] if size > 1 else sum(results[0].record["unet_calls"].values())
        rows.append({"batch_size": size, "s": round(seconds, 3), "edits_per_min": round(60 * size / seconds, 1),
                     "unet_calls": calls, "peak_gib": None if peak is None else round(peak, 2)})
        log(f"[batch] {rows[-1]}")
    return rows


# --------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.perf_counter()
    deadline = t_start + args.max_seconds
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = args.dtypes or (["fp16", "bf16"] if device.type == "cuda" else ["fp32"])
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    import diffusers
    import transformers

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or device.type
    if args.model != "sd15":
        default = {"sdxl": "fp16", "sd3": "bf16", "flux": "bf16"}[args.model]
        dtypes = args.dtypes or ([default] if device.type in ("cuda", "meta") else ["fp32"])
        main_of = sdxl_main if args.model == "sdxl" else flow_main
        results = main_of(args, device, dtypes, gpu, log, deadline)
        results["seconds"] = round(time.perf_counter() - t_start, 1)
        C.write_json(args.json, results)
        return results
    print(f"device {gpu}; torch {torch.__version__}, diffusers {diffusers.__version__}, transformers "
          f"{transformers.__version__}; {args.size} px, {'tiny' if args.tiny else 'SD 1.5 size'}, attention "
          f"{args.attention}, channels_last {args.channels_last}, compile {args.compile}; torch threads "
          f"{torch.get_num_threads()}", flush=True)

    t0 = time.perf_counter()
    vae, unet, text_encoder, tokenizer, scheduler, controlnet = build_models(args.tiny, device)
    n_params = {name: sum(p.numel() for p in m.parameters()) / 1e6 for name, m in
                (("unet", unet), ("controlnet", controlnet), ("vae", vae), ("text_encoder", text_encoder))}
    print(f"built in {time.perf_counter() - t0:.1f} s; parameters (M): "
          + ", ".join(f"{k} {v:.1f}" for k, v in n_params.items()), flush=True)
    backbone, conditioners = wire(vae, unet, text_encoder, tokenizer, scheduler, controlnet)
    set_attention((unet, controlnet, vae), args.attention)
    if args.channels_last:
        for m in (unet, controlnet, vae):
            m.to(memory_format=torch.channels_last)
    if args.compile:
        unet.compile(mode=args.compile_mode)  # in place: our Denoiser and the pipelines call the same module

    req = C.toy_request(args.size)
    results = {"config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                          "dtypes": dtypes, "device_name": gpu, "torch": torch.__version__,
                          "diffusers": diffusers.__version__, "params_m": n_params}, "precisions": {}}
    printed = []
    for name in precisions(dtypes, (vae, unet, text_encoder, controlnet), device, deadline):
        ours = C.OurStages(backbone, conditioners, device)
        theirs = C.DiffusersStages(backbone, controlnet, device)
        unet_counter, cn_counter = C.EvalCounter(unet), C.EvalCounter(controlnet)

        # Whole edits, interleaved; the first of each is the warm-up (and the compile).
        t0 = time.perf_counter()
        our_full_edit(ours, req, device, unet_counter, cn_counter)
        diffedit_full(theirs, req, device, unet_counter, cn_counter)
        log(f"[{name}] warm-up (both whole edits): {time.perf_counter() - t0:.1f} s")
        ours_runs, theirs_runs = [], []
        for rep in range(args.repeats):
            if time.perf_counter() > deadline and ours_runs:
                break
            pair = [("ours", our_full_edit, ours, ours_runs), ("diffusers", diffedit_full, theirs, theirs_runs)]
            for side, fn, stages, runs in (pair if rep % 2 == 0 else pair[::-1]):
                runs.append(fn(stages, req, device, unet_counter, cn_counter))
                log(f"[{name}] rep {rep + 1} {side}: "
                    + ", ".join(f"{k} {v['s']:.3f}" for k, v in runs[-1].items() if not k.startswith("_")))
        finite = all(r.get("_finite", True) for r in ours_runs)
        full = {"ours": summarise(ours_runs), "diffedit": summarise(theirs_runs), "finite": finite}
        entry = {"whole_edit": full}
        printed.append(format_full(full["ours"], full["diffedit"],
                                   f"\n== whole edit, {name}, {args.size} px, {gpu}, median of {len(ours_runs)}; "
                                   f"our latents finite: {finite} (random weights) =="))
        print(printed[-1], flush=True)

        if not args.no_stages and time.perf_counter() < deadline:
            tasks, rows = C.stage_tasks(ours, theirs, req, args.size, log)
            C.interleaved(tasks, args.repeats, device, unet_counter, cn_counter, deadline=deadline,
                          log=log)
            by = {t.name: t for t in tasks}
            entry["stages"] = [C.row_dict(r, by) for r in rows]
            entry["ito_overhead_pct"] = C.ito_overhead(by)
            printed.append(C.format_table(entry["stages"], f"\n== per stage, {name}, {args.size} px, {gpu}; "
                                                           f"ratio = ours s / diffusers s ==", memory=True)
                           + f"\nITO overhead (t_u=15 vs 0, same UNet evaluations): {entry['ito_overhead_pct']}")
            print(printed[-1], flush=True)
        unet_counter.remove()
        cn_counter.remove()
        if args.batch_sizes and time.perf_counter() < deadline:
            entry["batches"] = batch_throughput(backbone, conditioners, req, device, args.batch_sizes, log)
            printed.append(f"\n== batched edits (edit_batch), {name}, {args.size} px, {gpu}: the shipped defaults ==\n"
                           "| batch size | s | edits / min | UNet calls | peak GiB |\n|---|---|---|---|---|\n" + "\n".join(
                               f"| {r['batch_size']} | {r['s']:.2f} | {r['edits_per_min']} | {r['unet_calls']} | "
                               f"{r['peak_gib']} |" for r in entry["batches"]))
            print(printed[-1], flush=True)
        results["precisions"][name] = entry
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    print("\n".join(["\n######## summary ########"] + printed + [f"\nscript time {results['seconds']} s"]), flush=True)
    C.write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
