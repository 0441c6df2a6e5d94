"""Per-sample gradient clipping in one backward pass ("book-keeping", Bu et al., ICML 2023) (issue 19).

DP-SGD needs, for every example i of a batch, its gradient g_i, clipped to norm C:
``sum_i min(1, C / (||g_i|| + 1e-6)) g_i`` (Opacus' formula). Opacus' hooks mode materialises every g_i and
also computes the ordinary batch gradient; its ghost clipping avoids materialising them but runs a second
backward pass. Here one backward computes, for each trainable layer, only the gradient of the per-sample
losses with respect to the layer's *output* (the weight gradients autograd would compute are not needed:
``torch.autograd.grad`` with the outputs as inputs prunes them). From that output gradient G and the
layer's saved input A, per layer:

- Linear on [B, d]: ||g_i||^2 = ||G_i||^2 ||A_i||^2 (rank one), clipped sum ``(c * G)^T A``;
- Linear on sequences and Conv2d: either the per-sample gradients G_i A_i^T ([B, p, d]; for a convolution
  one grouped weight-gradient convolution, each example its own group) or, when 2 L^2 < p d (L the output
  positions), the "ghost" norm ``sum((A_i^T A_i) * (G_i^T G_i))`` on the unfolded input and the clipped sum
  ``sum_i c_i G_i A_i^T`` in one contraction;
- GroupNorm and LayerNorm: per-sample gradients from the recomputed normalized input (C numbers each);
- a weight-standardized Conv2d (hardened_trainer.standardize): the convolution's per-sample gradients
  mapped through the standardization's backward, example by example;
- any other layer Opacus has a grad sampler for (Embedding, InstanceNorm, RMSNorm, Conv1d/3d, grouped
  convolutions, ...): Opacus' own sampler, given the same A and G.

The norms add up over layers to each example's full gradient norm, which gives the clip factors c_i, and
then the clipped sums are written to ``p.grad``. Noise, Poisson sampling and accounting stay Opacus':
the trainer hands ``p.grad`` to Opacus' DPOptimizerFastGradientClipping, which adds the noise and scales,
exactly as after its ghost clipping. tests/trainer/test_clipping.py compares the clipped sums with Opacus'
per-sample hooks, layer by layer and for every built-in architecture.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .standardize import StandardizedConv2d


class UnsupportedModel(ValueError):
    """A layer neither this clipper nor Opacus' grad samplers handle, or a layer called twice per forward."""


def _opacus_samplers() -> dict:
    from opacus.grad_sample import GradSampleModule

    return GradSampleModule.GRAD_SAMPLERS


def _own(layer: nn.Module) -> str | None:
    """The path this module computes itself for ``layer`` (None: Opacus' grad sampler)."""
    if type(layer) is nn.Linear:
        return "linear"
    if type(layer) is StandardizedConv2d and layer.padding_mode == "zeros" and not isinstance(layer.padding, str):
        return "conv2d-ws"
    if (type(layer) is nn.Conv2d and layer.groups == 1 and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str)):
        return "conv2d"
    if type(layer) in (nn.GroupNorm, nn.LayerNorm):
        return "norm"
    return None


def unsupported_layers(module: nn.Module) -> list[str]:
    """Trainable layers that cannot be clipped here ("name (Type)"); empty: FastClipping supports the model."""
    from opacus.utils.module_utils import trainable_modules

    samplers = _opacus_samplers()
    return [f"{name} ({type(m).__name__})" for name, m in trainable_modules(module)
            if _own(m) is None and type(m) not in samplers]


@dataclass
class _Record:
    name: str
    layer: nn.Module
    calls: list = field(default_factory=list)   # (input, output) per forward call


class FastClipping:
    """Attach to a module; after ``backward(per_sample_losses)`` each trainable parameter's ``.grad`` holds the
    sum of the clipped per-sample gradients. ``ghost``: force the ghost norm (True) or per-sample gradients
    (False) for convolutions and sequence linears; None chooses by cost (tests force both)."""

    def __init__(self, module: nn.Module, max_grad_norm: float, *, ghost: bool | None = None, group: int = 1):
        from opacus.utils.module_utils import trainable_modules

        missing = unsupported_layers(module)
        if missing:
            raise UnsupportedModel("fast clipping does not support " + ", ".join(missing))
        self.module = module
        self.max_grad_norm = float(max_grad_norm)
        self.ghost = ghost
        self.group = int(group)  # augmentation multiplicity: K consecutive rows are one example
        self.enabled = True
        self.records = [_Record(name, m) for name, m in trainable_modules(module)]
        self.params = [p for r in self.records for p in r.layer.parameters(recurse=False) if p.requires_grad]
        self.last_norms: torch.Tensor | None = None  # per-sample gradient norms of the last backward (tests)
        self._handles = [r.layer.register_forward_hook(self._hook(r)) for r in self.records]

    def _hook(self, record: _Record):
        def save(layer, inputs, output):
            if self.enabled and torch.is_grad_enabled():
                record.calls.append((inputs[0].detach(), output))
        return save

    def disable_hooks(self) -> None:
        self.enabled = False

    def enable_hooks(self) -> None:
        self.enabled = True

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def clear(self) -> None:
        for r in self.records:
            r.calls.clear()

    # ------------------------------------------------------------------ the step
    def backward(self, losses: torch.Tensor) -> None:
        """``losses``: the batch's per-row losses [B * group] (reduction none). With ``group`` K > 1, K consecutive
        rows are K augmented copies of one example, whose gradient is the mean of theirs (De et al. 2022:
        augmentation multiplicity), clipped once. Sets ``p.grad`` to the sum of the clipped per-example
        gradients."""
        try:
            used = [r for r in self.records if r.calls]
            twice = [r.name for r in used if len(r.calls) > 1]
            if twice:
                raise UnsupportedModel(f"layers {twice} are called more than once per forward pass: use "
                                       "training.privacy.clipping ghost or hooks for this model")
            if losses.numel() == 0:  # an empty Poisson batch: a zero gradient, and the step still counts
                for p in self.params:
                    p.grad = torch.zeros_like(p)
                self.last_norms = losses.new_zeros(0)
                return
            if losses.shape[0] % self.group:
                raise ValueError(f"{losses.shape[0]} rows are not whole groups of {self.group} copies")
            outputs = [r.calls[0][1] for r in used]
            grads = torch.autograd.grad(losses.sum() / self.group, outputs, allow_unused=True)
            batch = losses.shape[0] // self.group
            norms2 = losses.new_zeros(batch, dtype=torch.float32)
            states = []
            for r, g in zip(used, grads):
                a = r.calls[0][0]
                if g is None:  # the layer does not reach the loss
                    states.append(None)
                    continue
                state = self._per_sample(r.layer, a, g)
                norms2 += state["norms2"]
                states.append(state)
            norms = norms2.sqrt()
            factors = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
            self.last_norms = norms
            for p in self.params:
                p.grad = torch.zeros_like(p)
            for r, state in zip(used, states):
                if state is not None:
                    for p, grad in state["clipped"](factors).items():
                        p.grad = grad.view_as(p).to(p.dtype)
        finally:
            self.clear()

    # ------------------------------------------------------------------ per layer
    def _per_sample(self, layer: nn.Module, a: torch.Tensor, g: torch.Tensor) -> dict:
        """{"norms2": [B] squared per-sample norms of the layer's gradient, "clipped": factors -> {param: sum}}."""
        kind = _own(layer)
        if kind == "linear":
            return self._linear(layer, a, g)
        if kind == "conv2d":
            return self._conv2d(layer, a, g)
        if kind == "conv2d-ws":  # per-sample gradients of the standardized weight, mapped back to the raw one
            return self._conv2d(layer, a, g, weight_map=layer.raw_gradients)
        if kind == "norm":
            return self._norm(layer, a, g)
        return self._opacus(layer, a, g)

    def _by_example(self, per_row: torch.Tensor) -> torch.Tensor:
        """[B * K, ...] per-row gradients -> [B, ...] per-example sums."""
        return per_row if self.group == 1 else per_row.reshape(-1, self.group, *per_row.shape[1:]).sum(1)

    def _linear(self, layer: nn.Linear, a: torch.Tensor, g: torch.Tensor) -> dict:
        if a.dim() == 2 and self.group == 1:  # rank one per example: ||G_i A_i^T|| = ||G_i|| ||A_i||
            g2 = g.float().pow(2).sum(1)
            norms2 = g2 * a.float().pow(2).sum(1) + (g2 if layer.bias is not None else 0)

            def clipped(c):
                gc = g * c[:, None].to(g.dtype)
                out = {layer.weight: gc.t() @ a}
                if layer.bias is not None:
                    out[layer.bias] = gc.sum(0)
                return out
            return {"norms2": norms2, "clipped": clipped}
        # a sequence [B, ..., d], or an example's K copies: its positions side by side, as [B, d, T]
        b = a.shape[0] // self.group
        return self._matmul(layer, a.reshape(b, -1, a.shape[-1]).transpose(1, 2),
                            g.reshape(b, -1, g.shape[-1]).transpose(1, 2))

    def _conv2d(self, layer: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, weight_map=None) -> dict:
        """Per-sample gradients as one grouped convolution weight gradient (each example its own group: the
        backend's convolution kernels; for cnn-28x28's 16-to-32-channel 5x5 layer on 14x14 at batch 256,
        10.5 ms against 52.1 ms for unfolding the input and a batched matmul), or the ghost norm from the
        unfolded input when the layer's output is small (2 L^2 < p d)."""
        k = self.group
        b, length = a.shape[0] // k, g.shape[2] * g.shape[3] * k
        p, d = layer.weight.shape[0], layer.weight[0].numel()
        ghost = self.ghost if self.ghost is not None else 2 * length * length < p * d
        if ghost and weight_map is None:  # an example's K copies: its positions side by side, [B, d, K L]
            unfolded = F.unfold(a, layer.kernel_size, dilation=layer.dilation, padding=layer.padding,
                                stride=layer.stride)                      # [B K, d, L]
            return self._matmul(layer, self._positions(unfolded), self._positions(g.flatten(2)), ghost=True)
        # groups = examples; the K copies of each are the convolution's batch, which it sums over
        inputs = a.reshape(b, k, *a.shape[1:]).transpose(0, 1).reshape(k, -1, *a.shape[2:])
        outputs = g.reshape(b, k, *g.shape[1:]).transpose(0, 1).reshape(k, -1, *g.shape[2:])
        per_sample = torch.nn.grad.conv2d_weight(
            inputs, (b * p, *layer.weight.shape[1:]), outputs, stride=layer.stride, padding=layer.padding,
            dilation=layer.dilation, groups=b).view(b, p, d)
        grads = {layer.weight: weight_map(per_sample) if weight_map is not None else per_sample}
        if layer.bias is not None:
            grads[layer.bias] = self._by_example(g.sum((2, 3)))
        return self._explicit(grads)

    def _positions(self, x: torch.Tensor) -> torch.Tensor:
        """[B K, c, L] -> [B, c, K L]."""
        k = self.group
        if k == 1:
            return x
        return x.reshape(-1, k, *x.shape[1:]).transpose(1, 2).reshape(x.shape[0] // k, x.shape[1], -1)

    def _matmul(self, layer: nn.Module, a: torch.Tensor, g: torch.Tensor, ghost: bool | None = None) -> dict:
        """A weight gradient G A^T per example: a [B, d, L], g [B, p, L]; a bias gradient G summed over L."""
        d, p, length = a.shape[1], g.shape[1], a.shape[2]
        if ghost is None:
            ghost = self.ghost if self.ghost is not None else 2 * length * length < p * d
        bias = getattr(layer, "bias", None)
        gb = g.sum(2) if bias is not None else None                        # [B, p]
        if ghost:
            aa = torch.bmm(a.transpose(1, 2), a)                           # [B, L, L]
            gg = torch.bmm(g.transpose(1, 2), g)
            norms2 = (aa * gg).flatten(1).sum(1).float()

            def weight(c):
                gc = g * c[:, None, None].to(g.dtype)
                return torch.einsum("bpl,bdl->pd", gc, a)
        else:
            per_sample = torch.bmm(g, a.transpose(1, 2))                   # [B, p, d]
            norms2 = per_sample.float().pow(2).flatten(1).sum(1)

            def weight(c):
                return torch.einsum("b,bpd->pd", c.to(per_sample.dtype), per_sample)
        if gb is not None:
            norms2 = norms2 + gb.float().pow(2).sum(1)

        def clipped(c):
            out = {layer.weight: weight(c)}
            if gb is not None:
                out[bias] = (gb * c[:, None].to(gb.dtype)).sum(0)
            return out
        return {"norms2": norms2, "clipped": clipped}

    def _norm(self, layer: nn.Module, a: torch.Tensor, g: torch.Tensor) -> dict:
        if isinstance(layer, nn.GroupNorm):
            xhat = F.group_norm(a, layer.num_groups, None, None, layer.eps)
            dims = tuple(range(2, a.dim()))                                # per channel: sum over positions
        else:
            xhat = F.layer_norm(a, layer.normalized_shape, None, None, layer.eps)
            dims = tuple(range(1, a.dim() - len(layer.normalized_shape)))  # over the non-normalized dims
        grads = {}
        if layer.weight is not None:
            grads[layer.weight] = self._by_example((g * xhat).sum(dims) if dims else g * xhat)
        if layer.bias is not None:
            grads[layer.bias] = self._by_example(g.sum(dims) if dims else g)
        return self._explicit(grads)

    def _opacus(self, layer: nn.Module, a: torch.Tensor, g: torch.Tensor) -> dict:
        grads = _opacus_samplers()[type(layer)](layer, [a], g)
        return self._explicit({p: self._by_example(gs) for p, gs in grads.items() if p.requires_grad})

    @staticmethod
    def _explicit(grads: dict) -> dict:
        """Per-sample gradients given whole ({param: [B, *shape]})."""
        norms2 = sum(gs.float().pow(2).flatten(1).sum(1) for gs in grads.values())

        def clipped(c):
            return {p: torch.einsum("b,b...->...", c.to(gs.dtype), gs) for p, gs in grads.items()}
        return {"norms2": norms2, "clipped": clipped}
