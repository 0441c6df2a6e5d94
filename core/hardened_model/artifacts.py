"""Artifact stores: S3 (boto3) and volumes (pvc:// mounted in the pod, file:// for `up`).

Layout of one model version under a store::

    <store>/<model>/<version>/model/...     the signed directory
    <store>/<model>/<version>/model.sig     its signature bundle

``version`` is the training digest, so the same spec never trains twice into
two places and a new spec never overwrites an old version.
"""
from __future__ import annotations

import pathlib
import shutil
from dataclasses import dataclass
from urllib.parse import urlparse

from .signing import MODEL_DIR_NAME, SIGNATURE_NAME


class StoreError(RuntimeError):
    """The artifact store refused or is unreachable; names the URI."""


@dataclass(frozen=True)
class StoreURI:
    scheme: str          # s3 | pvc | file
    bucket: str          # s3 bucket or PVC claim name; "" for file
    prefix: str          # key prefix / path inside the volume (no leading or trailing /)

    @classmethod
    def parse(cls, uri: str) -> "StoreURI":
        url = urlparse(uri)
        if url.scheme not in ("s3", "pvc", "file"):
            raise ValueError(f"unsupported artifact store {uri!r} (s3://, pvc://, file://)")
        return cls(url.scheme, url.netloc, url.path.strip("/"))

    def version_uri(self, model: str, version: str) -> str:
        parts = [p for p in (self.prefix, model, version) if p]
        if self.scheme == "file":
            return "file:///" + "/".join(parts)
        return f"{self.scheme}://{self.bucket}/" + "/".join(parts)

    def local_path(self, model: str, version: str, mount: str | None = None) -> pathlib.Path:
        """Where a version lies on a filesystem: file:// directly, pvc:// under the volume's mount path."""
        if self.scheme == "file":
            return pathlib.Path("/" + self.prefix) / model / version
        if self.scheme == "pvc":
            if mount is None:
                raise ValueError("a pvc:// store needs the volume's mount path")
            return pathlib.Path(mount, self.prefix, model, version)
        raise ValueError("an s3:// store has no local path")


def s3_client(*, region: str | None = None, endpoint: str | None = None):
    """boto3 S3 client; credentials from the environment (IRSA on EKS: the web identity token)."""
    import boto3

    return boto3.client("s3", region_name=region, endpoint_url=endpoint)


def upload_version(local_version_dir: pathlib.Path, store: StoreURI, model: str, version: str, *, client,
                   kms_key_id: str | None = None) -> dict[str, str | None]:
    """Upload model/ and model.sig; return {object key: S3 versionId (None if unversioned)}."""
    import botocore.exceptions

    if store.scheme != "s3":
        raise ValueError("upload_version is for s3:// stores")
    base = "/".join(p for p in (store.prefix, model, version) if p)
    extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id} if kms_key_id else {}
    files = sorted(p for p in (local_version_dir / MODEL_DIR_NAME).rglob("*") if p.is_file())
    files.append(local_version_dir / SIGNATURE_NAME)  # last: a reader that sees the signature sees everything
    versions: dict[str, str | None] = {}
    for path in files:
        key = f"{base}/{path.relative_to(local_version_dir).as_posix()}"
        try:
            with path.open("rb") as fh:
                resp = client.put_object(Bucket=store.bucket, Key=key, Body=fh, **extra)
        except botocore.exceptions.ClientError as exc:
            err = exc.response.get("Error", {})
            raise StoreError(f"s3://{store.bucket}/{key}: {err.get('Code')}: {err.get('Message')}") from None
        versions[key] = resp.get("VersionId")
    return versions


def download_version(store: StoreURI, model: str, version: str, dest: pathlib.Path, *, client,
                     version_ids: dict[str, str] | None = None) -> pathlib.Path:
    """Fetch a version from S3 into ``dest`` (pinned to versionIds when given); returns dest."""
    import botocore.exceptions

    base = "/".join(p for p in (store.prefix, model, version) if p)
    paginator = client.get_paginator("list_objects_v2")
    try:
        keys = [o["Key"] for page in paginator.paginate(Bucket=store.bucket, Prefix=base + "/")
                for o in page.get("Contents", [])]
        if not keys:
            raise StoreError(f"s3://{store.bucket}/{base}/: no such model version")
        for key in keys:
            rel = key[len(base) + 1:]
            target = (dest / rel).resolve()
            if not str(target).startswith(str(dest.resolve()) + "/"):
                raise StoreError(f"s3://{store.bucket}/{key}: object key escapes the model folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            args = {"VersionId": version_ids[key]} if version_ids and version_ids.get(key) else {}
            body = client.get_object(Bucket=store.bucket, Key=key, **args)["Body"]
            with target.open("wb") as fh:
                shutil.copyfileobj(body, fh)
    except botocore.exceptions.ClientError as exc:
        err = exc.response.get("Error", {})
        raise StoreError(f"s3://{store.bucket}/{base}: {err.get('Code')}: {err.get('Message')}") from None
    return dest
