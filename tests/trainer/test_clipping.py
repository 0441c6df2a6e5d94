"""Issue 19: the one-backward clipper computes the clipped, summed per-sample gradient that Opacus' per-sample
hooks compute (DPOptimizer.clip_and_accumulate), for each layer it handles, both norm paths, Opacus' own
samplers behind it, every built-in architecture, batches where some examples are clipped and some are not,
and empty Poisson batches."""
import copy

import pytest
import torch
from torch import nn

from hardened_model.networks import build_model
from hardened_trainer.clipping import FastClipping, UnsupportedModel, unsupported_layers

TOLERANCE = 1e-5  # max abs difference, relative to the largest entry of the clipped summed gradient


def opacus_reference(model: nn.Module, x, y, loss_fn, max_norm=None):
    """(clipped summed gradients by parameter name, per-sample norms) from Opacus' hooks and DPOptimizer."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    gsm = GradSampleModule(copy.deepcopy(model), loss_reduction="sum")
    opt = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=0.0), noise_multiplier=0.0,
                      max_grad_norm=max_norm or 1.0, expected_batch_size=len(x), loss_reduction="sum")
    loss_fn(gsm(x), y).sum().backward()
    norms = torch.stack([p.grad_sample.reshape(len(x), -1).norm(2, dim=1) for p in opt.params], 1).norm(2, dim=1)
    if max_norm is None:
        return None, norms
    opt.clip_and_accumulate()
    return {n: p.summed_grad.clone() for n, p in gsm._module.named_parameters()}, norms


def fast(model: nn.Module, x, y, loss_fn, max_norm, ghost=None):
    m = copy.deepcopy(model)
    clipper = FastClipping(m, max_norm, ghost=ghost)
    clipper.backward(loss_fn(m(x), y))
    return {n: p.grad.clone() for n, p in m.named_parameters()}, clipper.last_norms


def assert_same_clipping(model, x, y, loss_fn=None, ghost=None):
    """The median per-sample norm as the clip bound: about half the examples are clipped, half are not."""
    loss_fn = loss_fn or (lambda out, t: nn.functional.cross_entropy(out, t, reduction="none"))
    _, norms = opacus_reference(model, x, y, loss_fn)
    bound = float(norms.median())
    assert (norms > bound * 1.01).any() and (norms < bound * 0.99).any(), norms
    ref, ref_norms = opacus_reference(model, x, y, loss_fn, bound)
    got, got_norms = fast(model, x, y, loss_fn, bound, ghost=ghost)
    assert torch.allclose(got_norms, ref_norms, rtol=1e-5, atol=1e-6)
    assert set(got) == set(ref)
    scale = max(float(g.abs().max()) for g in ref.values())  # the whole update's largest entry
    for name in ref:
        diff = float((got[name] - ref[name]).abs().max())
        assert diff <= TOLERANCE * scale, (name, diff, scale)


def batch(shape, n=12, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


LAYERS = {
    "linear": (lambda: nn.Sequential(nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, 5)), (20,)),
    "linear-no-bias": (lambda: nn.Sequential(nn.Linear(20, 16, bias=False), nn.Tanh(), nn.Linear(16, 5)), (20,)),
    "linear-sequence": (lambda: nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Flatten(), nn.Linear(7 * 6, 5)), (7, 8)),
    "conv2d": (lambda: nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.Flatten(),
                                     nn.Linear(6 * 8 * 8, 5)), (3, 8, 8)),
    "conv2d-stride-dilation-no-bias": (lambda: nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=2, dilation=2, bias=False), nn.Tanh(), nn.Flatten(),
        nn.Linear(4 * 5 * 5, 5)), (2, 9, 9)),
    "groupnorm": (lambda: nn.Sequential(nn.Conv2d(2, 8, 3), nn.GroupNorm(4, 8), nn.Tanh(), nn.Flatten(),
                                        nn.Linear(8 * 4 * 4, 5)), (2, 6, 6)),
    "layernorm": (lambda: nn.Sequential(nn.Linear(10, 12), nn.LayerNorm(12), nn.Tanh(), nn.Linear(12, 5)), (10,)),
    # not handled here: Opacus' own grad samplers, given the same activations and output gradients
    "conv2d-groups (Opacus sampler)": (lambda: nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Tanh(), nn.Flatten(),
                                                            nn.Linear(4 * 4 * 4, 5)), (4, 6, 6)),
    "instancenorm (Opacus sampler)": (lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.InstanceNorm2d(4, affine=True),
                                                           nn.Tanh(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)),
                                      (2, 6, 6)),
}


@pytest.mark.parametrize("ghost", [False, True], ids=["per-sample", "ghost-norm"])
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_each_layer_matches_opacus_hooks(layer, ghost):
    torch.manual_seed(1)
    make, shape = LAYERS[layer]
    x, y = batch(shape)
    assert_same_clipping(make(), x, y, ghost=ghost)


def test_an_embedding_goes_through_opacus_sampler():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Embedding(30, 6), nn.Flatten(), nn.Linear(4 * 6, 5))
    g = torch.Generator().manual_seed(3)
    x, y = torch.randint(0, 30, (12, 4), generator=g), torch.randint(0, 5, (12,), generator=g)
    assert_same_clipping(model, x, y)


ARCHITECTURES = {"cnn-8x8": [1, 8, 8], "cnn-28x28": [1, 28, 28], "mlp": [1, 8, 8], "resnet-gn-32": [3, 32, 32]}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_built_in_architecture_matches_opacus_hooks(arch):
    torch.manual_seed(4)
    shape = ARCHITECTURES[arch]
    x, y = batch(shape, n=10, classes=10)
    x = x.sigmoid()  # pixels in [0, 1]
    model = build_model(arch, shape, 10, mean=0.5, std=0.25)
    assert unsupported_layers(model) == []
    assert_same_clipping(model, x, y)


def test_the_tabular_mlp_matches_opacus_hooks_with_class_weights():
    torch.manual_seed(5)
    features = [{"name": "amt", "type": "number"}, {"name": "kind", "type": "category", "vocabulary": ["a", "b", "c"]},
                {"name": "hour", "type": "integer"}]
    model = build_model("tabular-mlp", [3], 2, mean=[50.0, 12.0], std=[20.0, 6.0], features=features)
    g = torch.Generator().manual_seed(6)
    x = torch.stack([torch.rand(16, generator=g) * 100, torch.randint(0, 3, (16,), generator=g).float(),
                     torch.randint(0, 24, (16,), generator=g).float()], 1)
    y = torch.randint(0, 2, (16,), generator=g)
    weights = torch.tensor([0.2, 1.0])
    assert_same_clipping(model, x, y, lambda out, t: nn.functional.cross_entropy(out, t, weight=weights,
                                                                                 reduction="none"))


def test_an_empty_poisson_batch_gives_zero_gradients():
    model = build_model("cnn-8x8", [1, 8, 8], 10)
    clipper = FastClipping(model, 1.0)
    out = model(torch.zeros(0, 1, 8, 8))
    clipper.backward(nn.functional.cross_entropy(out, torch.zeros(0, dtype=torch.long), reduction="none"))
    for p in model.parameters():
        assert p.grad is not None and p.grad.shape == p.shape and not p.grad.any()


def test_no_example_exceeds_the_bound_after_clipping():
    """Each example's clipped gradient has norm <= C: a batch of one shows it directly."""
    torch.manual_seed(7)
    model = build_model("cnn-8x8", [1, 8, 8], 10)
    x, y = batch([1, 8, 8], n=1, classes=10)
    grads, norms = fast(model, x.sigmoid(), y, lambda o, t: nn.functional.cross_entropy(o, t, reduction="none"), 1e-3)
    total = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
    assert float(norms[0]) > 1e-3 and abs(float(total) - 1e-3) < 1e-7


def test_unsupported_and_reused_layers_are_refused_with_their_names():
    class Scale(nn.Module):  # a parameter Opacus has no sampler for
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * self.s

    model = nn.Sequential(nn.Linear(4, 4), Scale(), nn.Linear(4, 2))
    assert unsupported_layers(model) == ["1 (Scale)"]
    with pytest.raises(UnsupportedModel, match=r"1 \(Scale\)"):
        FastClipping(model, 1.0)
    shared = nn.Linear(4, 4)
    twice = nn.Sequential(shared, nn.Tanh(), shared)
    clipper = FastClipping(twice, 1.0)
    with pytest.raises(UnsupportedModel, match="called more than once"):
        clipper.backward(twice(torch.randn(3, 4)).sum(1))


def grouped_reference(model, x, y, loss_fn, k, max_norm=None):
    """Augmentation multiplicity by hand from Opacus' per-row gradients: each example's gradient is the mean of
    its K rows', clipped once, then summed."""
    from opacus import GradSampleModule

    gsm = GradSampleModule(copy.deepcopy(model), loss_reduction="sum")
    loss_fn(gsm(x), y).sum().backward()
    named = [(n, p) for n, p in gsm._module.named_parameters() if p.requires_grad]
    per_example = {n: p.grad_sample.reshape(-1, k, *p.shape).mean(1) for n, p in named}
    norms = torch.stack([g.flatten(1).norm(2, dim=1) for g in per_example.values()], 1).norm(2, dim=1)
    if max_norm is None:
        return None, norms
    c = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    return {n: torch.einsum("b,b...->...", c, g) for n, g in per_example.items()}, norms


@pytest.mark.parametrize("ghost", [False, True], ids=["per-sample", "ghost-norm"])
@pytest.mark.parametrize("layer", sorted(LAYERS) + ["cnn-28x28"])
def test_augmentation_multiplicity_clips_the_mean_of_each_examples_copies(layer, ghost):
    """K = 3 consecutive rows are one example's copies: one clipped gradient per example, from their mean."""
    torch.manual_seed(8)
    k = 3
    if layer == "cnn-28x28":
        make, shape = (lambda: build_model("cnn-28x28", [1, 28, 28], 10, mean=0.5, std=0.25)), (1, 28, 28)
    else:
        make, shape = LAYERS[layer]
    model = make()
    x, y = batch(shape, n=8 * k, classes=5)
    y = y[::k].repeat_interleave(k)  # the copies share the label
    loss_fn = lambda out, t: nn.functional.cross_entropy(out, t, reduction="none")  # noqa: E731
    _, norms = grouped_reference(model, x, y, loss_fn, k)
    bound = float(norms.median())
    ref, ref_norms = grouped_reference(model, x, y, loss_fn, k, bound)
    m = copy.deepcopy(model)
    clipper = FastClipping(m, bound, ghost=ghost, group=k)
    clipper.backward(loss_fn(m(x), y))
    assert torch.allclose(clipper.last_norms, ref_norms, rtol=1e-5, atol=1e-6)
    scale = max(float(g.abs().max()) for g in ref.values())
    for name, p in m.named_parameters():
        assert float((p.grad - ref[name]).abs().max()) <= TOLERANCE * scale, name


def func_reference(model, x, y, loss_fn, max_norm):
    """Clipped summed gradients from torch.func per-sample gradients (vmap over grad): an independent check for
    layers Opacus has no sampler for."""
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}

    def loss(p, xi, yi):
        return loss_fn(functional_call(model, (p, buffers), (xi[None],)), yi[None]).sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    norms = torch.stack([g.flatten(1).norm(2, dim=1) for g in per_sample.values()], 1).norm(2, dim=1)
    c = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    return {n: torch.einsum("b,b...->...", c, g) for n, g in per_sample.items()}, norms


@pytest.mark.parametrize("arch", ["cnn-28x28", "resnet-gn-32"])
def test_weight_standardized_convolutions_match_per_sample_gradients_from_torch_func(arch):
    from hardened_trainer.standardize import StandardizedConv2d, standardize_convolutions

    torch.manual_seed(9)
    shape = ARCHITECTURES[arch]
    model = build_model(arch, shape, 10, mean=0.5, std=0.25)
    assert standardize_convolutions(model) and any(isinstance(m, StandardizedConv2d) for m in model.modules())
    x, y = batch(shape, n=6, classes=10)
    x = x.sigmoid()
    loss_fn = lambda out, t: nn.functional.cross_entropy(out, t, reduction="none")  # noqa: E731
    _, norms = func_reference(model, x, y, loss_fn, 1.0)
    bound = float(norms.median())
    ref, ref_norms = func_reference(model, x, y, loss_fn, bound)
    got, got_norms = fast(model, x, y, loss_fn, bound)
    assert torch.allclose(got_norms, ref_norms, rtol=1e-5)
    scale = max(float(g.abs().max()) for g in ref.values())
    for name in ref:
        assert float((got[name] - ref[name]).abs().max()) <= TOLERANCE * scale, name


def test_baked_weights_compute_what_the_standardized_network_computed():
    from hardened_trainer.standardize import baked_state, standardize_convolutions

    torch.manual_seed(10)
    ws = build_model("cnn-28x28", [1, 28, 28], 10, mean=0.5, std=0.25)
    standardize_convolutions(ws)
    plain = build_model("cnn-28x28", [1, 28, 28], 10, mean=0.5, std=0.25)
    plain.load_state_dict(baked_state(ws, ws.state_dict()))
    x = torch.rand(5, 1, 28, 28)
    assert torch.allclose(ws(x), plain(x), atol=1e-5)
