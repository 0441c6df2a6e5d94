"""The model server: loads only a verified model, serves the Open Inference Protocol v2 over HTTP.

Loading (``load_verified``): verify the signature over the whole directory,
check the pinned digest, then read model.json and model.safetensors into
memory *once*, hash those very bytes and compare them with the signed
manifest, and build the model from them. A file swapped between the check and
the load is caught; nothing is unpickled (safetensors + an architecture name).

Requests from concurrent clients are batched (``Batcher``): each forward pass takes the requests that
queued while the previous one ran, up to ``max_batch`` rows, on CUDA when present.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import json
import logging
import pathlib
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from aiohttp import web

from hardened_model.signing import TrustPolicy, verify_model

from .errors import ModelNotReady, NotFound, error_middleware
from .logs import log_fields
from .metrics import METRICS, Timer
from .protocol import encode_response, parse_infer_request, select_outputs

LOADED_FILES = ("model.json", "model.safetensors")


class RefusedModel(RuntimeError):
    """The model must not be served: the reason says why."""


@dataclass
class LoadedModel:
    name: str
    version: str
    digest: str
    signer: str | None
    architecture: str
    input_shape: list[int]
    labels: list[str]
    module: object  # torch.nn.Module
    device: object  # torch.device

    def predict(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(x).to(self.device)).softmax(1)
        return out.float().cpu().numpy()


def load_verified(model_dir: pathlib.Path, signature: pathlib.Path, policy: TrustPolicy, *,
                  expect_digest: str | None = None, device: str = "auto") -> LoadedModel:
    import safetensors.torch
    import torch

    from hardened_model.networks import build_model

    res = verify_model(model_dir, signature, policy)
    if not res.verified:
        raise RefusedModel(f"signature verification failed: {res.reason}")
    if expect_digest and res.digest != expect_digest:
        raise RefusedModel(f"digest {res.digest} is not the pinned {expect_digest}")
    blobs = {}
    for name in LOADED_FILES:
        blob = (model_dir / name).read_bytes()
        signed = res.files.get(name)
        if signed is None or hashlib.sha256(blob).hexdigest() != signed:
            raise RefusedModel(f"{name} changed after verification (sha256 differs from the signed manifest)")
        blobs[name] = blob
    meta = json.loads(blobs["model.json"])
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    try:  # a tabular model's first layers are built from its recorded schema (their statistics are weights)
        norm = meta.get("normalization") or {}
        per_channel = isinstance(norm.get("mean"), list) and not meta.get("tabular")  # buffers of shape [C, 1, 1]
        module = build_model(meta["architecture"], meta["inputShape"], meta["numClasses"], check_dp=False,
                             features=(meta.get("tabular") or {}).get("features"), options=meta.get("options"),
                             auto_fix=bool(meta.get("autoFix")),
                             **({"mean": norm["mean"], "std": norm["std"]} if per_channel else {}))
    except ValueError as exc:
        raise RefusedModel(f"model.json does not describe a model this server builds: {exc}") from None
    try:
        module.load_state_dict(safetensors.torch.load(blobs["model.safetensors"]), strict=True)
    except (RuntimeError, KeyError) as exc:
        raise RefusedModel(f"weights do not fit {meta['architecture']}: {exc}") from None
    module.to(dev).eval()
    return LoadedModel(name=meta["name"], version=meta["version"], digest=res.digest, signer=res.signer,
                       architecture=meta["architecture"], input_shape=meta["inputShape"], labels=meta["labels"],
                       module=module, device=dev)


class Batcher:
    """Dynamic batching without a fixed delay: while a forward pass runs, arriving requests queue, and the
    next pass takes all of them, up to ``max_batch`` rows. An idle model answers a request at once; a busy
    one batches as much as the load brings (the policy of Triton's dynamic batcher with no queue delay).

    Where the pass runs: a pass that took under ``INLINE_SECONDS`` last time runs on the event loop, a longer
    one on a worker thread, so the loop keeps reading requests and answering probes. A hand-off to the
    thread and back costs 95-108 us of CPU on the 2-core CI machine, and the digits model's one-row pass
    117-128 us (benchmarks/serving_micro.py): inline, a batch of one costs half as much. Requests that
    arrive during an inline pass wait in the socket buffers and form the next batch, as they queue here
    during a threaded one.
    """

    INLINE_SECONDS = 0.002

    def __init__(self, predict, *, max_batch: int = 64):
        self.predict, self.max_batch = predict, max_batch
        self.last_pass = float("inf")  # the first pass runs on the thread and is timed
        self.pending: collections.deque = collections.deque()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="forward")

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.executor.shutdown(wait=False)
        while self.pending:  # only when the drain timed out: nobody waits forever
            _, fut = self.pending.popleft()
            if not fut.done():
                fut.set_exception(ModelNotReady("model server is shutting down"))

    async def submit(self, x: np.ndarray) -> np.ndarray:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((x, fut))
        self.wakeup.set()
        return await fut

    def _take(self) -> list:
        """The oldest requests that fit in one pass (a request larger than max_batch goes alone)."""
        items, rows = [], 0
        while self.pending and (not items or rows + len(self.pending[0][0]) <= self.max_batch):
            item = self.pending.popleft()
            items.append(item)
            rows += len(item[0])
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.pending:
                items = [(x, fut) for x, fut in self._take() if not fut.cancelled()]
                if not items:
                    continue
                x = np.concatenate([x for x, _ in items])
                METRICS.batch_rows.observe(len(x))
                started = time.perf_counter()
                try:
                    if self.last_pass < self.INLINE_SECONDS:
                        probs = self.predict(x)
                    else:
                        probs = await loop.run_in_executor(self.executor, self.predict, x)
                except Exception as exc:  # noqa: BLE001 - every request of this pass gets the failure
                    for _, fut in items:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                finally:
                    self.last_pass = time.perf_counter() - started
                start = 0
                for xi, fut in items:
                    if not fut.done():
                        fut.set_result(probs[start:start + len(xi)])
                    start += len(xi)


READY = web.AppKey("ready", Callable[[], bool])  # what /v2/health/ready and the admin port's /readyz say


def build_app(model: LoadedModel, *, logger: logging.Logger, max_batch: int = 64) -> web.Application:
    batcher = Batcher(model.predict, max_batch=max_batch)
    state = {"ready": False}

    def on_error(request, exc):
        METRICS.requests.labels("model", "rejected", exc.reason).inc()

    app = web.Application(middlewares=[error_middleware(on_error)], client_max_size=64 * 1024 * 1024)
    app[READY] = lambda: state["ready"]

    async def on_startup(_):
        batcher.start()
        state["ready"] = True

    async def on_shutdown(_):
        state["ready"] = False  # readiness fails first, so the Service stops routing here

    async def on_cleanup(_):
        # aiohttp runs cleanup after it has drained the requests in flight, and those wait on the batcher:
        # stopping it on shutdown left them hanging until the drain timeout (10 s) and then cut them off
        await batcher.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)

    def check_name(request):
        if request.match_info["name"] != model.name:
            raise NotFound(f"model {request.match_info['name']!r} is not served here (serving {model.name!r})",
                           field="path")
        version = request.match_info.get("version")
        if version is not None and version != model.version:
            raise NotFound(f"version {version!r} of {model.name!r} is not served here (serving {model.version!r})",
                           field="path")

    async def live(_):
        return web.json_response({"live": True})

    async def ready(_):
        if not state["ready"]:
            raise ModelNotReady("model is not ready")
        return web.json_response({"ready": True})

    async def model_ready(request):
        check_name(request)
        return await ready(request)

    async def metadata(request):
        check_name(request)
        return web.json_response({
            "name": model.name, "versions": [model.version], "platform": "pytorch",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, *model.input_shape]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(model.labels)]},
                        {"name": "label", "datatype": "BYTES", "shape": [-1]}],
            "parameters": {"digest": model.digest, "architecture": model.architecture, "labels": model.labels}})

    async def infer(request):
        t = Timer()
        check_name(request)
        if not state["ready"]:
            raise ModelNotReady("model is not ready")
        req = parse_infer_request(await request.read(), input_shape=model.input_shape,
                                  header=request.headers.get("Inference-Header-Content-Length"), model=model.name,
                                  version=model.version)
        names, binary = select_outputs(req.envelope, ["probabilities", "label"])
        probs = await batcher.submit(req.x)
        top = probs.argmax(1)
        body = {"model_name": model.name, "model_version": model.version,
                "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": list(probs.shape),
                             "data": np.ascontiguousarray(probs, np.float32).reshape(-1)},
                            {"name": "label", "datatype": "BYTES", "shape": [len(top)],
                             "data": [model.labels[i] for i in top]}],
                "parameters": {"digest": model.digest}}
        if req.id is not None:
            body["id"] = req.id
        METRICS.requests.labels("model", "ok", "").inc()
        METRICS.latency.labels("model").observe(t.elapsed())
        out, headers = encode_response(body, names, binary)
        return web.Response(body=out, headers=headers)

    async def server_metadata(_):
        return web.json_response({"name": "hardened-model", "version": "0.1.0", "extensions": ["binary_tensor_data"]})

    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/models/{name}", metadata)
    app.router.add_get("/v2/models/{name}/ready", model_ready)
    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_get("/v2/models/{name}/versions/{version}", metadata)
    app.router.add_get("/v2/models/{name}/versions/{version}/ready", model_ready)
    app.router.add_post("/v2/models/{name}/versions/{version}/infer", infer)
    return app


async def run(args) -> int:
    from .lifecycle import serve
    from .logs import setup_logging

    logger = setup_logging("hardened.model_server", args.log_level)
    import torch

    # torch sizes its CPU thread pool by the node's cores, not the pod's CPU request: on a big node a small
    # pod would spin dozens of OpenMP threads against its own sidecars. On the 2-core CI machine the digits
    # model's pass takes the same wall time with torch's default of 2 threads as with 1, and twice the CPU
    # (267 against 125 us at batch 1; benchmarks/serving_micro.py).
    torch.set_num_threads(args.cpu_threads)
    try:
        policy = TrustPolicy(public_key=args.public_key, public_keys_pem=tuple(args.public_key_pem),
                             identity=args.identity, oidc_issuer=args.oidc_issuer, trust_config=args.trust_config)
    except ValueError as exc:  # the flags contradict each other: say which, as verify does
        log_fields(logger, logging.ERROR, "bad trust flags", reason=str(exc))
        return 2
    try:
        model = load_verified(pathlib.Path(args.model_dir), pathlib.Path(args.signature), policy,
                              expect_digest=args.expect_digest, device=args.device)
    except RefusedModel as exc:
        METRICS.verified.set(0)
        log_fields(logger, logging.ERROR, "refusing to serve", reason=str(exc), model_dir=args.model_dir)
        return 3
    METRICS.verified.set(1)
    METRICS.model_info.info({"model": model.name, "version": model.version, "digest": model.digest,
                             "signer": model.signer or ""})
    log_fields(logger, logging.INFO, "model loaded", model=model.name, version=model.version, digest=model.digest,
               device=str(model.device))
    app = build_app(model, logger=logger, max_batch=args.max_batch)
    await serve(app, host=args.host, port=args.port, metrics_host=args.metrics_host, metrics_port=args.metrics_port,
                is_ready=app[READY], logger=logger)
    return 0

