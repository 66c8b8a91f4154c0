"""Identifiers read from a run directory are checked before they become paths: a crafted
``config.yaml``, compaction journal or checkpoint index cannot make a reader write or read
outside where it should."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from datamodels.errors import StoreError
from datamodels.store import Run, verify
from datamodels.store.beton import cache_dir, local_beton
from datamodels.store.checkpoints import load_checkpoint
from datamodels.store.compact import recover_compaction

from .conftest import BUCKET, examples_frame

ESCAPES = ("../../escaped-by-config-hash", "/tmp/escaped-by-config-hash", "ab/../../cd")


@pytest.mark.parametrize("value", ESCAPES)
def test_a_crafted_config_hash_is_refused_naming_the_file_and_field(tmp_path, value):
    run = Run(tmp_path / "run")
    run.write_config(f"config_hash: '{value}'\nseed: 0\n")
    with pytest.raises(StoreError, match=r"config\.yaml: config_hash .* is not a config hash"):
        run.recorded_config_hash()


def test_a_crafted_config_hash_never_places_the_cached_beton(s3_endpoint, tmp_path):
    """``Run(uri).inputs()`` on an object store copies the beton to a local cache; before
    the check, a config_hash of ``../../x`` or ``/abs`` put the copy wherever it named."""
    root = tmp_path / "outside"
    root.mkdir()
    targets = {
        "../" * 12 + str(root / "relative")[1:]: root / "relative.beton",
        str(root / "absolute"): root / "absolute.beton",
    }
    for i, (value, target) in enumerate(targets.items()):
        uri = f"s3://{BUCKET}/crafted/{i}"
        run = Run(uri)
        run.write_config(f"config_hash: '{value}'\nseed: 0\n")
        run.write_examples(examples_frame())
        run.fs.write_bytes_atomic("data/examples.beton", b"x" * 1000)
        with pytest.raises(StoreError, match="config_hash"):
            Run(uri).inputs()
        assert Path(local_beton(Run(uri), value)).parent == cache_dir()  # named by its bytes
        assert not target.exists()
    assert list(root.iterdir()) == []
    assert not list(Path(tempfile.gettempdir()).glob("escaped-by-config-hash*"))


def test_a_crafted_compaction_journal_is_refused(synthetic):
    run = synthetic.run
    folder = "models/_compacting/part-x"
    run.fs.write_bytes_atomic(
        f"{folder}/journal.json", json.dumps({"merged": "../../../x.parquet"}).encode()
    )
    with pytest.raises(StoreError, match=r"journal\.json: merged '\.\./.*' is not a shard"):
        recover_compaction(run)


def test_plan_and_method_names_must_be_names(synthetic):
    with pytest.raises(StoreError, match="plan '../x' is not a name"):
        synthetic.run.plan_masks("../x")
    with pytest.raises(StoreError, match="method name"):
        synthetic.run.scores("../x")
    assert synthetic.run.plan_masks_path("loo") == "plan_masks/loo.parquet"


def test_a_checkpoint_path_outside_checkpoints_is_refused(synthetic, tmp_path):
    secret = tmp_path / "secret.pt"
    secret.write_bytes(b"not yours")
    with pytest.raises(StoreError, match="checkpoints/index: path .* is not checkpoints/"):
        load_checkpoint(synthetic.run.fs, str(secret))
    with pytest.raises(StoreError, match="is not checkpoints/"):
        load_checkpoint(synthetic.run.fs, "checkpoints/../../secret.pt")



def test_verify_names_a_crafted_config_hash(synthetic):
    synthetic.run.write_config("config_hash: ../../x\nseed: 0\n")
    problems = [p for p in verify(synthetic.run) if p.kind == "config"]
    assert problems and "config_hash '../../x' is not a config hash" in problems[0].message
