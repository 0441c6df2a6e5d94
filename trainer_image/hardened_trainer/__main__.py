"""`python -m hardened_trainer --config train.json` (also `hardened-model train`).

sanitize -> train (adversarial and/or DP-SGD) -> evaluate (ART attacks, membership
inference, epsilon) -> gates -> write model/ (safetensors, model.json,
metrics.json, report.html) -> sign -> upload (s3://).

stdout carries one JSON object per line: an ``epoch`` event per epoch and a
final ``result``. Exit codes: 0 trained and passed the gates; 2 bad config or
data; 3 a gate failed (the artifact is still written and signed, with the
verdict in its signed metrics.json, so the operator can show why); 1 crash.
A gate-failing model is never rolled out: the verifier re-checks the gates
against the signed metrics.

Under torchrun (``python -m torch.distributed.run --nproc-per-node N -m
hardened_trainer ...``) every rank reads the data and trains its shard; rank 0
alone logs, evaluates, writes, signs and uploads, and the other ranks exit 0
after training (hardened_trainer.distributed). An error names its rank.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import sys
import time
import warnings

EXIT_OK, EXIT_CRASH, EXIT_BAD_CONFIG, EXIT_GATES_FAILED = 0, 1, 2, 3
MODEL_FORMAT = "hardened-model/v1"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hardened-model train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="trainer config JSON (see hardened_trainer.config) (default: none)")
    p.add_argument("--termination-log", default="/dev/termination-log",
                   help="file that receives the result JSON when writable, for the operator "
                        "(default: /dev/termination-log)")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="folder for a checkpoint at the end of every epoch (rank 0 writes it); a run whose "
                        "training matches the checkpoint there resumes after its epoch (default: none, no "
                        "checkpoints)")
    return p


def _config_digest(cfg) -> str:
    from hardened_model.spec import to_wire

    canonical = json.dumps(to_wire(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_model_dir(model_dir: pathlib.Path, *, cfg, result, ev, gates, raw_scale: float, sanitization: dict,
                    report_html: str, x_train, table=None) -> None:
    import safetensors.torch
    import torch

    spec = cfg.spec
    from .rows import moments

    model_dir.mkdir(parents=True, exist_ok=True)
    stats = moments(x_train.reshape(len(x_train), -1), 0)
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    safetensors.torch.save_file(state, str(model_dir / "model.safetensors"),
                                metadata={"format": MODEL_FORMAT, "architecture": spec.model.architecture})
    norm = result.model[0]
    labels = spec.model.labels or [str(i) for i in range(spec.model.num_classes)]
    model_json = {
        "format": MODEL_FORMAT,
        "name": cfg.model_name,
        "namespace": cfg.namespace,
        "version": cfg.version,
        "architecture": spec.model.architecture,
        "inputShape": list(spec.model.input_shape),
        "numClasses": spec.model.num_classes,
        "labels": labels,
        "weights": "model.safetensors",
        "normalization": {"mean": norm.mean.flatten().tolist() if norm.mean.dim() else float(norm.mean),
                          "std": norm.std.flatten().tolist() if norm.std.dim() else float(norm.std),
                          "inside_model": True},
        "input": {"range": [0.0, 1.0], "rawScale": raw_scale} if table is None else {"columns": "tabular.features"},
        # per-pixel training statistics: the validation sidecar's out-of-distribution score
        "inputStats": {"mean": [round(float(v), 6) for v in stats[0].reshape(-1)],
                       "std": [round(float(v), 6) for v in stats[1].reshape(-1)]},
        "configDigest": _config_digest(cfg),
        "trainingDigest": cfg.version,
        "framework": {"torch": torch.__version__.split("+")[0]},
    }
    if spec.model.options is not None:  # the server rebuilds a plugin network with the same options
        model_json["options"] = spec.model.options
    if spec.model.auto_fix:
        model_json["autoFix"] = True
    if spec.model.initial_weights is not None:  # signed with the rest: what the hardening started from
        model_json["initialWeights"] = {"uri": spec.model.initial_weights.uri,
                                        "sha256": spec.model.initial_weights.sha256}
    if table is not None:
        model_json["tabular"] = tabular_section(spec, table, x_train)
    metrics = {
        **ev.metrics(),
        **({"positiveClass": {k: v for k, v in ev.positive.items() if k not in ev.metrics()}}
           if ev.positive is not None else {}),
        "delta": spec.training.privacy.target_delta if spec.training.privacy.enabled else None,
        "noiseMultiplier": result.noise_multiplier,
        "clipping": result.clipping,
        "weightAverageDecay": spec.training.ema_decay,
        "attackAccuracy": ev.attack_accuracy,
        "attackEps": spec.evaluation.eps,
        "perClassAccuracy": ev.per_class_accuracy,
        "membershipInferenceAttack": "loss-threshold (Yeom et al. 2018)" if ev.membership_auc is not None else None,
        "evaluatedSamples": ev.samples,
        "gates": [g.__dict__ for g in gates],
        "gatesPassed": all(g.passed for g in gates),
        "sanitization": sanitization,
        "history": result.history,
        "trainingSeconds": round(result.seconds, 3),
    }
    (model_dir / "model.json").write_text(json.dumps(model_json, indent=2, sort_keys=True) + "\n")
    (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    (model_dir / "report.html").write_text(report_html)


def tabular_section(spec, table, x_train) -> dict:
    """model.json's description of a tabular model's input: what the validation sidecar checks each request
    against (type, vocabulary, bounds: the spec's min/max, else the training split's range) and how the
    label was read."""
    from .tabular import bounds, feature_dicts

    low, high = bounds(spec.data.features, x_train)
    features = []
    for j, (f, d) in enumerate(zip(spec.data.features, feature_dicts(spec.data.features))):
        if f.type != "category":
            d.update(min=float(low[j]), max=float(high[j]), boundsFrom="spec" if f.min is not None
                     and f.max is not None else "training data")
        d["mutable"] = f.mutable
        features.append(d)
    return {"features": features, "label": spec.data.label, "positiveClass": spec.data.positive_class,
            "negativeClass": table.negative_class, "imputedMedians": table.imputed}


def run(cfg, *, log, device=None, checkpoint_dir: str | None = None) -> tuple[int, dict]:
    """The whole training run for a parsed config; returns (exit code, result). ``device``: this rank's, from
    hardened_trainer.distributed.init (None: one process, the config's device). A rank other than 0 returns
    (0, {}) after training."""

    import numpy as np
    from hardened_model import artifacts, signing

    from . import data as data_mod
    from hardened_model.gates import check_gates

    from .distributed import device_names, rank, world_size
    from .evaluate import evaluate
    from .report import render_report
    from .rows import is_mapped, memory_budget, take
    from .sanitize import sanitize
    from .train import select_device, train

    spec = cfg.spec
    t0 = time.perf_counter()
    started = _now()
    device = device if device is not None else select_device(cfg.device)
    world = {"worldSize": world_size(), "devices": device_names(device)} if world_size() > 1 else {}
    log("start", model=cfg.model_name, version=cfg.version, device=str(device), **world)

    # model.initialWeights first: a wrong pin or a pickle stops the run before any data is read
    from .weights import initial_tensors

    iw = spec.model.initial_weights
    initial = initial_tensors(spec, volumes=cfg.volumes, s3_client=_s3(spec) if iw and iw.uri.startswith("s3://")
                              else None)
    if spec.model.architecture != "tabular-mlp":  # an uninstalled or DP-incompatible network: before the data
        from hardened_model.networks import build_model

        net = build_model(spec.model.architecture, spec.model.input_shape, spec.model.num_classes,
                          options=spec.model.options, auto_fix=spec.model.auto_fix)
        if spec.training.privacy.enabled and spec.training.privacy.clipping == "fast":  # a layer without a path
            from .train import choose_clipping

            choose_clipping(spec.training.privacy.clipping, net)
    s3 = _s3(spec) if spec.data.source.startswith("s3://") else None
    table = None
    if spec.data.format == "tabular":
        from .tabular import load_table

        table = load_table(spec.data, s3_client=s3)
        ds = data_mod.Dataset(x=table.x, y=table.y, raw_scale=1.0, source=table.source, files=table.files)
        ds = data_mod.subsample(ds, spec.data.max_samples, spec.training.seed)
        log("data", rows=len(ds), positives=int(ds.y.sum()), features=len(spec.data.features),
            imputed=table.imputed)
    else:
        ds = data_mod.load_dataset(spec.data.source, max_samples=spec.data.max_samples, seed=spec.training.seed,
                                   s3_client=s3, sha256=spec.data.sha256, version_id=spec.data.version_id)
    log("data-digest", source=spec.data.source, sha256=ds.digest, files=len(ds.files),
        pinned=spec.data.sha256 is not None)
    data_mod.check_shape(ds, spec.model.input_shape, spec.model.num_classes)
    parts = data_mod.split(ds, test_fraction=spec.data.validation_split, seed=spec.training.seed)
    # the split holds copies: the whole set's examples go now (a file-backed set's blocks on the scratch disk too)
    ds = dataclasses.replace(ds, x=np.empty((0, *ds.x.shape[1:]), ds.x.dtype), y=ds.y[:0].copy())
    if table is not None:
        table = dataclasses.replace(table, x=ds.x, y=ds.y)
    x_train, y_train = parts.x_train, parts.y_train
    san = {"enabled": spec.data.sanitization.enabled, "trainingExamples": int(len(y_train)), "removed": 0}
    if spec.data.sanitization.enabled:
        s = spec.data.sanitization
        if is_mapped(x_train):  # its PCA and neighbours (or cross-validated model) take the split in memory
            raise data_mod.DataError(
                f"data.sanitization.enabled: true: the training split ({len(y_train)} examples, "
                f"{x_train.nbytes / 2**20:.0f} MiB) exceeds the trainer's memory budget ({memory_budget() / 2**20:.0f} "
                "MiB, a quarter of its memory limit) and sanitization needs it in memory: raise "
                "training.resources.memory, or set data.maxSamples, or disable sanitization")
        res = sanitize(x_train, y_train, method=s.method, k=s.k, max_remove_fraction=s.max_remove_fraction,
                       seed=spec.training.seed)
        x_train, y_train = take(x_train, np.flatnonzero(res.keep)), y_train[res.keep]
        san.update(method=s.method, removed=res.removed, removedFraction=round(res.removed / max(len(res.keep), 1), 4))
        log("sanitized", **san)

    result = train(spec, x_train, y_train, device=device, log=log, initial=initial, checkpoint_dir=checkpoint_dir)
    if rank() != 0:  # rank 0 evaluates, writes, signs and uploads the model every rank holds
        return EXIT_OK, {}
    labels = spec.model.labels or [str(i) for i in range(spec.model.num_classes)]
    ev = evaluate(result.model, spec, x_train, y_train, parts.x_test, parts.y_test, epsilon=result.epsilon,
                  labels=labels)
    gates = check_gates(ev.metrics(), spec.gates)
    passed = all(g.passed for g in gates)
    log("evaluated", **ev.metrics(), attackAccuracy=ev.attack_accuracy, gatesPassed=passed,
        gates=[g.describe() for g in gates])

    out = pathlib.Path(cfg.output_dir)
    model_dir = out / signing.MODEL_DIR_NAME
    if model_dir.exists():  # never mix files of two runs under one signature
        import shutil

        shutil.rmtree(model_dir)
    report = render_report(model_name=cfg.model_name, version=cfg.version, architecture=spec.model.architecture,
                           ev=ev, gates=gates, history=result.history, sanitization=san,
                           training={"epochs": spec.training.epochs, "batchSize": spec.training.batch_size,
                                     "learningRate": spec.training.learning_rate,
                                     "adversarial": spec.training.adversarial.attack
                                     if spec.training.adversarial.enabled else "off",
                                     "dpSgd": "on" if spec.training.privacy.enabled else "off",
                                     "noiseMultiplier": result.noise_multiplier, "clipping": result.clipping,
                                     "weightAverageDecay": spec.training.ema_decay,
                                     "maxGradNorm": spec.training.privacy.max_grad_norm,
                                     "device": str(device), "trainingSeconds": round(result.seconds, 2)})
    write_model_dir(model_dir, cfg=cfg, result=result, ev=ev, gates=gates, raw_scale=ds.raw_scale,
                    sanitization=san, report_html=report, x_train=x_train, table=table)
    write_provenance(model_dir, cfg=cfg, ds=ds, device=str(device), started=started, world=world)
    sig = out / signing.SIGNATURE_NAME
    rt = cfg.signing
    token = pathlib.Path(rt.identity_token_path).read_text().strip() if rt.identity_token_path else None
    # signing.method ephemeral: a key for this run alone, in this process's memory only; its public half goes
    # out in the termination message, which the kubelet records in the pod's status and the operator reads
    private_pem, run_key = signing.generate_key_pem() if spec.signing.method == "ephemeral" else (None, None)
    signing.sign_model(model_dir, sig,
                       private_key=pathlib.Path(rt.private_key_path) if spec.signing.method == "key" else None,
                       private_key_pem=private_pem, identity_token=token,
                       use_ambient_credentials=rt.use_ambient_credentials,
                       trust_config=pathlib.Path(rt.trust_config_path) if rt.trust_config_path else None)
    del private_pem
    digest, _ = signing.read_signed_manifest(sig)
    store = artifacts.StoreURI.parse(spec.artifacts.store)
    uri = store.version_uri(cfg.model_name, cfg.version)
    versions = {}
    if store.scheme == "s3":
        versions = artifacts.upload_version(out, store, cfg.model_name, cfg.version, client=_s3(spec),
                                            kms_key_id=spec.artifacts.kms_key_id)
    summary = {"model": cfg.model_name, "version": cfg.version, "gatesPassed": passed, "metrics": ev.metrics(),
               "digest": digest, "uri": uri, "localPath": str(out), "versionIds": versions,
               "dataDigest": ds.digest, "trainerImage": os.environ.get(TRAINER_IMAGE_ENV) or None,
               "seconds": round(time.perf_counter() - t0, 2)}
    if run_key:
        summary["signingKey"] = run_key
    if result.resumed_from_epoch is not None:
        summary["resumedFromEpoch"] = result.resumed_from_epoch
    if world:  # the operator shows it in status.training
        summary["worldSize"] = world["worldSize"]
    if checkpoint_dir:  # the model is signed and stored: the unsigned weights beside it have no further use
        import shutil

        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    log("result", **summary)
    return (EXIT_OK if passed else EXIT_GATES_FAILED), summary


TERMINATION_LIMIT = 4096                      # bytes of a termination log the kubelet keeps
TRAINER_IMAGE_ENV = "HARDENED_TRAINER_IMAGE"   # the pod's image reference, set by the operator
POD_ENV = "HARDENED_POD_NAME"                 # the Downward API's metadata.name


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_provenance(model_dir: pathlib.Path, *, cfg, ds, device: str, started: str,
                     world: dict | None = None) -> None:
    """model/provenance.json, written last before signing (hardened_model.provenance says why inside).
    ``world``: {"worldSize", "devices"} of a run on several ranks, recorded beside seed and device."""
    from hardened_model.contracts import TRAINING_SECTIONS
    from hardened_model.provenance import PROVENANCE_NAME, build_statement
    from hardened_model.spec import spec_digest, to_wire

    wire = to_wire(cfg.spec)
    iw = cfg.spec.model.initial_weights
    statement = build_statement(
        model_dir, model={"name": cfg.model_name, "namespace": cfg.namespace, "version": cfg.version},
        training_spec={k: wire[k] for k in TRAINING_SECTIONS if k in wire},
        spec_digest=spec_digest(cfg.spec, *TRAINING_SECTIONS),
        data={"source": ds.source, "digest": ds.digest,
              "files": [{"name": f.name, "sha256": f.sha256, "size": f.size,
                         **({"versionId": f.version_id} if f.version_id else {})} for f in ds.files]},
        trainer_image=os.environ.get(TRAINER_IMAGE_ENV) or None,
        initial_weights={"uri": iw.uri, "sha256": iw.sha256} if iw else None,
        seed=cfg.spec.training.seed, device=device, invocation_id=os.environ.get(POD_ENV) or None,
        started=started, finished=_now())
    statement["predicate"]["buildDefinition"]["internalParameters"].update(world or {})
    (model_dir / PROVENANCE_NAME).write_text(json.dumps(statement, indent=2, sort_keys=True) + "\n")


def _s3(spec):
    from hardened_model.artifacts import s3_client

    return s3_client(region=spec.artifacts.region or spec.aws.region, endpoint=spec.artifacts.endpoint)


def _termination_message(path: str, payload: dict) -> None:
    """Kubernetes reads /dev/termination-log into the Pod status (4 KiB kept): the operator's input. Cut, the
    JSON would not parse and the operator would lose every field (a per-run signing key among them), so what
    is over drops the metrics (the verifier reports them again from the signed metrics.json), then the message
    is cut as before."""
    text = json.dumps(payload, sort_keys=True)
    if len(text.encode()) > TERMINATION_LIMIT and "metrics" in payload:
        text = json.dumps({**{k: v for k, v in payload.items() if k != "metrics"}, "metricsDropped": True},
                          sort_keys=True)
    try:
        if os.path.exists(os.path.dirname(path) or "."):
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text.encode()[:TERMINATION_LIMIT].decode(errors="ignore"))
    except OSError:
        pass


def _error_message(path: str, payload: dict, at: dict) -> None:
    """An error's termination message, naming the rank (``at``) in a world of ranks. There the first rank to
    fail writes it and the others leave it: they fail after it, when their collectives lose that rank, and one
    pod may run every rank on one termination log."""
    try:
        if at and os.path.getsize(path) > 0:
            return
    except OSError:
        pass
    _termination_message(path, {**payload, **at})


def main(argv: list[str] | None = None) -> int:
    from hardened_model.architectures import ArchitectureError
    from hardened_model.artifacts import StoreError
    from hardened_model.signing import SigningError

    from . import distributed
    from .config import ConfigError, load_config
    from .data import DataError
    from .distributed import CheckpointError
    from .train import PrivacyError, json_log

    args = get_args_parser().parse_args(argv)
    warnings.filterwarnings("ignore", module=r"opacus\..*")
    warnings.filterwarnings("ignore", message=r".*[Ff]ull backward hook.*")
    at = distributed.rank_fields()  # {"rank": N} in a world of ranks: which one failed
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        for field, msg in exc.problems:
            json_log("error", stage="config", field=field, message=msg, **at)
        _error_message(args.termination_log, {"stage": "config", "reason": "BadConfig", "message": str(exc)}, at)
        return EXIT_BAD_CONFIG
    try:
        device = distributed.init(cfg.device)
        log = json_log if distributed.rank() == 0 else _quiet  # one copy of each event, rank 0's
        code, summary = run(cfg, log=log, device=device, checkpoint_dir=args.checkpoint_dir)
    except (DataError, SigningError, StoreError, ArchitectureError, PrivacyError, CheckpointError) as exc:
        stage = {DataError: "data", SigningError: "signing", StoreError: "upload", ArchitectureError: "model",
                 PrivacyError: "privacy", CheckpointError: "checkpoint"}[type(exc)]
        json_log("error", stage=stage, message=str(exc), **at)
        _error_message(args.termination_log, {"stage": stage, "reason": f"{stage.title()}Error",
                                              "message": str(exc)}, at)
        return EXIT_BAD_CONFIG if stage != "upload" else EXIT_CRASH
    except Exception as exc:  # noqa: BLE001 - report any crash as one JSON line, then a distinct exit code
        json_log("error", stage="training", message=f"{type(exc).__name__}: {exc}", **at)
        _error_message(args.termination_log, {"stage": "training", "reason": "Crash",
                                              "message": f"{type(exc).__name__}: {exc}"}, at)
        if os.environ.get("HARDENED_DEBUG"):
            raise
        return EXIT_CRASH
    finally:
        distributed.teardown()
    if summary:  # rank 0's; the other ranks leave the termination log to it (one pod may hold them all)
        _termination_message(args.termination_log, {k: summary[k] for k in
                                                    ("gatesPassed", "metrics", "digest", "uri", "versionIds",
                                                     "dataDigest", "trainerImage", "resumedFromEpoch",
                                                     "signingKey")
                                                    if k in summary})
    return code


def _quiet(*_, **__) -> None:
    pass


if __name__ == "__main__":
    sys.exit(main())
