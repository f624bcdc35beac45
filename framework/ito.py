"""Inference-time optimisation of the latents being decoded (paper Eq. 6)."""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

import torch

from losses.base import EditLoss

OptimizerFactory = Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]


def default_optimizer(params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    """The paper's optimiser: Adam, learning rate gamma = 0.1 (Sec. 4)."""
    return torch.optim.Adam(params, lr=0.1)


def ito_objective(y_t: torch.Tensor, losses: Sequence[EditLoss], lam: float, *, x_t: torch.Tensor,
                  g_t: Optional[torch.Tensor], mask: torch.Tensor, t: int) -> torch.Tensor:
    """lam * L_pres + (1 - lam) * L_guid (+ extra losses), Eq. 6."""
    total = y_t.new_zeros(())
    for loss in losses:
        weight = loss.role_weight(lam)
        if weight != 0:
            total = total + weight * loss(y_t, x_t=x_t, g_t=g_t, mask=mask, t=t)
    return total


class LatentOptimizer:
    """Runs k optimiser steps on y_t at each timestep it is called for.

    `keep_state=False` (default) builds a fresh optimiser per timestep: with Adam its first step
    moves each latent by about lr * sign(gradient). `keep_state=True` keeps one optimiser (and
    Adam's moment estimates) across the timesteps of a decode.
    """

    def __init__(self, losses: Sequence[EditLoss], lam: float, inner_steps: int,
                 optimizer: Optional[OptimizerFactory] = None, keep_state: bool = False):
        self.losses = list(losses)
        self.lam = lam
        self.inner_steps = inner_steps
        self.make_optimizer = optimizer or default_optimizer
        self.keep_state = keep_state
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
        with torch.enable_grad(), torch.autocast(param.device.type, enabled=False):
            for _ in range(self.inner_steps):
                optimizer.zero_grad(set_to_none=True)
                loss = ito_objective(param, self.losses, self.lam, x_t=x_t.float(),
                                     g_t=None if g_t is None else g_t.float(), mask=mask.float(), t=t)
                if not loss.requires_grad:
                    break
                loss.backward()
                optimizer.step()
                self.last_loss = loss.detach()  # no .item(): a GPU sync per ITO step
        return param.detach().clone().to(y_t.dtype)
