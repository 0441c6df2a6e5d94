"""The model registry: small architectures that DP-SGD can train (GroupNorm, no BatchNorm).

A model is ``Normalize -> network``: the input normalization is part of the
module (buffers saved with the weights and recorded in model.json), so
training, attacks and serving all work in the same [0, 1] input space.
The server rebuilds a model from ``(architecture, input_shape, num_classes)``
and loads safetensors weights; nothing is ever unpickled.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std with one scalar, or one value per channel (lists: shape [C, 1, 1], colour images)."""

    def __init__(self, mean: float | list[float], std: float | list[float]):
        super().__init__()
        if isinstance(mean, (list, tuple)):
            self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(-1, 1, 1))
            self.register_buffer("std", torch.tensor([float(v) for v in std]).view(-1, 1, 1))
        else:
            self.register_buffer("mean", torch.tensor(float(mean)))
            self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TabularPreprocess(nn.Module):
    """The first layers of a tabular model: numbers standardized with the training split's mean and standard
    deviation, categories (given as vocabulary indices) one-hot encoded. Statistics are buffers, saved with
    the weights and recorded in model.json (as Normalize's are), so a served model needs nothing else. No
    parameters: Opacus sees only the MLP behind it. The gradient reaches the number columns only."""

    def __init__(self, features: list[dict], mean: list[float] | None = None, std: list[float] | None = None):
        super().__init__()
        numeric = [j for j, f in enumerate(features) if f["type"] != "category"]
        categorical = [j for j, f in enumerate(features) if f["type"] == "category"]
        self.sizes = [len(features[j]["vocabulary"]) for j in categorical]
        n = len(numeric)
        self.register_buffer("numeric", torch.tensor(numeric, dtype=torch.long))
        self.register_buffer("categorical", torch.tensor(categorical, dtype=torch.long))
        self.register_buffer("mean", torch.tensor(mean if mean is not None else [0.0] * n, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std if std is not None else [1.0] * n, dtype=torch.float32))
        self.out_features = n + sum(self.sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [(x[:, self.numeric] - self.mean) / self.std]
        for k, size in enumerate(self.sizes):
            index = x[:, self.categorical[k]].round().long().clamp(0, size - 1)
            parts.append(nn.functional.one_hot(index, size).to(x.dtype))
        return torch.cat(parts, dim=1)


def _tabular_mlp(encoded: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(encoded, 64), nn.Tanh(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, num_classes))


def _cnn_28x28(input_shape: list[int], num_classes: int) -> nn.Module:
    c = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(c, 16, 5, padding=2), nn.GroupNorm(4, 16), nn.Tanh(), nn.MaxPool2d(2),   # 14x14
        nn.Conv2d(16, 32, 5, padding=2), nn.GroupNorm(8, 32), nn.Tanh(), nn.MaxPool2d(2),  # 7x7
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.Tanh(), nn.Linear(64, num_classes),
    )


def _cnn_8x8(input_shape: list[int], num_classes: int) -> nn.Module:
    c = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(c, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.Tanh(), nn.MaxPool2d(2),   # 4x4
        nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.Tanh(),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.Tanh(), nn.Linear(64, num_classes),
    )


def _mlp(input_shape: list[int], num_classes: int) -> nn.Module:
    n = 1
    for d in input_shape:
        n *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(n, 128), nn.Tanh(), nn.Linear(128, 64), nn.Tanh(),
                         nn.Linear(64, num_classes))


class _GNBlock(nn.Module):
    """A pre-activation residual block with GroupNorm (He et al. 2016; GroupNorm as in De et al. 2022)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(min(16, c_in // 4) or 1, c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.n2, self.c2 = nn.GroupNorm(min(16, c_out // 4) or 1, c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.act = nn.ReLU()
        self.skip = (nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out
                     else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.n1(x))
        skip = self.skip(out) if not isinstance(self.skip, nn.Identity) else x
        out = self.c1(out)
        out = self.c2(self.act(self.n2(out)))
        return out + skip


def _resnet_gn_32(input_shape: list[int], num_classes: int, width: int = 16) -> nn.Module:
    """A small GroupNorm ResNet for [3, 32, 32] (CIFAR-shaped) images: a 3x3 stem, three stages of two
    pre-activation blocks (width, 2x, 4x; the last two halve the resolution), global average pooling.
    175,066 parameters at width 16 (10 classes): small enough for DP-SGD per-sample gradients on one GPU."""
    c = input_shape[0]
    w = [width, 2 * width, 4 * width]
    return nn.Sequential(
        nn.Conv2d(c, w[0], 3, padding=1, bias=False),
        _GNBlock(w[0], w[0], 1), _GNBlock(w[0], w[0], 1),
        _GNBlock(w[0], w[1], 2), _GNBlock(w[1], w[1], 1),
        _GNBlock(w[1], w[2], 2), _GNBlock(w[2], w[2], 1),
        nn.GroupNorm(16, w[2]), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w[2], num_classes))


# Tanh rather than ReLU: bounded activations keep clipped DP-SGD gradients
# informative (Papernot et al., "Tempered Sigmoid Activations", AAAI 2021).
REGISTRY: dict[str, Callable[[list[int], int], nn.Module]] = {
    "cnn-28x28": _cnn_28x28,
    "cnn-8x8": _cnn_8x8,
    "mlp": _mlp,
    "resnet-gn-32": _resnet_gn_32,
}


def replace_batchnorm(net: nn.Module) -> list[str]:
    """What ``model.autoFix`` does, in place: every BatchNorm becomes GroupNorm(gcd(32, C), C), exactly as
    Opacus' ModuleValidator.fix replaces it (opacus/validators/batch_norm.py), so the server, which has no
    Opacus, rebuilds the network the trainer trained (``test_autofix_matches_opacus`` compares the two).
    Returns the replaced modules' names."""
    import math

    replaced = []
    for name, module in list(net.named_modules()):
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)):
            parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
            setattr(parent, name.rpartition(".")[2],
                    nn.GroupNorm(math.gcd(32, module.num_features), module.num_features, affine=module.affine))
            replaced.append(name)
    return replaced


def _dp_problems(net: nn.Module) -> list[str]:
    """Opacus' own validators (ModuleValidator.VALIDATORS), run layer by layer so each problem names its layer
    (ModuleValidator.validate reports them without names)."""
    from opacus.validators import ModuleValidator
    from opacus.utils.module_utils import trainable_modules

    out = [] if net.training else ["the model must be in training mode"]
    for name, module in trainable_modules(net):
        check = ModuleValidator.VALIDATORS.get(type(module))
        for err in check(module) if check else ():
            first = str(err).split(". ")[0]
            fix = (": use GroupNorm instead, or set model.autoFix: true to replace it"
                   if isinstance(module, nn.modules.batchnorm._BatchNorm) else "")
            out.append(f"layer {name} ({type(module).__name__}): {first}{fix}")
    return out


def build_model(architecture: str, input_shape: list[int], num_classes: int, *,
                mean: float | list[float] = 0.0, std: float | list[float] = 1.0, features: list[dict] | None = None,
                check_dp: bool = True, options: dict | None = None, auto_fix: bool = False) -> nn.Module:
    """Build ``Normalize(mean, std) -> architecture``, or for ``tabular-mlp`` ``TabularPreprocess(features,
    per-feature mean, std) -> MLP``. ``features``: [{name, type, vocabulary}] in model order (spec.data.features,
    or model.json's ``tabular.features`` in the server). A name that is not built in is looked up in the
    entry-point registry (``hardened_model.architectures``) and built with ``options``.

    ``auto_fix``: BatchNorm layers become GroupNorm (``replace_batchnorm``), in the trainer and the server alike.
    ``check_dp`` runs Opacus' ModuleValidator (the trainer; the server image has no Opacus): an incompatible
    layer is an ArchitectureError naming it and what to use instead.
    """
    from .architectures import ArchitectureError, builder

    if architecture == "tabular-mlp":
        if not features or len(features) != int(input_shape[0]):
            raise ValueError(f"tabular-mlp needs one feature description per input column ({input_shape}), "
                             f"got {len(features or [])}")
        pre = TabularPreprocess(features, mean if isinstance(mean, list) else None,
                                std if isinstance(std, list) else None)
        net = nn.Sequential(pre, _tabular_mlp(pre.out_features, num_classes))
    elif architecture in REGISTRY:
        net = nn.Sequential(Normalize(mean, std), REGISTRY[architecture](list(input_shape), num_classes))
    else:
        build = builder(architecture)
        try:
            body = build(list(input_shape), num_classes, **(options or {}))
        except (TypeError, ValueError) as exc:
            raise ArchitectureError(f"model.options: architecture {architecture!r} refused them: {exc}") from None
        if not isinstance(body, nn.Module):
            raise ArchitectureError(f"architecture {architecture!r}: its builder returned "
                                    f"{type(body).__name__}, not a torch.nn.Module")
        net = nn.Sequential(Normalize(mean, std), body)
    if auto_fix:
        replace_batchnorm(net)
    if not check_dp:
        return net
    problems = _dp_problems(net)
    if problems:
        raise ArchitectureError(f"model.architecture: {architecture!r} cannot be trained with DP-SGD (Opacus): "
                                + "; ".join(problems))
    return net
