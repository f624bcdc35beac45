"""Cosine guidance: value and gradient against 1 - y.g / (|y||g|), whole-latent and per latent pixel."""

import pytest
import torch

from framework.core.errors import ConfigError
from losses import CosineGuidance


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    return y, torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)


def test_value_and_gradient_match_formula():
    y, gt = _pair()
    loss = CosineGuidance(granularity="latent", norm_weight=0.0)(y, x_t=gt, g_t=gt, mask=torch.ones(1, 1, 8, 8), t=1)
    yv, gv = y.detach().flatten(), gt.flatten()
    dot, ny, ng = yv @ gv, yv.norm(), gv.norm()
    assert abs(float(loss) - float(1 - dot / (ny * ng))) < 1e-12
    loss.backward()
    # d/dy (1 - y.g / (|y||g|)) = -(g / (|y||g|) - (y.g) y / (|y|^3 |g|))
    expected = -(gv / (ny * ng) - dot * yv / (ny ** 3 * ng))
    assert torch.allclose(y.grad.flatten(), expected, atol=1e-12)


def test_extremes_and_scale_invariance():
    y, gt = _pair(1)
    loss = CosineGuidance(norm_weight=0.0)
    kw = dict(x_t=gt, mask=torch.ones(1, 1, 8, 8), t=1)
    assert abs(float(loss(gt, g_t=gt, **kw))) < 1e-12
    assert abs(float(loss(-gt, g_t=gt, **kw)) - 2.0) < 1e-12
    assert abs(float(loss(3 * y, g_t=gt, **kw)) - float(loss(y, g_t=gt, **kw))) < 1e-12


def test_edit_region_ignores_outside():
    y, gt = _pair(2)
    m = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    m[..., 2:6, 2:6] = 1
    loss = CosineGuidance(region="edit", granularity="latent", norm_weight=0.0)(y, x_t=gt, g_t=gt, mask=m, t=1)
    loss.backward()
    assert torch.all(y.grad[(m == 0).expand_as(y)] == 0) and y.grad.abs().sum() > 0
    inside = lambda a: (a * m).flatten()  # noqa: E731
    expected = 1 - inside(y.detach()) @ inside(gt) / (inside(y.detach()).norm() * inside(gt).norm())
    assert abs(float(loss) - float(expected)) < 1e-12


def test_no_guidance_latents_gives_zero_and_bad_region_fails():
    y, _ = _pair()
    assert float(CosineGuidance()(y, x_t=y, g_t=None, mask=torch.ones(1, 1, 8, 8), t=1)) == 0.0
    with pytest.raises(ConfigError, match="region"):
        CosineGuidance(region="everywhere")
    with pytest.raises(ConfigError, match="granularity"):
        CosineGuidance(granularity="channel")
    assert CosineGuidance().role_weight(0.6) == pytest.approx(0.4)


def test_pixel_granularity_is_the_mean_of_per_pixel_cosines():
    y, gt = _pair(3)
    loss = CosineGuidance(norm_weight=0.0)(y, x_t=gt, g_t=gt, mask=torch.ones(1, 1, 8, 8), t=1)  # pixel, the default
    expected = 0.0
    for i in range(8):
        for j in range(8):
            a, b = y.detach()[0, :, i, j], gt[0, :, i, j]
            expected += float(1 - a @ b / (a.norm() * b.norm())) / 64
    assert abs(float(loss) - expected) < 1e-12
    loss.backward()
    a, b = y.detach()[0, :, 5, 2], gt[0, :, 5, 2]
    grad = -(b / (a.norm() * b.norm()) - (a @ b) * a / (a.norm() ** 3 * b.norm())) / 64
    assert torch.allclose(y.grad[0, :, 5, 2], grad, atol=1e-12)


def test_mean_mse_and_pixel_cosine_pull_in_a_ratio_independent_of_latent_size():
    """What lam weighs is the ratio of the two gradients: with mean + pixel it does not move with the
    latent's size; with the printed sum + whole-latent cosine it grows as c h w."""
    from losses import MaskedMSEPreservation

    def ratio(pres, guid, size):
        g = torch.Generator().manual_seed(size)
        x = torch.randn(1, 4, size, size, generator=g, dtype=torch.float64)
        y = x + 0.04 * torch.randn(1, 4, size, size, generator=g, dtype=torch.float64)
        gt = torch.randn(1, 4, size, size, generator=g, dtype=torch.float64)
        grads = []
        for loss in (pres, guid):
            param = y.clone().requires_grad_(True)
            loss(param, x_t=x, g_t=gt, mask=torch.zeros(1, 1, size, size, dtype=torch.float64), t=1).backward()
            grads.append(param.grad.abs().mean())
        return float(grads[0] / grads[1])

    literal = CosineGuidance(granularity="latent", norm_weight=0.0)
    paper = [ratio(MaskedMSEPreservation(reduction="sum"), literal, n) for n in (8, 64)]
    pixel = CosineGuidance(granularity="pixel", norm_weight=0.0)
    scaled = [ratio(MaskedMSEPreservation(reduction="mean"), pixel, n) for n in (8, 64)]
    default = [ratio(MaskedMSEPreservation(), CosineGuidance(), n) for n in (8, 64)]  # with the norm term
    print("gradient ratio preservation / guidance at 8 and 64: paper", paper, "scaled", scaled, "default", default)
    assert 50 < paper[1] / paper[0] < 80  # 16384 / 256 = 64
    assert 0.9 < scaled[1] / scaled[0] < 1.1 and 0.9 < default[1] / default[0] < 1.1

def test_pixel_granularity_edit_region_averages_inside_the_mask():
    y, gt = _pair(4)
    m = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    m[..., 1:3, 4:8] = 1
    loss = CosineGuidance(region="edit", norm_weight=0.0)(y, x_t=gt, g_t=gt, mask=m, t=1)
    cos = torch.nn.functional.cosine_similarity(y.detach(), gt, dim=1)[0]
    assert abs(float(loss) - float((1 - cos[1:3, 4:8]).mean())) < 1e-12
    loss.backward()
    assert torch.all(y.grad[(m == 0).expand_as(y)] == 0)


def test_norm_term_is_the_relative_norm_gap_and_vanishes_at_equal_norms():
    from losses.guidance import norm_mismatch

    y, gt = _pair(5)
    ny, ng = y.detach().norm(dim=1)[0], gt.norm(dim=1)[0]  # (8, 8) channel-vector norms
    assert abs(float(norm_mismatch(y.detach(), gt)) - float((((ny - ng) / ng) ** 2).mean())) < 1e-12
    loss = CosineGuidance(norm_weight=0.5)
    kw = dict(x_t=gt, mask=torch.ones(1, 1, 8, 8, dtype=torch.float64), t=1)
    cosine = CosineGuidance(norm_weight=0.0)
    expected = float(cosine(y, g_t=gt, **kw)) + 0.5 * float(norm_mismatch(y.detach(), gt))
    assert abs(float(loss(y, g_t=gt, **kw)) - expected) < 1e-12
    # Same direction, twice the norm: the cosine is 0, the norm term is not (the gap it closes).
    assert abs(float(cosine(2 * gt, g_t=gt, **kw))) < 1e-12
    assert abs(float(loss(2 * gt, g_t=gt, **kw)) - 0.5) < 1e-12
    # The default weighs the norm term 1: its only zero is y = g.
    assert CosineGuidance().norm_weight == 1.0
    assert abs(float(CosineGuidance()(2 * gt, g_t=gt, **kw)) - 1.0) < 1e-12
    assert abs(float(CosineGuidance()(gt, g_t=gt, **kw))) < 1e-12
    with pytest.raises(ConfigError, match="norm_weight"):
        CosineGuidance(norm_weight=-1)
