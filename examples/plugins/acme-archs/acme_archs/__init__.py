"""Two example architectures for hardened-model, registered as entry points (pyproject.toml).

A builder takes the spec's model.inputShape and numClasses, and model.options as keyword arguments, and
returns a torch.nn.Module that maps [batch, *inputShape] in the normalized input space to class logits.
It validates its options: a TypeError (unknown option) or ValueError (bad value) is reported against
model.options. hardened-model puts Normalize(mean, std) in front of it and trains it with DP-SGD, so the
layers must be ones Opacus supports (GroupNorm, not BatchNorm) unless the spec sets model.autoFix.
"""
from torch import nn


def _check(input_shape, width: int):
    if len(input_shape) != 3:
        raise ValueError(f"needs an image inputShape [channels, height, width], got {input_shape}")
    if not isinstance(width, int) or isinstance(width, bool) or not 4 <= width <= 256 or width % 4:
        raise ValueError(f"width must be a multiple of 4 from 4 to 256, got {width!r}")


def small_cnn(input_shape, num_classes, *, width: int = 16):
    """Two 3x3 convolutions with GroupNorm, global average pooling, a linear head: DP-SGD ready."""
    _check(input_shape, width)
    c = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1), nn.GroupNorm(4, width), nn.Tanh(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.GroupNorm(4, 2 * width), nn.Tanh(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))


def bn_cnn(input_shape, num_classes, *, width: int = 16):
    """The same network with BatchNorm, as most pretrained models have it: DP-SGD refuses it unless
    model.autoFix replaces each BatchNorm with GroupNorm."""
    _check(input_shape, width)
    c = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.Tanh(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.Tanh(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))
