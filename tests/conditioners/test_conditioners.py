"""Conditioners: text, ControlNet (window, scale), several at once, T2I-Adapter."""

import torch

from conditioners import ConditionSide, ControlNetConditioner, T2IAdapterConditioner, TextConditioner, UNetInputs
from framework.core.denoiser import Conditioning, Denoiser


def _map(box):
    image = torch.zeros(1, 3, 64, 64)
    image[..., box[0]:box[1], box[0]:box[1]] = 1
    return image


def _controlnet(backbone, folder, modality="pose", **kw):
    conditioner = ControlNetConditioner(modality, str(folder), **kw)
    conditioner.load(backbone)
    return conditioner


def test_text_conditioner_gives_clip_hidden_states(backbone):
    enc = TextConditioner().encode(ConditionSide("a red circle"), backbone)
    assert enc.hidden.shape == (1, 77, 32) and torch.equal(enc.hidden, backbone.encode_prompt("a red circle").hidden)
    assert enc.extras == {}  # SD 1.x: the token sequence alone
    inputs = UNetInputs()
    TextConditioner().apply(inputs, torch.zeros(1, 4, 8, 8), 1, enc, 0.5)
    assert torch.equal(inputs.encoder_hidden_states, enc.hidden) and inputs.added_cond_kwargs is None


def test_controlnet_changes_eps_and_respects_window(backbone, tiny_dirs):
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    side = ConditionSide("a figure", {"pose": _map((10, 30))})
    text_only = Denoiser(backbone.unet, [TextConditioner()], 1000)
    plain = text_only(x, 501, text_only.encode(side, backbone))
    full = Denoiser(backbone.unet, [TextConditioner(), _controlnet(backbone, tiny_dirs["pose"])], 1000)
    assert float((full(x, 501, full.encode(side, backbone)) - plain).abs().max()) > 1e-3
    # t = 501 is at progress ~0.5: a window [0, 0.3] switches the ControlNet off there.
    late = Denoiser(backbone.unet, [TextConditioner(), _controlnet(backbone, tiny_dirs["pose"], end=0.3)], 1000)
    assert torch.allclose(late(x, 501, late.encode(side, backbone)), plain, atol=1e-6)
    assert float((late(x, 901, late.encode(side, backbone)) - text_only(x, 901, text_only.encode(side, backbone)))
                 .abs().max()) > 1e-3
    # a request without this modality is edited without the ControlNet
    assert torch.allclose(full(x, 501, full.encode(ConditionSide("a figure"), backbone)), plain, atol=1e-6)


def test_two_controlnets_sum_their_residuals(backbone, tiny_dirs):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    pose, scribble = _controlnet(backbone, tiny_dirs["pose"]), _controlnet(backbone, tiny_dirs["scribble"], "scribble")
    side = ConditionSide("a figure", {"pose": _map((10, 30)), "scribble": _map((30, 60))})
    text = backbone.encode_prompt("a figure").hidden.repeat(2, 1, 1)
    inputs = UNetInputs(encoder_hidden_states=text)
    pose.apply(inputs, x, 301, side.maps["pose"].repeat(2, 1, 1, 1), 0.7)
    scribble.apply(inputs, x, 301, side.maps["scribble"].repeat(2, 1, 1, 1), 0.7)
    singles = []
    for conditioner, key in ((pose, "pose"), (scribble, "scribble")):
        single = UNetInputs(encoder_hidden_states=text)
        conditioner.apply(single, x, 301, side.maps[key].repeat(2, 1, 1, 1), 0.7)
        singles.append(single)
    for a, b, both in zip(singles[0].down_block_additional_residuals, singles[1].down_block_additional_residuals,
                          inputs.down_block_additional_residuals):
        assert torch.allclose(a + b, both)
    # one denoiser call with both equals the UNet fed the summed residuals
    denoiser = Denoiser(backbone.unet, [TextConditioner(), pose, scribble], 1000)
    eps = denoiser(x, 301, denoiser.encode(side, backbone).repeat(2))
    direct = backbone.unet(x, 301, **inputs.as_kwargs()).sample
    assert torch.allclose(eps, direct, atol=1e-5)


def test_controlnet_scale_zero_is_text_only(backbone, tiny_dirs):
    x = torch.randn(1, 4, 8, 8)
    side = ConditionSide("a figure", {"pose": _map((10, 30))})
    zero = Denoiser(backbone.unet, [TextConditioner(), _controlnet(backbone, tiny_dirs["pose"], scale=0.0)], 1000)
    text_only = Denoiser(backbone.unet, [TextConditioner()], 1000)
    assert torch.allclose(zero(x, 501, zero.encode(side, backbone)), text_only(x, 501, text_only.encode(side, backbone)),
                          atol=1e-6)


def test_t2i_adapter_features_once_and_applied(backbone, tiny_dirs):
    adapter = T2IAdapterConditioner("sketch", str(tiny_dirs["adapter"]))
    adapter.load(backbone)
    side = ConditionSide("a figure", {"sketch": _map((10, 40))})
    features = adapter.encode(side, backbone)
    assert isinstance(features, tuple) and [f.shape[1] for f in features] == [32, 64]
    denoiser = Denoiser(backbone.unet, [TextConditioner(), adapter], 1000)
    x = torch.randn(3, 4, 8, 8)
    cond = denoiser.encode(side, backbone)
    batched = Conditioning.cat([cond, cond, cond])
    with_adapter = denoiser(x, 401, batched)
    text_only = Denoiser(backbone.unet, [TextConditioner()], 1000)
    plain = text_only(x, 401, text_only.encode(side, backbone).repeat(3))
    assert float((with_adapter - plain).abs().max()) > 1e-3
    assert torch.allclose(denoiser(x, 401, batched), with_adapter)  # features reused, not consumed


def test_cfg_is_one_batched_call(backbone):
    denoiser = Denoiser(backbone.unet, [TextConditioner()], 1000)
    cond, uncond = denoiser.encode(ConditionSide("a cat"), backbone), denoiser.encode(ConditionSide(""), backbone)
    x = torch.randn(1, 4, 8, 8)
    eps = denoiser(x, 501, cond, uncond, 7.5)
    assert denoiser.calls["other"] == 1 and denoiser.samples["other"] == 2
    e_c, e_u = denoiser(x, 501, cond), denoiser(x, 501, uncond)
    assert torch.allclose(eps, e_u + 7.5 * (e_c - e_u), atol=1e-4)
    chunked = Denoiser(backbone.unet, [TextConditioner()], 1000, chunk_size=1)
    assert torch.allclose(chunked(x, 501, cond, uncond, 7.5), eps, atol=1e-4) and chunked.calls["other"] == 2


def test_controlnet_embedding_computed_once_per_side_gives_the_same_eps(backbone, tiny_dirs):
    """precompute_embedding: the map is embedded at encode, not at each of the UNet calls; eps unchanged."""
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    side = ConditionSide("a figure", {"pose": _map((10, 30))})
    eps, embeddings = {}, {}
    for precompute in (True, False):
        pose = _controlnet(backbone, tiny_dirs["pose"], precompute_embedding=precompute)
        calls = []
        hook = pose.controlnet.controlnet_cond_embedding.register_forward_hook(lambda *a: calls.append(1))
        denoiser = Denoiser(backbone.unet, [TextConditioner(), pose], 1000)
        cond = denoiser.encode(side, backbone)
        eps[precompute] = torch.cat([denoiser(x, t, cond.repeat(4), cond.repeat(4), 7.5) for t in (901, 501, 101)])
        embeddings[precompute] = len(calls)
        hook.remove()
    assert embeddings == {True: 1, False: 3}  # once per side, or once per UNet call (CFG halves in one batch)
    assert float((eps[True] - eps[False]).abs().max()) <= 1e-5 * float(eps[False].abs().max())
