"""The ITO update (Eq. 6) and its effect on a decode."""

import pytest
import torch

from framework.core.ddim import Schedule, ddim_decode, ddim_invert
from framework.core.ito import LatentOptimizer, NormalizedSGD, balanced_gradient, ito_objective
from framework.core.settings import ITOConfig
from losses import CosineGuidance, MaskedMSEPreservation


def _literal():
    """The paper's losses as printed: summed masked MSE (Eq. 4), one cosine over the whole latent (Eq. 5)."""
    return [MaskedMSEPreservation(reduction="sum"), CosineGuidance(granularity="latent", norm_weight=0.0)]


def _near(seed=3, size=8, gap=0.04):
    """y_t a little away from x_t (as during a decode), and guidance latents g_t elsewhere."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, size, size, generator=g)
    y = x + gap * torch.randn(1, 4, size, size, generator=g)
    return y, x, torch.randn(1, 4, size, size, generator=g)


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
    out = LatentOptimizer([MaskedMSEPreservation(reduction="sum")], lam=1.0, inner_steps=1)(y, x_t=x, g_t=None,
                                                                                          mask=m, t=1)
    step = out - y
    outside = (m == 0).expand_as(y)
    assert torch.allclose(step[outside].abs(), torch.full_like(step[outside], 0.1), atol=1e-4)
    assert torch.all(torch.sign(step[outside]) == torch.sign((x - y)[outside]))
    assert torch.all(step[~outside] == 0)  # no gradient inside the edit region: untouched


def test_paper_literal_losses_make_lam_a_switch_under_fresh_adam():
    # The paper-literal setting (experiments/paper_literal.yaml) keeps this behaviour: lam acts only
    # through the sign of the weighted gradient, so interior lams give the same step.
    g = torch.Generator().manual_seed(3)
    y, x, gt = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(3))
    m = _mask()
    losses = _literal()

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


def _outside_steps(losses, lams, balance="none", optimizer=None, size=8, inner_steps=1):
    y, x, gt = _near(size=size)
    m = torch.zeros(1, 1, size, size)
    m[..., size // 4:size // 2, size // 4:size // 2] = 1
    outside = (m == 0).expand_as(y)
    steps = {lam: (LatentOptimizer(losses, lam, inner_steps, optimizer, balance=balance)(y, x_t=x, g_t=gt, mask=m, t=1)
                   - y) for lam in lams}
    return steps, outside, (y, x, gt, m)


@pytest.mark.parametrize("size", [8, 64])
def test_default_settings_make_lam_a_dial_outside_the_mask(size):
    """Defaults (mean MSE, per-pixel cosine with its norm term, balanced gradients, k = 2): lam 0.2 and 0.8 move
    a stated share of the background differently, at SD's latent size too; the paper-literal setting almost none."""
    cfg = ITOConfig()
    steps, outside, _ = _outside_steps([MaskedMSEPreservation(), CosineGuidance()], (0.2, 0.8), cfg.balance,
                                       size=size, inner_steps=cfg.inner_steps)
    differ = float(((steps[0.2] - steps[0.8]).abs() > 0.1)[outside].float().mean())
    literal, _, _ = _outside_steps(_literal(), (0.2, 0.8), "none", size=size)
    same = float(((literal[0.2] - literal[0.8]).abs() > 0.1)[outside].float().mean())
    print(f"{size}: share of background latents whose step differs, lam 0.2 vs 0.8: default {differ:.3f}, "
          f"literal {same:.3f}")
    # Measured: default 0.40 (8 x 8) and 0.28 (64 x 64); literal 0.025 and 0.000.
    assert differ > 0.25 and same < 0.03


def test_lam_zero_moves_towards_the_guidance_more_than_lam_06():
    """How far one ITO step (k steps) closes the guidance loss to g_t, against lam = 1 (no pull): with balanced
    gradients lam 0 closes it about twice as far as lam 0.6."""
    steps, _, (y, x, gt, m) = _outside_steps([MaskedMSEPreservation(), CosineGuidance()], (0.0, 0.6, 1.0),
                                             ITOConfig().balance, inner_steps=ITOConfig().inner_steps)
    cos = lambda a: float(CosineGuidance()(a, x_t=x, g_t=gt, mask=m, t=1))  # noqa: E731
    dist = {lam: cos(y + step) for lam, step in steps.items()}
    assert dist[0.0] < dist[0.6] < dist[1.0]
    print("cosine distance after the steps at lam 0 / 0.6 / 1:", dist)
    assert (dist[1.0] - dist[0.0]) > 1.8 * (dist[1.0] - dist[0.6])  # measured 2.2 (k = 2, with the norm term)


def test_lam_zero_reaches_g_t_with_the_norm_term_and_k2_and_not_with_the_cosine_alone():
    """lam = 0, 14 timesteps of a fresh Adam from y = x_t towards a fixed g_t (no decode in between): the
    cosine alone turns y towards g_t but lets its norm grow (the decode then misses G, docs/lam.md); the
    default's norm term and k = 2 bring y within a quarter of |g_t|."""
    g = torch.Generator().manual_seed(0)
    x, gt = torch.randn(1, 4, 16, 16, generator=g), 0.8 * torch.randn(1, 4, 16, 16, generator=g)
    m = torch.zeros(1, 1, 16, 16)
    m[..., 4:12, 4:12] = 1

    def walk(guidance, k):
        y, optimizer = x.clone(), LatentOptimizer([MaskedMSEPreservation(), guidance], 0.0, k, balance="gradient")
        for t in range(14):
            y = optimizer(y, x_t=x, g_t=gt, mask=m, t=t)
        return float((y - gt).norm() / gt.norm()), float((y.norm(dim=1) / gt.norm(dim=1)).mean())

    cosine_k1, default = walk(CosineGuidance(norm_weight=0.0), 1), walk(CosineGuidance(), ITOConfig().inner_steps)
    print("relative distance to g_t, norm ratio: cosine k = 1", cosine_k1, "default", default)
    # Measured: cosine k = 1: 1.04 of |g_t| away, |y| / |g| 1.56; default: 0.23 away, norm ratio 1.00.
    assert cosine_k1[0] > 0.9 and cosine_k1[1] > 1.4
    assert default[0] < 0.3 and abs(default[1] - 1) < 0.05


def test_balanced_gradient_is_the_lam_mix_of_unit_rms_gradients():
    y, x, gt = _near(5)
    m = _mask()
    pres, guid = MaskedMSEPreservation(reduction="sum"), CosineGuidance(granularity="latent", norm_weight=0.0)
    grads = []
    for loss in (pres, guid):
        param = y.clone().requires_grad_(True)
        loss(param, x_t=x, g_t=gt, mask=m, t=1).backward()
        grads.append(param.grad / param.grad.pow(2).mean().sqrt())
    param = y.clone().requires_grad_(True)
    grad, value = balanced_gradient(param, [pres, guid], 0.3, x_t=x, g_t=gt, mask=m, t=1)
    assert torch.allclose(grad, 0.3 * grads[0] + 0.7 * grads[1], atol=1e-6)
    assert torch.allclose(value, ito_objective(y, [pres, guid], 0.3, x_t=x, g_t=gt, mask=m, t=1), atol=1e-6)
    # Where y_t = x_t the preservation gradient is zero and stays zero (no division by zero).
    param = x.clone().requires_grad_(True)
    grad, _ = balanced_gradient(param, [pres, guid], 0.5, x_t=x, g_t=gt, mask=m, t=1)
    assert torch.isfinite(grad).all() and torch.allclose(grad.pow(2).mean().sqrt(), torch.tensor(0.5), atol=1e-5)


def test_balanced_gradient_makes_the_literal_losses_a_dial():
    steps, outside, _ = _outside_steps(_literal(), (0.2, 0.8), balance="gradient")
    assert float(((steps[0.2] - steps[0.8]).abs() > 0.1)[outside].float().mean()) > 0.25


def test_normalized_sgd_steps_lr_times_gradient_over_its_rms():
    y, x = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    m = _mask()
    out = LatentOptimizer([MaskedMSEPreservation()], 1.0, 1, lambda p: NormalizedSGD(p, lr=0.1))(
        y, x_t=x, g_t=None, mask=m, t=1)
    grad = 2 * (1 - m) * (y - x)
    assert torch.allclose(out, y - 0.1 * grad / grad.pow(2).mean().sqrt(), atol=1e-6)
    assert abs(float((out - y).pow(2).mean().sqrt()) - 0.1) < 1e-6  # calibrated: RMS step = lr
    # Unlike Adam it keeps magnitudes: (1 - lam) scales the step inside the mask against outside.
    losses = [MaskedMSEPreservation(), CosineGuidance()]
    steps, outside, _ = _outside_steps(losses, (0.2, 0.8), optimizer=lambda p: NormalizedSGD(p, lr=0.1))
    inside_share = {lam: float(s[~outside].abs().mean() / s[outside].abs().mean()) for lam, s in steps.items()}
    steps, outside, _ = _outside_steps(losses, (0.2, 0.8), "gradient", lambda p: NormalizedSGD(p, lr=0.1))
    balanced = {lam: float(s[~outside].abs().mean() / s[outside].abs().mean()) for lam, s in steps.items()}
    print("inside / outside step, NormalizedSGD, lam 0.2 / 0.8:", inside_share, "balanced:", balanced)
    assert balanced[0.2] > 1.5 * balanced[0.8]


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
    out = LatentOptimizer([MaskedMSEPreservation(reduction="sum")], 1.0, 1, sgd)(y, x_t=x, g_t=None,
                                                                               mask=torch.zeros(1, 1, 8, 8), t=1)
    assert torch.allclose(out, y - 0.25 * 2 * (y - x), atol=1e-6)  # one SGD step on ||y - x||^2


def test_preservation_ito_keeps_outside_mask_closer_to_inversion(backbone):
    """lam = 1 with a hard mask: outside the mask, y_t tracks x_t far better than plain decoding."""
    unet = backbone.unet
    src, edit = backbone.encode_prompt("a red circle").hidden, backbone.encode_prompt("a blue square").hidden
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
