"""Cosine guidance: value and gradient against 1 - y.g / (|y||g|)."""

import pytest
import torch

from framework.errors import ConfigError
from losses import CosineGuidance


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    return y, torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)


def test_value_and_gradient_match_formula():
    y, gt = _pair()
    loss = CosineGuidance()(y, x_t=gt, g_t=gt, mask=torch.ones(1, 1, 8, 8), t=1)
    yv, gv = y.detach().flatten(), gt.flatten()
    dot, ny, ng = yv @ gv, yv.norm(), gv.norm()
    assert abs(float(loss) - float(1 - dot / (ny * ng))) < 1e-12
    loss.backward()
    # d/dy (1 - y.g / (|y||g|)) = -(g / (|y||g|) - (y.g) y / (|y|^3 |g|))
    expected = -(gv / (ny * ng) - dot * yv / (ny ** 3 * ng))
    assert torch.allclose(y.grad.flatten(), expected, atol=1e-12)


def test_extremes_and_scale_invariance():
    y, gt = _pair(1)
    loss = CosineGuidance()
    kw = dict(x_t=gt, mask=torch.ones(1, 1, 8, 8), t=1)
    assert abs(float(loss(gt, g_t=gt, **kw))) < 1e-12
    assert abs(float(loss(-gt, g_t=gt, **kw)) - 2.0) < 1e-12
    assert abs(float(loss(3 * y, g_t=gt, **kw)) - float(loss(y, g_t=gt, **kw))) < 1e-12


def test_edit_region_ignores_outside():
    y, gt = _pair(2)
    m = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    m[..., 2:6, 2:6] = 1
    loss = CosineGuidance(region="edit")(y, x_t=gt, g_t=gt, mask=m, t=1)
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
    assert CosineGuidance().role_weight(0.6) == pytest.approx(0.4)
