"""Conditional requests on an object store: create-if-absent, rewrite or delete only while
the object is still the one this process wrote (its ETag), and the ETags of a folder.

S3 and the S3-compatible servers that implement conditional writes accept a PUT with
``If-None-Match: *`` only when no object has the key; a second writer's PUT fails with
``412 Precondition Failed``. Two writers that create the same key at the same instant are
therefore told apart by the store itself, with no window in which both believe they hold it
(the lease the run lock falls back to elsewhere has such a window; see store/lock.py). A PUT
or DELETE with ``If-Match: <etag>`` likewise succeeds only while the object still carries the
ETag its writer last got back: the run lock's heartbeat and release use it, so a holder that
was taken over cannot overwrite or delete its successor's lock.

pyarrow's S3 filesystem has no conditional PUT, so the request goes through ``botocore``
(the client of boto3, installed with the ``s3`` extra), configured from the pyarrow
filesystem: its endpoint, scheme, region and explicit keys (or the usual AWS credential
chain when it has none). Support is probed once per process and (endpoint, bucket): a
uniquely named probe object is created twice with the condition, then rewritten with a wrong
and with its own ETag; a store that lets the second create through ignores the header, and
is answered ``None`` from then on (as are stores that are not S3 at all, and a process
without botocore); one that honours ``If-None-Match`` but not ``If-Match`` gets the atomic
create and no ETag to condition later writes on.
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


def _put(client, bucket: str, key: str, data: bytes, condition: dict) -> str | None:
    """The ETag of the object this PUT wrote; None when its ``condition`` (``IfNoneMatch`` or
    ``IfMatch``) failed: 412, 404 (the object matched is gone) or 409 (a concurrent
    conditional write to it was in flight: the other one wins)."""
    from botocore.exceptions import ClientError  # optional dependency, see _client

    try:
        response = client.put_object(Bucket=bucket, Key=key, Body=data, **condition)
    except ClientError as exc:
        if _failed_precondition(exc):
            return None
        raise OSError(f"conditional PUT of s3://{bucket}/{key} failed: {exc}") from exc
    return str(response.get("ETag") or "")


def _failed_precondition(exc) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = exc.response.get("Error", {}).get("Code")
    return status in (404, 409, 412) or code in (
        "PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey",
    )  # fmt: skip


def _probe(client, bucket: str, key: str) -> tuple[bool, bool]:
    """(honours ``If-None-Match: *``, also honours ``If-Match``) on the fresh key ``key``."""
    from botocore.exceptions import BotoCoreError, ClientError  # optional dependency

    try:
        first = _put(client, bucket, key, b"1", {"IfNoneMatch": "*"})
        if first is None or _put(client, bucket, key, b"2", {"IfNoneMatch": "*"}) is not None:
            return False, False
    except (OSError, ClientError, BotoCoreError):
        return False, False
    try:
        wrong = _put(client, bucket, key, b"3", {"IfMatch": '"0"'})
        matches = wrong is None and bool(_put(client, bucket, key, b"4", {"IfMatch": first}))
    except (OSError, ClientError, BotoCoreError):
        matches = False
    return True, matches


def _s3_client(filesystem: pafs.FileSystem):
    """(boto3 client, settings) for an S3 filesystem; None elsewhere or without boto3."""
    settings = _s3_settings(filesystem)
    if settings is None:
        return None
    try:
        return _client(filesystem, settings), settings
    except ImportError:
        return None


def _conditional(filesystem: pafs.FileSystem, path: str):
    """(client, bucket, key, honours If-Match) for ``path`` on a store that honours
    ``If-None-Match: *``; None elsewhere (probed once per endpoint and bucket)."""
    from botocore.exceptions import BotoCoreError, ClientError  # optional dependency

    found = _s3_client(filesystem)
    if found is None:
        return None
    client, settings = found
    bucket, key = _split(path)
    cache_key = (repr((settings.get("endpoint_override"), filesystem.region)), bucket)
    if cache_key not in _support:
        prefix = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        probe = f"{prefix}{PROBE_PREFIX}{uuid.uuid4().hex}"
        try:
            _support[cache_key] = _probe(client, bucket, probe)
        finally:
            try:
                client.delete_object(Bucket=bucket, Key=probe)
            except (ClientError, BotoCoreError):
                pass
    creates, matches = _support[cache_key]
    return (client, bucket, key, matches) if creates else None


def conditional_put(
    filesystem: pafs.FileSystem, path: str, data: bytes, etag: str | None = None
) -> tuple[bool, str | None] | None:
    """Write the object ``path`` (``bucket/key``) holding ``data``: only if none exists
    (``etag`` None), or only while it still carries ``etag``.

    (True, new ETag): written by this call; the ETag is None where the store does not honour
    ``If-Match`` (nothing to condition the next write on). (False, None): the condition
    failed (the object exists; or it changed or is gone). None: this store cannot do it
    atomically (not S3, no botocore, a server that ignores the header): the caller falls
    back to its own scheme.
    """
    found = _conditional(filesystem, path)
    if found is None or (etag is not None and not found[3]):
        return None
    client, bucket, key, matches = found
    condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
    written = _put(client, bucket, key, bytes(data), condition)
    if written is None:
        return False, None
    return True, (written or None) if matches else None


def create_if_absent(filesystem: pafs.FileSystem, path: str, data: bytes) -> bool | None:
    """Create the object ``path`` (``bucket/key``) holding ``data`` only if none exists.

    True: created by this call; False: it already existed (or another conditional create of
    it won); None: this store cannot do it atomically (see `conditional_put`).
    """
    result = conditional_put(filesystem, path, data)
    return None if result is None else result[0]


def delete_if(filesystem: pafs.FileSystem, path: str, etag: str) -> bool:
    """Delete the object ``path`` only while it still carries ``etag`` (an ETag
    `conditional_put` returned); False when it changed or is gone (someone else's now)."""
    from botocore.exceptions import ClientError  # optional dependency, see _client

    client, bucket, key, _ = _conditional(filesystem, path)
    try:
        client.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
    except ClientError as exc:
        if _failed_precondition(exc):
            return False
        raise OSError(f"conditional DELETE of s3://{bucket}/{key} failed: {exc}") from exc
    return True


def etags(filesystem: pafs.FileSystem, folder: str) -> dict[str, str] | None:
    """Name -> ETag of the objects directly in ``folder`` (``bucket/prefix``), one listing;
    None where the store is not S3, botocore is missing or the listing fails."""
    found = _s3_client(filesystem)
    if found is None:
        return None
    client = found[0]
    from botocore.exceptions import BotoCoreError, ClientError  # present: _s3_client found it

    bucket, prefix = _split(folder)
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    found = {}
    try:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, Delimiter="/"
        )
        for page in pages:
            for item in page.get("Contents", []):
                found[item["Key"][len(prefix):]] = str(item.get("ETag", ""))
    except (ClientError, BotoCoreError):
        return None
    return found
