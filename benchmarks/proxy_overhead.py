"""CPU per request of one forwarding hop: aiohttp's client against the sidecars' pool (hardened_server.proxy);
and, for the server side of a hop, aiohttp's server against a bare asyncio protocol on httptools.

Both proxies are the same aiohttp server handler (read the body, forward it, answer with the upstream's
body); only the client differs. The upstream is a bare asyncio server (httptools) that answers every
request at once, so what is measured is the proxy process: its user + system CPU time over a wrk run,
divided by the requests wrk completed. The server-side rows answer wrk directly, with no upstream: an
aiohttp application with one route, and the bare upstream itself. wrk -t2 -c32 -d8s, a 470-byte POST,
on 127.0.0.1.

    .venv/bin/python benchmarks/proxy_overhead.py [--smoke]
"""
import asyncio
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

ANSWER = b'{"outputs":[' + b"0," * 200 + b"0]}"


def upstream(port: int) -> None:
    """Answers every HTTP/1.1 request on a keep-alive connection at once."""
    import httptools

    response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(ANSWER), ANSWER)

    class Answer(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.parser = transport, httptools.HttpRequestParser(self)

        def data_received(self, data):
            self.parser.feed_data(data)

        def on_message_complete(self):
            self.transport.write(response)

    async def main():
        server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(main())


def proxy(kind: str, port: int, upstream_port: int) -> None:
    """An aiohttp server: a proxy through aiohttp's client or the pool, or (aiohttp-server) answering itself."""
    import aiohttp
    from aiohttp import web

    from hardened_server.proxy import Upstream

    url = f"http://127.0.0.1:{upstream_port}"
    app = web.Application()
    if kind == "aiohttp-server":
        async def handle(request):
            await request.read()
            return web.Response(body=ANSWER, content_type="application/json")
    elif kind == "aiohttp-client":
        async def start(app):
            app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256), auto_decompress=False)

        async def handle(request):
            body = await request.read()
            async with request.app["session"].post(url + request.rel_url.path_qs, data=body,
                                                   headers={"Content-Type": "application/json"}) as resp:
                payload = await resp.read()
            return web.Response(status=resp.status, body=payload, content_type="application/json")
        app.on_startup.append(start)
    else:
        pool = Upstream(url)

        async def handle(request):
            status, _, payload = await pool.forward(request, await request.read())
            return web.Response(status=status, body=payload, content_type="application/json")
    app.router.add_post("/v2/models/m/infer", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def main() -> None:
    from common import smoke_parser
    from helpers import free_port
    from serving_latency import cpu_seconds

    seconds = 1 if smoke_parser(__doc__.split("\n\n")[0]).parse_args().smoke else 8  # wrk's -d

    tmp = pathlib.Path(tempfile.mkdtemp())
    script = tmp / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.body = string.rep("1", 470)\n'
                      'wrk.headers["Content-Type"] = "application/json"\n')
    up_port = free_port()
    procs = [subprocess.Popen([sys.executable, __file__, "upstream", str(up_port)])]
    try:
        ports, pids = {}, {}
        for kind in ("aiohttp-client", "pool", "aiohttp-server"):
            ports[kind] = free_port()
            procs.append(subprocess.Popen([sys.executable, __file__, "proxy", kind, str(ports[kind]), str(up_port)]))
            pids[kind] = procs[-1].pid
        ports["httptools-protocol"], pids["httptools-protocol"] = up_port, procs[0].pid
        time.sleep(3)
        print(f"wrk -t2 -c32 -d{seconds}s, 470-byte POST; CPU of the measured process per request")
        for kind in ports:
            pid = pids[kind]
            before = cpu_seconds(pid)
            out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "-s", str(script),
                                  f"http://127.0.0.1:{ports[kind]}/v2/models/m/infer"],
                                 capture_output=True, text=True, check=True).stdout
            if "Non-2xx" in out:
                raise RuntimeError(out)
            total = int(next(line.split()[0] for line in out.splitlines() if "requests in" in line))
            rps = float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")))
            used = 1e6 * (cpu_seconds(pid) - before) / total
            role = "server only" if kind in ("aiohttp-server", "httptools-protocol") else "proxy hop"
            print(f"{role:11s} {kind:18s} {rps:8.0f} rps  {used:6.0f} us CPU per request")
    finally:
        for proc in procs:
            proc.kill()


if __name__ == "__main__":
    if sys.argv[1:2] == ["upstream"]:
        upstream(int(sys.argv[2]))
    elif sys.argv[1:2] == ["proxy"]:
        proxy(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
