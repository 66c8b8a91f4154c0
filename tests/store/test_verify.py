"""`verify` names every bad file, one problem per cause, without one hiding another."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from datamodels.store import Run, verify, write_table_atomic
from datamodels.store.schemas import WEIGHTS_SCHEMA

from .conftest import (
    N_EVAL,
    N_TRAIN,
    build_planned_run,
    build_run,
    corrupt_page,
    planned_config,
    planned_shard_table,
    shard_table,
)


def truncate_to_half(run: Run, rel_path: str) -> None:
    path = run.fs.join(rel_path)
    size = run.fs.size(rel_path)
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)


def kinds(problems):
    return sorted((problem.file, problem.kind) for problem in problems)


def test_clean_run_has_no_problems(synthetic):
    assert verify(synthetic.run) == []
    good, problems = synthetic.run.valid_shards()
    assert problems == [] and len(good) == 3


def test_truncated_shard_is_torn_by_file_name(synthetic):
    run, torn = synthetic.run, synthetic.shard_paths[1]
    truncate_to_half(run, torn)
    problems = verify(run)
    assert kinds(problems) == [(torn, "torn")]
    assert torn.split("/")[1] in str(problems[0])
    good, shard_problems = run.valid_shards()
    assert torn.split("/")[1] not in good and len(good) == 2
    assert shard_problems == problems
    assert run.done_model_ids() == set(range(10)) | set(range(25, 40))


def test_duplicate_across_shards_names_both_files(synthetic):
    run = synthetic.run
    ids = np.array([24, 30, 99])  # 24 is in shard 1, 30 in shard 2
    masks = np.zeros((3, N_TRAIN), dtype=bool)
    margins = np.zeros((3, N_EVAL), dtype=np.float32)
    extra = run.write_models(shard_table(ids, "alpha", masks, margins))
    problems = verify(run)
    assert {problem.kind for problem in problems} == {"duplicate"}
    # Each problem names one file in .file and the other in its message.
    pairs = {
        frozenset({problem.file, problem.message.split(" also in ")[1]}): problem.model_ids
        for problem in problems
    }
    assert pairs == {
        frozenset({extra, synthetic.shard_paths[1]}): (24,),
        frozenset({extra, synthetic.shard_paths[2]}): (30,),
    }
    good, _ = run.valid_shards()
    assert len(good) == 4  # duplicates are reported, the rows themselves are readable


def test_duplicate_within_one_shard(tmp_path):
    synthetic = build_run(tmp_path, shards=((0, 5, "alpha"),))
    run = synthetic.run
    table = pa.concat_tables([run.models().slice(0, 2), run.models().slice(1, 1)])
    write_table_atomic(run.fs, "models/part-manual.parquet", table, table.schema)
    run.quarantine(synthetic.shard_paths[0], "keep only the manual shard")
    (problem,) = verify(run)
    assert problem.kind == "duplicate"
    assert problem.file == "models/part-manual.parquet" and problem.model_ids == (1,)
    assert "more than once" in problem.message


def test_wrong_schema_and_length_and_torn_all_reported(synthetic):
    run = synthetic.run
    newer = run.models().slice(0, 1).replace_schema_metadata({b"schema_version": b"4"})
    # A hand-made file: margins as float64 lists and no schema_version.
    pq.write_table(
        pa.table({"model_id": [100], "margins": pa.array([[0.0] * N_EVAL])}),
        run.fs.join("models/part-handmade.parquet"),
    )
    # A shard trained against another examples.parquet: mask one too long.
    ids = np.array([200, 201])
    long_masks = np.ones((2, N_TRAIN + 1), dtype=bool)
    margins = np.zeros((2, N_EVAL), dtype=np.float32)
    long_path = run.write_models(shard_table(ids, "alpha", long_masks, margins))
    # A shard with every column right but a newer schema_version.
    pq.write_table(newer, run.fs.join("models/part-newer.parquet"))
    truncate_to_half(run, synthetic.shard_paths[0])

    problems = verify(run)
    assert kinds(problems) == sorted(
        [
            ("models/part-handmade.parquet", "schema"),
            ("models/part-newer.parquet", "schema"),
            (long_path, "length"),
            (synthetic.shard_paths[0], "torn"),
        ]
    )
    messages = {problem.file: problem.message for problem in problems}
    assert "no schema_version" in messages["models/part-handmade.parquet"]
    assert "upgrade datamodels" in messages["models/part-newer.parquet"]
    assert f"mask has length {N_TRAIN + 1}" in messages[long_path]
    assert f"n_train={N_TRAIN}" in messages[long_path]


def test_missing_config_and_examples(tmp_path):
    run = Run(tmp_path)
    run.fs.makedirs("models")
    assert kinds(verify(run)) == [("config.yaml", "missing"), ("examples.parquet", "missing")]


def test_other_tables_are_checked(synthetic):
    run = synthetic.run
    write_table_atomic(
        run.fs,
        "datamodels/weights.parquet",
        pd.DataFrame({"target": [0], "train_position": [1], "weight": [0.5]}),
        WEIGHTS_SCHEMA,
    )
    run.write_scores("loo", np.arange(2), np.zeros((2, N_TRAIN)))
    assert verify(run) == []
    pq.write_table(pa.table({"target": [0]}), run.fs.join("evaluation.parquet"))
    run.fs.write_bytes_atomic("scores/broken.parquet", b"PAR1 not really")
    assert kinds(verify(run)) == [
        ("evaluation.parquet", "schema"),
        ("scores/broken.parquet", "torn"),
    ]


# -- page checksums: a flipped byte inside a page is found, not read as data --------------------


def test_corrupt_margins_page_is_reported_by_verify(synthetic):
    """8 bytes overwritten inside a margins data page, footer intact: the footer checks all pass
    and the values decode to garbage, so only the page checksum can tell."""
    run, shard = synthetic.run, synthetic.shard_paths[1]
    corrupt_page(run.fs.join(shard), "margins")
    problems = verify(run)
    assert kinds(problems) == [(shard, "corrupt")]
    assert "checksum" in problems[0].message.lower()
    assert shard.split("/")[1] in str(problems[0])


def test_corrupt_page_in_any_table_is_reported(synthetic):
    run = synthetic.run
    scores = np.random.default_rng(0).normal(size=(4, N_TRAIN))
    run.write_scores("loo", np.arange(4), scores)
    assert verify(run) == []
    corrupt_page(run.fs.join("scores/loo.parquet"), "scores")
    corrupt_page(run.fs.join("examples.parquet"), "index", b"\x00" * 8)
    assert kinds(verify(run)) == [
        ("examples.parquet", "corrupt"),
        ("scores/loo.parquet", "corrupt"),
    ]


def test_old_shards_without_checksums_or_hash_still_verify(planned):
    """Shards written before checksums and config hashes (plain pq.write_table) are accepted."""
    run = planned.run
    table = run.models()
    run.quarantine(planned.shard_paths[1], "replaced by an old-style copy")
    pq.write_table(table.slice(12), run.fs.join("models/part-old.parquet"))
    assert verify(run) == []
    assert run.done_model_ids() == set(range(30))


# -- foreign shards: recorded config hash, and masks against the plan ---------------------------


def test_planned_run_verifies_clean(planned):
    assert verify(planned.run) == []
    metadata = pq.ParquetFile(planned.run.fs.join(planned.shard_paths[0])).metadata.metadata
    assert metadata[b"config_hash"] == planned.config.hash.encode()


def test_shard_of_another_config_hash_is_foreign(planned, tmp_path):
    run = planned.run
    other = build_planned_run(tmp_path / "other", seed=4, shards=((12, 16),))
    foreign = other.shard_paths[0]
    run.fs.write_bytes_atomic(foreign, other.run.fs.read_bytes(foreign))
    problems = verify(run)
    assert kinds(problems) == [(foreign, "foreign")]
    assert planned.config.hash in problems[0].message
    assert other.config.hash in problems[0].message
    good, shard_problems = run.valid_shards()
    assert foreign.split("/")[1] not in good and [p.kind for p in shard_problems] == ["foreign"]
    assert run.done_model_ids() == set(range(30))
    (moved,) = run.quarantine_bad_shards()  # what `train` does on resume
    assert moved.file == foreign and verify(run) == []


def test_copied_shard_without_hash_is_caught_by_its_masks(planned, tmp_path):
    """A shard from a run with another seed, written without a config hash (old release):
    its model ids are in the plan but its masks are not the plan's."""
    run = planned.run
    other = planned_config(seed=4)
    table = planned_shard_table(other, np.arange(12, 30))
    run.quarantine(planned.shard_paths[1], "replaced by a foreign copy")
    copied = run.write_models(table)  # no config_hash recorded
    problems = verify(run)
    assert kinds(problems) == [(copied, "plan")]
    # Every "alpha" mask differs; "loo" masks do not depend on the seed, so they agree.
    assert problems[0].model_ids == tuple(range(12, 20))
    assert "12, 13" in problems[0].message


def test_one_changed_mask_bit_is_named(planned):
    run = planned.run
    table = run.models()
    masks = table.column("mask").to_pylist()
    masks[5][7] = not masks[5][7]
    table = table.set_column(4, "mask", pa.array(masks, type=table.schema.field("mask").type))
    run.quarantine(planned.shard_paths[0], "replaced by an edited copy")
    pq.write_table(table.slice(0, 12), run.fs.join("models/part-edited.parquet"))
    (problem,) = verify(run)
    assert problem.file == "models/part-edited.parquet"
    assert (problem.kind, problem.model_ids) == ("plan", (5,))


def test_model_ids_outside_the_plan_are_named(planned):
    run = planned.run
    table = planned_shard_table(planned.config, np.arange(29, 30))
    table = table.set_column(0, "model_id", pa.array([45], type=pa.int64()))
    path = run.write_models(table, config_hash=planned.config.hash)
    (problem,) = verify(run)
    assert (problem.file, problem.kind, problem.model_ids) == (path, "plan", (45,))
    assert "not in the plan" in problem.message
    assert run.done_model_ids() == set(range(30)) | {45}  # resume reads footers and ids only


def test_config_yaml_without_hash_skips_the_plan_check(synthetic):
    """The synthetic run's config.yaml is not a full config: shards are checked, masks not."""
    assert verify(synthetic.run) == []
