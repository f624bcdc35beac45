"""The ITO update (Eq. 6) and its effect on a decode."""

import pytest
import torch

from framework.ddim import Schedule, ddim_decode, ddim_invert
from framework.ito import LatentOptimizer, ito_objective
from losses import CosineGuidance, MaskedMSEPreservation


def _mask():
    m = torch.zeros(1, 1, 8, 8)
    m[..., 2:6, 2:6] = 1
    return m


def test_objective_is_lam_weighted_sum():
    y, x, g = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    m = _mask()
    pres, guid = MaskedMSEPreservation(), CosineGuidance()
    total = ito_objective(y, [pres, guid], 0.6, x_t=x, g_t=g, mask=m, t=1)
    expected = 0.6 * pres(y, x_t=x, g_t=g, mask=m, t=1) + 0.4 * guid(y, x_t=x, g_t=g, mask=m, t=1)
    assert torch.allclose(total, expected)


def test_fresh_adam_first_step_is_lr_times_sign():
    y, x = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    m = _mask()
    out = LatentOptimizer([MaskedMSEPreservation()], lam=1.0, inner_steps=1)(y, x_t=x, g_t=None, mask=m, t=1)
    step = out - y
    outside = (m == 0).expand_as(y)
    assert torch.allclose(step[outside].abs(), torch.full_like(step[outside], 0.1), atol=1e-4)
    assert torch.all(torch.sign(step[outside]) == torch.sign((x - y)[outside]))
    assert torch.all(step[~outside] == 0)  # no gradient inside the edit region: untouched


def test_with_fresh_adam_lam_acts_only_through_the_sign_of_the_weighted_gradient():
    # Why a lam sweep is flat between 0 and 1 under the paper's optimiser (docs/procedure-and-choices.md).
    g = torch.Generator().manual_seed(3)
    y, x, gt = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(3))
    m = _mask()
    losses = [MaskedMSEPreservation(), CosineGuidance()]

    def weighted_grad(lam):
        param = y.clone().requires_grad_(True)
        ito_objective(param, losses, lam, x_t=x, g_t=gt, mask=m, t=1).backward()
        return param.grad

    lams = (0.1, 0.3, 0.7, 0.9)
    outs = {lam: LatentOptimizer(losses, lam, 1)(y, x_t=x, g_t=gt, mask=m, t=1) for lam in lams}
    for lam, out in outs.items():
        assert torch.allclose(out - y, -0.1 * torch.sign(weighted_grad(lam)), atol=1e-3)  # Adam: lr g / (|g| + eps)
    for a, b in ((0.1, 0.9), (0.3, 0.7)):
        flipped = torch.sign(weighted_grad(a)) != torch.sign(weighted_grad(b))
        assert torch.equal((outs[a] - outs[b]).abs() > 1e-3, flipped)
    # Outside the mask the MSE's gradient (a sum) is hundreds of times the cosine's, inside it only the
    # cosine acts: 0.3 and 0.7 give the same step; 0.1 and 0.9 differ where the weighted sum flips.
    assert (outs[0.3] - outs[0.7]).abs().max() < 1e-3 < (outs[0.1] - outs[0.9]).abs().max()


def test_kept_state_differs_from_fresh_state():
    y, x = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    m = _mask()
    fresh = LatentOptimizer([MaskedMSEPreservation()], 1.0, 1, keep_state=False)
    kept = LatentOptimizer([MaskedMSEPreservation()], 1.0, 1, keep_state=True)
    a = b = y
    for _ in range(3):
        a = fresh(a, x_t=x, g_t=None, mask=m, t=1)
        b = kept(b, x_t=x, g_t=None, mask=m, t=1)
    assert not torch.allclose(a, b)


def test_custom_optimizer_factory_is_used():
    y, x = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    sgd = lambda params: torch.optim.SGD(params, lr=0.25)  # noqa: E731
    out = LatentOptimizer([MaskedMSEPreservation()], 1.0, 1, sgd)(y, x_t=x, g_t=None, mask=torch.zeros(1, 1, 8, 8), t=1)
    assert torch.allclose(out, y - 0.25 * 2 * (y - x), atol=1e-6)  # one SGD step on ||y - x||^2


def test_preservation_ito_keeps_outside_mask_closer_to_inversion(backbone):
    """lam = 1 with a hard mask: outside the mask, y_t tracks x_t far better than plain decoding."""
    unet = backbone.unet
    src, edit = backbone.encode_prompt("a red circle"), backbone.encode_prompt("a blue square")
    eps_src = lambda x, t: unet(x, t, encoder_hidden_states=src).sample  # noqa: E731
    eps_edit = lambda x, t: unet(x, t, encoder_hidden_states=edit).sample  # noqa: E731
    schedule = Schedule.from_scheduler(backbone.scheduler, 10)
    x0 = backbone.encode_image(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    m = _mask()
    outside = (m == 0).expand(1, 4, 8, 8)
    with torch.no_grad():
        x_traj = ddim_invert(x0, eps_src, schedule, 10)
        start = x_traj[schedule.timesteps[0]]  # the final decode's start: x_{t_E}, decoded under another condition
        errors = {}
        for name, t_u in (("plain", 0), ("ito", 10)):
            optimizer = LatentOptimizer([MaskedMSEPreservation(), CosineGuidance()], 1.0, 1)
            trace = []

            def before(i, t, y):
                y = optimizer(y, x_t=x_traj[t], g_t=None, mask=m, t=t) if i < t_u else y
                trace.append(float((y - x_traj[t])[outside].abs().mean()))
                return y
            y0 = ddim_decode(start, eps_edit, schedule, 10, before)
            errors[name] = (sum(trace) / len(trace), float((y0 - x0)[outside].abs().mean()))
    assert errors["ito"][0] < 0.5 * errors["plain"][0]  # along the trajectory
    assert errors["ito"][1] < 0.5 * errors["plain"][1]  # and in the decoded latents
    print("outside-mask mean |y_t - x_t| (trajectory, x0): plain %s, ITO %s" % (errors["plain"], errors["ito"]))


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_zero_weight_losses_are_not_evaluated(lam):
    class Exploding(CosineGuidance):
        def forward(self, *a, **k):
            raise AssertionError("evaluated with weight 0")
    y = torch.randn(1, 4, 8, 8)
    losses = [MaskedMSEPreservation(), Exploding()] if lam == 1.0 else [MaskedMSEPreservation()]
    ito_objective(y, losses, lam, x_t=y, g_t=y, mask=_mask(), t=1)


def test_last_loss_stays_a_tensor_until_read():
    """No `.item()` per ITO step (a GPU sync): the loss is kept as a detached 0-dim tensor."""
    y, x = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    m = _mask()
    optimizer = LatentOptimizer([MaskedMSEPreservation()], 1.0, 2)
    assert optimizer.last_loss is None
    optimizer(y, x_t=x, g_t=None, mask=m, t=1)
    loss = optimizer.last_loss
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and not loss.requires_grad
    # the second inner step's objective, evaluated after Adam's first step of ~lr * sign(grad)
    first = MaskedMSEPreservation()(y, x_t=x, g_t=None, mask=m, t=1)
    assert 0 < float(loss) < float(first)
