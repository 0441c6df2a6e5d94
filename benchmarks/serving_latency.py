"""Latency added by the sidecar chain, and max throughput, against the model server alone and
against nginx limit_req as a reverse proxy in front of the same server; side by side on 127.0.0.1.

Targets (same model server process behind all of them):
  model   client -> model server
  chain   client -> rate-limit sidecar -> validation sidecar -> model server
  nginx   client -> nginx (limit_req + proxy_pass, keepalive upstream) -> model server
  pipes   client -> byte pipe -> byte pipe -> model server   (latency only)

The pipes are the floor of this design: two Python processes in the path, where the chain has its two
sidecars, that only copy bytes (asyncio protocols, no HTTP parsing, no work).

Latency: an open-loop generator sends requests at a fixed rate (500 rps), new requests not waiting for old
ones, and records each latency; p50/p99 are reported, and "added" is the target minus the model alone. The
targets take turns in 1 s slices, eleven rounds, so a noisy spell of the machine falls on all of them rather
than on whichever ran then; the first 50 ms of each turn are sent but not recorded (the target's processes
waking from their idle turns), leaving 5,225 per target. The machine's steal time during these runs is
printed. Throughput: wrk with 32 connections for 10 s (closed loop). Limits are set far above the offered
load so nothing is rejected. The load generators share the 2 cores with the servers, as every figure here
does.

    .venv/bin/python benchmarks/serving_latency.py

With --profile (needs `pip install py-spy`): no latency runs; wrk drives the chain for 12 s while py-spy
samples each of the three processes, and the share of CPU samples per function is printed.

    .venv/bin/python benchmarks/serving_latency.py --profile

With --trace: 20 s at 500 rps against the model alone, then the chain, and when the slowest 1% happened.

With --tls: TLS side by side (issue 16). A second rate-limit sidecar terminates TLS (the same validation
sidecar and model server behind it) and nginx gets a second server block with `listen ssl`, both with the same
EC P-256 certificate, TLS 1.2+ and the same ciphers; targets model, chain, chain-tls, nginx, nginx-tls (no
pipes). Clients keep their connections (one handshake per connection, as real clients do).

    .venv/bin/python benchmarks/serving_latency.py --tls

With --smoke (beside any of the others): 100 rps for one recorded second per target and wrk for 1 s; the
same processes, path and table in seconds, figures meaningless.
"""
import asyncio
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import aiohttp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from helpers import Process, free_port, infer_body, make_artifact, serving_config  # noqa: E402

RATE, SECONDS, WRK_SECONDS = 500, 10, 10
KEY = "bench-" + "k" * 26


def nginx_conf(prefix: pathlib.Path, port: int, upstream: int, tls_port: int | None = None) -> pathlib.Path:
    conf = prefix / "nginx.conf"
    location = """
    location / {
      limit_req zone=perkey burst=100000 nodelay;
      proxy_pass http://model;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }"""
    tls = "" if tls_port is None else f"""
  server {{
    listen 127.0.0.1:{tls_port} ssl;
    ssl_certificate {prefix}/tls.crt; ssl_certificate_key {prefix}/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;
    client_max_body_size 64k;{location}
  }}"""
    conf.write_text(f"""
worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
  limit_req_zone $http_authorization zone=perkey:10m rate=100000r/s;
  upstream model {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 64k;{location}
  }}{tls}
}}
""")
    return conf


def pipe(port: int, upstream: int) -> None:
    """Copy bytes between each client connection and its own upstream connection; nothing else."""

    class Back(asyncio.Protocol):
        def __init__(self, front: asyncio.Transport):
            self.front = front

        def data_received(self, data: bytes):
            self.front.write(data)

        def connection_lost(self, exc):
            self.front.close()

    class Front(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.up, self.pending = transport, None, []
            asyncio.get_running_loop().create_task(self.connect())

        async def connect(self):
            self.up, _ = await asyncio.get_running_loop().create_connection(lambda: Back(self.transport),
                                                                            "127.0.0.1", upstream)
            for data in self.pending:
                self.up.write(data)

        def data_received(self, data: bytes):
            if self.up is None:
                self.pending.append(data)
            else:
                self.up.write(data)

        def connection_lost(self, exc):
            if self.up is not None:
                self.up.close()

    async def run():
        server = await asyncio.get_running_loop().create_server(Front, "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(run())


async def open_loop(urls: dict[str, str], body: bytes, headers: dict, rate: int, seconds: float,
                    slice_seconds: float = 1.0, skip_seconds: float = 0.05, ssl_context=None
                    ) -> dict[str, np.ndarray]:
    """Each target in turn for ``slice_seconds`` at ``rate``, until each has had ``seconds`` recorded; the first
    ``skip_seconds`` of each turn are sent but not recorded (the target's processes waking from their idle
    turns). Per target, one row per recorded request: when it was due (s since the run began), how late the
    generator sent it (ms: its own pauses), and its latency (ms)."""
    rows: dict[str, list[tuple[float, float, float]]] = {n: [] for n in urls}
    errors = 0
    sessions = {n: aiohttp.ClientSession(connector=aiohttp.TCPConnector(
        limit=0, **({"ssl": ssl_context} if ssl_context else {}))) for n in urls}
    began = time.perf_counter()
    try:
        async def one(name: str, due: float, record: bool = True):
            nonlocal errors
            t = time.perf_counter()
            async with sessions[name].post(urls[name], data=body, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            if record:
                rows[name].append((due - began, (t - due) * 1000, (time.perf_counter() - t) * 1000))

        for name in urls:  # warm up connections and caches
            for _ in range(50):
                await one(name, time.perf_counter(), record=False)
        per_slice, skip = int(rate * slice_seconds), int(rate * skip_seconds)
        began = time.perf_counter()
        for _ in range(int(seconds / slice_seconds) + (1 if skip else 0)):  # one more turn: the unrecorded starts
            for name in urls:
                tasks, start = [], time.perf_counter()
                for i in range(per_slice):
                    due = start + i / rate
                    if due > time.perf_counter():
                        await asyncio.sleep(due - time.perf_counter())
                    tasks.append(asyncio.create_task(one(name, due, record=i >= skip)))
                await asyncio.gather(*tasks)
    finally:
        for session in sessions.values():
            await session.close()
    if errors:
        raise RuntimeError(f"{errors} non-200 responses")
    return {n: np.asarray(v) for n, v in rows.items()}


def trace(name: str, url: str, body: bytes, headers: dict, seconds: float = 20.0) -> None:
    """When do the slowest 1% happen? One target at RATE for ``seconds``; prints the p99, how late the generator
    sent (its own pauses), and the spells (gaps under 20 ms) into which the requests over the p99 fall."""
    rows = asyncio.run(open_loop({name: url}, body, headers, RATE, seconds, slice_seconds=seconds,
                                 skip_seconds=0))[name]
    sent, lag, took = rows.T
    p99 = np.percentile(took, 99)
    slow = np.sort(sent[took >= p99])
    spells = np.split(slow, np.nonzero(np.diff(slow) > 0.02)[0] + 1)
    print(f"{name}: p50 {np.percentile(took, 50):.2f} ms, p99 {p99:.2f} ms; generator sent late by up to "
          f"{lag.max():.1f} ms (p99 {np.percentile(lag, 99):.2f}); the {len(slow)} requests over the p99 fall in "
          f"{len(spells)} spells: " + ", ".join(f"{s[0]:.2f}s x{len(s)}" for s in spells if len(s) > 1))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat fields 14 and 15)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of the whole machine so far: steal is CPU time the hypervisor gave to others."""
    fields = [int(v) for v in pathlib.Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return fields[7], sum(fields[:8])


def wrk(url: str, body_file: pathlib.Path, seconds: int | None = None, pids: dict[str, int] | None = None) -> float:
    seconds = seconds or WRK_SECONDS
    script = body_file.with_suffix(".lua")
    script.write_text(f'wrk.method = "POST"\nwrk.body = io.open("{body_file}"):read("*a")\n'
                      f'wrk.headers["Content-Type"] = "application/json"\n'
                      f'wrk.headers["Authorization"] = "Bearer {KEY}"\n')
    before = {n: cpu_seconds(pid) for n, pid in (pids or {}).items()}
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "-s", str(script), url], capture_output=True,
                         text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(out)
    rps = float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")))
    total = int(next(line.split()[0] for line in out.splitlines() if "requests in" in line))
    if pids:
        print(f"  {url}: {rps:.0f} rps; CPU per request: " + ", ".join(
            f"{n} {1e6 * (cpu_seconds(pid) - before[n]) / total:.0f} us" for n, pid in pids.items()))
    return rps


def profile(pids: dict[str, int], url: str, body_file: pathlib.Path, out: pathlib.Path, seconds: int = 12) -> None:
    """Sample each process with py-spy (raw collapsed stacks) while wrk loads the chain; print self-time shares."""
    import collections

    spies = {n: subprocess.Popen([shutil.which("py-spy") or str(ROOT / ".venv/bin/py-spy"), "record", "--gil", "-r", "200",
                                  "-d", str(seconds), "-f", "raw", "-o", str(out / f"{n}.txt"), "-p", str(pid)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for n, pid in pids.items()}
    time.sleep(0.5)
    print(f"chain under wrk while sampled: {wrk(url, body_file, seconds=seconds - 1):.0f} rps")
    for spy in spies.values():
        spy.wait()
    for name in pids:
        own: collections.Counter = collections.Counter()
        total = 0
        for line in (out / f"{name}.txt").read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            total += int(count)
            own[stack.split(";")[-1].split(" (")[0]] += int(count)
        print(f"{name}: {total} samples; self time:")
        for func, count in own.most_common(8):
            print(f"  {100 * count / total:5.1f}%  {func}")


def main():
    tmp = pathlib.Path(tempfile.mkdtemp())
    from hardened_model.signing import generate_key_pair

    priv, pub = generate_key_pair(tmp / "keys")
    artifact = make_artifact(tmp / "artifact", priv)
    cfg = serving_config(tmp / "serving.json", {"rateLimit": {"perKey": {"requestsPerSecond": 100000,
                                                                         "burst": 100000}}})
    (tmp / "api-keys").write_text(KEY + "\n")
    p = {n: free_port() for n in ("model", "val", "rl", "nginx", "pipe1", "pipe2", "m1", "m2", "m3", "rl_tls",
                                  "m4", "nginx_tls")}
    tls = "--tls" in sys.argv
    ssl_context = None
    if tls:
        import ssl

        from hardened_operator import devcerts

        ca, ca_key = devcerts.make_ca("bench CA")
        crt, key = devcerts.issue(ca, ca_key, "localhost", hosts=("127.0.0.1",))
        devcerts.write(tmp / "ca.crt", ca)
        devcerts.write(tmp / "tls.crt", crt)
        devcerts.write(tmp / "tls.key", key, private=True)
        ssl_context = ssl.create_default_context(cafile=str(tmp / "ca.crt"))
    procs = [
        Process("serve", "--artifact", str(artifact), "--public-key", str(pub), "--port", str(p["model"]),
                "--metrics-port", str(p["m1"]), "--log-level", "WARNING",
                ready_url=f"http://127.0.0.1:{p['model']}/v2/health/ready", log=tmp / "model.log"),
        Process("validate-proxy", "--config", str(cfg), "--upstream", f"http://127.0.0.1:{p['model']}",
                "--port", str(p["val"]), "--metrics-port", str(p["m2"]), "--log-level", "WARNING",
                ready_url=f"http://127.0.0.1:{p['val']}/v2/health/ready", log=tmp / "val.log"),
        Process("ratelimit-proxy", "--config", str(cfg), "--api-keys", str(tmp / "api-keys"), "--upstream",
                f"http://127.0.0.1:{p['val']}", "--port", str(p["rl"]), "--metrics-port", str(p["m3"]),
                "--log-level", "WARNING", ready_url=f"http://127.0.0.1:{p['rl']}/v2/health/ready",
                log=tmp / "rl.log"),
    ]
    if tls:
        procs.append(Process("ratelimit-proxy", "--config", str(cfg), "--api-keys", str(tmp / "api-keys"),
                             "--upstream", f"http://127.0.0.1:{p['val']}", "--port", str(p["rl_tls"]),
                             "--metrics-port", str(p["m4"]), "--log-level", "WARNING", "--tls-cert",
                             str(tmp / "tls.crt"), "--tls-key", str(tmp / "tls.key"),
                             ready_url=f"http://127.0.0.1:{p['m4']}/readyz", log=tmp / "rl-tls.log"))
    pipes = [subprocess.Popen([sys.executable, __file__, "pipe", str(p["pipe2"]), str(p["model"])]),
             subprocess.Popen([sys.executable, __file__, "pipe", str(p["pipe1"]), str(p["pipe2"])])]
    nginx = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(tmp), "-c",
                              str(nginx_conf(tmp, p["nginx"], p["model"], p["nginx_tls"] if tls else None)),
                              "-g", "daemon off;"])
    time.sleep(1)
    try:
        from sklearn.datasets import load_digits

        x = (load_digits().images[:1] / 16.0).reshape(1, 1, 8, 8)
        body = json.dumps(infer_body(x)).encode()
        (tmp / "body.json").write_bytes(body)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
        path = "/v2/models/digits-demo/infer"
        pids = {"model": procs[0].proc.pid, "validation": procs[1].proc.pid, "ratelimit": procs[2].proc.pid}
        if "--profile" in sys.argv:
            profile(pids, f"http://127.0.0.1:{p['rl']}{path}", tmp / "body.json", tmp)
            return
        targets = {"model": p["model"], "chain": p["rl"], "nginx": p["nginx"]}
        urls = {n: f"http://127.0.0.1:{port}{path}" for n, port in targets.items()}
        if tls:
            pids["ratelimit-tls"] = procs[3].proc.pid
            urls = {"model": urls["model"], "chain": urls["chain"], "chain-tls": f"https://127.0.0.1:{p['rl_tls']}{path}",
                    "nginx": urls["nginx"], "nginx-tls": f"https://127.0.0.1:{p['nginx_tls']}{path}"}
        else:
            urls["pipes"] = f"http://127.0.0.1:{p['pipe1']}{path}"
        if "--cpu" in sys.argv:
            for n in ("model", "chain"):
                wrk(f"http://127.0.0.1:{targets[n]}{path}", tmp / "body.json",
                    pids=pids if n == "chain" else {"model": pids["model"]})
            return
        if "--trace" in sys.argv:
            for n in ("model", "chain"):
                trace(n, f"http://127.0.0.1:{targets[n]}{path}", body, headers)
            return
        ticks = cpu_ticks()
        lat = {n: rows[:, 2] for n, rows in asyncio.run(open_loop(
            urls, body, headers, RATE, SECONDS, ssl_context=ssl_context)).items()}
        steal = [b - a for a, b in zip(ticks, cpu_ticks())]

        def chain_pids(n):
            if not n.startswith("chain"):
                return {"model": pids["model"]}
            return {"model": pids["model"], "validation": pids["validation"],
                    "ratelimit": pids["ratelimit-tls" if n == "chain-tls" else "ratelimit"]}

        rps = {n: wrk(url, tmp / "body.json", pids=chain_pids(n)) for n, url in urls.items() if n != "pipes"}
    finally:
        nginx.terminate()
        nginx.wait(10)
        for proc in pipes:
            proc.kill()
            proc.wait(10)
        for proc in procs:  # each one, even when another failed to stop in time
            try:
                proc.stop()
            except subprocess.TimeoutExpired:
                proc.proc.kill()
    base50, base99 = np.percentile(lat["model"], 50), np.percentile(lat["model"], 99)
    print(f"open loop {RATE} rps x {SECONDS} s per target, in 1 s turns; wrk -t2 -c32 -d{WRK_SECONDS}s; "
          f"body {len(body)} bytes (1 digit)")
    print(f"steal (CPU time the hypervisor gave elsewhere) during the latency runs: "
          f"{100 * steal[0] / max(1, steal[1]):.1f}%")
    print(f"{'target':9s} {'p50 ms':>8s} {'p99 ms':>8s} {'added p50':>10s} {'added p99':>10s} {'max rps':>9s}")
    for n in lat:
        p50, p99 = np.percentile(lat[n], 50), np.percentile(lat[n], 99)
        print(f"{n:9s} {p50:8.2f} {p99:8.2f} {p50 - base50:10.2f} {p99 - base99:10.2f} "
              f"{rps[n] if n in rps else float('nan'):9.0f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["pipe"]:
        pipe(int(sys.argv[2]), int(sys.argv[3]))
    else:
        if "--smoke" in sys.argv:
            RATE, SECONDS, WRK_SECONDS = 100, 1, 1
        main()
