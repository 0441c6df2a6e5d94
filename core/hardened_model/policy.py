"""HardenedModelPolicy: what a platform team requires of every HardenedModel in the namespaces it selects
(issue 27). Cluster-scoped and written by cluster admins, so a tenant who may create HardenedModels in its own
namespace cannot loosen it; several policies selecting one namespace all apply, so the strictest wins.

One definition serves three readers with the same messages: the chart's ValidatingAdmissionPolicy (refused at
``kubectl apply``), the operator at every reconcile pass (a policy tightened after admission stops a model's
next version; the version already serving keeps serving) and ``hardened-model validate --policy`` (offline).
Modelled on sigstore policy-controller's ClusterImagePolicy (admins write it, namespaces are selected by
label, tenants cannot opt out) and Kubernetes' LabelSelector.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Mapping

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from .provenance import image_allowed
from .spec import HardenedModel, SpecError, go_value, prune_nulls, read_yaml_file, to_wire
from .spec.cel import CelRule, walk_cel
from .spec.errors import problems_of
from .spec.sections import API_GROUP, API_VERSION, DNS_LABEL, TRAINER_IMAGE_RULE, Fraction, _Base, _obj

POLICY_KIND = "HardenedModelPolicy"
POLICY_PLURAL = "hardenedmodelpolicies"
POLICY_SINGULAR = "hardenedmodelpolicy"
POLICY_SHORT_NAMES = ["hmp"]

# metav1 label keys and values (k8s.io/apimachinery validation.IsQualifiedName, IsValidLabelValue)
LABEL_KEY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ImageRule = Annotated[str, Field(pattern=TRAINER_IMAGE_RULE, max_length=512)]
LabelValue = Annotated[str, Field(pattern=LABEL_VALUE, max_length=63)]


class LabelSelectorRequirement(_Base):
    """As metav1.LabelSelectorRequirement."""

    key: str = Field(pattern=LABEL_KEY, max_length=316, description="The namespace label the requirement reads.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="In / NotIn: the label's value is (not) one of values (NotIn also holds when the label is "
                    "absent); Exists / DoesNotExist: the label is present / absent.")
    values: list[LabelValue] | None = Field(default=None, max_length=64,
                                            description="Non-empty for In and NotIn, absent otherwise.")

    # metav1's own validation (ValidateLabelSelectorRequirement), which a CRD schema does not get for free
    cel_rules = (
        CelRule("!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0)",
                "values must be non-empty when operator is In or NotIn", "values"),
        CelRule("!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) || size(self.values) == 0",
                "values may not be given when operator is Exists or DoesNotExist", "values"),
    )


class LabelSelector(_Base):
    """As metav1.LabelSelector: every matchLabels pair and every matchExpressions requirement must hold; an
    empty selector selects every namespace."""

    match_labels: dict[str, LabelValue] | None = Field(
        default=None, max_length=64, description="Labels the namespace must carry with exactly these values.")
    match_expressions: list[LabelSelectorRequirement] | None = Field(default=None, max_length=32)


class GateBounds(_Base):
    """Bounds on spec.gates. Each one set is a bound the model's own gate must be at least as strict as: a
    floor for the ``min*`` gates (the model's gate must be set, and at or above it), a ceiling for the
    ``max*`` gates (set, and at or below it). The fields, their names and ranges are spec.gates' own."""

    min_clean_accuracy: Fraction | None = Field(default=None, description="Floor on gates.minCleanAccuracy.")
    min_robust_accuracy: Fraction | None = Field(default=None, description="Floor on gates.minRobustAccuracy.")
    max_epsilon: float | None = Field(default=None, gt=0.0, le=100.0, description="Ceiling on gates.maxEpsilon.")
    max_membership_auc: Annotated[float, Field(ge=0.5, le=1.0)] | None = Field(
        default=None, alias="maxMembershipAUC", description="Ceiling on gates.maxMembershipAUC.")
    min_recall: Fraction | None = Field(default=None, description="Floor on gates.minRecall.")
    min_precision: Fraction | None = Field(default=None, description="Floor on gates.minPrecision.")
    min_pr_auc: Fraction | None = Field(default=None, alias="minPRAUC", description="Floor on gates.minPRAUC.")
    min_balanced_accuracy: Fraction | None = Field(default=None, description="Floor on gates.minBalancedAccuracy.")
    min_robust_recall: Fraction | None = Field(default=None, description="Floor on gates.minRobustRecall.")


class SigningRules(_Base):
    """What the policy requires of spec.signing and spec.data."""

    require_enforce: bool = Field(default=False, description="signing.mode must be Enforce (Warn is refused).")
    require_provenance: bool = Field(
        default=False, description="signing.provenance.required must be true (allowedTrainerImages or "
                                   "requireDataDigest imply it, as for the verifier).")
    require_data_digest: bool = Field(default=False, description="data.sha256 must pin the training data.")


# A tag pins nothing: image_allowed matches a repository entry on any tag, so ghcr.io/acme/trainer:1.0 would
# admit ghcr.io/acme/trainer:evil; an admin who writes a tag means a pin, and is told how to write one.
_UNTAGGED = "self.%s.all(i, i.startsWith('sha256:') || i.contains('@') || !i.matches(':[^/]*$'))"
_TAG_HELP = ("an entry may not carry a tag (a tag can be moved, and an entry matches its repository on any tag): "
             "give a repository, repo@sha256:..., a digest or a prefix ending in /")


class ImageRules(_Base):
    """Allowed images, in signing.provenance.allowedTrainerImages' forms: a digest, repo@sha256:..., a
    repository (any tag or digest of it) or a prefix ending in /. Absent: any image."""

    trainer: list[ImageRule] | None = Field(default=None, min_length=1, max_length=64,
                                            description="Allowed training.image values.")
    server: list[ImageRule] | None = Field(default=None, min_length=1, max_length=64,
                                           description="Allowed serving.image values.")

    cel_rules = (CelRule(f"!has(self.trainer) || {_UNTAGGED % 'trainer'}", _TAG_HELP, "trainer"),
                 CelRule(f"!has(self.server) || {_UNTAGGED % 'server'}", _TAG_HELP, "server"))


def _ec_public_key(pem: str) -> str:
    """A trust.publicKeys entry must be a public key the verifiers can use (model_signing's elliptic-curve
    verifier); the CRD's pattern checks the PEM armour, this the key inside (its own error type, so the
    message says what is wrong with the key rather than quoting the pattern it matched)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from pydantic_core import PydanticCustomError

    try:
        key = load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise PydanticCustomError("public_key", "not a PEM public key: {why}", {"why": str(exc)}) from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise PydanticCustomError("public_key", "{kind}: the verifiers take elliptic-curve keys (P-256/384/521)",
                                  {"kind": type(key).__name__.lstrip("_")})
    return pem


PEM_PUBLIC_KEY = r"^\s*-----BEGIN PUBLIC KEY-----[A-Za-z0-9+/=\s]+-----END PUBLIC KEY-----\s*$"
PublicKeyPem = Annotated[str, Field(pattern=PEM_PUBLIC_KEY, max_length=4096), AfterValidator(_ec_public_key)]


class KeylessIdentity(_Base):
    """A Sigstore certificate identity the platform trusts, with its issuer (spec.signing.keyless' fields)."""

    identity: str = Field(min_length=1, max_length=1024, description="Certificate identity (SAN).")
    oidc_issuer: str = Field(pattern=r"^https://[^\s]+$", max_length=1024, description="OIDC issuer URL.")


class TrustRules(_Base):
    """The trust roots of the verifiers in the selected namespaces, held here, in a cluster-scoped object the
    tenant cannot write, instead of in the model's namespace (issue 27). With publicKeys the verify Job, the
    serving pods' init container and the model server verify with these keys, never with
    spec.signing.publicKeySecret, so a tenant who swaps the public key Secret together with the artifact
    gets its model refused; with keyless the model's identity and issuer must be one of these; with
    ephemeralKeys the verifiers trust the per-run key of each training run (signing.method ephemeral), read by
    the operator from the training pod's status. Each one set is a signing.method the policy trusts (publicKeys:
    key, keyless: keyless, ephemeralKeys: ephemeral), and a model signing with any other is refused. None set:
    the model's own signing section decides, as without a policy."""

    public_keys: list[PublicKeyPem] | None = Field(
        default=None, min_length=1, max_length=8,
        description="PEM public keys (EC P-256/384/521) a signing.method key model must be signed with, any of "
                    "them (two during a rotation). With several policies, only keys all of them list are trusted.")
    keyless: list[KeylessIdentity] | None = Field(
        default=None, min_length=1, max_length=16,
        description="Identities a signing.method keyless model may sign with, verified against Sigstore's "
                    "public-good root (a trust config from the model's namespace is refused).")
    ephemeral_keys: bool = Field(
        default=False,
        description="A signing.method ephemeral model is trusted: the verifiers trust the per-run key of each "
                    "training run, read by the operator from the training pod's status, so no long-lived signing "
                    "key exists in the tenant's namespace or is mounted into a container the tenant chose.")
    require_countersignature: bool = Field(
        default=False, description="The operator must countersign every version with the platform key (chart value "
                                   "platformSigning.secretName); without it no model in these namespaces trains.")


class HardenedModelPolicySpec(_Base):
    """What every HardenedModel in the selected namespaces must meet; each rule left out asks nothing."""

    namespace_selector: LabelSelector | None = Field(
        default=None, description="The namespaces whose HardenedModels this policy governs (by their labels); "
                                  "absent or {}: every namespace.")
    gates: GateBounds = _obj(GateBounds)
    signing: SigningRules = _obj(SigningRules)
    images: ImageRules = _obj(ImageRules)
    service_accounts: list[Annotated[str, Field(pattern=DNS_LABEL, max_length=253)]] | None = Field(
        default=None, max_length=64,
        description="Allowed aws.serviceAccountName values (each carries an IRSA role); absent: any; empty: "
                    "none, so no model may name a ServiceAccount. A model naming none is always allowed.")
    trust: TrustRules = _obj(TrustRules)


class PolicyMeta(BaseModel):
    """A cluster-scoped object's metadata: a name (a DNS subdomain, as the apiserver requires), no namespace."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)


class _PolicyEnvelope(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    api_version: Literal[f"{API_GROUP}/{API_VERSION}"] = Field(alias="apiVersion")  # type: ignore[valid-type]
    kind: Literal["HardenedModelPolicy"]
    metadata: PolicyMeta


class HardenedModelPolicy(_PolicyEnvelope):
    """A whole HardenedModelPolicy manifest. ``spec`` is required, as in the CRD; ``spec: {}`` is a valid
    policy that asks nothing."""

    spec: HardenedModelPolicySpec


# ------------------------------------------------------------------ the check
def selects(policy: HardenedModelPolicy, namespace_labels: Mapping[str, str]) -> bool:
    """Does the policy govern a namespace with these labels? As labels.Selector of metav1.LabelSelector:
    every matchLabels pair and every requirement holds; NotIn and DoesNotExist hold for an absent key. An
    absent selector and an empty one ({}) both select every namespace (metav1 selects everything with {})."""
    sel = policy.spec.namespace_selector
    if sel is None:
        return True
    labels = dict(namespace_labels or {})
    for key, value in (sel.match_labels or {}).items():
        if labels.get(key) != value:
            return False
    for req in sel.match_expressions or []:
        present, values = req.key in labels, req.values or []
        ok = {"In": present and labels.get(req.key) in values,
              "NotIn": not present or labels.get(req.key) not in values,
              "Exists": present,
              "DoesNotExist": not present}[req.operator]
        if not ok:
            return False
    return True


@dataclass(frozen=True)
class Violation:
    """One rule of one policy that a HardenedModel breaks; ``str()`` is the line every reader prints (the
    admission policy, the operator's status and `hardened-model validate --policy`)."""

    policy: str
    field: str     # the spec path as in the CRD: spec.gates.maxEpsilon
    message: str   # what is wrong, in the shared phrasing

    def __str__(self) -> str:
        return f"{POLICY_KIND} {self.policy}: {self.field}: {self.message}"


def _value(value: Any) -> str:
    """A value as the apiserver prints it (go_value); a list as Go's json.Marshal writes it, no spaces."""
    if isinstance(value, list):
        return json.dumps(value, separators=(",", ":"))
    return go_value(value)


def _provenance_required(model: HardenedModel) -> bool:
    """As the verifier reads it (provenance.check_policy): allowedTrainerImages and requireDataDigest imply
    required, so a spec that sets them already requires provenance."""
    prov = model.spec.signing.provenance
    return prov is not None and (prov.required or bool(prov.allowed_trainer_images) or prov.require_data_digest)


def _check(model: HardenedModel, policy: HardenedModelPolicy) -> list[tuple[str, str]]:
    rules, spec, out = policy.spec, model.spec, []
    for name, info in GateBounds.model_fields.items():
        bound = getattr(rules.gates, name)
        if bound is None:
            continue
        field = f"spec.gates.{info.alias or name}"
        value = getattr(spec.gates, name)
        if name.startswith("min"):
            if value is None:
                out.append((field, f"not set; the policy requires at least {_value(bound)}"))
            elif value < bound:
                out.append((field, f"{_value(value)} is below the policy's floor {_value(bound)}"))
        else:
            if value is None:
                out.append((field, f"not set; the policy requires at most {_value(bound)}"))
            elif value > bound:
                out.append((field, f"{_value(value)} is above the policy's ceiling {_value(bound)}"))
    if rules.signing.require_enforce and spec.signing.mode != "Enforce":
        out.append(("spec.signing.mode", f'{_value(spec.signing.mode)}; the policy requires "Enforce"'))
    if rules.signing.require_provenance and not _provenance_required(model):
        out.append(("spec.signing.provenance.required", "false; the policy requires true"))
    if rules.signing.require_data_digest and not spec.data.sha256:
        out.append(("spec.data.sha256", "not set; the policy requires the training data pinned"))
    if rules.images.trainer is not None and not image_allowed(spec.training.image, rules.images.trainer):
        out.append(("spec.training.image", f"{_value(spec.training.image)} matches none of the policy's trainer "
                                           f"images {_value(list(rules.images.trainer))}"))
    if rules.images.server is not None and not image_allowed(spec.serving.image, rules.images.server):
        out.append(("spec.serving.image", f"{_value(spec.serving.image)} matches none of the policy's server "
                                          f"images {_value(list(rules.images.server))}"))
    account, allowed = spec.aws.service_account_name, rules.service_accounts
    if account is not None and allowed is not None and account not in allowed:
        out.append(("spec.aws.serviceAccountName",
                    f"{_value(account)} is not among the policy's service accounts {_value(list(allowed))}"
                    if allowed else f"{_value(account)}; the policy allows none"))
    return out + _check_trust(spec.signing, rules.trust)


# The trust roots in field order: the signing.method each trusts, its field, and how a refusal names it.
_TRUST_ROOTS = (("key", "public_keys", "its public keys", "trust.publicKeys"),
                ("keyless", "keyless", "keyless identities", "trust.keyless"),
                ("ephemeral", "ephemeral_keys", "per-run keys", "trust.ephemeralKeys"))


def _trust_roots(trust: TrustRules) -> list[tuple[str, str, str]]:
    """(method, words, field) of each trust root the policy sets, in field order."""
    return [(method, words, field) for method, attr, words, field in _TRUST_ROOTS
            if getattr(trust, attr) is not None and getattr(trust, attr) is not False]


def _check_trust(signing, trust: TrustRules) -> list[tuple[str, str]]:
    """spec.signing against the policy's trust roots (trust.publicKeys, trust.keyless, trust.ephemeralKeys);
    one line at most, the first that fails (a method the policy does not trust makes the rest meaningless)."""
    roots = _trust_roots(trust)
    if not roots:
        return []
    if signing.method not in [method for method, _, _ in roots]:
        if len(roots) == 1:
            (_, words, field), = roots
            trusted = f"{words} only ({field})"
        else:
            trusted = " or ".join(f"{words} ({field})" for _, words, field in roots) + " only"
        return [("spec.signing.method", f"{_value(signing.method)}; the policy trusts {trusted}")]
    if signing.method == "key":
        if signing.private_key_secret is None:
            return [("spec.signing.privateKeySecret", "not set; a key pair made for the model would not verify "
                                                      "with the policy's trust.publicKeys: name the Secret with the "
                                                      "platform's signing key")]
        return []
    if signing.method == "ephemeral":  # the key the operator read from this run's training pod, and no other
        return []
    k = signing.keyless
    if not any(e.identity == k.identity and e.oidc_issuer == k.oidc_issuer for e in trust.keyless):
        return [("spec.signing.keyless", f"identity {_value(k.identity)} with issuer {_value(k.oidc_issuer)} is "
                                         "none of the policy's trust.keyless identities")]
    if k.trust_config is not None:
        return [("spec.signing.keyless.trustConfig", "set; under the policy's trust.keyless the verifiers trust "
                                                     "Sigstore's public-good root, not one from the model's namespace")]
    return []


def _der(pem: str) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_public_key(pem.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def trusted_public_keys(policies: list[HardenedModelPolicy],
                        namespace_labels: Mapping[str, str]) -> tuple[str, ...] | None:
    """The public keys every policy selecting the namespace trusts (trust.publicKeys; several policies: the
    keys all of them list), as canonical PEMs sorted by their DER; None when no selecting policy lists keys
    (the model's own publicKeySecret is trusted, as without a policy); () when the lists share no key. They
    concern signing.method key only: a keyless model verifies against its identity, an ephemeral one against
    the key of its own training run, whatever keys the policies list."""
    lists = [p.spec.trust.public_keys for p in policies if selects(p, namespace_labels) and p.spec.trust.public_keys]
    if not lists:
        return None
    from cryptography.hazmat.primitives import serialization

    common = set.intersection(*({_der(pem) for pem in keys} for keys in lists))
    return tuple(serialization.load_der_public_key(der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        for der in sorted(common))


def _cross_policy(model: HardenedModel, policies: list[HardenedModelPolicy],
                  namespace_labels: Mapping[str, str]) -> list[Violation]:
    """What only all the policies together refuse (an admission evaluates one policy at a time): a key model
    where the policies' trust.publicKeys share no key. Any other trust root is judged by each policy alone."""
    if model.spec.signing.method != "key" or trusted_public_keys(policies, namespace_labels) != ():
        return []
    # each policy named "HardenedModelPolicy NAME", as in every line (status.governing_policies reads them back)
    names = f", {POLICY_KIND} ".join(sorted(p.metadata.name for p in policies
                                            if selects(p, namespace_labels) and p.spec.trust.public_keys))
    return [Violation(names, "spec.signing", "the policies' trust.publicKeys share no key, so no model signed with a "
                                             "key can verify in this namespace")]


def violations(model: HardenedModel, policies: list[HardenedModelPolicy],
               namespace_labels: Mapping[str, str]) -> list[Violation]:
    """Every violation of every policy that selects the model's namespace, by policy name, then in field order
    (gates, signing.mode, provenance, data digest, training image, serving image, service account, trust), and
    last what only the policies together refuse (trust.publicKeys sharing no key). Each
    policy applies on its own, so with several the strictest bound is the one that refuses."""
    out = []
    for policy in sorted(policies, key=lambda p: p.metadata.name):
        if selects(policy, namespace_labels):
            out += [Violation(policy.metadata.name, f, m) for f, m in _check(model, policy)]
    return out + _cross_policy(model, policies, namespace_labels)


def countersignature_refusals(policies: list[HardenedModelPolicy], namespace_labels: Mapping[str, str], *,
                              countersigning: bool) -> list[Violation]:
    """trust.requireCountersignature of each selecting policy, when the operator has no platform key. Only the
    operator knows whether it has one, so neither the admission policy nor `validate --policy` says this."""
    if countersigning:
        return []
    return [Violation(p.metadata.name, "trust.requireCountersignature",
                      "the operator has no platform signing key (chart value platformSigning.secretName), so "
                      "no version could be countersigned")
            for p in sorted(policies, key=lambda p: p.metadata.name)
            if selects(p, namespace_labels) and p.spec.trust.require_countersignature]


# ----------------------------------------------------------------- reading
def parse_policy(data: Any) -> HardenedModelPolicy:
    """Parse one HardenedModelPolicy manifest as the apiserver admits it (null pruning, defaults, OpenAPI
    validation, CEL), phrased as parse_manifest phrases a HardenedModel's errors; SpecError names every bad
    field. The operator parses the objects it lists with it, the CLI the files it reads."""
    if not isinstance(data, Mapping):
        raise SpecError([("manifest", f"Invalid value: {type(data).__name__}: must be an object")])
    data = prune_nulls(data)
    problems: list[tuple[str, str]] = []
    try:
        _PolicyEnvelope.model_validate({k: v for k, v in data.items() if k != "spec"})
    except ValidationError as err:
        problems += [(p.lstrip("."), m) for p, m in problems_of(err, "", policy_schema())]
    if "spec" not in data:
        problems.append(("spec", "Required value"))
    elif not isinstance(data["spec"], Mapping):
        problems.append(("spec", f"Invalid value: {type(data['spec']).__name__}: must be an object"))
    else:
        try:
            spec = HardenedModelPolicySpec.model_validate(data["spec"])
        except ValidationError as err:
            problems += problems_of(err, "spec", policy_schema())
        else:
            problems += walk_cel(HardenedModelPolicySpec, to_wire(spec), "spec")
    if problems:
        raise SpecError(problems)
    return HardenedModelPolicy.model_validate(data)


def load_policies(path: str) -> list[HardenedModelPolicy]:
    """Every HardenedModelPolicy of a YAML file (one or more documents). A problem names the file, the
    document (1-based) and the field: ``policies.yaml: document 2: spec.gates.maxEpsilon: Invalid value: ...``."""
    docs = read_yaml_file(path)
    if not docs:
        raise SpecError([(path, "Invalid value: 0: expected one or more HardenedModelPolicy documents")])
    policies, problems, seen = [], [], set()
    for i, doc in enumerate(docs, 1):
        try:
            policy = parse_policy(doc)
        except SpecError as err:
            problems += [(f"{path}: document {i}: {f}", m) for f, m in err.problems]
            continue
        if policy.metadata.name in seen:
            problems.append((f"{path}: document {i}: metadata.name",
                             f"Duplicate value: {_value(policy.metadata.name)}"))
        seen.add(policy.metadata.name)
        policies.append(policy)
    if problems:
        raise SpecError(problems)
    return policies


@functools.cache
def policy_schema() -> dict:
    """The HardenedModelPolicy openAPIV3Schema (the CRD's): the bounds an error message quotes."""
    from .spec.schema import build_schema

    return {
        "type": "object",
        "description": "What a platform team requires of every HardenedModel in the namespaces it selects.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": build_schema(HardenedModelPolicySpec),
        },
    }
