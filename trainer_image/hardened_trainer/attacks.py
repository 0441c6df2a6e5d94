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


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
         clip: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al., 2015)."""
    return pgd(model, x, y, eps=eps, eps_step=eps, max_iter=1, random_start=False, clip=clip)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, eps_step: float, max_iter: int,
        random_start: bool = True, clip: tuple[float, float] = (0.0, 1.0),
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected Gradient Descent (Madry et al., 2018) in the L-infinity ball of radius ``eps``.

    Gradients are taken with respect to the input only (``torch.autograd.grad``),
    so parameter ``.grad`` and Opacus per-sample state are left untouched.
    """
    lo, hi = clip
    x = x.detach()
    if random_start:
        noise = torch.rand(x.shape, generator=generator).to(x.device)  # a CPU generator: same on any device
        x_adv = x + (noise * 2 - 1) * eps
        x_adv = x_adv.clamp(lo, hi)
    else:
        x_adv = x.clone()
    for _ in range(max_iter):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = x_adv + eps_step * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(lo, hi)
    return x_adv.detach()
