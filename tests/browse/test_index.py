"""The browse index (stage ``browse_index``): its rankings are the score tables' own (checked
against numpy on the run's matrices), the pages it serves match the pages read from the
score tables, a rewritten score table makes it stale (the pages read the new scores), and a
run too large to rank without it says which command builds it. Also: the grid's LDS filter
and the methods page's stale LDS curve."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import datamodels as dm
from datamodels.api.serve import serve_index
from datamodels.browse import rankings
from datamodels.browse.app import start
from datamodels.browse.reader import RunReader
from datamodels.metrics.lds import average_replicates, lds, spearman_columns
from datamodels.stages.browse_index import top_rows
from datamodels.store import Run
from tests.browse.test_browse import get, ids, method_block


@pytest.fixture(scope="module")
def indexed(serve_run, tmp_path_factory) -> str:
    """A copy of the serve run with its browse index written."""
    copy = str(tmp_path_factory.mktemp("indexed") / "run")
    shutil.copytree(serve_run, copy)
    serve_index(copy, show_progress=False)
    return copy


@pytest.fixture(scope="module")
def both(serve_run, indexed):
    plain, fast = start(serve_run, port=0), start(indexed, port=0)
    assert fast.app.state.reader.index is not None and plain.app.state.reader.index is None
    yield plain, fast
    plain.stop()
    fast.stop()


def test_top_rows_order_as_a_stable_sort_does():
    rng = np.random.default_rng(1)
    block = rng.integers(-3, 4, size=(20, 50)).astype(np.float32)  # many ties
    high, low = top_rows(block, 7)
    for row, h, lo in zip(block, high, low, strict=True):
        order = np.argsort(-row, kind="stable")
        assert h.tolist() == order[:7].tolist()
        assert lo.tolist() == order[::-1][:7].tolist()


def test_the_index_holds_each_method_s_rankings(indexed):
    run = Run(indexed)
    reader = RunReader(run)
    index = reader.index
    assert index is not None and index.k() == 32
    for method in run.score_methods():
        targets, scores = run.scores(method)
        keep = np.isin(targets, reader.test.index.to_numpy())
        targets, scores = targets[keep], scores[keep]
        row = 5
        found = index.train_of(method, int(targets[row]), 32)
        order = np.argsort(-scores[row], kind="stable")
        assert found["helpful"][0].tolist() == order[:32].tolist()
        assert found["harmful"][0].tolist() == order[::-1][:32].tolist()
        np.testing.assert_array_equal(found["helpful"][1], scores[row][order[:32]])
        for position in (0, 77, run.n_train - 1):
            column = scores[:, position]
            tests = index.tests_of(method, position, 10)
            np.testing.assert_allclose(tests["helps"].to_numpy(), np.sort(column)[::-1][:10])
            np.testing.assert_allclose(tests["hurts"].to_numpy(), np.sort(column)[:10])
            assert column[np.searchsorted(targets, tests["helps"].index[0])] == column.max()
        masks, margins = run.masks_and_margins(plan="eval")
        subsets, truth = average_replicates(masks, margins)
        expected = lds(scores, subsets, truth[:, targets]).per_target
        np.testing.assert_allclose(
            index.target_column(method, "lds").reindex(targets).to_numpy(), expected, rtol=1e-9
        )
    (ta, sa), (tb, sb) = run.scores("datamodels"), run.scores("downsampling")
    common = np.intersect1d(reader.test.index.to_numpy(), np.intersect1d(ta, tb))
    rho = spearman_columns(sa[np.searchsorted(ta, common)].T, sb[np.searchsorted(tb, common)].T)
    np.testing.assert_allclose(index.rho("downsampling", "datamodels")[common], rho)
    reader.close()


def _column(html: str, method: str) -> str:
    """The markup of ``method``'s column of a test or training example page."""
    start = html.index(f'data-method="{method}"')
    end = html.find('<div class="method"', start)
    return html[start : end if end > 0 else html.index("</body>")].split("<h2>")[0]


@pytest.mark.parametrize(
    "path",
    [
        "test/{t}",
        "train/{p}",
        "tests?sort=lds&order=desc",
        "tests?sort=brittleness",
        "leakage",
        "methods",
        "mislabel",
    ],
)
def test_pages_from_the_index_match_pages_from_the_scores(both, serve_run, path):
    run = Run(serve_run)
    examples = run.examples()
    target = int(examples.loc[examples["split"] == "test", "eval_position"].dropna().iloc[3])
    path = path.format(t=target, p=int(np.argmax(np.abs(run.scores("datamodels")[1]).sum(0))))
    plain, fast = both
    _, slow_body = get(plain + path)
    _, fast_body = get(fast + path)
    assert ids(slow_body) == ids(fast_body) and ids(fast_body)
    if path.startswith(("test/", "train/")):
        for method in ("datamodels", "downsampling"):
            assert _column(slow_body, method) == _column(fast_body, method)
    if path.startswith("test/"):
        agreement = slow_body[slow_body.index("Agreement between methods") :]
        assert agreement[:2000] == fast_body[fast_body.index("Agreement between methods") :][
            :2000
        ]


def test_a_rewritten_score_table_makes_the_index_stale(indexed, tmp_path):
    copy = str(tmp_path / "run")
    shutil.copytree(indexed, copy)  # a copy of the indexed run: this test writes
    before = RunReader(copy)
    assert before.index_state == "done"  # current until a score table is rewritten
    before.close()
    run = Run(copy)
    targets, scores = run.scores("downsampling")
    flipped = -scores
    run.write_scores("downsampling", targets, flipped)
    reader = RunReader(copy)
    assert reader.index_state == "stale" and reader.index is None
    target = int(reader.test.index[0])
    found = reader.ranked_train("downsampling", target, 4)
    row = flipped[list(targets).index(target)]
    assert found["helpful"][0].tolist() == np.argsort(-row, kind="stable")[:4].tolist()
    reader.close()


def test_a_large_run_without_the_index_names_the_command(serve_run, monkeypatch):
    monkeypatch.setattr(rankings, "DENSE_LIMIT", 10)
    url = start(serve_run, port=0)
    try:
        for path in ("tests?sort=lds", "methods", "leakage"):
            _, body = get(url + path)
            assert f"datamodels serve --index {serve_run}" in body, path
        _, body = get(url + "test/0")  # one row of the scores needs no index
        assert ids(method_block(body, "downsampling", "helpful"))
    finally:
        url.stop()


def test_the_grid_filters_by_lds(served_pair_reader, serve_run):
    run = Run(serve_run)
    targets, scores = run.scores("datamodels")
    test = np.sort(
        run.examples().query("split == 'test'")["eval_position"].dropna().to_numpy(np.int64)
    )
    keep = np.isin(targets, test)
    targets, scores = targets[keep], scores[keep]
    masks, margins = run.masks_and_margins(plan="eval")
    subsets, truth = average_replicates(masks, margins)
    per_target = lds(scores, subsets, truth[:, targets]).per_target
    low, high = (float(v) for v in np.nanquantile(per_target, [0.25, 0.6]))
    inside = [int(t) for t, v in zip(targets, per_target, strict=True) if low <= v <= high]
    _, body = get(served_pair_reader + f"tests?lds_min={low!r}&lds_max={high!r}")
    assert f"{len(inside)} of {len(test)} test examples" in body
    assert ids(body, 'id="grid"') == inside[:200]
    _, body = get(served_pair_reader + f"tests?lds_min={high!r}")
    assert f"{int(np.sum(per_target >= high))} of {len(test)}" in body


@pytest.fixture(scope="module")
def served_pair_reader(serve_run):
    url = start(serve_run, port=0)
    yield url
    url.stop()


def test_a_stale_lds_curve_is_named_not_drawn(serve_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(serve_run, copy)
    dm.lds_curve(str(copy), counts=(12, 24))
    url = start(str(copy), port=0)
    try:
        _, body = get(url + "methods")
        assert '<svg class="curve"' in body and "lds-curve-stale" not in body
    finally:
        url.stop()
    # the evaluation plan loses a model: the curve was made from models no longer there
    run = Run(str(copy))
    shards = sorted((copy / "models").glob("*.parquet"))
    eval_ids = set(run.model_ids("eval").tolist())
    for shard in shards:
        if set(pq.read_table(shard, columns=["model_id"])["model_id"].to_pylist()) & eval_ids:
            shard.unlink()
            break
    url = start(str(copy), port=0)
    try:
        _, body = get(url + "methods")
        assert "lds-curve-stale" in body and '<svg class="curve"' not in body
        assert f"datamodels lds-curve {copy}" in body
    finally:
        url.stop()


def test_the_command_writes_the_index_then_serves_from_it(serve_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(serve_run, copy)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(Path.cwd())}
    command = [sys.executable, "-m", "datamodels.cli", "serve", str(copy), "--index", "--port", "0"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        lines = []
        while not any("serving" in line for line in lines):
            lines.append(process.stdout.readline())
            assert lines[-1], lines
        url = re.search(r"at (http://127\.0\.0\.1:\d+/)", lines[-1]).group(1)
        assert sorted(p.name for p in (copy / "browse").iterdir()) == [
            "leakage.parquet",
            "pairs.parquet",
            "targets.parquet",
            "top_test.parquet",
            "top_train.parquet",
        ]
        status, body = get(url + "tests?sort=lds")
        assert status == 200 and "browse index" not in body
    finally:
        process.terminate()
        process.wait(timeout=30)
    states = dm.api.stage_states(str(copy)).set_index("stage")["state"]
    assert states["browse_index"] == "done"
