"""Create-if-absent on an object store: one conditional PUT, or None where the store has none.

S3 and the S3-compatible servers that implement conditional writes accept a PUT with
``If-None-Match: *`` only when no object has the key; a second writer's PUT fails with
``412 Precondition Failed``. Two writers that create the same key at the same instant are
therefore told apart by the store itself, with no window in which both believe they hold it
(the lease the run lock falls back to elsewhere has such a window; see store/lock.py).

pyarrow's S3 filesystem has no conditional PUT, so the request goes through ``botocore``
(the client of boto3, installed with the ``s3`` extra), configured from the pyarrow
filesystem: its endpoint, scheme, region and explicit keys (or the usual AWS credential
chain when it has none). Support is probed once per process and (endpoint, bucket): a
uniquely named probe object is created twice with the condition; a store that lets the
second PUT through ignores the header, and is answered ``None`` from then on (as are stores
that are not S3 at all, and a process without botocore).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pyarrow.fs as pafs

_support: dict[tuple[str, str], bool] = {}
_clients: dict[str, Any] = {}
_guard = threading.Lock()
PROBE_PREFIX = "_datamodels-conditional-probe-"


def _s3_settings(filesystem: pafs.FileSystem) -> dict | None:
    """The pyarrow S3 filesystem's own settings (what it pickles with), or None."""
    if not isinstance(filesystem, pafs.S3FileSystem):
        return None
    try:
        return dict(filesystem.__reduce__()[1][0])
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


def _client(filesystem: pafs.S3FileSystem, settings: dict):
    """A botocore S3 client speaking to the same endpoint with the same credentials."""
    endpoint = settings.get("endpoint_override") or None
    if endpoint and "://" not in endpoint:
        endpoint = f"{settings.get('scheme') or 'https'}://{endpoint}"
    key = repr((endpoint, filesystem.region, settings.get("access_key")))
    with _guard:
        if key not in _clients:
            import boto3  # an optional dependency (the s3 extra): absent -> the lease is used
            from botocore.config import Config as BotoConfig

            credentials = {}
            if settings.get("access_key"):
                credentials = {
                    "aws_access_key_id": settings["access_key"],
                    "aws_secret_access_key": settings.get("secret_key"),
                    "aws_session_token": settings.get("session_token") or None,
                }
            session = boto3.session.Session()
            _clients[key] = session.client(
                "s3",
                endpoint_url=endpoint,
                region_name=filesystem.region or None,
                config=BotoConfig(retries={"max_attempts": 3, "mode": "standard"}),
                **credentials,
            )
        return _clients[key]


def _split(path: str) -> tuple[str, str]:
    bucket, _, key = path.lstrip("/").partition("/")
    return bucket, key


def _put_if_absent(client, bucket: str, key: str, data: bytes) -> bool:
    """True when this PUT created ``key``; False when an object already had it (412), or a
    concurrent conditional write to it was in flight (409: the other one wins)."""
    from botocore.exceptions import ClientError  # optional dependency, see _client

    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = exc.response.get("Error", {}).get("Code")
        if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise OSError(f"conditional PUT of s3://{bucket}/{key} failed: {exc}") from exc
    return True


def _supported(client, endpoint_key: str, bucket: str, prefix: str) -> bool:
    """Whether the store honours ``If-None-Match: *`` (probed once per endpoint and bucket)."""
    from botocore.exceptions import BotoCoreError, ClientError  # optional dependency

    cache_key = (endpoint_key, bucket)
    if cache_key in _support:
        return _support[cache_key]
    key = f"{prefix}{PROBE_PREFIX}{uuid.uuid4().hex}"
    try:
        first = _put_if_absent(client, bucket, key, b"1")
        second = _put_if_absent(client, bucket, key, b"2")
        supported = first and not second
    except (OSError, ClientError, BotoCoreError):
        supported = False
    finally:
        try:
            client.delete_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError):
            pass
    _support[cache_key] = supported
    return supported


def create_if_absent(filesystem: pafs.FileSystem, path: str, data: bytes) -> bool | None:
    """Create the object ``path`` (``bucket/key``) holding ``data`` only if none exists.

    True: created by this call; False: it already existed (or another conditional create of
    it won); None: this store cannot do it atomically (not S3, no botocore, or a server that
    ignores ``If-None-Match``): the caller falls back to its own scheme.
    """
    settings = _s3_settings(filesystem)
    if settings is None:
        return None
    try:
        client = _client(filesystem, settings)
    except ImportError:
        return None
    bucket, key = _split(path)
    prefix = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
    endpoint_key = repr((settings.get("endpoint_override"), filesystem.region))
    if not _supported(client, endpoint_key, bucket, prefix):
        return None
    return _put_if_absent(client, bucket, key, bytes(data))
