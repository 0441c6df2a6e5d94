"""The model registry and the training-time attacks."""
import pytest
import torch
from torch.nn import functional as F

from hardened_trainer import attacks
from hardened_model.networks import REGISTRY, build_model


@pytest.mark.parametrize("arch, shape, mean", [("cnn-28x28", [1, 28, 28], 0.3), ("cnn-8x8", [1, 8, 8], 0.3),
                                               ("mlp", [1, 8, 8], 0.3), ("resnet-gn-32", [3, 32, 32], [0.4, 0.5, 0.3])])
def test_every_architecture_builds_and_is_dp_compatible(arch, shape, mean):
    from hardened_model.architectures import BUILTIN

    std = [0.2] * len(mean) if isinstance(mean, list) else 0.2
    model = build_model(arch, shape, 10, mean=mean, std=std)  # build_model runs Opacus' validators
    assert model(torch.rand(4, *shape)).shape == (4, 10)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert set(REGISTRY) == {"cnn-28x28", "cnn-8x8", "mlp", "resnet-gn-32"} == set(BUILTIN) - {"tabular-mlp"}


def test_normalization_is_in_the_weights():
    model = build_model("mlp", [4], 3, mean=0.5, std=0.25)
    state = model.state_dict()
    assert float(state["0.mean"]) == 0.5 and float(state["0.std"]) == 0.25


def test_unknown_architecture_lists_valid_ones():
    from hardened_model.architectures import ArchitectureError

    with pytest.raises(ArchitectureError, match=r"^architecture 'resnet' is not installed here \(built-in: cnn-28x28, "
                                                r"cnn-8x8, mlp, tabular-mlp, resnet-gn-32; plugins: none\); a plugin "
                                                r"distribution registers it in the entry-point group "
                                                r"hardened_model.architectures"):
        build_model("resnet", [1, 8, 8], 10)


@pytest.fixture
def model_and_batch():
    torch.manual_seed(0)
    model = build_model("cnn-8x8", [1, 8, 8], 10)
    return model, torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))


def test_pgd_stays_in_the_ball_and_the_box(model_and_batch):
    model, x, y = model_and_batch
    x_adv = attacks.pgd(model, x, y, eps=0.1, eps_step=0.03, max_iter=5)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_attacks_raise_the_loss(model_and_batch):
    model, x, y = model_and_batch
    clean = F.cross_entropy(model(x), y)
    assert F.cross_entropy(model(attacks.fgsm(model, x, y, eps=0.1)), y) > clean
    assert F.cross_entropy(model(attacks.pgd(model, x, y, eps=0.1, eps_step=0.03, max_iter=5)), y) > clean


def test_attack_leaves_parameter_gradients_alone(model_and_batch):
    model, x, y = model_and_batch
    attacks.pgd(model, x, y, eps=0.1, eps_step=0.03, max_iter=2)
    assert all(p.grad is None for p in model.parameters())
