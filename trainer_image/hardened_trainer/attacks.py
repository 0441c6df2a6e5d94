"""L-infinity FGSM and PGD in plain torch, for making adversarial *training* examples.

Evaluation uses ART's implementations instead (``evaluate.py``), so the
robustness figures do not depend on this code being right. These run on the
training device in one graph per step; ART's AdversarialTrainerMadryPGD moves
every batch through numpy (docs/benchmarks.md compares the two).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


Bound = float | torch.Tensor  # a scalar, or one value per feature (tabular data)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: Bound,
         clip: tuple[Bound, Bound] = (0.0, 1.0), integer: torch.Tensor | None = None) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al., 2015)."""
    return pgd(model, x, y, eps=eps, eps_step=eps, max_iter=1, random_start=False, clip=clip, integer=integer)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: Bound, eps_step: Bound, max_iter: int,
        random_start: bool = True, clip: tuple[Bound, Bound] = (0.0, 1.0),
        generator: torch.Generator | None = None, integer: torch.Tensor | None = None) -> torch.Tensor:
    """Projected Gradient Descent (Madry et al., 2018) in the L-infinity ball of radius ``eps``.

    Gradients are taken with respect to the input only (``torch.autograd.grad``),
    so parameter ``.grad`` and Opacus per-sample state are left untouched.

    Tabular data (``eps``, ``eps_step`` and ``clip`` per feature): a feature whose radius is 0 never moves,
    the rest stay within their own [low, high], and ``integer`` features end on whole numbers within the
    radius (hardened_trainer.tabular.Constraints.snap does the same to ART's examples).
    """
    lo, hi = clip
    x = x.detach()
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    step_t = torch.as_tensor(eps_step, dtype=x.dtype, device=x.device)
    # an example outside the bounds (a test value beyond the training range) is not pulled in: that would move it
    lo_t = torch.min(torch.as_tensor(lo, dtype=x.dtype, device=x.device), x)
    hi_t = torch.max(torch.as_tensor(hi, dtype=x.dtype, device=x.device), x)
    if random_start:
        noise = torch.rand(x.shape, generator=generator).to(x.device)  # a CPU generator: same on any device
        x_adv = torch.max(torch.min(x + (noise * 2 - 1) * eps_t, hi_t), lo_t)
    else:
        x_adv = x.clone()
    for _ in range(max_iter):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = x_adv + step_t * grad.sign()
            x_adv = torch.max(torch.min(torch.min(torch.max(x_adv, x - eps_t), x + eps_t), hi_t), lo_t)
    if integer is not None and bool(integer.any()):
        with torch.no_grad():
            delta = x_adv - x
            rounded = delta.round()
            rounded = torch.where(rounded.abs() > eps_t + 1e-6, delta.trunc(), rounded)
            x_adv = torch.max(torch.min(torch.where(integer, x + rounded, x_adv), hi_t), lo_t)
    return x_adv.detach()
