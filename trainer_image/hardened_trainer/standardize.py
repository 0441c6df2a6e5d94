"""Weight standardization of convolutions (Qiao et al. 2019; with GroupNorm under DP-SGD, De et al. 2022).

During training each Conv2d uses its weight standardized per output channel: ``(w - mean) / sqrt(var + eps)``
over the channel's fan-in. The parameter stays the raw weight (what DP-SGD clips, noises and updates); the
exported model gets the standardized weight baked into a plain Conv2d (``bake``), so the server and every
other reader see the ordinary architecture, computing the same function.
"""
from __future__ import annotations

import torch
from torch import nn

EPS = 1e-5


def standardized(weight: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    flat = weight.flatten(1)
    mean = flat.mean(1, keepdim=True)
    var = flat.var(1, unbiased=False, keepdim=True)
    return ((flat - mean) / torch.sqrt(var + eps)).view_as(weight)


class StandardizedConv2d(nn.Conv2d):
    """A Conv2d that convolves with its standardized weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, standardized(self.weight), self.bias)

    def raw_gradients(self, per_sample: torch.Tensor) -> torch.Tensor:
        """Per-sample gradients with respect to the standardized weight [B, p, d] -> with respect to the raw
        weight: the standardization's backward, (g - mean(g) - w_hat mean(g w_hat)) / sigma, per example."""
        flat = self.weight.detach().flatten(1)
        sigma = torch.sqrt(flat.var(1, unbiased=False, keepdim=True) + EPS)           # [p, 1]
        w_hat = (flat - flat.mean(1, keepdim=True)) / sigma                            # [p, d]
        g = per_sample
        return (g - g.mean(2, keepdim=True) - w_hat * (g * w_hat).mean(2, keepdim=True)) / sigma


def standardize_convolutions(model: nn.Module) -> list[str]:
    """Turn every plain Conv2d (groups 1) into a StandardizedConv2d with the same parameters, in place."""
    changed = []
    for name, module in list(model.named_modules()):
        if type(module) is nn.Conv2d and module.groups == 1:
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            ws = StandardizedConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                                    module.padding, module.dilation, module.groups, module.bias is not None,
                                    module.padding_mode, device=module.weight.device, dtype=module.weight.dtype)
            ws.load_state_dict(module.state_dict())
            setattr(parent, name.rpartition(".")[2], ws)
            changed.append(name)
    return changed


def baked_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (the model's, or its weight average) with each standardized convolution's weight replaced by
    the weight it convolves with: the state of the same network built with plain Conv2d layers."""
    out = dict(state)
    for name, module in model.named_modules():
        if isinstance(module, StandardizedConv2d):
            key = f"{name}.weight" if name else "weight"
            out[key] = standardized(state[key])
    return out
