"""Training: DP-SGD accounting, adversarial + DP together, determinism, gates."""
import pytest
import torch

from hardened_model.spec import parse_spec
from hardened_trainer.data import load_dataset, split
from hardened_model.gates import check_gates
from hardened_trainer.evaluate import membership_inference
from hardened_trainer.train import eps_step_for, train
from helpers import tiny_manifest


@pytest.fixture(scope="module")
def data():
    ds = load_dataset("builtin:digits", max_samples=300)
    return split(ds, test_fraction=0.25, seed=0)


def spec_with(overrides=None):
    return parse_spec(tiny_manifest(overrides)["spec"])


def quiet(*_, **__):
    pass


def test_adversarial_plus_dp_trains_within_budget(data):
    """The Opacus pitfall: attacking through the hooked model fails with 'pop from empty list'."""
    spec = spec_with()
    events = []
    res = train(spec, data.x_train, data.y_train, device=torch.device("cpu"), log=lambda e, **kw: events.append(kw))
    assert 0 < res.epsilon <= 8.0
    assert res.noise_multiplier > 0
    epochs = [e for e in events if "epoch" in e]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all({"loss", "accuracy", "epsilon"} <= set(e) for e in epochs)
    assert res.clipping == "fast"  # the default for the built-in networks
    assert type(res.model).__name__ == "Sequential"  # unwrapped: no Opacus GradSampleModule


def test_epsilon_reaches_the_target(data):
    spec = spec_with({"training": {"epochs": 3, "privacy": {"targetEpsilon": 2.0}}})
    res = train(spec, data.x_train, data.y_train, device=torch.device("cpu"), log=quiet)
    assert 1.8 <= res.epsilon <= 2.0


def test_without_privacy_epsilon_is_none(data):
    spec = spec_with({"training": {"privacy": {"enabled": False}}, "gates": {"maxEpsilon": None}})
    res = train(spec, data.x_train, data.y_train, device=torch.device("cpu"), log=quiet)
    assert res.epsilon is None and res.noise_multiplier is None


def test_same_seed_same_weights(data):
    spec = spec_with()
    a = train(spec, data.x_train, data.y_train, device=torch.device("cpu"), log=quiet).model.state_dict()
    b = train(spec, data.x_train, data.y_train, device=torch.device("cpu"), log=quiet).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = train(spec_with({"training": {"seed": 1}}), data.x_train, data.y_train, device=torch.device("cpu"),
              log=quiet).model.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_divergence_is_reported_with_the_field(data, monkeypatch):
    import hardened_trainer.train as train_mod

    class Exploding(torch.nn.CrossEntropyLoss):
        def forward(self, out, y):
            return super().forward(out, y) * float("inf")

    monkeypatch.setattr(train_mod.nn, "CrossEntropyLoss", Exploding)
    spec = spec_with({"training": {"privacy": {"enabled": False}, "adversarial": {"enabled": False}},
                      "gates": {"maxEpsilon": None}})
    with pytest.raises(FloatingPointError, match=r"training diverged at epoch 1 .*lower spec.training.learningRate"):
        train(spec, data.x_train, data.y_train, device=torch.device("cpu"), log=quiet)


def test_eps_step_default():
    assert eps_step_for(0.1, None, 10) == pytest.approx(0.025)
    assert eps_step_for(0.1, 0.01, 10) == 0.01


def test_gates_verdicts():
    spec = spec_with({"gates": {"minCleanAccuracy": 0.9, "minRobustAccuracy": 0.5, "maxEpsilon": 8.0,
                                "maxMembershipAUC": 0.6}})
    results = {g.gate: g.passed for g in check_gates(
        {"cleanAccuracy": 0.95, "robustAccuracy": 0.4, "epsilon": 7.9, "membershipAUC": None}, spec.gates)}
    assert results == {"minCleanAccuracy": True, "minRobustAccuracy": False, "maxEpsilon": True,
                       "maxMembershipAUC": False}  # not measured fails


def test_membership_inference_sees_memorisation():
    """A model that memorised random labels has a loss gap the loss-threshold attack detects."""
    torch.manual_seed(0)
    from hardened_model.networks import build_model

    x_in, y_in = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    x_out, y_out = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    model = build_model("mlp", [1, 8, 8], 10)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x_in), y_in).backward()
        opt.step()
    auc, roc = membership_inference(model, x_in.numpy(), y_in.numpy(), x_out.numpy(), y_out.numpy(), seed=0)
    assert auc > 0.9 and roc[0] == [0.0, 0.0] and roc[-1] == [1.0, 1.0]


def test_ghost_clipping_computes_the_same_clipped_update_as_hooks():
    """The fast path (ghost clipping) must clip exactly as Opacus' reference per-sample hooks do."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from hardened_model.networks import build_model

    torch.manual_seed(0)
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    grads = {}
    for mode in ("hooks", "ghost"):
        torch.manual_seed(1)
        model = build_model("cnn-8x8", [1, 8, 8], 10)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        loader = DataLoader(TensorDataset(x, y), batch_size=32)
        crit = torch.nn.CrossEntropyLoss()
        engine = PrivacyEngine()
        kwargs = dict(module=model, optimizer=opt, data_loader=loader, noise_multiplier=0.0, max_grad_norm=0.05,
                      poisson_sampling=False, grad_sample_mode=mode)
        if mode == "ghost":
            model, opt, crit, _ = engine.make_private(criterion=crit, **kwargs)
        else:
            model, opt, _ = engine.make_private(**kwargs)
        opt.zero_grad()
        crit(model(x), y).backward()
        opt.step()
        grads[mode] = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads["hooks"], grads["ghost"]):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("arch, weights", [("cnn-8x8", None), ("mlp", {"0": 0.2, "7": 3.0})])
def test_fast_ghost_and_hooks_clipping_train_the_same_model(data, arch, weights):
    """Issue 19: the three clippers give one update: with Opacus' sampler, noise and accountant the same, two
    epochs of adversarial + DP-SGD end at the same weights and the same epsilon (class weights included)."""
    results = {}
    extra = {"classWeights": "manual", "classWeightValues": weights} if weights else {}
    for mode in ("fast", "ghost", "hooks"):
        spec = spec_with({"model": {"architecture": arch}, "training": {"privacy": {"clipping": mode,
                                                                                    "maxGradNorm": 0.5}, **extra}})
        results[mode] = train(spec, data.x_train, data.y_train, device=torch.device("cpu"), log=quiet)
        assert results[mode].clipping == mode
    ref = results["hooks"].model.state_dict()
    for mode in ("fast", "ghost"):
        assert results[mode].epsilon == results["hooks"].epsilon
        got = results[mode].model.state_dict()
        for k in ref:
            assert torch.allclose(got[k], ref[k], atol=1e-4, rtol=1e-3), (mode, k, (got[k] - ref[k]).abs().max())


def test_fast_clipping_steps_through_empty_poisson_batches(data):
    """Batch size 1 over 40 examples: about e^-1 of Poisson batches are empty, and every one is a step."""
    x, y = data.x_train[:40], data.y_train[:40]
    spec = spec_with({"training": {"epochs": 1, "batchSize": 1, "adversarial": {"enabled": False}}})
    res = train(spec, x, y, device=torch.device("cpu"), log=quiet)
    assert res.clipping == "fast" and res.epsilon > 0
    assert all(torch.isfinite(v).all() for v in res.model.state_dict().values())


def test_clipping_choice():
    from torch import nn

    from hardened_trainer.train import choose_clipping

    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * self.s

    assert choose_clipping(None, nn.Sequential(nn.Linear(2, 2))) == "fast"
    assert choose_clipping(None, nn.Sequential(nn.Linear(2, 2), Scale())) == "ghost"
    assert choose_clipping("hooks", nn.Sequential(nn.Linear(2, 2))) == "hooks"
    with pytest.raises(ValueError, match="clipping: fast does not support"):
        choose_clipping("fast", nn.Sequential(Scale()))


def test_augment_shifts_whole_pixels_and_flips():
    from hardened_trainer.train import augment

    x = torch.zeros(200, 1, 7, 7)
    x[:, 0, 3, 3] = 1.0  # one bright pixel in the middle
    out = augment(x, shift=2, flip=False, generator=torch.Generator().manual_seed(0))
    where = out[:, 0].flatten(1).argmax(1)
    rows, cols = where // 7 - 3, where % 7 - 3
    assert out.sum() == 200 and rows.abs().max() == 2 and cols.abs().max() == 2  # moved by up to 2, never lost
    assert len({(int(r), int(c)) for r, c in zip(rows, cols)}) == 25            # every shift occurs
    same = augment(x, shift=2, flip=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, same)
    y = torch.arange(12.0).view(1, 1, 3, 4).repeat(100, 1, 1, 1)
    flipped = augment(y, shift=0, flip=True, generator=torch.Generator().manual_seed(1))
    is_flipped = (flipped == y.flip(-1)).flatten(1).all(1)
    assert ((flipped == y).flatten(1).all(1) | is_flipped).all() and 20 < int(is_flipped.sum()) < 80


def test_weight_average_warms_up_and_tracks():
    from torch import nn

    from hardened_trainer.train import WeightAverage

    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.0)
    avg = WeightAverage(m, 0.99)
    with torch.no_grad():
        m.weight.fill_(1.0)
    avg.update(m)  # step 1: decay min(0.99, 2/11)
    assert abs(float(avg.params["weight"]) - (1 - 2 / 11)) < 1e-6


def test_augmentation_multiplicity_and_weight_averaging_train_at_the_same_privacy_cost(data):
    plain = train(spec_with(), data.x_train, data.y_train, device=torch.device("cpu"), log=quiet)
    spec = spec_with({"training": {"augmentation": {"multiplicity": 3, "shift": 1}, "emaDecay": 0.95}})
    events = []
    res = train(spec, data.x_train, data.y_train, device=torch.device("cpu"), log=lambda e, **kw: events.append(
        (e, kw)))
    assert res.epsilon == plain.epsilon and res.noise_multiplier == plain.noise_multiplier
    assert ("privacy", {"clipping": "fast", "noiseMultiplier": res.noise_multiplier, "maxGradNorm": 1.0,
                        "augmentationMultiplicity": 3}) in events
    assert not all(torch.equal(a, b) for a, b in zip(res.model.state_dict().values(),
                                                     plain.model.state_dict().values()))


def test_augmentation_rules():
    from hardened_model.spec import SpecError

    with pytest.raises(SpecError, match="augmentation.multiplicity"):
        spec_with({"training": {"privacy": {"enabled": False}, "augmentation": {"multiplicity": 4}},
                   "gates": {"maxEpsilon": None}})
    with pytest.raises(SpecError, match="augmentation.multiplicity"):
        spec_with({"training": {"privacy": {"clipping": "ghost"}, "augmentation": {"multiplicity": 4}}})
    assert spec_with({"training": {"privacy": {"enabled": False}, "augmentation": {"shift": 1}},
                      "gates": {"maxEpsilon": None}}).training.augmentation.multiplicity == 1


def test_weight_standardization_trains_under_dp_and_exports_plain_convolutions(data):
    spec = spec_with({"training": {"weightStandardization": True}})
    events = []
    res = train(spec, data.x_train, data.y_train, device=torch.device("cpu"), log=lambda e, **kw: events.append(
        (e, kw)))
    assert ("weight-standardization", {"convolutions": ["1.0", "1.4"]}) in events and res.clipping == "fast"
    convs = [m for m in res.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [type(m) for m in convs] == [torch.nn.Conv2d, torch.nn.Conv2d]  # the served architecture
    for conv in convs:  # holding the standardized weights
        flat = conv.weight.flatten(1)
        assert flat.mean(1).abs().max() < 1e-5 and (flat.var(1, unbiased=False) - 1).abs().max() < 0.01  # var+eps
    from hardened_model.spec import SpecError

    with pytest.raises(SpecError, match="weightStandardization"):
        spec_with({"training": {"weightStandardization": True, "privacy": {"clipping": "hooks"}}})


def test_train_is_set_up_epochs_and_export(data):
    """Issue 26: train() is build_run, train_one_epoch per epoch and export, in that order; called by hand they
    draw the same random numbers and end at the same weights."""
    import time

    from hardened_trainer.train import build_run, export, train_one_epoch

    spec = spec_with({"training": {"augmentation": {"multiplicity": 2, "shift": 1}, "emaDecay": 0.9}})
    whole = train(spec, data.x_train, data.y_train, device=torch.device("cpu"), log=quiet)
    run = build_run(spec, data.x_train, data.y_train, device=torch.device("cpu"), log=quiet)
    start = time.perf_counter()
    history = [train_one_epoch(run, spec, epoch=e, start=start) for e in (1, 2)]
    parts = export(run, spec, history, start=start)
    assert parts.epsilon == whole.epsilon and parts.clipping == whole.clipping == "fast"
    a, b = whole.model.state_dict(), parts.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
