"""Training: plain, adversarial (Madry PGD / FGSM), DP-SGD (Opacus), or both.

Adversarial + DP-SGD, done so the privacy accounting holds:

- Batches come from Opacus' Poisson-sampling loader; the accountant charges
  one step per batch, so no step is ever skipped (an empty batch still steps).
- Adversarial examples *replace* a ``ratio`` share of the sampled batch; they
  are never appended. Each sampled example then contributes exactly one
  per-sample gradient, clipped to ``maxGradNorm``: the sensitivity DP-SGD's
  noise is calibrated to. An adversarial example depends only on its own
  example and the current (already private) weights.
- The attack runs on the unwrapped module with the GradSampleModule's hooks
  disabled, and takes gradients with respect to the input only, so Opacus'
  per-sample state is untouched (attacking through the hooked model fails with
  ``pop from empty list``).

Per-sample clipping (``training.privacy.clipping``) computes one and the same clipped update three ways:
``fast`` (hardened_trainer.clipping: one backward pass, the default wherever every trainable layer supports
it), Opacus' ``ghost`` clipping (a second backward pass), or Opacus' per-sample ``hooks``. Opacus always
does the sampling, the noise and the accounting (its DPOptimizerFastGradientClipping adds noise to the clipped
sum the fast clipper leaves in ``p.grad``, as after ghost clipping). docs/benchmarks.md has the cost of each;
tests/trainer/test_clipping.py and test_train.py check that they compute the same update.

Under torchrun (WORLD_SIZE > 1) each rank trains on its shard, clipping its own examples, and one all-reduce per
step joins the clipped sums (hardened_trainer.distributed says how, and why ε stays the single-process one).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .rows import RowDataset, is_mapped, moments

from hardened_model.spec import HardenedModelSpec

from . import attacks, distributed
from hardened_model.networks import build_model


def choose_clipping(requested: str | None, module: nn.Module) -> str:
    """training.privacy.clipping, or absent: fast when every trainable layer supports it, else ghost.
    ArchitectureError (stage model) when the spec asks for fast and a layer has no fast path."""
    if requested in ("ghost", "hooks"):  # Opacus' own: every layer it can clip at all
        return requested
    from hardened_model.architectures import ArchitectureError

    from .clipping import unsupported_layers

    missing = unsupported_layers(module)
    if requested == "fast" and missing:
        raise ArchitectureError(f"spec.training.privacy.clipping: fast does not support layers {missing}: use "
                                "ghost or hooks (or leave it out)")
    return "ghost" if missing else "fast"


def augment(x: torch.Tensor, *, shift: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random integer translations of up to ``shift`` pixels each way (zero-filled) and, with ``flip``, random
    horizontal flips, one draw per image; [N, C, H, W] in, same shape out."""
    n = x.shape[0]
    if n == 0:
        return x
    out = x
    if shift:
        offsets = torch.randint(-shift, shift + 1, (n, 2), generator=generator)
        padded = torch.nn.functional.pad(x, (shift, shift, shift, shift))
        out = torch.empty_like(x)
        h, w = x.shape[2], x.shape[3]
        for dy, dx in torch.unique(offsets, dim=0).tolist():
            rows = ((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).nonzero().flatten().to(x.device)
            out[rows] = padded[rows, :, shift + dy:shift + dy + h, shift + dx:shift + dx + w]
    if flip:
        flips = (torch.rand(n, generator=generator) < 0.5).nonzero().flatten().to(x.device)
        out = out.clone() if out is x else out  # never change the caller's batch
        out[flips] = out[flips].flip(-1)
    return out


class WeightAverage:
    """An exponential moving average of the parameters (De et al. 2022), warmed up as
    min(decay, (1 + t) / (10 + t)) at step t; what is evaluated and exported."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay, self.steps = decay, 0
        self.params = {n: p.detach().clone() for n, p in module.named_parameters()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for n, p in module.named_parameters():
            self.params[n].mul_(d).add_(p.detach(), alpha=1 - d)


class _Hooks:
    """Switches the per-sample hooks (Opacus' and the fast clipper's) off while an attack runs."""

    def __init__(self, *owners):
        self.owners = [o for o in owners if o is not None]

    def __enter__(self):
        for o in self.owners:
            o.disable_hooks()

    def __exit__(self, *exc):
        for o in self.owners:
            o.enable_hooks()


def select_device(preference: str = "auto") -> torch.device:
    """CUDA when present (the images target GPUs), else CPU."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def json_log(event: str, stream=None, **fields) -> None:
    """One JSON object per line on stdout, for `kubectl logs` and log shippers."""
    stream = stream or sys.stdout
    stream.write(json.dumps({"event": event, **fields}, sort_keys=False) + "\n")
    stream.flush()


@dataclass
class TrainResult:
    model: nn.Module                 # plain module (no Opacus wrapper), eval mode, on CPU
    epsilon: float | None            # privacy spent; None without DP-SGD
    noise_multiplier: float | None
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    clipping: str | None = None      # how per-sample gradients were clipped (DP-SGD): fast | ghost | hooks
    steps: int = 0                   # optimizer steps taken (the accountant's, under DP-SGD)
    resumed_from_epoch: int | None = None  # the checkpoint's epoch this run continued from


def eps_step_for(eps: float, eps_step: float | None, max_iter: int) -> float:
    """Madry et al.'s rule of thumb when the spec leaves epsStep out: 2.5 * eps / iterations."""
    return eps_step if eps_step is not None else 2.5 * eps / max_iter


def class_weights(spec: HardenedModelSpec, y_train: np.ndarray) -> torch.Tensor | None:
    """training.classWeights as loss weights, scaled so that the largest is 1.

    balanced is n_samples / (n_classes * count) per class (scikit-learn's rule). Only the ratios matter, and
    scaling down rather than up is what lets them act under DP-SGD: a per-sample gradient is clipped to
    maxGradNorm *after* the weight applies, so a weight of 125 on the rare class changes nothing once its
    gradients are clipped anyway, while a weight of 0.008 on the common class shrinks its gradients below
    the clip (the sensitivity stays maxGradNorm: every weight is at most 1). Without DP-SGD the mean loss
    divides by the batch's weights, so the scale does not matter there."""
    t, k = spec.training, spec.model.num_classes
    if t.class_weights in (None, "none"):
        return None
    if t.class_weights == "balanced":
        counts = np.bincount(y_train, minlength=k).astype(np.float64)
        w = np.where(counts > 0, len(y_train) / (k * np.maximum(counts, 1)), 1.0)
    else:
        values = t.class_weight_values or {}
        unknown = sorted(set(values) - {str(c) for c in range(k)})
        if unknown:
            raise ValueError(f"spec.training.classWeightValues: classes {unknown} do not exist (0..{k - 1})")
        w = np.array([float(values.get(str(c), 1.0)) for c in range(k)])
    return torch.tensor(w / w.max(), dtype=torch.float32)


def _model_args(spec: HardenedModelSpec, x_train: np.ndarray) -> dict:
    """Normalization statistics (scalars for images, per number column for tabular data) and the schema."""
    plugin = {"options": spec.model.options, "auto_fix": spec.model.auto_fix}
    if spec.model.architecture != "tabular-mlp":
        if x_train.ndim == 4 and x_train.shape[1] > 1:  # colour images: one mean and std per channel
            mean, std = moments(x_train, (0, 2, 3))
            return {"mean": [float(v) for v in mean], "std": [float(v) if v > 0 else 1.0 for v in std], **plugin}
        mean, std = moments(x_train, None)
        return {"mean": float(mean), "std": float(std) or 1.0, **plugin}
    from .tabular import feature_dicts

    numeric = [j for j, f in enumerate(spec.data.features) if f.type != "category"]
    mean, std = moments(x_train, 0)
    return {"mean": [float(mean[j]) for j in numeric], "std": [float(std[j]) if std[j] > 0 else 1.0 for j in numeric],
            "features": feature_dicts(spec.data.features)}


@dataclass(frozen=True)
class Reach:
    """How far the attack may move an input: [0, 1] pixels for images; for tabular data per feature (mutable
    columns only, in standard deviations, within each feature's bounds, integers whole)."""
    eps: float | torch.Tensor
    step: float | torch.Tensor
    clip: tuple = (0.0, 1.0)
    integer: torch.Tensor | None = None


@dataclass
class TrainingRun:
    """Everything train_one_epoch reads, built once by build_run: keeping the set-up in one place keeps the
    order in which it draws random numbers (model initialization, then Opacus' sampler and noise) fixed, and
    a seed's weights with it."""
    net: nn.Module                   # what the batches go through: the module, or Opacus' GradSampleModule
                                     # (in a world of ranks around DDP, or Opacus' DPDDP)
    module: nn.Module                # the plain module (inside the GradSampleModule under DP-SGD)
    model_args: dict                 # build_model's keyword arguments, to rebuild the plain architecture
    optimizer: torch.optim.Optimizer
    criterion: Callable
    loader: DataLoader               # Opacus' Poisson-sampling loader under DP-SGD
    generator: torch.Generator       # batches (shuffle, or Opacus' Poisson sampling), augmentation, PGD starts
    device: torch.device
    reach: Reach
    engine: object | None = None     # opacus.PrivacyEngine: its accountant answers epsilon
    fast: object | None = None       # hardened_trainer.clipping.FastClipping
    average: WeightAverage | None = None
    noise_multiplier: float | None = None
    clipping: str | None = None
    copies: int = 1                  # augmentation multiplicity
    steps: int = 0                   # optimizer steps so far (a checkpoint keeps them)
    mapped: bool = False             # the training split is file-backed (rows.py): batches drawn in O(batch)

    @property
    def hook_owners(self) -> tuple:
        """Whose per-sample hooks an attack must switch off: the fast clipper's, or Opacus' (ghost, hooks)."""
        return (self.net if self.engine is not None and self.fast is None else None, self.fast)


def _network(spec: HardenedModelSpec, x_train: np.ndarray, *, log: Callable[..., None],
             initial: dict | None) -> tuple[nn.Module, dict]:
    """The architecture with its normalization, model.initialWeights loaded and, with weightStandardization,
    standardized convolutions; and build_model's arguments."""
    margs = _model_args(spec, x_train)
    model = build_model(spec.model.architecture, spec.model.input_shape, spec.model.num_classes, **margs)
    if initial is not None:
        from .weights import apply

        loaded = apply(model, initial, spec.model.initial_weights.uri)
        log("initial-weights", uri=spec.model.initial_weights.uri, sha256=spec.model.initial_weights.sha256,
            tensors=loaded)
    if spec.training.weight_standardization:
        from .standardize import standardize_convolutions

        log("weight-standardization", convolutions=standardize_convolutions(model))
    return model, margs


# scipy's brentq, inside Opacus' GDP epsilon, when the noise search evaluates a noise too low to bracket
GDP_NO_ROOT = "f(a) and f(b) must have different signs"


class PrivacyError(ValueError):
    """A DP-SGD set-up the accounting cannot provide for this spec (stage privacy, exit 2); names the field."""


def _make_private(run: TrainingRun, spec: HardenedModelSpec, weights: torch.Tensor | None, *,
                  log: Callable[..., None]) -> None:
    """DP-SGD as a switch around Opacus' make_private_with_epsilon (its examples/mnist.py): the run's model,
    optimizer, loss and loader become the private ones, clipped by the fast clipper, ghost clipping or hooks."""
    from opacus import PrivacyEngine

    t, device = spec.training, run.device
    run.clipping = choose_clipping(t.privacy.clipping, run.module)
    run.engine = PrivacyEngine(accountant=t.privacy.accountant, secure_mode=False)
    noise_gen = torch.Generator(device=device)
    noise_gen.manual_seed(t.seed + 1)
    # fast clipping takes Opacus' ghost-clipping optimizer (noise on p.grad, then scaling), loader and
    # accountant, and replaces only the two backward passes; in a world of ranks run.net is Opacus' DPDDP,
    # which makes it pick its distributed optimizers (hardened_trainer.distributed)
    try:
        private = run.engine.make_private_with_epsilon(
            module=run.net, optimizer=run.optimizer, data_loader=run.loader, criterion=run.criterion,
            epochs=t.epochs, target_epsilon=t.privacy.target_epsilon, target_delta=t.privacy.target_delta,
            max_grad_norm=t.privacy.max_grad_norm, noise_generator=noise_gen,
            grad_sample_mode="hooks" if run.clipping == "hooks" else "ghost")
    except ValueError as exc:
        if t.privacy.accountant == "gdp" and GDP_NO_ROOT in str(exc):
            raise PrivacyError(
                f"spec.training.privacy.accountant: \"gdp\" finds no noise multiplier for targetEpsilon "
                f"{t.privacy.target_epsilon:g} in {t.epochs} epoch(s) of this data: its noise search tries noise "
                f"so low that epsilon passes 500, where Opacus' GDP root finder has no bracket (GDP is a "
                f"central-limit approximation, meant for many steps); use accountant \"prv\" or \"rdp\"") from exc
        raise
    if run.clipping == "hooks":
        run.net, run.optimizer, run.loader = private
        # each example's loss is w_y * l, as the other clippers take it (a weighted mean divides by the
        # batch's weights, which Opacus' hooks would scale by the batch size instead)
        per_example = nn.CrossEntropyLoss(weight=weights.to(device) if weights is not None else None,
                                          reduction="none")
        run.criterion = lambda out, target: per_example(out, target).mean()
    else:  # ghost clipping also wraps the loss (it runs the second backward)
        run.net, run.optimizer, run.criterion, run.loader = private
    run.noise_multiplier = float(run.optimizer.noise_multiplier)
    run.module = distributed.unwrap(run.net._module)  # the plain module inside the GradSampleModule (and DPDDP)
    # Opacus' distributed sampler skips empty batches: ours steps through them; and for a file-backed training
    # split ours draws a batch in O(batch), not one uniform per example per step (distributed.PoissonShard)
    if distributed.world_size() > 1 or run.mapped:
        run.loader = distributed.poisson_loader(run.loader, generator=run.generator, binomial=run.mapped)
    if run.clipping == "fast":
        from .clipping import FastClipping

        run.net.disable_hooks()  # Opacus' ghost hooks never run: the fast clipper's do
        run.fast = FastClipping(run.module, t.privacy.max_grad_norm, group=run.copies)
        run.criterion = nn.CrossEntropyLoss(weight=weights.to(device) if weights is not None else None,
                                            reduction="none")
    log("privacy", clipping=run.clipping, noiseMultiplier=run.noise_multiplier,
        maxGradNorm=t.privacy.max_grad_norm, augmentationMultiplicity=run.copies)


def _reach(spec: HardenedModelSpec, x_train: np.ndarray, device: torch.device) -> Reach:
    adv = spec.training.adversarial
    step = eps_step_for(adv.eps, adv.eps_step, adv.max_iter)
    if spec.model.architecture != "tabular-mlp":
        return Reach(eps=adv.eps, step=step)
    from .tabular import constraints

    c = constraints(spec.data.features, x_train)
    return Reach(eps=torch.from_numpy(c.radius(adv.eps)).to(device), step=torch.from_numpy(c.radius(step)).to(device),
                 clip=(torch.from_numpy(c.low).to(device), torch.from_numpy(c.high).to(device)),
                 integer=torch.from_numpy(c.integer).to(device))


def build_run(spec: HardenedModelSpec, x_train: np.ndarray, y_train: np.ndarray, *, device: torch.device,
              log: Callable[..., None] = json_log, initial: dict | None = None) -> TrainingRun:
    """Seeds, model, loader, optimizer, loss and, with DP-SGD, the privacy engine; see train()."""
    t = spec.training
    gen = seed_everything(t.seed)
    model, margs = _network(spec, x_train, log=log, initial=initial)
    model = model.to(device)
    mapped = is_mapped(x_train)
    # a file-backed split: each batch's rows prefetched together, then gathered (rows.RowDataset)
    dataset = RowDataset(x_train, y_train) if mapped else TensorDataset(torch.from_numpy(x_train),
                                                                        torch.from_numpy(y_train))
    # pinned host memory: batches copy to the GPU asynchronously (non_blocking in train_one_epoch)
    if mapped and not t.privacy.enabled and distributed.world_size() == 1:
        # a file-backed split: no epoch permutation (torch's RandomSampler holds it as a Python list, 36 bytes a
        # row); Poisson batches of the expected size, drawn in O(batch), sorted rows (distributed.PoissonShard)
        q = min(t.batch_size / len(dataset), 1.0)
        loader = DataLoader(dataset, pin_memory=device.type == "cuda", batch_sampler=distributed.PoissonShard(
            num_samples=len(dataset), sample_rate=q, steps=max(int(1 / q), 1), rank=0, world=1, generator=gen,
            binomial=True, nonempty=True))
    else:
        loader = DataLoader(dataset, batch_size=t.batch_size, shuffle=True, generator=gen,
                            pin_memory=device.type == "cuda")
    if t.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=t.learning_rate)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=t.learning_rate, momentum=0.9)
    weights = class_weights(spec, y_train)
    criterion = nn.CrossEntropyLoss(weight=weights.to(device) if weights is not None else None)
    run = TrainingRun(net=model, module=model, model_args=margs, optimizer=optimizer, criterion=criterion,
                      loader=loader, generator=gen, device=device, reach=_reach(spec, x_train, device),
                      copies=t.augmentation.multiplicity if t.augmentation is not None else 1, mapped=mapped)
    if distributed.world_size() > 1:
        distributed.prepare(run, spec)
    if t.privacy.enabled:
        _make_private(run, spec, weights, log=log)
    run.average = WeightAverage(run.module, t.ema_decay) if t.ema_decay else None
    return run


def _adversarial_batch(run: TrainingRun, adv, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """Adversarial examples replace whole examples (all K copies of the first ones), never appended: one
    gradient per sampled example, the sensitivity DP-SGD's noise is calibrated to."""
    n_adv = int(round(adv.ratio * (len(xb) // run.copies))) * run.copies if adv.enabled else 0
    if not n_adv:
        return xb
    r = run.reach
    with _Hooks(*run.hook_owners):
        if adv.attack == "fgsm":
            x_adv = attacks.fgsm(run.module, xb[:n_adv], yb[:n_adv], eps=r.eps, clip=r.clip, integer=r.integer)
        else:
            x_adv = attacks.pgd(run.module, xb[:n_adv], yb[:n_adv], eps=r.eps, eps_step=r.step,
                                max_iter=adv.max_iter, generator=run.generator, clip=r.clip, integer=r.integer)
    return torch.cat([x_adv, xb[n_adv:]])


def train_step(run: TrainingRun, spec: HardenedModelSpec, xb: torch.Tensor, yb: torch.Tensor) -> tuple:
    """One optimizer step on one (local) batch, empty or not; (rows, summed loss, correct) of the batch."""
    t, device, aug = spec.training, run.device, spec.training.augmentation
    xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
    if aug is not None:  # K copies of each example side by side, each randomly shifted (and flipped)
        if run.copies > 1:
            xb, yb = xb.repeat_interleave(run.copies, 0), yb.repeat_interleave(run.copies, 0)
        xb = augment(xb, shift=aug.shift, flip=aug.flip, generator=run.generator)
    xb = _adversarial_batch(run, t.adversarial, xb, yb)
    run.optimizer.zero_grad(set_to_none=True)
    out = run.net(xb)
    if run.fast is not None:
        losses = run.criterion(out, yb)
        run.fast.backward(losses)  # the clipped sum in p.grad, in one backward pass
        loss = losses.mean() if len(losses) else losses.sum()
    else:
        loss = run.criterion(out, yb)
        loss.backward()  # ghost clipping: both backward passes happen here
    run.optimizer.step()  # also for an empty Poisson batch: the accountant counts every step
    run.steps += 1
    if run.average is not None:
        run.average.update(run.module)
    return len(xb), float(loss.item()) * len(xb) if len(xb) else 0.0, int((out.argmax(1) == yb).sum())


def train_one_epoch(run: TrainingRun, spec: HardenedModelSpec, *, epoch: int, start: float) -> dict:
    """One pass over the loader; the epoch's record (loss, accuracy, epsilon so far, seconds since ``start``),
    over every rank's batches in a world of ranks.
    FloatingPointError naming spec.training.learningRate when the loss is no longer finite."""
    t = spec.training
    run.net.train()
    seen = correct = 0
    loss_sum = 0.0
    for xb, yb in run.loader:
        rows, batch_loss, batch_correct = train_step(run, spec, xb, yb)
        seen, loss_sum, correct = seen + rows, loss_sum + batch_loss, correct + batch_correct
    if distributed.world_size() > 1:
        seen, correct, loss_sum = distributed.sum_over_ranks([seen, correct, loss_sum])
        seen, correct = int(seen), int(correct)
    asked = time.perf_counter()
    epsilon = float(run.engine.get_epsilon(t.privacy.target_delta)) if run.engine is not None else None
    if distributed.world_size() > 1:
        epsilon = distributed.agreed_epsilon(epsilon, run.steps)
    record = {"epoch": epoch, "loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1),
              "epsilon": epsilon, "seconds": round(time.perf_counter() - start, 3)}
    if run.engine is not None:  # the accountant's answer takes a fixed ~0.2 s (PRV), whatever the model
        record["accountantSeconds"] = round(time.perf_counter() - asked, 3)
    if not math.isfinite(record["loss"]):
        raise FloatingPointError(f"training diverged at epoch {epoch} (loss {record['loss']}); "
                                 f"lower spec.training.learningRate ({t.learning_rate})")
    return record


def export(run: TrainingRun, spec: HardenedModelSpec, history: list[dict], *, start: float) -> TrainResult:
    """The trained weights in a fresh plain architecture: no Opacus wrapper and no clipper hooks, so what is
    evaluated, signed and served is the registry's network."""
    if run.fast is not None:
        run.fast.remove()
    plain = build_model(spec.model.architecture, spec.model.input_shape, spec.model.num_classes, **run.model_args)
    state = {k: v.detach().cpu() for k, v in run.module.state_dict().items()}
    if run.average is not None:  # the averaged weights are the model: evaluated, signed and served
        state.update({k: v.cpu() for k, v in run.average.params.items()})
    if spec.training.weight_standardization:  # the weights the convolutions used, in the plain architecture
        from .standardize import baked_state

        state = baked_state(run.module, state)
    plain.load_state_dict(state)
    plain.eval()
    return TrainResult(model=plain, epsilon=history[-1]["epsilon"] if history else None,
                       noise_multiplier=run.noise_multiplier, history=history,
                       seconds=time.perf_counter() - start, clipping=run.clipping, steps=run.steps)


def train(spec: HardenedModelSpec, x_train: np.ndarray, y_train: np.ndarray, *, device: torch.device,
          log: Callable[..., None] = json_log, initial: dict | None = None,
          checkpoint_dir: str | None = None) -> TrainResult:
    """``initial``: checked tensors of model.initialWeights (hardened_trainer.weights), loaded before training.
    ``checkpoint_dir``: a checkpoint at the end of every epoch, and the run resumed from the one there
    (hardened_trainer.distributed). In a world of ranks every rank calls it and gets the same model.

    Set-up, epochs, export, as torchvision's references/classification/train.py reads."""
    run = build_run(spec, x_train, y_train, device=device, log=log, initial=initial)
    history, done = [], 0
    start = time.perf_counter()
    if checkpoint_dir is not None:
        digest = distributed.run_digest(spec, x_train, y_train)
        resumed = distributed.load_checkpoint(run, checkpoint_dir, digest=digest)
        if resumed is not None:
            history, done = resumed.history, resumed.epoch
            log("resumed", epoch=done, steps=run.steps, checkpointDir=str(checkpoint_dir))
    for epoch in range(done + 1, spec.training.epochs + 1):
        record = train_one_epoch(run, spec, epoch=epoch, start=start)
        history.append(record)
        log("epoch", **record)
        if checkpoint_dir is not None:
            path = distributed.save_checkpoint(run, checkpoint_dir, digest=digest, epoch=epoch, history=history)
            log("checkpoint", epoch=epoch, steps=run.steps, path=str(path))
    result = export(run, spec, history, start=start)
    result.resumed_from_epoch = done or None
    return result
