"""`hardened-model up` for real: train -> sign -> verify -> serve on this machine, then HTTP."""
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from helpers import Process, free_port, http, infer_body, tiny_manifest

pytestmark = [pytest.mark.slow, pytest.mark.server]


def cli(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "hardened_operator.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("up")
    doc = tiny_manifest({"serving": {"validation": {"maxBodyBytes": 8192},
                                     "rateLimit": {"perKey": {"requestsPerSecond": 2, "burst": 4}}}})
    spec = tmp / "model.yaml"
    spec.write_text(yaml.safe_dump(doc))
    port = free_port()
    out = cli("up", str(spec), "--detach", "--port", str(port), cwd=tmp)
    assert out.returncode == 0, out.stdout + out.stderr
    yield {"tmp": tmp, "spec": spec, "url": f"http://127.0.0.1:{port}", "out": out.stdout,
           "key": (tmp / ".hardened/digits-demo/api-keys").read_text().split()[0]}
    cli("down", str(spec), cwd=tmp)


def infer(running, body, key="default"):
    key = running["key"] if key == "default" else key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return http("POST", running["url"] + "/v2/models/digits-demo/infer", body, headers)


def test_summary_names_metrics_url_key_file_and_report(running):
    out = running["out"]
    for text in ("hardened-model up: serving", "clean accuracy", "ε =", "membership AUC", "verified, digest",
                 running["url"], "API key file", "report", "example request:", "DEVELOPMENT signing key"):
        assert text in out, text


def test_the_served_model_answers_and_refuses(running):
    from sklearn.datasets import load_digits

    x = (load_digits().images[:1] / 16.0).reshape(1, 1, 8, 8)
    status, body, _ = infer(running, infer_body(x))
    assert status == 200 and body["outputs"][0]["shape"] == [1, 10]
    nan = json.dumps(infer_body(x)).replace("0.0", "NaN", 1).encode()
    assert infer(running, nan)[0] == 400
    assert infer(running, b"[" + b"0.5," * 4000 + b"0]")[0] == 413
    assert infer(running, infer_body(x), key=None)[0] == 401
    codes = [infer(running, infer_body(x))[0] for _ in range(8)]
    assert 429 in codes, codes


def test_status_and_report(running):
    out = cli("status", str(running["spec"]), cwd=running["tmp"])
    assert out.returncode == 0 and json.loads(out.stdout)["processes"] == {
        "model": "running", "validation": "running", "ratelimit": "running"}
    report = cli("report", str(running["spec"]), cwd=running["tmp"]).stdout.strip()
    assert report.endswith("model/report.html") and pathlib.Path(running["tmp"], report).is_file()


def test_report_renders_in_headless_chromium(running, tmp_path):
    import matplotlib.image

    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed: run ./scripts/setup"
    report = pathlib.Path(running["tmp"], cli("report", str(running["spec"]), cwd=running["tmp"]).stdout.strip())
    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600"]
    subprocess.run([chromium, *flags, f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120)
    dom = subprocess.run([chromium, *flags, "--dump-dom", report.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    for plot in ("accuracy-vs-eps", "epsilon", "mia-roc"):
        assert f'id="plot-{plot}"' in dom
    img = matplotlib.image.imread(str(shot))
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    colored = (np.abs(img[..., 0] - img[..., 2]) > 0.2).mean()  # plot lines are blue/orange, the page is grey
    assert colored > 0.001, "the screenshot has no coloured plot pixels"


def test_no_secret_reaches_a_log_the_output_or_a_metric(running):
    """After real traffic (200s, 401s, 429s): the API key and the signing private key appear in no log of the
    four stages, not in `up`'s output, and not on any metrics endpoint."""
    import re
    import urllib.request

    tmp = running["tmp"]
    for key in (running["key"], "wrong-key-" + "x" * 20):
        for _ in range(6):
            infer(running, infer_body(np.full((1, 1, 8, 8), 0.5)), key=key)
    private = (tmp / ".hardened/secrets/digits-demo-signing/private.pem").read_text()
    secret_lines = [line for line in private.splitlines() if line and not line.startswith("-----")]
    logs = {p: p.read_text(errors="replace") for p in (tmp / ".hardened").rglob("*.log")}
    assert len(logs) >= 4  # train, model, validation, ratelimit
    assert running["key"] not in (tmp / ".hardened/digits-demo/serving.json").read_text()  # keys live apart
    metrics = []
    for text in logs.values():
        metrics += [int(m) for m in re.findall(r'"metrics_port": (\d+)', text)]
    assert len(metrics) >= 3
    pages = [urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
             for port in set(metrics)]
    for where, text in [*logs.items(), ("up output", running["out"]), *(("metrics", p) for p in pages)]:
        assert running["key"] not in text, where
        assert "wrong-key-" not in text, where  # rejected keys are not logged either
        assert not any(line in text for line in secret_lines), where


def test_up_with_tls_makes_a_development_ca_and_serves_https_with_client_certificates(running):
    """A serving-only change (TLS with client certificates): no retraining; a development CA, a localhost
    certificate and a client certificate; the printed curl line carries --cacert, --cert and --key."""
    import ssl
    import urllib.request

    from sklearn.datasets import load_digits

    tmp = running["tmp"]
    doc = yaml.safe_load(running["spec"].read_text())
    doc["spec"]["serving"]["tls"] = {"secretName": "digits-tls", "clientCASecret": "callers-ca"}
    spec = tmp / "model-tls.yaml"
    spec.write_text(yaml.safe_dump(doc))
    port = free_port()
    out = cli("up", str(spec), "--detach", "--port", str(port), cwd=tmp)
    assert out.returncode == 0, out.stdout + out.stderr
    home = tmp / ".hardened/digits-demo"
    flat = " ".join(out.stdout.split())
    assert "not training again" in flat and "DEVELOPMENT CA" in flat
    assert "--cacert .hardened/digits-demo/dev-ca.crt --cert .hardened/digits-demo/client.crt" in flat
    assert f"https://127.0.0.1:{port}" in flat
    x = (load_digits().images[:1] / 16.0).reshape(1, 1, 8, 8)
    req = urllib.request.Request(f"https://localhost:{port}/v2/models/digits-demo/infer",
                                 data=json.dumps(infer_body(x)).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {running['key']}",
                                          "Content-Type": "application/json"})
    ctx = ssl.create_default_context(cafile=str(home / "dev-ca.crt"))
    with pytest.raises(OSError):  # no client certificate: refused while sending or while reading (TLS 1.3)
        urllib.request.urlopen(req, context=ctx, timeout=10)
    ctx.load_cert_chain(home / "client.crt", home / "client.key")
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        assert r.status == 200 and json.loads(r.read())["outputs"][0]["shape"] == [1, 10]
    assert cli("down", str(spec), cwd=tmp).returncode == 0


def test_tampered_weights_are_refused_and_up_retrains(running):
    tmp, spec = running["tmp"], running["spec"]
    assert cli("down", str(spec), cwd=tmp).returncode == 0
    state = tmp / ".hardened"
    version_dir = next((state / "volumes/hardened-models/digits-demo").iterdir())
    weights = version_dir / "model/model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-5] ^= 0xFF
    weights.write_bytes(bytes(blob))
    server = Process("serve", "--artifact", str(version_dir), "--public-key",
                     str(state / "secrets/digits-demo-signing/public.pem"), "--port", str(free_port()),
                     "--metrics-port", str(free_port()), log=tmp / "serve.log")
    assert server.wait() == 3 and "model.safetensors" in server.output()
    again = cli("up", str(spec), "--detach", cwd=tmp)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "refused" in again.stdout and "retraining" in again.stdout
    assert cli("down", str(spec), cwd=tmp).returncode == 0


def test_bad_spec_stops_before_any_stage(tmp_path):
    doc = tiny_manifest({"training": {"epochs": 0}})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    out = cli("up", str(tmp_path / "bad.yaml"), cwd=tmp_path)
    assert out.returncode == 2
    assert "spec.training.epochs: Invalid value: 0" in out.stderr
    assert not (tmp_path / ".hardened").exists()


def test_gate_failure_names_the_stage_and_serves_nothing(tmp_path):
    doc = tiny_manifest({"gates": {"minCleanAccuracy": 0.999}})
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(doc))
    out = cli("up", str(tmp_path / "m.yaml"), cwd=tmp_path)
    assert out.returncode == 3
    assert "stage gates failed" in out.stdout and "minCleanAccuracy" in out.stdout
    assert not (tmp_path / ".hardened/digits-demo/state.json").exists()


def test_up_with_a_per_run_key_signs_verifies_and_serves_with_no_private_key_on_disk(tmp_path):
    """signing.method ephemeral: the trainer's key lives in its memory only; `up` keeps the public half the
    trainer reported and verifies and serves with it; a second `up` finds the version verified by it."""
    from sklearn.datasets import load_digits

    doc = tiny_manifest({"signing": {"method": "ephemeral", "privateKeySecret": None, "publicKeySecret": None}})
    spec = tmp_path / "m.yaml"
    spec.write_text(yaml.safe_dump(doc))
    port = free_port()
    out = cli("up", str(spec), "--detach", "--port", str(port), cwd=tmp_path)
    try:
        assert out.returncode == 0, out.stdout + out.stderr
        assert "DEVELOPMENT signing key" not in out.stdout
        state = tmp_path / ".hardened"
        [key_file] = (state / "digits-demo/run-keys").iterdir()
        assert key_file.read_text().startswith("-----BEGIN PUBLIC KEY-----")
        assert not [p for p in state.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]
        key = (state / "digits-demo/api-keys").read_text().split()[0]
        x = (load_digits().images[:1] / 16.0).reshape(1, 1, 8, 8)
        status, body, _ = http("POST", f"http://127.0.0.1:{port}/v2/models/digits-demo/infer", infer_body(x),
                               {"Authorization": f"Bearer {key}"})
        assert status == 200 and body["outputs"][0]["shape"] == [1, 10]
        assert cli("down", str(spec), cwd=tmp_path).returncode == 0
        again = cli("up", str(spec), "--detach", "--port", str(free_port()), cwd=tmp_path)
        assert again.returncode == 0 and "not training again" in again.stdout, again.stdout + again.stderr
    finally:
        cli("down", str(spec), cwd=tmp_path)
