"""The architecture registry: the built-in networks and those other distributions register.

A plugin distribution declares an entry point in the group ``hardened_model.architectures``::

    [project.entry-points."hardened_model.architectures"]
    acme-small-cnn = "acme_archs:small_cnn"

pointing at ``builder(input_shape: list[int], num_classes: int, **options) -> torch.nn.Module``. The spec
names it (``model.architecture: acme-small-cnn``) and passes ``model.options`` as keyword arguments; the
builder validates them (a TypeError or ValueError it raises becomes an error naming ``model.options``).
The trainer and the server build the same network: ``Normalize(mean, std) -> builder(...)``, so the input
normalization travels with the weights as it does for the built-ins.

``installed()`` lists names without importing torch or any plugin (``hardened-model validate`` uses it);
``builder()`` loads one.
"""
from __future__ import annotations

import importlib.metadata
from typing import Callable

GROUP = "hardened_model.architectures"
BUILTIN = ("cnn-28x28", "cnn-8x8", "mlp", "tabular-mlp", "resnet-gn-32")


class ArchitectureError(ValueError):
    """An architecture that cannot be built: not installed, options refused, or not DP-SGD compatible."""


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    out = {}
    for ep in importlib.metadata.entry_points(group=GROUP):
        if ep.name not in BUILTIN:  # a plugin never shadows a built-in
            out.setdefault(ep.name, ep)
    return out


def installed() -> dict[str, str]:
    """Every architecture this environment can build: name -> "built-in" or the plugin distribution."""
    out = {name: "built-in" for name in BUILTIN}
    for name, ep in _entry_points().items():
        dist = ep.dist.name if getattr(ep, "dist", None) is not None else "?"
        out[name] = f"{dist} ({ep.value})"
    return out


def not_installed_message(name: str) -> str:
    plugins = sorted(set(installed()) - set(BUILTIN))
    return (f"architecture {name!r} is not installed here (built-in: {', '.join(BUILTIN)}; plugins: "
            f"{', '.join(plugins) or 'none'}); a plugin distribution registers it in the entry-point group "
            f"{GROUP} and must be installed in the trainer and server images (docs/install.md)")


def builder(name: str) -> Callable:
    """The plugin builder registered as ``name``."""
    ep = _entry_points().get(name)
    if ep is None:
        raise ArchitectureError(not_installed_message(name))
    try:
        fn = ep.load()
    except Exception as exc:  # noqa: BLE001 - an import error inside the plugin: say which
        raise ArchitectureError(f"architecture {name!r}: loading {ep.value} failed: {type(exc).__name__}: "
                                f"{exc}") from None
    if not callable(fn):
        raise ArchitectureError(f"architecture {name!r}: {ep.value} is not callable")
    return fn
