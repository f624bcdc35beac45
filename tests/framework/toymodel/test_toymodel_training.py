"""Toy-model training recipe: loss formulas, latent normalisation, ControlNet routing, export and reload."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from framework.toy.model.data import load_pool, render_pool
from framework.toy.model.vae import build_vae, cosine_lr, normalised_vae, weighted_reconstruction

pytestmark = pytest.mark.usefixtures("one_thread")


def test_weighted_reconstruction_matches_formula():
    recon = torch.zeros(1, 3, 1, 2)
    image = torch.tensor([0.5, -1.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    fg = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    # Pixel errors 0.5 (foreground, weight 4) and 1.0 (background, weight 1): |e| + e^2 = 0.75 and 2.
    expected = (4 * 0.75 + 1 * 2.0) / 5
    assert weighted_reconstruction(recon, image, fg, 4.0).item() == pytest.approx(expected)


def test_weighted_eps_loss_matches_formula():
    from framework.toy.model.diffusion import weighted_eps_loss

    torch.manual_seed(0)
    pred, noise = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    fg = torch.zeros(2, 1, 8, 8)
    fg[0, 0, 0, 0] = 1  # one pixel of latent pixel (0, 0) of sample 0: that latent pixel is foreground
    assert weighted_eps_loss(pred, noise, fg, 1.0) == pytest.approx(torch.nn.functional.mse_loss(pred, noise).item())
    err = (pred - noise).square().mean(dim=1)  # (2, 2, 2)
    w = torch.ones(2, 2, 2)
    w[0, 0, 0] = 5.0
    assert weighted_eps_loss(pred, noise, fg, 5.0).item() == pytest.approx(((err * w).sum() / w.sum()).item())


def test_min_snr_weights_cap_the_signal_to_noise_ratio_and_scale_each_sample():
    from framework.toy.model.diffusion import min_snr_weights, weighted_eps_loss
    from framework.toy.tiny import sd15_scheduler

    a = sd15_scheduler().alphas_cumprod
    t = torch.tensor([0, 100, 500, 999])
    snr = (a[t] / (1 - a[t])).double()
    w = min_snr_weights(a, t, 5.0).double()
    assert torch.allclose(w, torch.minimum(snr, torch.full_like(snr, 5.0)) / snr, rtol=1e-5)
    # SD's schedule: SNR(0) ~ 1170, so the cleanest step weighs 5 / 1170; from t = 500 on SNR < 1 <= 5.
    assert w[0].item() == pytest.approx(5.0 / snr[0].item(), rel=1e-5) and w[0] < 0.01
    assert w[2:].tolist() == [1.0, 1.0]

    torch.manual_seed(0)
    pred, noise = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    per_sample = (pred - noise).square().mean(dim=(1, 2, 3))
    weights = torch.tensor([0.25, 1.0])
    expected = (per_sample * weights).mean()
    assert weighted_eps_loss(pred, noise, None, 1.0, weights).item() == pytest.approx(expected.item())
    # Equal weights of one give the unweighted loss.
    assert weighted_eps_loss(pred, noise, None, 1.0, torch.ones(2)).item() == pytest.approx(
        torch.nn.functional.mse_loss(pred, noise).item())


def test_cosine_lr_warms_up_then_decays_to_floor():
    assert cosine_lr(0, 10, 100) == pytest.approx(0.1)
    assert cosine_lr(9, 10, 100) == pytest.approx(1.0)
    assert cosine_lr(55, 10, 100) == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cosine_lr(500, 10, 100) == pytest.approx(0.05)


def test_normalised_vae_has_unit_latents_and_same_reconstruction():
    torch.manual_seed(0)
    vae = build_vae((8, 16), latent_channels=4, size=16).eval()
    images = torch.rand(32, 3, 16, 16) * 2 - 1
    norm = normalised_vae(vae, images)
    z = norm.encode(images).latent_dist.mean
    assert z.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (z.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-4
    assert norm.config.scaling_factor == 1.0
    with torch.no_grad():
        before = vae.decode(vae.encode(images).latent_dist.mean).sample
        after = norm.decode(z).sample
        # The posterior's std is scaled by the same factor as its mean.
        ratio = norm.encode(images).latent_dist.std / vae.encode(images).latent_dist.std
        scale = (vae.encode(images).latent_dist.mean.std(dim=(0, 2, 3)))
    assert (before - after).abs().max() < 1e-4
    assert torch.allclose(ratio, (1 / scale).view(1, -1, 1, 1).expand_as(ratio), rtol=1e-3)


def test_pool_is_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ITO_EDIT_CACHE", str(tmp_path))
    a = load_pool(6, size=32, seed_offset=50)
    files = list((tmp_path / "toyworld-pools").glob("*.npz"))
    assert len(files) == 1
    b = load_pool(6, size=32, seed_offset=50)  # read back from the cache
    c = render_pool(6, size=32, seed_offset=50)
    d = render_pool(6, size=32, seed_offset=50, workers=2)  # two processes, three scenes each
    for other in (b, c, d):
        assert np.array_equal(a.images, other.images) and np.array_equal(a.foreground, other.foreground)
        assert a.captions == other.captions
        assert all(np.array_equal(a.maps[m], other.maps[m]) for m in a.maps)
    # Foreground is exactly the non-background pixels: a flat-background scene differs from its grey there.
    assert a.foreground.any(axis=(1, 2)).all()


def test_single_object_weight_draws_one_object_scenes_that_much_more_often(tmp_path, monkeypatch):
    from framework.toy.model.data import ToyWorldData, object_count
    from framework.toy.world import caption, sample_scene

    monkeypatch.setenv("ITO_EDIT_CACHE", str(tmp_path))
    assert [object_count(caption(sample_scene(s, 32))) for s in range(40)] == \
        [len(sample_scene(s, 32).objects) for s in range(40)]  # "a red circle, a blue square and ..."
    data = ToyWorldData(size=32, pool_size=200, batch_size=50, modalities=(), single_object_weight=4.0, seed=3)
    data.setup()
    single = np.array([object_count(c) == 1 for c in data.pool.captions])
    drawn = np.concatenate([b["index"].numpy() for _ in range(10) for b in data.train_dataloader()])
    share, base = single[drawn].mean(), single.mean()
    expected = 4 * base / (4 * base + 1 - base)
    assert abs(share - expected) < 0.05 and expected - base > 0.25  # e.g. 0.44 of scenes -> 0.76 of draws
    again = np.concatenate([b["index"].numpy() for b in data.train_dataloader()])
    assert np.array_equal(again, drawn[:len(again)])  # seeded order
    uniform = ToyWorldData(size=32, pool_size=200, batch_size=50, modalities=(), seed=3)
    uniform.setup()
    assert sorted(np.concatenate([b["index"].numpy() for b in uniform.train_dataloader()])) == list(range(200))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two-step runs of both stages through the CLI, with tiny widths."""
    from framework.toy.model.__main__ import main

    root = tmp_path_factory.mktemp("toymodel")
    common = ["--trainer.max_steps", "2", "--trainer.logger", "false", "--trainer.callbacks.init_args.every_n_train_steps", "1",
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
              "--data.init_args.pool_size", "8", "--data.init_args.batch_size", "4", "--data.init_args.cache", "false",
              "--trainer.default_root_dir", str(root)]
    vae = ["fit", "--config", "experiments/toyworld/train_vae.yaml", *common,
           "--trainer.callbacks.init_args.dirpath", str(root / "vae_ckpt"),
           "--model.init_args.block_out_channels", "[8, 16, 16]", "--model.init_args.export_dir", str(root / "vae")]
    main(vae)
    # Resume at step 2 and log every step: a fresh start would log steps 0, 1, 2.
    main([*vae, "--trainer.max_steps", "3", "--ckpt_path", "last", "--trainer.log_every_n_steps", "1",
          "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(root / "resumed")])
    main(["fit", "--config", "experiments/toyworld/tune_decoder.yaml", *common,
          "--trainer.callbacks.init_args.dirpath", str(root / "decoder_ckpt"),
          "--model.init_args.vae", str(root / "vae"), "--model.init_args.export_dir", str(root / "vae-decoder")])
    main(["fit", "--config", "experiments/toyworld/train_diffusion.yaml", *common,
          "--trainer.callbacks.init_args.dirpath", str(root / "diffusion_ckpt"),
          "--model.init_args.vae", str(root / "vae"), "--model.init_args.unet_channels", "[32, 32, 32]",
          "--model.init_args.export_dir", str(root / "model")])
    return root


def test_stage_resumes_from_its_last_checkpoint(trained):
    import csv

    ckpt = torch.load(trained / "vae_ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    (metrics,) = (trained / "resumed").rglob("metrics.csv")
    steps = {row["step"] for row in csv.DictReader(metrics.open()) if row.get("train/loss")}
    assert steps == {"2"}  # only the step after the checkpoint ran


def test_decoder_tuning_keeps_the_latent_space_and_changes_the_decoder(trained):
    from diffusers import AutoencoderKL

    before, after = (AutoencoderKL.from_pretrained(str(trained / name)) for name in ("vae", "vae-decoder"))
    b, a = before.state_dict(), after.state_dict()
    kept = [k for k in b if k.startswith(("encoder.", "quant_conv."))]
    tuned = [k for k in b if k.startswith(("decoder.", "post_quant_conv."))]
    assert kept and tuned and len(kept) + len(tuned) == len(b)
    assert all(torch.equal(b[k], a[k]) for k in kept)
    assert sum(not torch.equal(b[k], a[k]) for k in tuned) > len(tuned) // 2
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(before.encode(image).latent_dist.mean, after.encode(image).latent_dist.mean)


def test_a_missing_stage1_vae_is_named_with_the_command_that_makes_it(tmp_path):
    from framework.core.errors import EditError
    from framework.toy.model.vae import DecoderTuning

    with pytest.raises(EditError, match="train_vae.yaml"):
        DecoderTuning(vae=str(tmp_path / "nowhere"))


def test_the_training_cli_ends_a_project_error_with_one_line(tmp_path, capsys):
    from framework.toy.model.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", "experiments/toyworld/tune_decoder.yaml", "--model.init_args.vae", str(tmp_path / "no"),
              "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: no VAE at") and "Traceback" not in "".join(err)


def test_exports_load_in_the_engine_and_edit(trained, tmp_path):
    from framework.backbones.sd import StableDiffusion

    sd = StableDiffusion(str(trained / "model" / "sd")).load()
    assert sd.vae_scale_factor == 4 and sd.vae.config.scaling_factor == 1.0
    image = torch.rand(1, 3, 64, 64)
    latents = sd.encode_image(image)
    assert latents.shape == (1, 4, 16, 16)
    assert sd.decode_latents(latents).shape == (1, 3, 64, 64)
    assert sd.encode_prompt("a red circle on a striped background").hidden.shape == (1, 32, 64)
    for m in ("pose", "scribble"):
        assert (trained / "model" / f"controlnet-{m}" / "diffusion_pytorch_model.safetensors").exists()


def test_init_from_starts_every_net_and_its_ema_from_an_export(trained):
    from diffusers import ControlNetModel, UNet2DConditionModel

    from framework.core.errors import EditError
    from framework.toy.model.diffusion import DiffusionTraining

    exports = trained / "model"
    fresh = DiffusionTraining(vae=str(trained / "vae"), unet_channels=(32, 32, 32), seed=5)
    module = DiffusionTraining(vae=str(trained / "vae"), unet_channels=(32, 32, 32), seed=5, init_from=str(exports))
    unet = UNet2DConditionModel.from_pretrained(exports / "sd" / "unet").state_dict()
    pose = ControlNetModel.from_pretrained(exports / "controlnet-pose").state_dict()
    for nets in (module.nets, module.ema):
        assert all(torch.equal(v, unet[k]) for k, v in nets["unet"].state_dict().items())
        assert all(torch.equal(v, pose[k]) for k, v in nets["controlnet_pose"].state_dict().items())
    moved = [k for k, v in fresh.nets["unet"].state_dict().items() if not torch.equal(v, unet[k])]
    assert len(moved) > 10  # the export is not what seed 5 would build
    with pytest.raises(EditError, match="does not match this stage's architecture"):
        DiffusionTraining(vae=str(trained / "vae"), unet_channels=(32, 64, 64), init_from=str(exports))
    with pytest.raises(EditError, match="init_from: no unet"):
        DiffusionTraining(vae=str(trained / "vae"), unet_channels=(32, 32, 32), init_from=str(trained / "vae"))


def test_control_residuals_route_each_sample_to_its_modality(trained):
    from framework.toy.model.diffusion import DiffusionTraining

    module = DiffusionTraining(vae=str(trained / "vae"), unet_channels=(32, 32, 32))
    b = 4
    noisy, t = torch.randn(b, 4, 16, 16), torch.tensor([10, 200, 500, 900])
    context = torch.randn(b, 32, 64)
    maps = {m: torch.rand(b, 3, 64, 64) for m in ("pose", "scribble")}
    nets = module.nets
    for net in (nets["controlnet_pose"], nets["controlnet_scribble"]):  # zero convs start at zero
        for p in net.parameters():
            p.data.normal_(0, 0.05)
    choice = torch.tensor([0, 1, 2, 1])  # none, pose, scribble, pose
    with torch.no_grad():
        down, mid = module.control_residuals(nets, noisy, t, context, maps, choice)
        d_pose, m_pose = nets["controlnet_pose"](noisy[[1, 3]], t[[1, 3]], encoder_hidden_states=context[[1, 3]],
                                                 controlnet_cond=maps["pose"][[1, 3]], return_dict=False)
        d_scr, m_scr = nets["controlnet_scribble"](noisy[[2]], t[[2]], encoder_hidden_states=context[[2]],
                                                   controlnet_cond=maps["scribble"][[2]], return_dict=False)
    assert mid[0].abs().max() == 0 and all(d[0].abs().max() == 0 for d in down)
    assert torch.allclose(mid[[1, 3]], m_pose, atol=1e-5) and torch.allclose(mid[2:3], m_scr, atol=1e-5)
    for full, p, s in zip(down, d_pose, d_scr):
        assert torch.allclose(full[[1, 3]], p, atol=1e-5) and torch.allclose(full[2:3], s, atol=1e-5)
    assert mid.abs().max() > 0


def test_bundle_assembles_the_exports_and_swaps_in_the_tuned_vae(trained, tmp_path):
    from diffusers import AutoencoderKL

    from framework.backbones.sd import StableDiffusion
    from framework.core.errors import ModelLoadError
    from framework.toy.model.bundle import bundle

    exports = trained / "model"
    (exports / "classifier").mkdir(exist_ok=True)
    (exports / "classifier" / "config.json").write_text("{}")
    out = bundle(exports, tmp_path / "toyworld", vae=trained / "vae-decoder")
    assert sorted(p.name for p in out.iterdir()) == ["classifier", "controlnet-pose", "controlnet-scribble", "sd"]
    sd = StableDiffusion(str(out / "sd")).load()
    tuned = AutoencoderKL.from_pretrained(str(trained / "vae-decoder"))
    assert all(torch.equal(a, b) for a, b in zip(sd.vae.state_dict().values(), tuned.state_dict().values()))
    with pytest.raises(ModelLoadError, match="classifier missing"):
        bundle(trained / "vae_ckpt", tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_text_lr_scale_gives_the_text_encoder_its_own_learning_rate(trained):
    from framework.toy.model.diffusion import DiffusionTraining

    module = DiffusionTraining(vae=str(trained / "vae"), unet_channels=(32, 32, 32), lr=2e-4, warmup_steps=1,
                               text_lr_scale=5.0)
    opt = module.configure_optimizers()["optimizer"]
    groups = {len(g["params"]): g["lr"] for g in opt.param_groups}
    text = len(list(module.nets["text_encoder"].parameters()))
    rest = sum(len(list(n.parameters())) for k, n in module.nets.items() if k != "text_encoder")
    assert groups == {rest: pytest.approx(2e-4), text: pytest.approx(1e-3)}
    # Every trained weight is in exactly one group; the EMA copy is in none.
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in module.nets.parameters())
    plain = DiffusionTraining(vae=str(trained / "vae"), unet_channels=(32, 32, 32), lr=2e-4, warmup_steps=1)
    assert [g["lr"] for g in plain.configure_optimizers()["optimizer"].param_groups] == [pytest.approx(2e-4)]


def test_a_pose_controlnet_fine_tune_changes_only_that_controlnet(trained, tmp_path):
    """The shipped finetune_pose_controlnet.yaml, two steps from the tiny export: the UNet and the text
    encoder it exports are bit-identical to the ones it started from; the pose ControlNet learned."""
    from diffusers import ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel

    from framework.toy.model.__main__ import main

    main(["fit", "--config", "experiments/toyworld/finetune_pose_controlnet.yaml", "--trainer.max_steps", "2",
          "--trainer.logger", "false", "--trainer.callbacks.init_args.every_n_train_steps", "1",
          "--trainer.callbacks.init_args.dirpath", str(tmp_path / "ckpt"), "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(tmp_path),
          "--data.init_args.pool_size", "8", "--data.init_args.batch_size", "4", "--data.init_args.cache", "false",
          "--model.init_args.vae", str(trained / "vae"), "--model.init_args.init_from", str(trained / "model"),
          "--model.init_args.unet_channels", "[32, 32, 32]", "--model.init_args.warmup_steps", "1",
          "--model.init_args.export_dir", str(tmp_path / "pose")])

    def same(cls, a, b):
        sa, sb = cls.from_pretrained(a).state_dict(), cls.from_pretrained(b).state_dict()
        return [torch.equal(sa[k], sb[k]) for k in sa]

    assert all(same(UNet2DConditionModel, trained / "model/sd/unet", tmp_path / "pose/sd/unet"))
    assert all(same(CLIPTextModel, trained / "model/sd/text_encoder", tmp_path / "pose/sd/text_encoder"))
    changed = same(ControlNetModel, trained / "model/controlnet-pose", tmp_path / "pose/controlnet-pose")
    assert changed.count(False) > len(changed) // 2
    assert not (tmp_path / "pose/controlnet-scribble").exists()


def test_trained_nets_must_name_nets_of_the_stage(trained):
    from framework.core.errors import ConfigError
    from framework.toy.model.diffusion import DiffusionTraining

    with pytest.raises(ConfigError, match=r"\['controlnet_lines'\].*controlnet_pose"):
        DiffusionTraining(vae=str(trained / "vae"), unet_channels=(32, 32, 32), trained_nets=["controlnet_lines"])
    module = DiffusionTraining(vae=str(trained / "vae"), unet_channels=(32, 32, 32), trained_nets=["unet"])
    opt = module.configure_optimizers()["optimizer"]
    assert sorted(id(p) for g in opt.param_groups for p in g["params"]) == \
        sorted(id(p) for p in module.nets["unet"].parameters())


def test_unet_attention_chooses_the_levels_with_attention_blocks():
    from framework.core.errors import ConfigError
    from framework.toy.model.diffusion import build_controlnet, build_unet

    default = build_unet((8, 16, 16), cross_attention_dim=16, sample_size=8)
    assert default.config.down_block_types == ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    assert default.config.up_block_types == ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    coarse = build_unet((8, 16, 16), cross_attention_dim=16, sample_size=8, attention=[False, True, False])
    assert coarse.config.down_block_types == ("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    assert coarse.config.up_block_types == ("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    assert build_controlnet(coarse, 2).config.down_block_types == coarse.config.down_block_types
    # Attention gone from the finest level: fewer parameters, and the same output shape.
    assert sum(p.numel() for p in coarse.parameters()) < sum(p.numel() for p in default.parameters())
    out = coarse(torch.randn(1, 4, 8, 8), torch.tensor([10]), encoder_hidden_states=torch.randn(1, 5, 16)).sample
    assert out.shape == (1, 4, 8, 8)
    with pytest.raises(ConfigError, match="unet_attention names 2 levels for a UNet of 3"):
        build_unet((8, 16, 16), cross_attention_dim=16, sample_size=8, attention=[False, True])
