import os
import pathlib

import pytest

from helpers import ROOT


@pytest.fixture
def root() -> pathlib.Path:
    return ROOT


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """An EC P-256 signing key pair (private.pem, public.pem)."""
    from hardened_operator.signing import generate_key_pair

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
