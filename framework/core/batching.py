"""Batched edits: several edits run side by side, one thread each, and their UNet calls are gathered into one.

Each edit keeps its own engine state (mask, lam, seed, guidance image, ITO optimiser and losses), so everything
but the UNet is computed exactly as one at a time; the UNet (with its ControlNets) sees the concatenated batch of
every edit waiting at the same timestep with the same conditioning layout. The only difference from one edit at a
time is the float rounding of a larger UNet batch (tests/framework/test_batched_edits.py states the tolerance).

The gatherer waits until every live edit is waiting for a UNet result (or has finished), then runs the pending
calls, grouped by (timestep, conditioning layout), one UNet call per group, in edit order.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from framework.core.backbone import TextEncoding
from framework.core.denoiser import Conditioning


@dataclass
class _Call:
    order: int
    denoiser: Any  # the edit's Denoiser (its conditioners and chunk size)
    latents: torch.Tensor
    t: int
    cond: Conditioning
    out: Optional[torch.Tensor] = None
    control: int = 0
    error: Optional[BaseException] = None
    done: bool = False


def _layout(cond: Conditioning) -> tuple:
    """What must agree for two conditionings to share one UNet call: which parts are set and their shapes."""
    key = []
    for part in cond.parts:
        if part is None:
            key.append(None)
        elif isinstance(part, tuple):
            key.append(tuple((tuple(p.shape[1:]), p.dtype) for p in part))
        elif isinstance(part, TextEncoding):  # the token sequence and each family extra
            key.append(tuple((name, tuple(x.shape[1:]), x.dtype) for name, x in
                             (("hidden", part.hidden), *sorted(part.extras.items()))))
        else:
            key.append((tuple(part.shape[1:]), part.dtype))
    return tuple(key)


@dataclass
class UNetBatcher:
    """Gathers the UNet calls of `size` edits running in threads (Denoiser.batcher); counts the real calls."""

    size: int
    calls: int = 0  # UNet calls made
    samples: int = 0  # UNet samples evaluated
    _live: int = field(init=False)
    _pending: list = field(default_factory=list, init=False)
    _lock: threading.Condition = field(default_factory=threading.Condition, init=False)

    def __post_init__(self):
        self._live = self.size

    def unet(self, denoiser, order: int, latents: torch.Tensor, t: int, cond: Conditioning) -> tuple[torch.Tensor, int]:
        """eps of one edit's UNet call, computed with the other edits' calls; (output, its ControlNet samples)."""
        call = _Call(order, denoiser, latents, t, cond)
        with self._lock:
            self._pending.append(call)
            self._run_if_all_waiting()
            while not call.done:
                self._lock.wait()
        if call.error is not None:
            raise call.error
        return call.out, call.control

    def finish(self) -> None:
        """An edit has finished (or failed): the others no longer wait for it."""
        with self._lock:
            self._live -= 1
            self._run_if_all_waiting()

    def _run_if_all_waiting(self) -> None:
        if not self._pending or len(self._pending) < self._live:
            return
        pending, self._pending = sorted(self._pending, key=lambda c: c.order), []
        groups: dict[tuple, list[_Call]] = {}
        for call in pending:
            try:
                key = (call.t, tuple(call.latents.shape[1:]), call.latents.dtype, _layout(call.cond))
            except BaseException as err:  # noqa: BLE001 - an edit that cannot be grouped fails alone, never hangs
                key = ("alone", call.order)
                call.error = err
            groups.setdefault(key, []).append(call)
        for group in groups.values():
            try:
                if group[0].error is not None:
                    raise group[0].error
                self._run(group)
            except BaseException as err:  # every edit of the group sees the error
                for call in group:
                    call.error = err
            for call in group:
                call.done = True
        self._lock.notify_all()

    def _run(self, group: list[_Call]) -> None:
        denoiser, t = group[0].denoiser, group[0].t
        latents = torch.cat([c.latents for c in group]) if len(group) > 1 else group[0].latents
        cond = Conditioning.cat([c.cond for c in group]) if len(group) > 1 else group[0].cond
        size = denoiser.chunk_size or latents.shape[0]
        outs, control = [], 0
        with torch.no_grad():
            for start in range(0, latents.shape[0], size):
                part = cond if size >= latents.shape[0] else cond.slice(start, start + size)
                out, n = denoiser.forward(latents[start:start + size], t, part)
                outs.append(out)
                control += n
                self.calls += 1
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        self.samples += latents.shape[0]
        total, start = latents.shape[0], 0
        for call in group:
            n = call.latents.shape[0]
            call.out, call.control = out[start:start + n], control * n // total
            start += n


def run_side_by_side(jobs: Sequence[Callable[[], Any]], batcher: UNetBatcher) -> list[Any]:
    """Run each job (an edit bound to its own engine) in its own thread, with the caller's grad and autocast
    state; returns their results in order, a job that raised giving its exception in its place."""
    results: list[Any] = [None] * len(jobs)
    errors: list[Optional[BaseException]] = [None] * len(jobs)
    modes = [(device, torch.get_autocast_dtype(device)) for device in ("cpu", "cuda")
             if torch.is_autocast_enabled(device)]
    grad = torch.is_grad_enabled()

    def work(i: int) -> None:
        try:
            with torch.set_grad_enabled(grad):
                contexts = [torch.autocast(device, dtype=dtype) for device, dtype in modes]
                for context in contexts:
                    context.__enter__()
                try:
                    results[i] = jobs[i]()
                finally:
                    for context in reversed(contexts):
                        context.__exit__(None, None, None)
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            errors[i] = err
        finally:
            batcher.finish()

    threads = [threading.Thread(target=work, args=(i,), name=f"edit-{i}") for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [err if err is not None else result for result, err in zip(results, errors)]
