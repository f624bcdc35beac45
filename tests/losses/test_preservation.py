"""Masked-MSE preservation: value and gradient against ||(1 - m)(y - x)||^2 (sum) and its mean."""

import pytest
import torch

from framework.core.errors import ConfigError
from losses import MaskedMSEPreservation


def test_value_and_gradient_match_formula():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
    m = (torch.rand(1, 1, 8, 8, generator=g) > 0.5).double()
    loss = MaskedMSEPreservation(reduction="sum")(y, x_t=x, g_t=None, mask=m, t=1)
    expected = sum(float((1 - m[0, 0, i, j]) ** 2 * (y[0, c, i, j] - x[0, c, i, j]) ** 2)
                   for c in range(4) for i in range(8) for j in range(8))
    assert abs(float(loss) - expected) < 1e-9
    loss.backward()
    assert torch.allclose(y.grad, 2 * (1 - m) ** 2 * (y.detach() - x), atol=1e-12)
    assert torch.all(y.grad[m.expand_as(y) == 1] == 0)  # the edit region is free


def test_zero_when_equal_outside_mask_whatever_inside():
    x = torch.randn(1, 4, 8, 8)
    m = torch.zeros(1, 1, 8, 8)
    m[..., :4, :] = 1
    y = x.clone()
    y[..., :4, :] += 5.0
    assert float(MaskedMSEPreservation()(y, x_t=x, g_t=None, mask=m, t=1)) == 0.0


def test_role_weight_is_lam():
    loss = MaskedMSEPreservation(weight=2.0)
    assert loss.role == "preservation" and loss.role_weight(0.6) == 1.2


def test_mean_reduction_is_the_sum_over_the_element_count():
    g = torch.Generator().manual_seed(1)
    y = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
    m = (torch.rand(1, 1, 8, 8, generator=g) > 0.5).double()
    total = MaskedMSEPreservation(reduction="sum")(y, x_t=x, g_t=None, mask=m, t=1)
    mean = MaskedMSEPreservation()(y, x_t=x, g_t=None, mask=m, t=1)  # the default
    assert abs(float(mean) - float(total) / 256) < 1e-12
    mean.backward()
    assert torch.allclose(y.grad, 2 * (1 - m) ** 2 * (y.detach() - x) / 256, atol=1e-14)
    with pytest.raises(ConfigError, match="reduction"):
        MaskedMSEPreservation(reduction="max")
