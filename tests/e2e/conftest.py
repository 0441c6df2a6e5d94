"""Fixtures of the end-to-end suite (marker e2e): one real cluster per session (tests/e2e/cluster.py says
which), the images built or reused once, the operator installed with the Helm chart once. On a failure the
report gets the dump of the namespaces the test used (pods, describe, logs, Events)."""
import pytest

from cluster import OPERATOR_NS, Cluster, Unavailable, images, install_operator


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


_STARTED: list[Cluster] = []


@pytest.fixture(scope="session")
def cluster():
    try:
        c = Cluster.find_or_start()
    except Unavailable as exc:
        pytest.skip(f"e2e: {exc}")
    _STARTED.append(c)
    yield c
    c.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Stop a cluster this session started as soon as the last e2e test and its fixtures are done: the rest
    of the suite must not share two cores with an apiserver, a kubelet and the pods."""
    yield
    if _STARTED and (nextitem is None or "/e2e/" not in str(nextitem.fspath)):
        _STARTED.pop().stop()


@pytest.fixture(scope="session")
def e2e_images(cluster):
    try:
        return images(cluster)
    except Unavailable as exc:
        pytest.skip(f"e2e: {exc}")


PLATFORM_KEY_SECRET = "hardened-platform-signing"


@pytest.fixture(scope="session")
def operator(cluster, e2e_images):
    """The operator, installed by the chart and running in the cluster (standalone, one replica), with the
    platform countersignature on (issue 27): every model the suite serves is countersigned by the operator,
    and each serving pod's init container refuses one the platform did not sign. The key is made here, as a
    cluster admin would make it, in the operator's namespace only."""
    from hardened_model.signing import generate_key_pem

    cluster.namespace(OPERATOR_NS)
    private_pem, _ = generate_key_pem()
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                   "metadata": {"name": PLATFORM_KEY_SECRET, "namespace": OPERATOR_NS},
                   "stringData": {"private.pem": private_pem}})
    install_operator(cluster, e2e_images["operator"], f"platformSigning.secretName={PLATFORM_KEY_SECRET}",
                     verifier_image=e2e_images["server"])
    return e2e_images


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    c = item.funcargs.get("cluster") if hasattr(item, "funcargs") else None
    if report.failed and c is not None:
        namespaces = getattr(item.module, "DUMP_NAMESPACES", []) + [OPERATOR_NS]
        try:
            report.sections.append(("cluster state", c.dump(*namespaces)))
        except Exception as exc:  # the dump must never hide the failure itself
            report.sections.append(("cluster state", f"dump failed: {exc!r}"))
