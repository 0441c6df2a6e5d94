import os
import pathlib
import tempfile

# The kubernetes client reads $KUBECONFIG's path at import time (kopf's login too): fix the
# path before anything imports `kubernetes`; the kmock fixture writes the file's content.
KUBECONFIG = pathlib.Path(tempfile.mkdtemp()) / "kubeconfig"
os.environ["KUBECONFIG"] = str(KUBECONFIG)

import pytest  # noqa: E402

from helpers import ROOT  # noqa: E402


@pytest.fixture
def root() -> pathlib.Path:
    return ROOT


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """An EC P-256 signing key pair (private.pem, public.pem)."""
    from hardened_model.signing import generate_key_pair

    return generate_key_pair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def moto_server():
    """A real S3 API (moto's server) on 127.0.0.1, shared by the session's tests."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port (Debian's redis-server package)."""
    import shutil
    import subprocess
    import time

    from helpers import free_port

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed: run ./scripts/setup")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path_factory.mktemp("redis"))], stdout=subprocess.DEVNULL)
    import socket
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)
