"""A generative fuzzer for the serving sidecars: seeded, grammar-based, and fast enough for 100,000 requests.

Each case is one HTTP request built from a valid OIP v2 request by one mutation family (malformed JSON, deep
nesting, huge numbers, wrong types and shapes, NaN/Inf, oversized and chunked bodies, bad headers, ...), with
what the sidecars must answer: a 4xx (the input is wrong) or anything below 500 (the mutation may still be
valid). The runner checks every answer: never a 5xx or a dropped connection, a rejection is a JSON error
naming the field, and a 200 is a prediction. Hypothesis drives the unit-level properties elsewhere
(tests/server/test_sidecar_units.py); here volume matters, so cases come from a seeded ``random.Random``.
"""
from __future__ import annotations

import asyncio
import collections
import json
import random
import time
from dataclasses import dataclass, field

import aiohttp


@dataclass
class Case:
    kind: str
    body: bytes | None
    headers: dict
    method: str = "POST"
    path: str = "/v2/models/{model}/infer"
    must_reject: bool = True       # False: the mutation may leave a valid request
    chunked: bool = False
    key_check: bool = False        # rejected for its API key: only the rate-limit sidecar checks keys


@dataclass
class Report:
    sent: int = 0
    by_status: collections.Counter = field(default_factory=collections.Counter)
    by_kind: collections.Counter = field(default_factory=collections.Counter)
    violations: list = field(default_factory=list)
    seconds: float = 0.0

    def violation(self, case: Case, what: str) -> None:
        self.violations.append(f"{case.kind}: {what}" if len(self.violations) < 50 else "...")

    def summary(self) -> dict:
        return {"sent": self.sent, "seconds": round(self.seconds, 1), "rps": round(self.sent / self.seconds),
                "status": dict(sorted(self.by_status.items(), key=lambda kv: str(kv[0]))), "kinds": len(self.by_kind),
                "violations": len(self.violations)}


class Fuzzer:
    """Cases for a model of ``shape`` behind limits ``max_batch`` and ``max_body`` (bytes)."""

    def __init__(self, seed: int, *, shape: list[int], max_batch: int, max_body: int, key: str):
        self.rng = random.Random(seed)
        self.shape, self.max_batch, self.max_body, self.key = shape, max_batch, max_body, key
        self.size = 1
        for d in shape:
            self.size *= d
        self.families = [(name[5:], getattr(self, name)) for name in sorted(dir(self)) if name.startswith("case_")]

    # ------------------------------------------------------------ helpers
    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}

    def valid_doc(self, batch: int | None = None) -> dict:
        batch = batch or self.rng.randint(1, self.max_batch)
        data = [round(self.rng.random(), 3) for _ in range(batch * self.size)]
        return {"inputs": [{"name": "input-0", "shape": [batch, *self.shape], "datatype": "FP32", "data": data}]}

    def encode(self, doc) -> bytes:
        return json.dumps(doc, separators=(",", ":")).encode()

    def case(self) -> Case:
        kind, make = self.families[self.rng.randrange(len(self.families))]
        c = make()
        c.kind = kind if not c.kind else f"{kind}/{c.kind}"
        return c

    # ----------------------------------------------------------- families
    def case_valid(self) -> Case:
        return Case("", self.encode(self.valid_doc()), self.auth(), must_reject=False)

    def case_json_syntax(self) -> Case:
        raw = self.encode(self.valid_doc(1))
        r = self.rng.random()
        if r < 0.25:
            body = raw[: self.rng.randrange(len(raw))]                      # truncated
        elif r < 0.45:
            body = bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 300)))  # noise
        elif r < 0.6:
            body = raw + b"}" * self.rng.randint(1, 5)                       # trailing garbage
        elif r < 0.7:
            body = b"\xff\xfe" + raw                                          # not UTF-8
        elif r < 0.8:
            body = b""
        else:
            i = self.rng.randrange(len(raw))
            body = raw[:i] + bytes([self.rng.choice(b'{}[]":,\\')]) + raw[i + 1:]  # one structural byte
        return Case("", body, self.auth(), must_reject=False)  # a flipped byte can land inside a number

    def case_deep_nesting(self) -> Case:
        depth = self.rng.choice([100, 1_000, 5_000, 20_000])
        where = self.rng.choice(["top", "data", "parameters"])
        nest = "[" * depth + "1" + "]" * depth if self.rng.random() < 0.5 else '{"a":' * depth + "1" + "}" * depth
        if where == "top":
            body = nest.encode()
        elif where == "data":
            body = b'{"inputs":[{"name":"x","shape":[1,1,8,8],"datatype":"FP32","data":' + nest.encode() + b"}]}"
        else:
            body = b'{"parameters":' + nest.encode() + b',"inputs":[]}'
        return Case(f"{where}", body, self.auth())

    def case_huge_numbers(self) -> Case:
        doc = self.valid_doc(1)
        token = self.rng.choice(["1e999", "-1e999", "1" + "0" * self.rng.choice([400, 5000, 20000]),
                                 "1e-999", "123456789012345678901234567890.5", "1E+308", "-0.0e-500"])
        raw = self.encode(doc).decode()
        first = raw.index('"data":[') + len('"data":[')
        body = (raw[:first] + token + raw[raw.index(",", first):]).encode()
        # 1e-999 is 0.0 in float: a valid (in-range) value; 1E+308 is finite but out of the value range
        return Case("", body, self.auth(), must_reject=token not in ("1e-999", "-0.0e-500"))

    def case_nan_inf(self) -> Case:
        raw = self.encode(self.valid_doc(1)).decode()
        token = self.rng.choice(["NaN", "Infinity", "-Infinity", "nan", "inf", '"NaN"'])
        first = raw.index('"data":[') + len('"data":[')
        return Case("", (raw[:first] + token + raw[raw.index(",", first):]).encode(), self.auth())

    def case_wrong_types(self) -> Case:
        doc = self.valid_doc(1)
        inp = doc["inputs"][0]
        junk = self.rng.choice([None, True, "x" * self.rng.randint(0, 40), {"a": 1}, [], [[]], -1, 3.5, 10**30])
        target = self.rng.choice(["inputs", "inputs[0]", "name", "shape", "shape[0]", "datatype", "data",
                                  "data[0]", "id", "parameters", "outputs", "top"])
        if target == "inputs":
            doc["inputs"] = junk
        elif target == "inputs[0]":
            doc["inputs"] = [junk]
        elif target == "shape[0]":
            inp["shape"][0] = junk
        elif target == "data[0]":
            inp["data"][0] = junk
        elif target == "id":
            doc["id"] = junk if not isinstance(junk, str) else "i" * 200
            if junk is None:
                return Case(target, self.encode(doc), self.auth(), must_reject=False)
        elif target == "parameters":
            doc["parameters"] = junk  # an object of scalars (or null) is valid
        elif target == "outputs":
            doc["outputs"] = junk if not isinstance(junk, list) else [{"name": junk}]
        elif target == "top":
            return Case("top", self.encode(junk), self.auth())
        else:
            inp[target] = junk
        must = not ((target in ("parameters", "outputs") and junk is None)
                    or (target == "parameters" and isinstance(junk, dict))
                    or (target == "name" and isinstance(junk, str)))
        return Case(target, self.encode(doc), self.auth(), must_reject=must)

    def case_wrong_shapes(self) -> Case:
        batch = self.rng.randint(1, self.max_batch)
        doc = self.valid_doc(batch)
        inp = doc["inputs"][0]
        r = self.rng.random()
        if r < 0.2:
            inp["data"] = inp["data"][:-1]                                   # one value short
        elif r < 0.35:
            inp["shape"] = [batch, *reversed(self.shape)] if len(set(self.shape)) > 1 else [batch, self.size]
        elif r < 0.5:
            inp["shape"] = [batch, *self.shape, 1]
        elif r < 0.6:
            inp["shape"] = [0, *self.shape]
            inp["data"] = []
        elif r < 0.7:
            inp["shape"] = [10**9, 10**9, *self.shape]                       # absurd product, tiny body
        elif r < 0.8:
            inp["shape"] = [-batch, *self.shape]
        elif r < 0.9:
            doc["inputs"].append(dict(inp))                                  # two input tensors
        else:
            doc = self.valid_doc(self.max_batch)
            doc["inputs"][0]["shape"][0] += 1                                 # batch over the limit
            doc["inputs"][0]["data"] += doc["inputs"][0]["data"][: self.size]
        return Case("", self.encode(doc), self.auth())

    def case_out_of_range(self) -> Case:
        doc = self.valid_doc(1)
        doc["inputs"][0]["data"][self.rng.randrange(self.size)] = self.rng.choice([-1.0, 1.5, 255.0, -1e30, 1e30])
        return Case("", self.encode(doc), self.auth())

    def case_datatype(self) -> Case:
        doc = self.valid_doc(1)
        doc["inputs"][0]["datatype"] = self.rng.choice(["INT8", "BYTES", "FP16", "fp32", "", "BOOL", "UINT64"])
        return Case("", self.encode(doc), self.auth())

    def case_extra_fields(self) -> Case:
        doc = self.valid_doc(1)
        if self.rng.random() < 0.5:
            doc[self.rng.choice(["model", "__proto__", "Inputs", "x" * 100])] = 1
        else:
            doc["inputs"][0][self.rng.choice(["contents", "raw", "DATA"])] = [1]
        return Case("", self.encode(doc), self.auth())

    def case_duplicate_keys(self) -> Case:
        raw = self.encode(self.valid_doc(1)).decode()
        body = raw[:-1] + ',"inputs":[]}'  # the last duplicate wins in json.loads: an empty inputs list
        return Case("", body.encode(), self.auth())

    def case_oversized(self) -> Case:
        size = self.max_body + self.rng.choice([1, 100, 10_000, 1_000_000])
        body = (b'{"inputs":[{"name":"x","shape":[1,1,8,8],"datatype":"FP32","data":[' + b"0.5," * (size // 4)
                + b"0.5]}]}")
        return Case("", body, self.auth(), chunked=self.rng.random() < 0.3)

    def case_bad_headers(self) -> Case:
        body = self.encode(self.valid_doc(1))
        h = self.auth()
        variant = self.rng.choice(["no_key", "bad_scheme", "wrong_api_key", "content_type", "content_encoding",
                                   "forwarded_for", "spoofed_client_id"])
        if variant == "no_key":
            h.pop("Authorization")
        elif variant == "bad_scheme":
            h["Authorization"] = self.rng.choice(["Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "bearer x",
                                                  "Bearer " + "k" * 4000, "Bearer key-\u00e9\u00e9"])
        elif variant == "wrong_api_key":
            h.pop("Authorization")
            h["X-API-Key"] = "wrong-" + str(self.rng.random())
        elif variant == "content_type":
            h["Content-Type"] = self.rng.choice(["text/plain", "application/x-www-form-urlencoded",
                                                 "multipart/form-data; boundary=x", "application/octet-stream"])
        elif variant == "content_encoding":
            h["Content-Encoding"] = self.rng.choice(["gzip", "deflate", "br", "zstd"])  # claims it, sends plain
        elif variant == "forwarded_for":
            h["X-Forwarded-For"] = ", ".join("10.0.0.%d" % i for i in range(200))
        else:
            h["X-Client-Id"] = "spoofed-client"  # only the rate-limit sidecar may set it
        return Case(variant, body, h, must_reject=variant not in ("forwarded_for", "spoofed_client_id"),
                    key_check=variant in ("no_key", "bad_scheme", "wrong_api_key"))

    def case_binary(self) -> Case:
        """The binary tensor data extension (issue 30): a JSON header, then raw little-endian tensors."""
        import struct

        batch = self.rng.randint(1, self.max_batch)
        values = [self.rng.random() for _ in range(batch * self.size)]
        raw = struct.pack(f"<{len(values)}f", *values)
        tensor = {"name": "input__0", "shape": [batch, *self.shape], "datatype": "FP32",
                  "parameters": {"binary_data_size": len(raw)}}
        doc = {"inputs": [tensor]}
        variant = self.rng.choice(["valid", "binary_out", "size", "truncated", "extra", "header", "fp64_as_fp32",
                                   "datatype", "nan_inf", "oversized", "noise", "absurd_size", "no_header",
                                   "data_and_size", "model_name"])
        header_shift, must = 0, True
        if variant in ("valid", "binary_out"):
            must = False
            if variant == "binary_out":
                doc["parameters"] = {"binary_data_output": True}
        elif variant == "size":
            tensor["parameters"]["binary_data_size"] += self.rng.choice([-5, -1, 1, 3, 4, 400])
        elif variant == "truncated":
            raw = raw[: self.rng.randrange(len(raw))]
        elif variant == "extra":
            raw += bytes(self.rng.randint(1, 64))
        elif variant == "fp64_as_fp32":
            raw = struct.pack(f"<{len(values)}d", *values)
        elif variant == "datatype":
            tensor["datatype"] = self.rng.choice(["INT8", "FP16", "BYTES", "BOOL", "UINT8", "INT32"])
        elif variant == "nan_inf":
            bad = self.rng.choice([float("nan"), float("inf"), float("-inf"), 3.0e38, -1.0])
            at = self.rng.randrange(len(values))
            raw = raw[:at * 4] + struct.pack("<f", bad) + raw[at * 4 + 4:]
        elif variant == "oversized":
            raw = bytes(self.max_body + self.rng.choice([1, 1000, 100_000]))
            tensor["parameters"]["binary_data_size"] = len(raw)
        elif variant == "noise":
            raw = bytes(self.rng.randrange(256) for _ in range(len(raw)))
            must = False  # random bytes can still be floats within range
        elif variant == "absurd_size":
            tensor["parameters"]["binary_data_size"] = self.rng.choice([10**15, 2**63, -1, 1.5, "256", None])
        elif variant == "data_and_size":
            tensor["data"] = values
        elif variant == "model_name":
            doc["model_name"] = self.rng.choice(["other", "", 5])
        head = self.encode(doc)
        headers = {**self.auth(), "Content-Type": "application/octet-stream"}
        if variant == "header":
            headers["Inference-Header-Content-Length"] = self.rng.choice(
                ["-1", "0", "abc", "1e3", str(len(head) + len(raw) + 1), " ", "9" * 30, str(len(head) - 1)])
        elif variant != "no_header":
            headers["Inference-Header-Content-Length"] = str(len(head) + header_shift)
        return Case(variant, head + raw, headers, must_reject=must)

    def case_method_and_path(self) -> Case:
        method, path = self.rng.choice([("PUT", "/v2/models/{model}/infer"), ("DELETE", "/v2/models/{model}"),
                                        ("POST", "/v2/models/other-model/infer"), ("POST", "/v2/models/../infer"),
                                        ("GET", "/v2/models/{model}/infer"), ("POST", "/v1/models/x:predict"),
                                        ("POST", "/v2/models/%00/infer"), ("GET", "/admin")])
        return Case(f"{method}", self.encode(self.valid_doc(1)), self.auth(), method=method, path=path)


async def run(urls: list[str], *, model: str, fuzzer: Fuzzer, n: int, concurrency: int = 24) -> Report:
    """Send ``n`` cases, spread over ``urls`` (the sidecars' addresses; urls[0] is the rate-limit sidecar, which
    alone checks API keys), and check every answer."""
    report = Report()
    queue: asyncio.Queue = asyncio.Queue(maxsize=concurrency * 4)
    timeout = aiohttp.ClientTimeout(total=30)
    start = time.perf_counter()

    async def producer():
        for i in range(n):
            await queue.put((urls[i % len(urls)], fuzzer.case()))
        for _ in range(concurrency):
            await queue.put(None)

    async def worker(session: aiohttp.ClientSession):
        while (item := await queue.get()) is not None:
            url, case = item
            await check(session, url, case)

    async def check(session, url, case: Case):
        report.sent += 1
        report.by_kind[case.kind] += 1
        data = case.body
        if case.chunked and data is not None:
            async def chunks(b=data):
                for i in range(0, len(b), 65536):
                    yield b[i:i + 65536]
            data = chunks()
        try:
            async with session.request(case.method, url + case.path.format(model=model), data=data,
                                       headers=case.headers, skip_auto_headers=["Content-Type"]) as resp:
                payload = await resp.read()
                status, resp_headers = resp.status, resp.headers
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if case.kind.startswith("oversized"):
                report.by_status["closed-after-413"] += 1  # the server may close before reading it all
                return
            report.by_status["error"] += 1
            report.violation(case, f"no answer: {type(exc).__name__}: {exc}")
            return
        report.by_status[status] += 1
        if status >= 500:
            report.violation(case, f"{status}: {payload[:200]!r}")
            return
        try:
            n = resp_headers.get("Inference-Header-Content-Length")  # a binary response: its JSON comes first
            doc = json.loads(payload[:int(n)] if n is not None else payload)
        except ValueError:
            report.violation(case, f"{status} with a body that is not JSON: {payload[:120]!r}")
            return
        if status == 200:
            if case.must_reject and (url == urls[0] or not case.key_check):
                report.violation(case, f"accepted: {case.body[:160]!r}")
            elif not isinstance(doc, dict) or "outputs" not in doc:
                report.violation(case, f"200 without outputs: {payload[:160]!r}")
        elif 400 <= status < 500:
            if not (isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc.get("field")):
                report.violation(case, f"{status} without an error naming the field: {payload[:160]!r}")
        else:
            report.violation(case, f"unexpected status {status}")

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(producer(), *(worker(session) for _ in range(concurrency)))
    report.seconds = time.perf_counter() - start
    return report


async def slow_bodies(host: str, port: int, *, count: int, path: str, key: str, body_timeout: float) -> list[str]:
    """Clients that announce a body and trickle it (slowloris): each must get a 408 within the timeout, not
    hold a handler. Returns the problems found."""
    problems = []

    async def one(i: int):
        reader, writer = await asyncio.open_connection(host, port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
        writer.write(head.encode() + b'{"inputs":')
        await writer.drain()
        start = time.perf_counter()
        try:
            for _ in range(int(body_timeout * 4) + 8):
                await asyncio.sleep(0.5)
                writer.write(b" ")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=body_timeout + 5)
        except asyncio.TimeoutError:
            line = b""
        elapsed = time.perf_counter() - start
        if b" 408 " not in line:
            problems.append(f"slow body {i}: {line!r} after {elapsed:.1f}s")
        writer.close()

    await asyncio.gather(*(one(i) for i in range(count)))
    return problems


async def raw_requests(host: str, port: int) -> list[tuple[bytes, bytes]]:
    """Malformed HTTP that no client library would send; returns (request, status line) pairs. aiohttp's parser
    answers these itself with a 400 before any handler runs (so no field can be named: the request has none)."""
    cases = [b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n{}",
             b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
             b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
             b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
             b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
             b"GARBAGE\r\n\r\n",
             b"POST /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
             b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"]
    out = []
    for raw in cases:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(raw)
        await writer.drain()
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
        except asyncio.TimeoutError:
            line = b"(no answer)"
        writer.close()
        out.append((raw[:60], line.strip()))
    return out
