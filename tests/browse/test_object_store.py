"""`datamodels serve` over an ``s3://`` copy of the small digits run (moto's S3 server on
127.0.0.1): the pages read the object store through the same `Run` readers and views, and
show what the local run shows."""

from __future__ import annotations

import pyarrow.fs as pafs

from datamodels.browse.app import start
from tests.browse.test_browse import get, ids, method_block
from tests.store.conftest import BUCKET, s3_endpoint  # noqa: F401 - the fixture


def test_an_s3_run_serves_the_same_pages(serve_run, s3_endpoint):  # noqa: F811
    remote = pafs.S3FileSystem(
        endpoint_override=s3_endpoint, scheme="http", access_key="testing",
        secret_key="testing", region="us-east-1",
    )  # fmt: skip
    pafs.copy_files(serve_run, f"{BUCKET}/runs/browse", destination_filesystem=remote)
    uri = f"s3://{BUCKET}/runs/browse"
    local, s3 = start(serve_run, port=0), start(uri, port=0)
    try:
        for path in ("", "tests", "test/152", "train/625", "mislabel", "leakage", "methods"):
            status, body = get(s3 + path)
            assert status == 200, (path, body[-500:])
            _, expected = get(local + path)
            assert ids(body) == ids(expected), path
        _, body = get(s3 + "test/152")
        _, expected = get(local + "test/152")
        assert method_block(body, "datamodels", "helpful") == method_block(
            expected, "datamodels", "helpful"
        )
        assert get(s3 + "image/train/3.png") == get(local + "image/train/3.png")
        assert uri in get(s3)[1]
    finally:
        local.stop()
        s3.stop()
