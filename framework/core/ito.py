"""Inference-time optimisation of the latents being decoded (paper Eq. 6).

How lam weighs the two pulls depends on the losses' scales and on the optimiser; the choices are
settings (losses' `reduction` / `granularity`, `ito.balance`, the optimiser factory) and their
study is in docs/procedure-and-choices.md ("lam"). The paper's literal reading is
`experiments/paper_literal.yaml`.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

import torch

from framework.core.loss import EditLoss, role_factor
from framework.core.settings import BALANCES

OptimizerFactory = Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]


def default_optimizer(params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    """The paper's optimiser: Adam, learning rate gamma = 0.1 (Sec. 4)."""
    return torch.optim.Adam(params, lr=0.1)


class NormalizedSGD(torch.optim.Optimizer):
    """Gradient descent with a calibrated step: p <- p - lr * grad / rms(grad).

    The step's root-mean-square over the tensor is `lr`, the size of a fresh Adam's first step
    (lr * sign(grad) per element), but unlike Adam it keeps the gradient's shape across elements:
    where the weighted pull (1 - lam) * guidance is weaker than elsewhere, the latent moves less.
    So lam scales the motion inside the edit region too, not only its sign outside it.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 0.1):
        if lr <= 0:
            raise ValueError(f"NormalizedSGD lr must be > 0, got {lr}.")
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                scale = rms(p.grad)
                if scale > 0:
                    p.add_(p.grad / scale, alpha=-group["lr"])
        return None


def ito_objective(y_t: torch.Tensor, losses: Sequence[EditLoss], lam: float, *, x_t: torch.Tensor,
                  g_t: Optional[torch.Tensor], mask: torch.Tensor, t: int) -> torch.Tensor:
    """lam * L_pres + (1 - lam) * L_guid (+ extra losses), Eq. 6."""
    total = y_t.new_zeros(())
    for loss in losses:
        weight = loss.role_weight(lam)
        if weight != 0:
            total = total + weight * loss(y_t, x_t=x_t, g_t=g_t, mask=mask, t=t)
    return total


def rms(tensor: torch.Tensor) -> torch.Tensor:
    """Root mean square over all elements."""
    return tensor.pow(2).mean().sqrt()


def balanced_gradient(y_t: torch.Tensor, losses: Sequence[EditLoss], lam: float, *, x_t: torch.Tensor,
                      g_t: Optional[torch.Tensor], mask: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of Eq. 6 with each role's gradient first brought to unit RMS: lam * ĝ_pres + (1 - lam) * ĝ_guid.

    Then lam is the ratio of the two pulls whatever the losses' scales and the latent's size; extra
    losses keep their own gradient. A role whose gradient is zero (e.g. preservation where y_t = x_t)
    stays zero. Returns (gradient, objective value).
    """
    gradient = torch.zeros_like(y_t)
    value = y_t.new_zeros(())
    for role in ("preservation", "guidance", "extra"):
        group = [loss for loss in losses if loss.role == role and loss.role_weight(lam) != 0]
        if not group:
            continue
        objective = sum(loss.weight * loss(y_t, x_t=x_t, g_t=g_t, mask=mask, t=t) for loss in group)
        factor = role_factor(role, lam)
        if not objective.requires_grad:
            continue
        grad, = torch.autograd.grad(objective, y_t)
        scale = rms(grad)
        if role != "extra" and scale > 0:
            grad = grad / scale
        gradient = gradient + factor * grad
        value = value + factor * objective.detach()
    return gradient, value


class LatentOptimizer:
    """Runs k optimiser steps on y_t at each timestep it is called for.

    `keep_state=False` (default) builds a fresh optimiser per timestep: with Adam its first step
    moves each latent by about lr * sign(gradient). `keep_state=True` keeps one optimiser (and
    Adam's moment estimates) across the timesteps of a decode. `balance='gradient'` steps along
    `balanced_gradient` instead of the plain gradient of Eq. 6.
    """

    def __init__(self, losses: Sequence[EditLoss], lam: float, inner_steps: int,
                 optimizer: Optional[OptimizerFactory] = None, keep_state: bool = False, balance: str = "none"):
        if balance not in BALANCES:
            raise ValueError(f"balance must be one of {BALANCES}, got '{balance}'.")
        self.losses = list(losses)
        self.lam = lam
        self.inner_steps = inner_steps
        self.make_optimizer = optimizer or default_optimizer
        self.keep_state = keep_state
        self.balance = balance
        self._param: Optional[torch.Tensor] = None
        self._optimizer: Optional[torch.optim.Optimizer] = None
        self.last_loss: Optional[torch.Tensor] = None
        """The objective of the last inner step, a 0-dim tensor on the latents' device (None before any
        step). Kept as a tensor so the loop never waits for the GPU; `float()` it only where it is logged."""

    def _slot(self, y_t: torch.Tensor) -> tuple[torch.Tensor, torch.optim.Optimizer]:
        if self.keep_state and self._param is not None and self._param.shape == y_t.shape:
            with torch.no_grad():
                self._param.copy_(y_t)
            return self._param, self._optimizer
        param = y_t.detach().float().clone().requires_grad_(True)
        optimizer = self.make_optimizer([param])
        if self.keep_state:
            self._param, self._optimizer = param, optimizer
        return param, optimizer

    def __call__(self, y_t: torch.Tensor, *, x_t: torch.Tensor, g_t: Optional[torch.Tensor],
                 mask: torch.Tensor, t: int) -> torch.Tensor:
        """Return y_t' after k steps on the objective; y_t itself is left untouched."""
        param, optimizer = self._slot(y_t)
        refs = dict(x_t=x_t.float(), g_t=None if g_t is None else g_t.float(), mask=mask.float(), t=t)
        with torch.enable_grad(), torch.autocast(param.device.type, enabled=False):
            for _ in range(self.inner_steps):
                optimizer.zero_grad(set_to_none=True)
                if self.balance == "gradient":
                    param.grad, loss = balanced_gradient(param, self.losses, self.lam, **refs)
                else:
                    loss = ito_objective(param, self.losses, self.lam, **refs)
                    if not loss.requires_grad:
                        break
                    loss.backward()
                optimizer.step()
                self.last_loss = loss.detach()  # no .item(): a GPU sync per ITO step
        return param.detach().clone().to(y_t.dtype)
