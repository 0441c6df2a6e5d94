"""The sections of the HardenedModel spec: the one definition of the API.

``hardened_model.spec.schema`` generates the CRD's openAPIV3Schema from these models (as controller-gen does
from Go types), so field types, enums, bounds, patterns, defaults and CEL rules cannot drift apart.

This module is over 600 lines because it is the API reference: every section with its fields, bounds and
rules, in the order of the CRD, so that a change to the API is read and reviewed in one file, as
Kubernetes keeps an API group's types in one types.go.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from .cel import CelRule

API_GROUP = "hardened.dev"
API_VERSION = "v1alpha1"
KIND = "HardenedModel"
PLURAL = "hardenedmodels"
SINGULAR = "hardenedmodel"
SHORT_NAMES = ["hm"]

# Child objects are named "<model>-<role>-<hash8>" (Job names) and Pod names
# add 6 more characters; 40 keeps every derived name within the 63-character
# DNS label limit.
MAX_NAME_LENGTH = 40
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# k8s.io/apimachinery resource.Quantity, as in the core API's OpenAPI schema.
QUANTITY = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
            r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
IMAGE = r"^[a-z0-9]+([._/:@-][a-zA-Z0-9_.-]+)*$"
FEATURE_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]*$"


class _Base(BaseModel):
    """camelCase on the wire, unknown fields are errors (never silently dropped)."""

    # strict: JSON types as the apiserver sees them (no "5" -> 5, no true -> 1).
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, strict=True,
                              extra="forbid", frozen=True, validate_default=True)
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()


def _obj(cls):
    """A nested section that may be omitted: defaults to ``{}``, then its own defaults apply."""
    return Field(default_factory=cls)


Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


def _quantity(value: str | int) -> str | int:
    if isinstance(value, bool) or (isinstance(value, str) and not re.fullmatch(QUANTITY, value)):
        raise ValueError("must be a Kubernetes quantity such as 500m, 2 or 4Gi")
    return value


# int-or-string like core/v1 resource quantities ("2", 2, "500m", "4Gi"); the CRD
# carries the same QUANTITY pattern.
Quantity = Annotated[int | str, AfterValidator(_quantity),
                     Field(json_schema_extra={"x-kubernetes-int-or-string": True, "pattern": QUANTITY})]


class SecretKeyRef(_Base):
    """A key of a Secret in the model's namespace."""

    name: str = Field(pattern=DNS_LABEL, max_length=253, description="Secret name.")
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253, description="Key within the Secret.")


class ObjectKeyRef(_Base):
    """A key of a Secret or ConfigMap in the model's namespace."""

    kind: Literal["Secret", "ConfigMap"] = "ConfigMap"
    name: str = Field(pattern=DNS_LABEL, max_length=253)
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)


# --------------------------------------------------------------------- model
PICKLE_HELP = ("PyTorch .pt/.pth files are pickles, which can run code when loaded, and are never loaded here: "
               "convert once, in a trusted environment, with safetensors.torch.save_file(torch.load(PATH, "
               "weights_only=True), 'model.safetensors'), and pin the new file's sha256")


class InitialWeights(_Base):
    """Pretrained weights to start from (warm start): a safetensors file, checked against its sha256 first."""

    uri: str = Field(pattern=r"^(file|s3|pvc)://\S+$", max_length=1024,
                     description="file:///path, s3://bucket/key or pvc://claim/path of a .safetensors file.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$",
                        description="Expected sha256 of the file (lowercase hex); any other bytes stop the trainer.")

    cel_rules = (
        CelRule("!self.uri.endsWith('.pt') && !self.uri.endsWith('.pth') && !self.uri.endsWith('.bin') "
                "&& !self.uri.endsWith('.pkl')", PICKLE_HELP, "uri"),
    )


class ModelSection(_Base):
    """What to train: an architecture from the built-in registry and its input/output shape."""

    architecture: str = Field(
        pattern=DNS_LABEL, max_length=63,
        description="Registry name: built-in (cnn-28x28, cnn-8x8, mlp, tabular-mlp, resnet-gn-32; all "
                    "Opacus-compatible) or one a plugin distribution registers in the entry-point group "
                    "hardened_model.architectures (installed in the trainer and server images).")
    options: dict[str, Any] | None = Field(
        default=None, description="Keyword arguments for a plugin architecture's builder, which validates them.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    auto_fix: bool = Field(
        default=False, description="Replace layers DP-SGD cannot train (BatchNorm -> GroupNorm), as Opacus' "
                                   "ModuleValidator.fix does; in the trainer and in the server alike.")
    input_shape: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        min_length=1, max_length=4, description="Input shape of one example, channels first, e.g. [1, 28, 28].")
    num_classes: int = Field(ge=2, le=1000, description="Number of output classes.")
    labels: list[Annotated[str, Field(min_length=1, max_length=63)]] | None = Field(
        default=None, max_length=1000, description="Class names, one per class; defaults to the class indices.")
    initial_weights: InitialWeights | None = Field(
        default=None, description="Start from these weights (e.g. the baseline model) and harden them by "
                                  "fine-tuning; their digest is recorded in the signed model.json.")

    cel_rules = (
        CelRule("!has(self.labels) || size(self.labels) == self.numClasses",
                "labels must have exactly numClasses entries", "labels"),
        CelRule("self.architecture != 'cnn-28x28' || self.inputShape == [1, 28, 28]",
                "architecture cnn-28x28 needs inputShape [1, 28, 28]", "inputShape"),
        CelRule("self.architecture != 'cnn-8x8' || self.inputShape == [1, 8, 8]",
                "architecture cnn-8x8 needs inputShape [1, 8, 8]", "inputShape"),
        CelRule("self.architecture != 'resnet-gn-32' || self.inputShape == [3, 32, 32]",
                "architecture resnet-gn-32 needs inputShape [3, 32, 32]", "inputShape"),
    )


# ---------------------------------------------------------------------- data
class Sanitization(_Base):
    """Poisoning defence run before training: drop examples whose label disagrees with their neighbourhood."""

    enabled: bool = Field(default=True, description="Filter suspected poisoned (label-flipped) examples.")
    method: Literal["knn-label-consistency", "loss"] = Field(
        default="knn-label-consistency",
        description="knn-label-consistency: drop examples whose label disagrees with most of their k nearest "
                    "neighbours in feature space; loss: drop the highest-loss examples of a cross-validated model.")
    k: int = Field(default=10, ge=1, le=100, description="Neighbours consulted (knn-label-consistency).")
    max_remove_fraction: float = Field(
        default=0.2, ge=0.0, le=0.5, description="Upper bound on the fraction of training examples removed.")


class Feature(_Base):
    """One column of a tabular data set, in the order the model takes them."""

    name: str = Field(pattern=FEATURE_NAME, max_length=63, description="Column name in the file.")
    type: Literal["number", "integer", "category"] = Field(
        description="number: any real; integer: whole numbers; category: one of vocabulary (one-hot encoded "
                    "inside the model).")
    vocabulary: list[Annotated[str, Field(min_length=1, max_length=63)]] | None = Field(
        default=None, min_length=2, max_length=256, description="The categories, for type category.")
    min: float | None = Field(default=None, ge=-1e12, le=1e12, description="Lowest valid value (numbers).")
    max: float | None = Field(default=None, ge=-1e12, le=1e12, description="Highest valid value (numbers).")
    mutable: bool = Field(default=True, description="Whether an attacker can change it (a transaction's amount "
                                                    "yes, a merchant's location no): attacks move only these.")
    missing: Literal["error", "impute-median"] = Field(
        default="error", description="An empty or NaN cell: an error naming the row, or the training median.")

    cel_rules = (
        CelRule("self.type == 'category' ? has(self.vocabulary) : !has(self.vocabulary)",
                "a category feature needs a vocabulary, and only a category feature has one", "vocabulary"),
        CelRule("self.type != 'category' || (!has(self.min) && !has(self.max))",
                "min and max apply to number and integer features", "min"),
        CelRule("!has(self.min) || !has(self.max) || self.min < self.max", "min must be < max", "min"),
        CelRule("self.type != 'category' || self.missing == 'error'",
                "impute-median applies to number and integer features", "missing"),
    )


class DataSection(_Base):
    """Where the training data comes from and how it is split.

    The fields added for tabular data default to absent, not to a value: the training version is a digest
    of this section as stored, and an operator upgrade must not retrain every existing model.
    """

    source: str = Field(
        pattern=r"^(builtin:digits|file:///.+|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+)$", max_length=1024,
        description="builtin:digits (scikit-learn, offline), file:///path (images: an .npz with x and y, or a "
                    "folder of MNIST IDX files, gzip or raw; tabular: a .csv or .parquet file), or s3://bucket/key.")
    format: Literal["image", "tabular"] | None = Field(
        default=None, description="image (absent means image): arrays of pixels in [0, 1] or 0-255; tabular: a "
                                  "CSV or Parquet table described by features and label.")
    features: list[Feature] | None = Field(
        default=None, min_length=1, max_length=256, description="Tabular: the input columns, in model order.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    label: str | None = Field(default=None, pattern=FEATURE_NAME, max_length=63,
                              description="Tabular: the column holding the class.")
    positive_class: str | None = Field(default=None, min_length=1, max_length=63,
                                       description="Tabular: the label value of the positive class (e.g. 1), "
                                                   "which recall, precision and PR-AUC are about.")
    validation_split: float = Field(default=0.2, gt=0.0, lt=1.0,
                                    description="Fraction held out for evaluation (fixed-seed split).")
    max_samples: int | None = Field(default=None, ge=10, description="Use at most this many examples.")
    sanitization: Sanitization = _obj(Sanitization)
    sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$",
        description="Pin: the sha256 of the data the trainer reads (one file: that file's sha256; a folder or an "
                    "S3 prefix: the sha256 of the sha256sum lines of its files, `hardened-model data-digest` "
                    "prints it). Other bytes stop the trainer; the verifier compares it with the provenance.")
    version_id: str | None = Field(
        default=None, min_length=1, max_length=1024, pattern=r"^\S+$",
        description="s3:// object source: read this S3 object version (versionId), not the current one.")

    cel_rules = (
        CelRule("!has(self.format) || self.format != 'tabular' || (has(self.features) && has(self.label) "
                "&& has(self.positiveClass))",
                "tabular data needs features, label and positiveClass", "features"),
        CelRule("(has(self.format) && self.format == 'tabular') || (!has(self.features) && !has(self.label) "
                "&& !has(self.positiveClass))",
                "features, label and positiveClass are for data.format tabular", "format"),
        CelRule("!has(self.features) || !has(self.label) || !self.features.exists(f, f.name == self.label)",
                "the label column cannot also be a feature", "label"),
        CelRule("!has(self.format) || self.format != 'tabular' || !self.sanitization.enabled",
                "sanitization (label consistency, loss) removes the rare class of imbalanced tabular data: set "
                "sanitization.enabled false", "sanitization.enabled"),
        CelRule("!has(self.format) || self.format != 'tabular' || !self.source.startsWith('builtin:')",
                "builtin:digits is image data", "source"),
        CelRule("!has(self.versionId) || (self.source.startsWith('s3://') && !self.source.endsWith('/'))",
                "versionId pins one S3 object: the source must be s3://bucket/key (not a prefix)", "versionId"),
    )


# ------------------------------------------------------------------ training
class Toleration(_Base):
    """A core/v1 Toleration."""

    key: str | None = Field(default=None, max_length=316)
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0)

    cel_rules = (
        CelRule("self.operator != 'Exists' || !has(self.value)",
                "a toleration with operator Exists must not set value", "value"),
    )


class Resources(_Base):
    """Compute resources of one container."""

    gpus: int = Field(default=0, ge=0, le=16, description="nvidia.com/gpu count (requests = limits).")
    cpu: Quantity = Field(default="1", description="CPU request, e.g. 500m or 2.")
    memory: Quantity = Field(default="2Gi", description="Memory request and limit, e.g. 4Gi.")
    scratch: Quantity | None = Field(
        default=None,
        description="Room for the pod's scratch folder (/tmp, an emptyDir): the container's ephemeral-storage "
                    "request and limit and the emptyDir's sizeLimit, so the scheduler picks a node with that much "
                    "disk. The trainer keeps examples beyond its memory budget there (about twice their float32 "
                    "size) and an s3:// data file while it reads it. Absent: no request, the node's disk is shared.")


class Adversarial(_Base):
    """Adversarial training (Madry et al.): mix attacked examples into every batch."""

    enabled: bool = Field(default=False, description="Train on adversarial examples.")
    attack: Literal["fgsm", "pgd"] = Field(default="pgd", description="Attack that makes training examples.")
    eps: float = Field(default=0.1, gt=0.0, le=1.0,
                       description="L-infinity radius: in [0, 1] pixel units for images; in standard deviations of "
                                   "each mutable feature for tabular data.")
    eps_step: float | None = Field(default=None, gt=0.0, le=1.0,
                                   description="PGD step size; defaults to 2.5 * eps / maxIter.")
    max_iter: int = Field(default=10, ge=1, le=1000, description="PGD iterations.")
    ratio: float = Field(default=0.5, gt=0.0, le=1.0,
                         description="Fraction of each batch replaced by adversarial examples.")

    cel_rules = (
        CelRule("!has(self.epsStep) || self.epsStep <= self.eps", "epsStep must be <= eps", "epsStep"),
    )


class Privacy(_Base):
    """Differentially private training (DP-SGD with Opacus)."""

    enabled: bool = Field(default=False, description="Train with DP-SGD.")
    target_epsilon: float | None = Field(default=None, gt=0.0, le=100.0,
                                         description="Privacy budget epsilon to reach at the last epoch.")
    target_delta: float | None = Field(default=None, gt=0.0, lt=1.0,
                                       description="delta; should be well below 1/number of training examples.")
    max_grad_norm: float = Field(default=1.0, gt=0.0, le=100.0, description="Per-sample gradient clipping norm.")
    accountant: Literal["rdp", "prv", "gdp"] = Field(default="prv", description="Opacus privacy accountant.")
    clipping: Literal["fast", "ghost", "hooks"] | None = Field(
        default=None, description="How per-sample gradients are clipped (the same update, at different cost): fast "
                                  "(one backward pass, book-keeping), ghost (Opacus ghost clipping, two passes) or "
                                  "hooks (Opacus per-sample gradients). Absent: fast when every trainable layer "
                                  "supports it, else ghost.")

    cel_rules = (
        CelRule("!self.enabled || has(self.targetEpsilon)",
                "privacy enabled needs targetEpsilon > 0", "targetEpsilon"),
        CelRule("!self.enabled || has(self.targetDelta)",
                "privacy enabled needs 0 < targetDelta < 1", "targetDelta"),
    )


class Augmentation(_Base):
    """Random label-preserving changes of the training images (De et al. 2022, "Unlocking high-accuracy
    differentially private image classification through scale")."""

    multiplicity: int = Field(
        default=1, ge=1, le=32, description="DP-SGD: K augmented copies of every sampled example; their gradients "
                                            "are averaged inside the example's one clipped gradient, so the "
                                            "privacy cost is unchanged (augmentation multiplicity).")
    shift: int = Field(default=2, ge=0, le=8, description="Random translation by up to this many pixels each way, "
                                                         "zero-filled.")
    flip: bool = Field(default=False, description="Random horizontal flips: for photos, never for digits or text.")


class Distributed(_Base):
    """torch.distributed data-parallel training (torchrun): ``nodes`` pods of ``processesPerNode`` ranks each,
    one model, one signature. DP-SGD stays one Poisson sample of the whole data set per step (each rank samples
    its shard at the global rate; the clipped sums are all-reduced, the noise added once), so ε is what one
    process would spend."""

    nodes: int = Field(default=1, ge=1, le=64,
                       description="Pods. More than one: an Indexed Job, rank 0's pod reached through a headless "
                                   "Service.")
    processes_per_node: int | None = Field(
        default=None, ge=1, le=64,
        description="Ranks per pod (torchrun --nproc-per-node). Absent: one per GPU the pod requests "
                    "(resources.gpus), else 1.")


class TrainingSection(_Base):
    """How the training Job runs."""

    image: str = Field(default="ghcr.io/hardened-model/trainer:0.1.0", pattern=IMAGE, max_length=512,
                       description="Trainer image.")
    epochs: int = Field(default=10, ge=1, le=1000)
    batch_size: int = Field(default=64, ge=1, le=65536)
    learning_rate: float = Field(default=0.05, gt=0.0, le=10.0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed for splits, initialisation and sampling.")
    resources: Resources = _obj(Resources)
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the Job's pod requires.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    active_deadline_seconds: int = Field(default=3600, ge=60, le=7 * 86400,
                                         description="Kill the training Job after this long.")
    backoff_limit: int = Field(default=1, ge=0, le=10, description="Retries of a failed training pod.")
    adversarial: Adversarial = _obj(Adversarial)
    privacy: Privacy = _obj(Privacy)
    augmentation: Augmentation | None = Field(default=None, description="Images: augment training batches.")
    weight_standardization: bool | None = Field(
        default=None, description="Train every convolution with its weight standardized per output channel (Qiao "
                                  "et al. 2019); the exported model holds the standardized weights in plain "
                                  "convolutions. With DP-SGD it needs the fast clipper.")
    ema_decay: float | None = Field(
        default=None, ge=0.9, lt=1.0,
        description="Evaluate and export an exponential moving average of the weights with this decay per step "
                    "(warmed up as min(decay, (1 + t) / (10 + t))); post-processing of DP-SGD: no privacy cost.")
    # absent, not "none", by default: see DataSection
    class_weights: Literal["none", "balanced", "manual"] | None = Field(
        default=None, description="Loss weight per class for imbalanced data: none (absent means none), balanced "
                                  "(n_samples / (n_classes * count), from the training split), or manual "
                                  "(classWeightValues).")
    class_weight_values: dict[str, Annotated[float, Field(gt=0.0, le=1e6)]] | None = Field(
        default=None, description="classWeights manual: weight per class index (\"0\", \"1\", ...); absent ones "
                                  "weigh 1.", json_schema_extra={"maxProperties": 1000})
    distributed: Distributed | None = Field(
        default=None, description="Data-parallel training over several processes and pods; absent: one process.")

    cel_rules = (
        CelRule("(has(self.classWeights) && self.classWeights == 'manual') == has(self.classWeightValues)",
                "classWeightValues goes with classWeights manual, and only with it", "classWeightValues"),
        CelRule("!has(self.augmentation) || self.augmentation.multiplicity == 1 || (self.privacy.enabled "
                "&& (!has(self.privacy.clipping) || self.privacy.clipping == 'fast'))",
                "augmentation.multiplicity > 1 averages an example's copies inside its clipped DP-SGD gradient: it "
                "needs privacy.enabled and the fast clipper (privacy.clipping fast or absent)",
                "augmentation.multiplicity"),
        CelRule("!has(self.weightStandardization) || !self.weightStandardization || !self.privacy.enabled "
                "|| !has(self.privacy.clipping) || self.privacy.clipping == 'fast'",
                "weightStandardization under DP-SGD needs the fast clipper (privacy.clipping fast or absent): "
                "Opacus' ghost and hooks modes have no per-sample gradient for it", "weightStandardization"),
        CelRule("!has(self.distributed) || self.distributed.nodes * (has(self.distributed.processesPerNode) ? "
                "self.distributed.processesPerNode : (self.resources.gpus > 0 ? self.resources.gpus : 1)) > 1",
                "a world of one process is no distributed run: give nodes > 1 or processesPerNode > 1 (or request "
                "GPUs), or leave distributed out", "distributed"),
        CelRule("!has(self.distributed) || !has(self.distributed.processesPerNode) || self.resources.gpus == 0 "
                "|| self.distributed.processesPerNode <= self.resources.gpus",
                "processesPerNode may not exceed resources.gpus: each rank drives one GPU",
                "distributed.processesPerNode"),
    )


# ---------------------------------------------------------------- evaluation
class EvaluationSection(_Base):
    """What the trainer measures after training; the gates read these figures."""

    attacks: list[Literal["fgsm", "pgd"]] = Field(
        default_factory=lambda: ["fgsm", "pgd"], max_length=2,
        description="Attacks (ART implementations) for robust accuracy; the gate uses the lowest.")
    eps: float = Field(default=0.1, gt=0.0, le=1.0,
                       description="L-infinity radius of the evaluation attacks (units as training.adversarial.eps).")
    pgd_iter: int = Field(default=10, ge=1, le=1000, description="Iterations of the evaluation PGD attack.")
    membership_inference: bool = Field(default=True,
                                       description="Run a loss-threshold membership-inference attack and report its AUC.")
    max_samples: int = Field(default=1000, ge=10, le=100000, description="Test examples attacked.")


class GatesSection(_Base):
    """A model that misses any gate is never rolled out."""

    min_clean_accuracy: Fraction = Field(default=0.0, description="Lowest accepted clean test accuracy.")
    min_robust_accuracy: Fraction | None = Field(default=None,
                                                 description="Lowest accepted accuracy under the evaluation attacks.")
    max_epsilon: float | None = Field(default=None, gt=0.0, le=100.0, description="Highest accepted epsilon spent.")
    max_membership_auc: Annotated[float, Field(ge=0.5, le=1.0)] | None = Field(
        default=None, alias="maxMembershipAUC", description="Highest accepted membership-inference AUC (0.5 = chance).")
    # For the positive class of tabular data (data.positiveClass): accuracy says little when 0.4% are positive.
    min_recall: Fraction | None = Field(default=None, description="Lowest accepted recall of the positive class.")
    min_precision: Fraction | None = Field(default=None, description="Lowest accepted precision, positive class.")
    min_pr_auc: Fraction | None = Field(default=None, alias="minPRAUC",
                                        description="Lowest accepted area under the precision-recall curve.")
    min_balanced_accuracy: Fraction | None = Field(default=None, description="Lowest accepted balanced accuracy.")
    min_robust_recall: Fraction | None = Field(
        default=None, description="Lowest accepted recall of the positive class under the evaluation attacks "
                                  "(mutable features only, within their bounds).")


# ----------------------------------------------------------------- artifacts
class ArtifactsSection(_Base):
    """Where signed model versions are stored."""

    store: str = Field(
        default="pvc://hardened-models",
        pattern=r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^\s]*)?|file:///[^\s]*)$",
        max_length=1024,
        description="s3://bucket/prefix, pvc://claim/path (a PersistentVolumeClaim), or file:///path (hardened-model up only).")
    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]$",
                               description="S3 region.")
    endpoint: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$", max_length=1024,
                                 description="S3 endpoint URL (S3-compatible stores).")
    kms_key_id: str | None = Field(default=None, min_length=1, max_length=2048,
                                   description="Encrypt uploads with SSE-KMS using this key id or ARN.")

    cel_rules = (
        CelRule("!has(self.kmsKeyId) || self.store.startsWith('s3://')",
                "kmsKeyId needs an s3:// store", "kmsKeyId"),
        CelRule("!has(self.region) || self.store.startsWith('s3://')",
                "region needs an s3:// store", "region"),
        CelRule("!has(self.endpoint) || self.store.startsWith('s3://')",
                "endpoint needs an s3:// store", "endpoint"),
    )


# ------------------------------------------------------------------- signing
class Keyless(_Base):
    """Sigstore keyless: the trainer signs with its workload OIDC identity; the verifier trusts identity + issuer."""

    identity: str = Field(min_length=1, max_length=1024,
                          description="Expected certificate identity (SAN), e.g. a service-account URI or e-mail.")
    oidc_issuer: str = Field(pattern=r"^https://[^\s]+$", max_length=1024, description="Expected OIDC issuer URL.")
    trust_config: ObjectKeyRef | None = Field(
        default=None, description="A private Sigstore instance: a ClientTrustConfig JSON (trusted root and signing "
                                  "config) the trainer signs with and the verifiers trust, instead of Sigstore's "
                                  "public-good instance (whose root ships with sigstore-python and is used offline).")


TRAINER_IMAGE_RULE = r"^(sha256:[0-9a-f]{64}|[a-z0-9]+([._/:-][a-zA-Z0-9_.-]+)*(@sha256:[0-9a-f]{64})?/?)$"


class ProvenancePolicy(_Base):
    """What the verifier requires of the signed provenance (model/provenance.json) besides the signature."""

    required: bool = Field(default=False, description="Refuse a model without provenance. Implied by "
                                                      "allowedTrainerImages and requireDataDigest.")
    allowed_trainer_images: list[Annotated[str, Field(pattern=TRAINER_IMAGE_RULE, max_length=512)]] | None = Field(
        default=None, min_length=1, max_length=64,
        description="Trainer images whose models are accepted: a digest (sha256:..., or repo@sha256:...: only "
                    "that image, which the provenance records when the trainer image is given by digest), a "
                    "repository (ghcr.io/org/trainer: any tag or digest of it) or a prefix ending in / "
                    "(ghcr.io/org/: any repository under it).")
    require_data_digest: bool = Field(
        default=False, description="The provenance must record the training data's sha256, and it must equal "
                                   "data.sha256 when that is pinned.")


class SigningSection(_Base):
    """How the trainer signs and what the verifier trusts."""

    mode: Literal["Enforce", "Warn"] = Field(
        default="Enforce", description="Enforce never serves an unverified model; Warn serves it with a Warning condition.")
    method: Literal["key", "keyless", "ephemeral"] = Field(
        default="key", description="key: an EC private key from a Secret; keyless: Sigstore; ephemeral: a P-256 key "
                                   "the trainer makes for this run and never writes down, whose public key the "
                                   "operator reads from the training pod's status (as the kubelet recorded it) and "
                                   "the verifiers alone trust (issue 27).")
    private_key_secret: SecretKeyRef | None = Field(
        default=None, description="Secret holding the PEM private key (method key). Omitted with publicKeySecret: "
                                  "a key pair is generated for this model.")
    public_key_secret: SecretKeyRef | None = Field(default=None, description="Secret holding the PEM public key the verifier trusts.")
    keyless: Keyless | None = None
    provenance: ProvenancePolicy | None = Field(
        default=None, description="Provenance policy the verification Job and the serving pods enforce.")

    cel_rules = (
        CelRule("has(self.privateKeySecret) == has(self.publicKeySecret)",
                "privateKeySecret and publicKeySecret are set together", "publicKeySecret"),
        CelRule("self.method != 'keyless' || has(self.keyless)",
                "method keyless needs keyless.identity and keyless.oidcIssuer", "keyless"),
        CelRule("self.method == 'keyless' || !has(self.keyless)",
                "keyless is only used with method keyless", "keyless"),
        CelRule("self.method != 'keyless' || !has(self.privateKeySecret)",
                "method keyless signs without a private key; remove privateKeySecret", "privateKeySecret"),
        CelRule("self.method != 'ephemeral' || !has(self.privateKeySecret)",
                "method ephemeral signs with a key made in the training pod; remove privateKeySecret and "
                "publicKeySecret", "privateKeySecret"),
    )


# ------------------------------------------------------------------- serving
class Validation(_Base):
    """Input checks of the validation sidecar."""

    max_batch_size: int = Field(default=32, ge=1, le=4096, description="Examples per request.")
    max_body_bytes: int = Field(default=1048576, ge=1024, le=64 * 1048576,
                                description="Request bodies above this get 413 before they are read in full.")
    min_value: float = Field(default=0.0, ge=-1e6, le=1e6, description="Images: lowest accepted input value.")
    max_value: float = Field(default=1.0, ge=-1e6, le=1e6, description="Images: highest accepted input value.")
    range_tolerance: float = Field(
        default=0.1, ge=0.0, le=10.0,
        description="Tabular: a number may lie this fraction of its feature's range beyond it (the spec's min/max, "
                    "else the training data's); further out is a 400 naming the feature.")
    ood_threshold: float | None = Field(
        default=None, gt=0.0, description="Reject inputs whose out-of-distribution score exceeds this.")

    cel_rules = (
        CelRule("self.minValue < self.maxValue", "minValue must be < maxValue", "minValue"),
    )


class Bucket(_Base):
    """A token bucket."""

    requests_per_second: float = Field(gt=0.0, le=1e6)
    burst: float = Field(ge=1.0, le=1e7, description="Bucket size; at least requestsPerSecond.")

    cel_rules = (
        CelRule("self.burst >= self.requestsPerSecond", "burst must be >= requestsPerSecond", "burst"),
    )


def _default_per_key() -> Bucket:
    return Bucket(requests_per_second=10.0, burst=20.0)


def _default_failed_auth() -> Bucket:
    return Bucket(requests_per_second=0.1, burst=10.0)


class Quota(_Base):
    """At most `requests` per `period`, a fixed window from the client's first request in it."""

    requests: int = Field(ge=1, le=10**12)
    period: Literal["day", "month"] = Field(description="day: 24 hours; month: 30 days.")


class Plan(_Base):
    """A usage plan (token bucket per client, optional quota), named by keys and by auth.jwt.planClaim."""

    name: str = Field(pattern=DNS_LABEL, max_length=63)
    requests_per_second: float = Field(gt=0.0, le=1e6)
    burst: float = Field(ge=1.0, le=1e7, description="Bucket size; at least requestsPerSecond.")
    quota: Quota | None = None

    cel_rules = Bucket.cel_rules


def _cidr(value: str) -> str:
    import ipaddress

    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError("must be an IP address or CIDR block such as 10.0.0.0/8") from None
    return value


class RateLimit(_Base):
    """Token buckets and quotas of the rate-limit sidecar (limits library)."""

    per_key: Bucket = Field(default_factory=_default_per_key,
                            description="Limit of each client (API key or JWT subject) that names no plan.")
    global_: Bucket | None = Field(default=None, alias="global", description="Limit over all clients together.")
    plans: list[Plan] | None = Field(
        default=None, max_length=64, description="Named plans (rate, burst, quota) that keys and tokens refer to.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    failed_auth: Bucket = Field(
        default_factory=_default_failed_auth,
        description="Failed authentications allowed per source address (IPv6: per /64); past it the address "
                    "gets 429 before any credential is compared. Shared through storage like the other buckets.")
    trusted_proxies: list[Annotated[str, AfterValidator(_cidr), Field(max_length=49)]] | None = Field(
        default=None, max_length=32,
        description="Proxies (addresses or CIDR blocks) whose X-Forwarded-For is believed: the client is then the "
                    "last address in it that is not a trusted proxy. Omitted: the connection's address, always.")
    storage: str = Field(default="memory://", pattern=r"^(memory://|redis://[^\s]+|rediss://[^\s]+)$",
                         description="memory:// (per replica) or redis://host:port (shared across replicas).")
    fail_mode: Literal["closed", "open"] = Field(
        default="closed", description="When redis is down or slow: closed answers 503 with Retry-After; open "
                                      "admits under this replica's own in-memory limits.")


class Output(_Base):
    """Output hardening against extraction and membership inference."""

    mode: Literal["probabilities", "rounded", "label"] = Field(
        default="rounded", description="probabilities: full vector; rounded: rounded to `decimals`; label: top label only.")
    decimals: int = Field(default=2, ge=0, le=6)
    min_confidence: Fraction = Field(default=0.0, description="Outputs below this top-class probability are acted on.")
    low_confidence_action: Literal["flag", "abstain"] = "flag"


class Tls(_Base):
    """TLS on the public port, terminated by the rate-limit sidecar (TLS 1.2+, forward-secret AEAD ciphers)."""

    secret_name: str = Field(pattern=DNS_LABEL, max_length=253,
                             description="A kubernetes.io/tls Secret (tls.crt, tls.key), e.g. cert-manager's; a "
                                         "renewed certificate is served without a restart.")
    client_ca_secret: str | None = Field(
        default=None, alias="clientCASecret", pattern=DNS_LABEL, max_length=253,
        description="Secret with ca.crt: clients must present a certificate it signed (mutual TLS).")


JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
                  "HS256", "HS384", "HS512")
CLAIM = r"^[A-Za-z0-9_.:/-]+$"


class Jwt(_Base):
    """Bearer JWTs verified against a JWKS (PyJWT)."""

    jwks: ObjectKeyRef = Field(description="The JWKS document (JSON with \"keys\"); re-read when it changes.")
    issuer: str = Field(min_length=1, max_length=512, description="Required iss claim.")
    audience: str = Field(min_length=1, max_length=512, description="Required aud claim (one of them).")
    algorithms: list[Literal[JWT_ALGORITHMS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["RS256", "ES256"], min_length=1, max_length=13,
        description="Accepted algorithms; none is never accepted, HS* only when listed.")
    leeway_seconds: int = Field(default=30, ge=0, le=300, description="Clock skew allowed on exp and nbf.")
    client_id_claim: str = Field(default="sub", pattern=CLAIM, max_length=128,
                                 description="Claim that identifies the client in limits and metrics.")
    plan_claim: str | None = Field(default=None, pattern=CLAIM, max_length=128,
                                   description="Claim naming the client's rateLimit plan; omitted: perKey.")


class Auth(_Base):
    """How clients authenticate: API keys, JWT bearer tokens, or both."""

    api_keys: bool = Field(default=True, description="Accept the keys of apiKeysSecret.")
    jwt: Jwt | None = None

    cel_rules = (
        CelRule("self.apiKeys || has(self.jwt)", "enable apiKeys or configure jwt", "apiKeys"),
    )


class ServingSection(_Base):
    """The serving Deployment: model server behind validation and rate-limit sidecars."""

    replicas: int = Field(default=2, ge=1, le=100)
    image: str = Field(default="ghcr.io/hardened-model/server:0.1.0", pattern=IMAGE, max_length=512)
    resources: Resources = Field(
        default_factory=lambda: Resources(cpu="500m", memory="1Gi"),
        description="Of the model server container (each sidecar adds 100m CPU, 128Mi). With one replica a "
                    "rollout starts the new pod before it stops the old one (room for two pods); with more, one "
                    "old pod may stop first, so a rollout never waits for room.")
    validation: Validation = _obj(Validation)
    rate_limit: RateLimit = _obj(RateLimit)
    auth: Auth = _obj(Auth)
    api_keys_secret: SecretKeyRef | None = Field(
        default=None, description="Secret with one API key per line (optionally `KEY plan=NAME client=ID`); "
                                  "omitted: a Secret with one random key is generated.")
    tls: Tls | None = None
    output: Output = _obj(Output)
    version: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{12}$",
        description="Serve this earlier version (status.history) instead of the spec's own: a rollback without "
                    "retraining (`hardened-model rollback NAME`). Its signed metrics are judged against the gates "
                    "again and its artifact verified again before it serves; the spec's own version neither trains "
                    "nor rolls out meanwhile. Absent, or the spec's own version: the spec's version serves.")
    on_gate_regression: Literal["Warn", "Rollback"] = Field(
        default="Warn",
        description="When the version serving fails spec.gates as they are now (a gate tightened after it was "
                    "verified): Warn keeps it serving, Ready False naming the gate; Rollback serves the newest "
                    "earlier version in status.history that passes them (re-verified as a serving.version pin "
                    "is), until the gates pass again.")

    cel_rules = (
        CelRule("self.auth.apiKeys || !has(self.apiKeysSecret)", "apiKeysSecret needs auth.apiKeys", "apiKeysSecret"),
    )


# ---------------------------------------------------------------- monitoring
class Alerts(_Base):
    """Alert thresholds of the PrometheusRule."""

    rate_limited_ratio: Fraction = Field(default=0.2, description="Share of requests rejected with 429.")
    validation_rejected_ratio: Fraction = Field(default=0.1, description="Share of requests rejected by validation.")
    low_confidence_ratio: Fraction = Field(default=0.2, description="Share of low-confidence outputs (evasion probing).")
    client_dominance_ratio: Fraction = Field(default=0.5, description="Share of traffic from one API key (extraction).")
    p99_latency_seconds: float = Field(default=0.5, gt=0.0, le=60.0)
    failed_auth_per_second: float = Field(
        default=0.5, gt=0.0, le=1e6, description="Failed authentications per second (all callers) that suggest key "
                                                 "or token guessing.")


class MonitoringSection(_Base):
    """Prometheus Operator objects, created when their CRDs exist."""

    service_monitor: bool = True
    prometheus_rule: bool = True
    labels: dict[str, str] = Field(default_factory=dict,
                                   description="Labels Prometheus selects on, e.g. release: kube-prometheus-stack.")
    alerts: Alerts = _obj(Alerts)


class AwsSection(_Base):
    """EKS: the IRSA service account that may read and write the artifact store."""

    service_account_name: str | None = Field(default=None, pattern=DNS_LABEL, max_length=253,
                                             description="ServiceAccount annotated with the IRSA role.")
    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]$")


# ---------------------------------------------------------------------- spec
class HardenedModelSpec(_Base):
    """Desired state of a HardenedModel."""

    model: ModelSection
    data: DataSection
    training: TrainingSection = _obj(TrainingSection)
    evaluation: EvaluationSection = _obj(EvaluationSection)
    gates: GatesSection = _obj(GatesSection)
    artifacts: ArtifactsSection = _obj(ArtifactsSection)
    signing: SigningSection = _obj(SigningSection)
    serving: ServingSection = _obj(ServingSection)
    monitoring: MonitoringSection = _obj(MonitoringSection)
    aws: AwsSection = _obj(AwsSection)

    cel_rules = (
        CelRule("!has(self.gates.maxEpsilon) || self.training.privacy.enabled",
                "gates.maxEpsilon needs training.privacy.enabled (without DP-SGD epsilon is unbounded)",
                "gates.maxEpsilon"),
        CelRule("!has(self.gates.maxEpsilon) || !self.training.privacy.enabled "
                "|| !has(self.training.privacy.targetEpsilon) "
                "|| self.training.privacy.targetEpsilon <= self.gates.maxEpsilon",
                "training.privacy.targetEpsilon must be <= gates.maxEpsilon, or the gate always fails",
                "training.privacy.targetEpsilon"),
        CelRule("!has(self.gates.minRobustAccuracy) || size(self.evaluation.attacks) > 0",
                "gates.minRobustAccuracy needs at least one evaluation attack", "gates.minRobustAccuracy"),
        CelRule("!has(self.gates.maxMembershipAUC) || self.evaluation.membershipInference",
                "gates.maxMembershipAUC needs evaluation.membershipInference", "gates.maxMembershipAUC"),
        CelRule("self.data.source != 'builtin:digits' || self.model.inputShape == [1, 8, 8]",
                "data builtin:digits has inputShape [1, 8, 8]", "model.inputShape"),
        CelRule("self.data.source != 'builtin:digits' || self.model.numClasses == 10",
                "data builtin:digits has 10 classes", "model.numClasses"),
        *[CelRule(f"!has(self.gates.{gate}) || (has(self.data.format) && self.data.format == 'tabular')",
                  f"gates.{gate} is about data.positiveClass: it needs data.format tabular", f"gates.{gate}")
          for gate in ("minRecall", "minPrecision", "minPRAUC", "minBalancedAccuracy", "minRobustRecall")],
        CelRule("!has(self.gates.minRobustRecall) || size(self.evaluation.attacks) > 0",
                "gates.minRobustRecall needs at least one evaluation attack", "gates.minRobustRecall"),
        CelRule("(has(self.data.format) && self.data.format == 'tabular') == (self.model.architecture == "
                "'tabular-mlp')", "data.format tabular and architecture tabular-mlp go together",
                "model.architecture"),
        CelRule("!has(self.data.features) || self.model.inputShape == [size(self.data.features)]",
                "tabular: model.inputShape is [number of data.features]", "model.inputShape"),
        CelRule("!has(self.training.augmentation) || !has(self.data.format) || self.data.format != 'tabular'",
                "training.augmentation shifts and flips images: not for tabular data", "training.augmentation"),
        CelRule("!has(self.data.format) || self.data.format != 'tabular' || self.model.numClasses == 2",
                "tabular models are binary: numClasses 2 (class 1 is data.positiveClass)", "model.numClasses"),
        CelRule("!has(self.artifacts.kmsKeyId) || !self.artifacts.store.startsWith('s3://') "
                "|| has(self.artifacts.region) || has(self.aws.region)",
                "an S3 store with kmsKeyId needs artifacts.region or aws.region", "artifacts.region"),
    )


class ObjectMeta(BaseModel):
    """The parts of metadata the operator reads; the rest passes through untouched."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(pattern=DNS_LABEL, max_length=MAX_NAME_LENGTH)
    namespace: str = Field(default="default", pattern=DNS_LABEL, max_length=63)
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    api_version: Literal[f"{API_GROUP}/{API_VERSION}"] = Field(alias="apiVersion")  # type: ignore[valid-type]
    kind: Literal["HardenedModel"]
    metadata: ObjectMeta


class HardenedModel(_Envelope):
    """A whole HardenedModel manifest (what ``kubectl apply`` and ``hardened-model up`` read)."""

    spec: HardenedModelSpec


def to_wire(section: BaseModel) -> dict:
    """A spec or any of its sections as the apiserver stores it: camelCase keys, unset optionals absent."""
    return section.model_dump(mode="json", by_alias=True, exclude_none=True)


def spec_digest(spec: HardenedModelSpec, *sections: str) -> str:
    """sha256 over the canonical JSON of the named sections (all when none): decides retraining."""
    import hashlib
    import json

    wire = to_wire(spec)
    picked = {k: wire[k] for k in sections} if sections else wire
    return hashlib.sha256(json.dumps(picked, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
