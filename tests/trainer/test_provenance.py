"""Issue 18: the trainer records the exact data bytes it read and signs an in-toto/SLSA provenance with the
model; the verifier enforces spec.signing.provenance and data.sha256 against it."""
import hashlib
import json
import pathlib
import shutil
import subprocess
from importlib import metadata

import numpy as np
import pytest

from hardened_model import provenance as prov
from hardened_model.contracts import TRAINING_SECTIONS
from hardened_model.spec import parse_manifest, spec_digest
from hardened_server.cli import main as server_main
from hardened_trainer.__main__ import EXIT_BAD_CONFIG, EXIT_OK
from hardened_trainer.data import DataError, data_digest, load_dataset
from helpers import tiny_manifest
from test_main import run_trainer

IMAGE = "ghcr.io/hardened-model/trainer@sha256:" + "ab" * 32


def digits_npz(path: pathlib.Path) -> pathlib.Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    np.savez(path, x=d.images.astype(np.uint8), y=d.target)
    return path


def sha(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, keys):
    """A model trained from a pinned file:// npz by a trainer 'image' given by digest."""
    tmp = tmp_path_factory.mktemp("prov")
    data = digits_npz(tmp / "digits.npz")
    doc = tiny_manifest({"data": {"source": f"file://{data}", "sha256": sha(data)}})
    mp = pytest.MonkeyPatch()
    mp.setenv("HARDENED_TRAINER_IMAGE", IMAGE)
    mp.setenv("HARDENED_POD_NAME", "digits-demo-train-1a2b3c-x7k2p")
    try:
        code, _ = run_trainer(tmp, doc, keys[0])
    finally:
        mp.undo()
    assert code == EXIT_OK
    return tmp, data, doc


def verify(artifact: pathlib.Path, public_key: pathlib.Path, *extra: str, capsys) -> tuple[int, dict | str]:
    code = server_main(["verify", "--artifact", str(artifact), "--public-key", str(public_key), *extra])
    out = capsys.readouterr().out
    return code, (out if "--explain" in extra else json.loads(out))


# ------------------------------------------------------------------ the record
def test_provenance_names_the_data_the_image_the_versions_and_the_files(trained):
    tmp, data, doc = trained
    statement = json.loads((tmp / "out/model/provenance.json").read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    # the subjects are the directory's other files, by their sha256
    assert {s["name"]: s["digest"]["sha256"] for s in statement["subject"]} == {
        p.name: sha(p) for p in (tmp / "out/model").iterdir() if p.name != "provenance.json"}
    s = prov.summarize(statement)
    assert s.data_source == f"file://{data}" and s.data_digest == sha(data)
    assert s.data_files == [{"name": "digits.npz", "sha256": sha(data), "size": data.stat().st_size}]
    assert s.trainer_image == IMAGE and s.trainer_image_digest == "sha256:" + "ab" * 32
    assert s.spec_digest == spec_digest(parse_manifest(doc).spec, *TRAINING_SECTIONS)
    assert s.seed == 0 and s.device == "cpu" and s.invocation_id == "digits-demo-train-1a2b3c-x7k2p"
    assert s.started <= s.finished
    import torch
    assert s.versions["torch"] == torch.__version__.split("+")[0]
    for pkg in ("opacus", "adversarial-robustness-toolbox", "model-signing", "hardened-model"):
        assert s.versions[pkg] == metadata.version(pkg), pkg
    # the operator's input: the termination message carries the data digest and the image
    term = json.loads((tmp / "termination-log").read_text())
    assert term["dataDigest"] == sha(data) and term["trainerImage"] == IMAGE


def test_the_provenance_is_covered_by_the_signature(trained, keys, tmp_path, capsys):
    tmp, _, _ = trained
    copy = tmp_path / "a"
    shutil.copytree(tmp / "out", copy)
    path = copy / "model/provenance.json"
    path.write_text(path.read_text().replace("ghcr.io/hardened-model/trainer", "ghcr.io/hardened-model/trainex"))
    code, out = verify(copy, keys[1], capsys=capsys)
    assert code == 3 and "provenance.json" in out["reason"]


def test_verify_reports_the_provenance(trained, keys, capsys):
    tmp, data, _ = trained
    code, out = verify(tmp / "out", keys[1], capsys=capsys)
    assert code == 0
    assert out["provenance"] == {"dataDigest": sha(data), "trainerImage": IMAGE,
                                 "trainerImageDigest": "sha256:" + "ab" * 32}


def test_explain_shows_data_digest_trainer_image_and_versions(trained, keys, capsys):
    tmp, data, _ = trained
    code, text = verify(tmp / "out", keys[1], "--explain", capsys=capsys)
    assert code == 0 and text.startswith("VERIFIED")
    assert f"sha256:       {sha(data)}" in text
    assert f"trainer image:  {IMAGE}" in text and "digest:       sha256:" + "ab" * 32 in text
    assert f"opacus {metadata.version('opacus')}" in text and "model-signing" in text
    assert "digits.npz" in text and "model.safetensors" in text


# ------------------------------------------------------------------ the policy
def test_a_changed_byte_of_data_fails_verify_only_when_the_pin_differs(trained, keys, capsys, tmp_path):
    tmp, data, _ = trained
    changed = tmp_path / "digits.npz"
    blob = bytearray(data.read_bytes())
    blob[-100] ^= 1
    changed.write_bytes(bytes(blob))
    old, new = sha(data), sha(changed)
    policy = lambda pin: ["--provenance-policy", json.dumps({"requireDataDigest": True, "dataSha256": pin})]  # noqa: E731
    assert verify(tmp / "out", keys[1], *policy(old), capsys=capsys)[0] == 0   # the pin the model was trained at
    code, out = verify(tmp / "out", keys[1], *policy(new), capsys=capsys)      # a pin moved to the changed bytes
    assert code == 3 and out["verified"] is False
    assert f"data.sha256: the model was trained from data with sha256 {old}, the spec pins {new}" in out["reason"]


@pytest.mark.parametrize("allowed, ok", [
    (["ghcr.io/hardened-model/trainer"], True),                      # the repository, any tag or digest
    (["ghcr.io/hardened-model/"], True),                             # a prefix
    ([IMAGE], True),                                                  # the exact digest
    (["sha256:" + "ab" * 32], True),                                 # the digest alone
    (["ghcr.io/hardened-model/trainer@sha256:" + "cd" * 32], False),  # another build of it
    (["ghcr.io/evil/"], False),
    (["ghcr.io/hardened-model/trainer-x"], False),                   # not a prefix match on a repository name
])
def test_allowed_trainer_images(trained, keys, capsys, allowed, ok):
    tmp, _, _ = trained
    code, out = verify(tmp / "out", keys[1], "--provenance-policy", json.dumps({"allowedTrainerImages": allowed}),
                       capsys=capsys)
    assert (code == 0) is ok, out
    if not ok:
        assert "signing.provenance.allowedTrainerImages" in out["reason"] and IMAGE in out["reason"]


def test_a_model_without_provenance_is_refused_only_when_required(keys, tmp_path, capsys):
    from helpers import make_artifact

    art = make_artifact(tmp_path / "old", keys[0])  # signed, no provenance.json (trained before issue 18)
    assert verify(art, keys[1], capsys=capsys)[0] == 0
    for policy in ({"required": True}, {"requireDataDigest": True}, {"allowedTrainerImages": ["ghcr.io/x/"]}):
        code, out = verify(art, keys[1], "--provenance-policy", json.dumps(policy), capsys=capsys)
        assert code == 3 and "has no provenance.json" in out["reason"], policy


def test_a_tag_reference_cannot_match_a_digest_entry_and_says_why(keys, tmp_path, capsys):
    from helpers import make_artifact

    art = make_artifact(tmp_path / "tag", keys[0], trainer_image="ghcr.io/hardened-model/trainer:0.1.0")
    policy = {"allowedTrainerImages": ["ghcr.io/hardened-model/trainer@sha256:" + "ab" * 32]}
    code, out = verify(art, keys[1], "--provenance-policy", json.dumps(policy), capsys=capsys)
    assert code == 3 and "give the trainer image by digest" in out["reason"]
    policy = {"allowedTrainerImages": ["ghcr.io/hardened-model/trainer"]}
    assert verify(art, keys[1], "--provenance-policy", json.dumps(policy), capsys=capsys)[0] == 0


def test_bad_policy_json_exits_2(trained, keys, capsys):
    tmp, _, _ = trained
    code, out = verify(tmp / "out", keys[1], "--provenance-policy", "[1]", capsys=capsys)
    assert code == 2 and "--provenance-policy" in out["reason"]


# ------------------------------------------- the kubelet's record (issue 27 point 4)
EVIL = "evil.io/trainer:1"
REPO_ID = "ghcr.io/hardened-model/trainer@sha256:" + "ab" * 32


def statement_naming(image):
    """A statement whose trainer image is ``image`` (the rest as the trainer builds it; no model files)."""
    return {"_type": prov.STATEMENT_TYPE, "predicateType": prov.PREDICATE_TYPE, "subject": [], "predicate": {
        "buildDefinition": {"externalParameters": {}, "internalParameters": {}, "resolvedDependencies": [
            {"name": "data", "uri": "builtin:digits", "digest": {"sha256": "d" * 64}},
            *([{"name": "trainer-image", "uri": f"oci://{image}",
                **({"digest": {"sha256": image.split("@sha256:")[1]}} if "@sha256:" in image else {})}]
              if image else [])]},
        "runDetails": {"builder": {"id": prov.BUILDER_ID}, "metadata": {}}}}


@pytest.mark.parametrize("claim, image, image_id, refused", [
    (IMAGE, IMAGE, REPO_ID, None),                                          # what it says is what ran
    (IMAGE, IMAGE, "docker-pullable://" + REPO_ID, None),                   # Docker's form of the imageID
    (IMAGE, IMAGE, "sha256:" + "99" * 32, None),     # a config digest (a locally imported image): not comparable
    (IMAGE, IMAGE, None, None),
    ("ghcr.io/hardened-model/trainer:1", "ghcr.io/hardened-model/trainer:1", REPO_ID, None),  # a tag: reference only
    (IMAGE, EVIL, "docker.io/evil/trainer@sha256:" + "cd" * 32, "kubelet ran"),  # claims an allowed image
    (IMAGE, IMAGE, "ghcr.io/hardened-model/trainer@sha256:" + "cd" * 32, "digest sha256:" + "cd" * 32),
    (None, IMAGE, REPO_ID, "names no trainer image"),
])
def test_the_provenance_must_name_what_the_kubelet_ran(claim, image, image_id, refused):
    got = prov.check_policy(statement_naming(claim), {}, observed_image=image, observed_image_id=image_id)
    if refused is None:
        assert got == []
    else:
        assert len(got) == 1 and refused in got[0] and f'the kubelet ran "{image}"' in got[0], got
        assert got[0].startswith("signing.provenance: the provenance ")


def test_the_refusal_names_both_images_and_the_image_id():
    image_id = "docker.io/evil/trainer@sha256:" + "cd" * 32
    got = prov.check_policy(statement_naming("ghcr.io/acme/trainer:1"), {"allowedTrainerImages": ["ghcr.io/acme/"]},
                            observed_image=EVIL, observed_image_id=image_id)
    assert got[0] == ('signing.provenance: the provenance says the model was trained by "ghcr.io/acme/trainer:1", '
                      f'but the kubelet ran "{EVIL}" (imageID {image_id})')
    # and the allowed images judge what ran, not the claim
    assert got[1].startswith(f'signing.provenance.allowedTrainerImages: the model was trained by "{EVIL}" '
                             "(the kubelet ran it for the training pod), which matches none of")


def test_allowed_images_judge_the_observed_reference_not_the_claim():
    # an honest claim of an unlisted image is refused for the image alone
    got = prov.check_policy(statement_naming(EVIL), {"allowedTrainerImages": ["ghcr.io/acme/"]},
                            observed_image=EVIL)
    assert len(got) == 1 and "allowedTrainerImages" in got[0] and EVIL in got[0]
    assert prov.check_policy(statement_naming("ghcr.io/acme/trainer:1"), {"allowedTrainerImages": ["ghcr.io/acme/"]},
                             observed_image="ghcr.io/acme/trainer:1") == []
    # a tag the kubelet ran cannot match a digest entry, and the refusal says why
    got = prov.check_policy(statement_naming("ghcr.io/acme/trainer:1"),
                            {"allowedTrainerImages": ["ghcr.io/acme/trainer@sha256:" + "ab" * 32]},
                            observed_image="ghcr.io/acme/trainer:1", observed_image_id=REPO_ID)
    assert len(got) == 1 and "give the trainer image by digest" in got[0]


def test_a_missing_provenance_with_an_observed_image_is_refused_only_when_required():
    assert prov.check_policy(None, {}, observed_image=IMAGE, observed_image_id=REPO_ID) == []
    got = prov.check_policy(None, {"required": True}, observed_image=IMAGE)
    assert len(got) == 1 and "has no provenance.json" in got[0]


def test_kubelet_repo_digests():
    assert prov.kubelet_repo_digest(REPO_ID) == "sha256:" + "ab" * 32
    assert prov.kubelet_repo_digest("docker-pullable://" + REPO_ID) == "sha256:" + "ab" * 32
    assert prov.kubelet_repo_digest("sha256:" + "ab" * 32) is None           # a config digest
    assert prov.kubelet_repo_digest("docker://sha256:" + "ab" * 32) is None
    assert prov.kubelet_repo_digest(None) is None


def test_the_verifier_refuses_a_claim_the_kubelet_contradicts_exit_3(trained, keys, capsys):
    """The command line: exit 3 and the result JSON as every provenance refusal; the observed record echoed."""
    tmp, _, _ = trained
    code, out = verify(tmp / "out", keys[1], "--observed-trainer-image", IMAGE, "--observed-trainer-image-id",
                       REPO_ID, "--observed-trainer-node", "node-a", capsys=capsys)
    assert code == 0 and out["observedTrainer"] == {"image": IMAGE, "imageID": REPO_ID, "node": "node-a"}
    code, out = verify(tmp / "out", keys[1], "--observed-trainer-image", EVIL, "--provenance-policy",
                       json.dumps({"allowedTrainerImages": ["ghcr.io/hardened-model/"]}), capsys=capsys)
    assert code == 3 and out["verified"] is False and "digest" in out and "files" not in out
    assert out["reason"].startswith("signature verified; provenance refused: signing.provenance: the provenance "
                                    f'says the model was trained by "{IMAGE}", but the kubelet ran "{EVIL}"')
    code, out = verify(tmp / "out", keys[1], "--observed-trainer-image-id", REPO_ID, capsys=capsys)
    assert code == 2 and "--observed-trainer-image" in out["reason"]
    code, out = verify(tmp / "out", keys[1], "--observed-trainer-node", "node-a", capsys=capsys)
    assert code == 2 and "need --observed-trainer-image" in out["reason"]


def test_image_reference_parsing():
    assert prov.image_repository("localhost:5000/trainer:1") == "localhost:5000/trainer"
    assert prov.image_repository("trainer@sha256:" + "0" * 64) == "trainer"
    assert prov.image_digest("ghcr.io/a/b:1") is None
    assert prov.image_allowed("localhost:5000/trainer:1", ["localhost:5000/trainer"])
    assert not prov.image_allowed(None, ["ghcr.io/"])


# ------------------------------------------------------------------ the pins
def test_a_pinned_data_mismatch_stops_the_trainer_with_exit_2_naming_the_file(tmp_path, keys, capsys):
    data = digits_npz(tmp_path / "digits.npz")
    doc = tiny_manifest({"data": {"source": f"file://{data}", "sha256": "0" * 64}})
    code, lines = run_trainer(tmp_path, doc, keys[0], capsys)
    assert code == EXIT_BAD_CONFIG
    err = lines[-1]
    assert err["event"] == "error" and err["stage"] == "data"
    assert err["message"].startswith(f"data.sha256: file://{data} (digits.npz) has sha256 {sha(data)}")
    assert not (tmp_path / "out/model").exists()
    assert json.loads((tmp_path / "termination-log").read_text())["stage"] == "data"


def test_a_folder_digest_is_what_sha256sum_prints_and_names_the_files(tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    folder = tmp_path / "idx"
    folder.mkdir()
    x = d.images.astype(np.uint8)
    (folder / "images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + np.array(x.shape, ">u4").tobytes() + x.tobytes())
    (folder / "labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + np.array([len(d.target)], ">u4").tobytes()
                                               + d.target.astype(np.uint8).tobytes())
    ds = load_dataset(f"file://{folder}")
    # the documented way to compute the pin without this tool
    shell = subprocess.run("LC_ALL=C sha256sum $(ls | LC_ALL=C sort) | sha256sum", shell=True, cwd=folder,
                           capture_output=True, text=True, check=True).stdout.split()[0]
    assert ds.digest == shell == data_digest(ds.files) and len(ds.files) == 2
    assert load_dataset(f"file://{folder}", sha256=shell).digest == shell
    with (folder / "labels-idx1-ubyte").open("r+b") as fh:
        fh.seek(20)
        fh.write(b"\x09")
    with pytest.raises(DataError) as err:
        load_dataset(f"file://{folder}", sha256=shell)
    assert "data.sha256: the 2 files read from" in str(err.value)
    assert "labels-idx1-ubyte " + sha(folder / "labels-idx1-ubyte") in str(err.value)


def test_builtin_digits_records_scikit_learns_file():
    ds = load_dataset("builtin:digits")
    assert [f.name for f in ds.files] == ["sklearn/datasets/data/digits.csv.gz"]
    import sklearn.datasets

    path = pathlib.Path(sklearn.datasets.__file__).parent / "data/digits.csv.gz"
    assert ds.digest == sha(path)


@pytest.mark.server
def test_s3_data_is_read_at_the_pinned_version_and_records_it(moto_server, tmp_path):
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket="training-data")
    s3.put_bucket_versioning(Bucket="training-data", VersioningConfiguration={"Status": "Enabled"})
    first = digits_npz(tmp_path / "a.npz").read_bytes()
    v1 = s3.put_object(Bucket="training-data", Key="digits/d.npz", Body=first)["VersionId"]
    second = bytearray(first)
    second[-100] ^= 1
    s3.put_object(Bucket="training-data", Key="digits/d.npz", Body=bytes(second))
    source = "s3://training-data/digits/d.npz"
    current = load_dataset(source, s3_client=s3)
    pinned = load_dataset(source, s3_client=s3, version_id=v1)
    assert pinned.digest == hashlib.sha256(first).hexdigest() != current.digest
    assert pinned.files[0].version_id == v1 and current.files[0].version_id not in (None, v1)
    with pytest.raises(DataError, match=r"versionId nope\): S3 error"):
        load_dataset(source, s3_client=s3, version_id="nope")
    with pytest.raises(DataError, match="data.sha256"):
        load_dataset(source, s3_client=s3, sha256=hashlib.sha256(first).hexdigest())  # the current is not it


def test_tabular_data_is_pinned_too(tmp_path):
    from hardened_trainer.tabular import load_table

    csv = tmp_path / "t.csv"
    csv.write_text("amount,label\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    doc = tiny_manifest({"model": {"architecture": "tabular-mlp", "inputShape": [1], "numClasses": 2},
                         "data": {"source": f"file://{csv}", "format": "tabular", "features": [
                             {"name": "amount", "type": "number"}], "label": "label", "positiveClass": "1",
                             "sanitization": {"enabled": False}, "sha256": sha(csv)}})
    spec = parse_manifest(doc).spec
    assert load_table(spec.data).files[0].sha256 == sha(csv)
    csv.write_text(csv.read_text() + "21,1\n")
    with pytest.raises(DataError, match=r"data.sha256: file://.*t.csv \(t.csv\) has sha256"):
        load_table(spec.data)


def test_version_id_needs_one_s3_object():
    from hardened_model.spec import SpecError

    with pytest.raises(SpecError, match="versionId"):
        parse_manifest(tiny_manifest({"data": {"source": "s3://bucket/prefix/", "versionId": "abc"}}))
    with pytest.raises(SpecError, match="versionId"):
        parse_manifest(tiny_manifest({"data": {"versionId": "abc"}}))


def test_data_digest_command_prints_the_pin_the_trainer_checks(tmp_path, capsys):
    import yaml

    from hardened_operator.cli import main as cli

    data = digits_npz(tmp_path / "digits.npz")
    doc = tiny_manifest({"data": {"source": f"file://{data}"}})
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(doc))
    assert cli(["data-digest", str(spec)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{sha(data)}  digits.npz", f"data.sha256: {sha(data)}"]
    doc["spec"]["data"]["sha256"] = "0" * 64
    spec.write_text(yaml.safe_dump(doc))
    assert cli(["data-digest", "--json", str(spec)]) == 3  # the spec's pin is not these bytes
    assert json.loads(capsys.readouterr().out)["sha256"] == sha(data)
