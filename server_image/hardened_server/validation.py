"""The validation sidecar: a reverse proxy that lets only well-formed, in-range inputs reach the model,
and hardens what comes back.

Inputs (each rejection a 4xx JSON error naming the field): body size (413
before the body is read in full), JSON, Open Inference Protocol v2 schema,
datatype, shape = [batch, *inputShape], batch limit, NaN/Inf, value range,
and an optional out-of-distribution score threshold (sponge and garbage
inputs). Only the validated tensor is forwarded, re-encoded.

Outputs: minimum confidence (flag or abstain) and an output mode that limits
extraction and membership inference: ``label`` returns only the top label,
``rounded`` rounds probabilities to ``decimals``, ``probabilities`` passes them.
"""
from __future__ import annotations

import json
import logging
import pathlib

import numpy as np
import orjson
from aiohttp import web

from hardened_model.contracts import ServingConfig

from .body import BODY_TIMEOUT_SECONDS, read_body
from .errors import InvalidInput, NotFound, UpstreamError, error_middleware
from .logs import log_fields
from .metrics import METRICS, Timer
from .protocol import Limits, encode_request, encode_response, parse_infer_request, select_outputs
from .proxy import Upstream
from .tabular import TabularSchema

ABSTAIN = "abstain"
BINARY_HEADER = "Inference-Header-Content-Length"
# headers of the client's request that describe its body: the forwarded body is re-encoded, with its own
_REENCODED = frozenset({"content-type", "inference-header-content-length"})


class OodScorer:
    """Root-mean-square z-score of an input against the training data's per-pixel statistics.

    Natural inputs score near 1; noise, inverted or saturated images (sponge and
    probing inputs) score far higher. The statistics come from the verified
    model.json (``inputStats``), written by the trainer.
    """

    def __init__(self, mean: list[float], std: list[float]):
        self.mean = np.asarray(mean, np.float32)
        self.std = np.maximum(np.asarray(std, np.float32), 0.05)  # constant pixels must not explode the score

    @classmethod
    def from_model_dir(cls, model_dir: pathlib.Path) -> "OodScorer":
        stats = json.loads((model_dir / "model.json").read_text()).get("inputStats")
        if not stats:
            raise ValueError(f"{model_dir}/model.json has no inputStats; retrain with this version")
        return cls(stats["mean"], stats["std"])

    def score(self, x: np.ndarray) -> np.ndarray:
        flat = x.reshape(len(x), -1)
        return np.sqrt((((flat - self.mean) / self.std) ** 2).mean(axis=1))


def harden_output(body: dict, cfg: ServingConfig) -> tuple[dict, int]:
    """Apply output mode and minimum confidence; returns (new body, low-confidence rows)."""
    outputs = {o.get("name"): o for o in body.get("outputs", [])}
    probs_out = outputs.get("probabilities")
    if probs_out is None:
        raise UpstreamError("model response has no probabilities output")
    probs = np.asarray(probs_out["data"], np.float64).reshape(probs_out["shape"])
    labels = list(outputs["label"]["data"])
    out = cfg.output
    low = probs.max(axis=1) < out.min_confidence if out.min_confidence > 0 else np.zeros(len(probs), bool)
    if out.low_confidence_action == "abstain" and low.any():
        labels = [ABSTAIN if flag else label for label, flag in zip(labels, low)]
        probs[low] = 0.0
    tensors = [{"name": "label", "datatype": "BYTES", "shape": [len(labels)], "data": labels}]
    if out.mode != "label":
        # float32 values are written as their shortest decimal, so rounded ones print as rounded
        shown = (np.round(probs, out.decimals) if out.mode == "rounded" else probs).astype(np.float32)
        tensors.insert(0, {"name": "probabilities", "datatype": "FP32", "shape": list(probs.shape),
                           "data": shown.reshape(-1)})
    if out.min_confidence > 0:
        tensors.append({"name": "low_confidence", "datatype": "BOOL", "shape": [len(low)],
                        "data": [bool(v) for v in low]})
    new = {k: v for k, v in body.items() if k not in ("outputs", "parameters")}
    new["outputs"] = tensors
    return new, int(low.sum())


def build_app(cfg: ServingConfig, upstream: Upstream, *, logger: logging.Logger, ood: OodScorer | None = None,
              body_timeout: float = BODY_TIMEOUT_SECONDS, tabular: TabularSchema | None = None) -> web.Application:
    """``tabular``: the verified model's feature schema (model.json), for a tabular model: every request is then
    checked feature by feature (hardened_server.tabular) instead of against one value range."""
    v = cfg.validation
    limits = Limits(max_batch_size=v.max_batch_size, min_value=v.min_value, max_value=v.max_value)
    if v.ood_threshold is not None and ood is None:
        raise ValueError("validation.oodThreshold is set: the sidecar needs --model-dir for the input statistics")
    if v.ood_threshold is None:
        ood = None  # no threshold, no scoring

    def on_error(request, exc):
        METRICS.requests.labels("validation", "rejected", exc.reason).inc()
        log_fields(logger, logging.INFO, "rejected", status=exc.status, reason=exc.reason, field=exc.field,
                   error=exc.message, path=request.path)

    app = web.Application(middlewares=[error_middleware(on_error)], client_max_size=v.max_body_bytes)
    app.on_startup.append(upstream.start)
    app.on_cleanup.append(upstream.close)

    # what a response holds, in this order: the request may name a subset (outputs[].name)
    served = ([] if cfg.output.mode == "label" else ["probabilities"]) + ["label"] + (
        ["low_confidence"] if cfg.output.min_confidence > 0 else [])

    async def infer(request: web.Request) -> web.Response:
        t = Timer()
        if request.match_info["name"] != cfg.model.name:
            raise NotFound(f"model {request.match_info['name']!r} is not served here", field="path")
        header = request.headers.get(BINARY_HEADER)
        ctype = request.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
        if ctype == "application/octet-stream" and header is None:
            raise InvalidInput(f"a binary body (application/octet-stream) needs the {BINARY_HEADER} header: the "
                               "length of the JSON header before the tensors", field=BINARY_HEADER)
        if ctype not in ("application/json", "", "application/octet-stream"):
            raise InvalidInput(f"Content-Type must be application/json (or application/octet-stream with "
                               f"{BINARY_HEADER}), got {ctype!r}", field="Content-Type")
        body = await read_body(request, v.max_body_bytes, body_timeout)
        version = request.match_info.get("version")
        req = (tabular.parse(body, limits, header=header, model=cfg.model.name, version=version)
               if tabular is not None else
               parse_infer_request(body, input_shape=cfg.model.input_shape, limits=limits, header=header,
                                   model=cfg.model.name, version=version))
        names, binary = select_outputs(req.envelope, served)  # before the model runs: a bad name is the client's
        if ood is not None:
            scores = ood.score(req.x)
            worst = int(scores.argmax())
            if scores[worst] > v.ood_threshold:
                raise InvalidInput(f"example {worst} looks out of distribution (score {scores[worst]:.2f} > "
                                   f"{v.ood_threshold})", field="inputs[0].data")
        forwarded, headers = encode_request(req, binary=req.envelope.binary_input)
        status, _, payload = await upstream.forward(request, forwarded, headers, drop=_REENCODED)
        if status != 200:
            METRICS.requests.labels("validation", "upstream_error", str(status)).inc()
            return web.Response(status=status, body=payload, content_type="application/json")
        try:
            hardened, low = harden_output(orjson.loads(payload), cfg)
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamError(f"model response is malformed: {exc}") from None
        if low:
            METRICS.low_confidence.labels(cfg.output.low_confidence_action).inc(low)
        METRICS.predictions.inc(len(req.x))
        METRICS.requests.labels("validation", "ok", "").inc()
        METRICS.latency.labels("validation").observe(t.elapsed())
        out, headers = encode_response(hardened, names, binary)
        return web.Response(body=out, headers=headers)

    async def passthrough(request: web.Request) -> web.Response:
        """Health and metadata: GET only, no body, forwarded as they are."""
        status, headers, payload = await upstream.forward(request, None)
        return web.Response(status=status, body=payload, content_type="application/json")

    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_post("/v2/models/{name}/versions/{version}/infer", infer)
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/ready",
                 "/v2/models/{name}/versions/{version}", "/v2/models/{name}/versions/{version}/ready"):
        app.router.add_get(path, passthrough)
    return app


async def run(args) -> int:
    from hardened_model.contracts import ServingConfigError, load_serving_config

    from .lifecycle import serve
    from .logs import setup_logging

    logger = setup_logging("hardened.validation", args.log_level)
    try:
        cfg = load_serving_config(args.config)
        ood = OodScorer.from_model_dir(pathlib.Path(args.model_dir)) if args.model_dir else None
        tabular = (TabularSchema.from_model_dir(pathlib.Path(args.model_dir), cfg.validation.range_tolerance)
                   if args.model_dir else None)
        if cfg.model.tabular and tabular is None:
            raise ValueError("a tabular model's requests are checked against its verified features: --model-dir "
                             "must name a model/ folder whose model.json has them")
        app = build_app(cfg, Upstream(args.upstream), logger=logger, ood=ood, body_timeout=args.body_timeout,
                        tabular=tabular)
    except (ServingConfigError, ValueError, OSError) as exc:
        log_fields(logger, logging.ERROR, "bad configuration", error=str(exc))
        return 2
    await serve(app, host=args.host, port=args.port, metrics_host=args.metrics_host,
                metrics_port=args.metrics_port, logger=logger)
    return 0
