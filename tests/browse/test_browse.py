"""`datamodels serve` over HTTP on 127.0.0.1: every view answers, and what it shows is what the
run's tables say (the top helpful training example of a target is the argmax of its scores,
the grid's filters count the right examples, ...); unknown ids are one-line 404 pages; the
run is never written; the command, ``dm.serve`` and an ``s3://`` copy of the run serve the
same pages. Every server a test starts is stopped by it."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import datamodels as dm
from datamodels.applications import leakage_from_run
from datamodels.browse.app import start
from datamodels.browse.layout import table, thumb
from datamodels.store import Run


def get(url: str) -> tuple[int, str | bytes]:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            body = response.read()
            status = response.status
            kind = response.headers.get("content-type", "")
    except urllib.error.HTTPError as error:
        body, status, kind = error.read(), error.code, error.headers.get("content-type", "")
    return status, body.decode("utf-8") if kind.startswith("text/") else body


def ids(html: str, block: str | None = None) -> list[int]:
    """The ids of the thumbnails in ``html`` (after the marker ``block`` when given), in order."""
    if block is not None:
        html = html[html.index(block) :]
    return [int(v) for v in re.findall(r'<a href="/(?:test|train)/(\d+)">', html)]


def method_block(html: str, method: str, part: str) -> str:
    """The markup of ``method``'s ``part`` row (helpful, harmful, helps, hurts)."""
    start = html.index(f'data-method="{method}"')
    start = html.index(f'class="row {part}"', start)
    ends = [html.find(marker, start) for marker in ("<h4>", '<div class="method"', "<h2>")]
    return html[start : min(end for end in ends if end > 0)]


def snapshot(root: str) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in Path(root).rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def served(serve_run):
    before = snapshot(serve_run)
    url = start(serve_run, port=0)
    assert url.startswith("http://127.0.0.1:")
    yield url
    url.stop()
    assert not url.thread.is_alive()
    assert snapshot(serve_run) == before, "the server wrote into the run"


@pytest.fixture(scope="module")
def run(serve_run) -> Run:
    return Run(serve_run)


@pytest.fixture(scope="module")
def test_ids(run) -> np.ndarray:
    examples = run.examples()
    test = examples[(examples["split"] == "test") & examples["eval_position"].notna()]
    return np.sort(test["eval_position"].to_numpy(np.int64))


@pytest.fixture(scope="module")
def mean_margin(run, test_ids) -> dict[int, float]:
    _, margins = run.masks_and_margins(plan="train")
    return {int(t): float(margins[:, t].mean()) for t in test_ids}


def test_every_view_answers(served):
    for path in (
        "",
        "tests",
        "tests?sort=lds&order=desc",
        "tests?sort=brittleness&brittle=40",
        "test/0",
        "train/0",
        "mislabel",
        "leakage",
        "methods",
    ):
        status, body = get(served + path)
        assert status == 200, (path, body[-500:])
        assert "<nav>" in body and "datamodels serve" in body


def test_grid_filters_count_the_run_s_examples(served, run, test_ids, mean_margin):
    status, body = get(served + "tests")
    assert f"{len(test_ids)} of {len(test_ids)} test examples" in body
    labels = dict(zip(run.examples()["eval_position"], run.examples()["label"], strict=True))
    threes = [t for t in test_ids if labels[t] == 3]
    _, body = get(served + "tests?label=3")
    assert f"{len(threes)} of {len(test_ids)}" in body and ids(body, 'id="grid"') == threes
    wrong = [t for t in test_ids if mean_margin[t] <= 0]
    _, body = get(served + "tests?correct=no")
    assert f"{len(wrong)} of {len(test_ids)}" in body and ids(body, 'id="grid"') == wrong[:200]
    _, body = get(served + "tests?sort=margin&order=desc")
    assert ids(body, 'id="grid"')[0] == max(mean_margin, key=mean_margin.get)
    _, body = get(served + "tests?sort=margin&order=asc&page=1")
    assert ids(body, 'id="grid"')[0] == sorted(mean_margin, key=mean_margin.get)[200]


def test_a_test_example_shows_each_method_s_top_training_examples(served, run):
    targets, scores = run.scores("datamodels")
    target = int(targets[np.argmax(np.abs(scores).sum(1))])
    row = scores[list(targets).index(target)]
    status, body = get(served + f"test/{target}")
    assert status == 200
    helpful = ids(method_block(body, "datamodels", "helpful"))
    harmful = ids(method_block(body, "datamodels", "harmful"))
    assert helpful[0] == int(np.argmax(row)) and harmful[0] == int(np.argmin(row))
    assert helpful == [i for i in np.argsort(-row, kind="stable")[:8].tolist() if row[i] > 0]
    down_targets, down = run.scores("downsampling")
    down_row = down[list(down_targets).index(target)]
    assert ids(method_block(body, "downsampling", "helpful"))[0] == int(np.argmax(down_row))
    # agreement: the top-8 overlap of the two methods, as the page states it
    top = set(np.argsort(-row, kind="stable")[:8].tolist())
    overlap = len(top & set(np.argsort(-down_row, kind="stable")[:8].tolist())) / 8
    agreement = body[body.index("Agreement between methods") :]
    assert f"<td>{overlap:.4g}</td>" in agreement
    nnz = int((run.weights()["target"] == target).sum())
    assert f"Datamodel weights ({nnz} nonzero)" in body


def test_a_removed_target_shows_its_retrained_change(served, run):
    results = run.removal_results()
    row = results.iloc[0]
    _, body = get(served + f"test/{int(row['target'])}")
    section = body[body.index("Counterfactual removal") :]
    assert f"<td>{row['predicted']:.4g}</td>" in section
    assert f"<td>{row['actual']:.4g}</td>" in section
    others = sorted(set(range(run.n_eval)) - set(results["target"]))
    _, body = get(served + f"test/{others[0]}")
    assert "the removal plan did not choose this target" in body


def test_a_training_example_shows_whom_it_helps_and_hurts(served, run, test_ids):
    targets, scores = run.scores("datamodels")
    keep = np.isin(targets, test_ids)
    targets, scores = targets[keep], scores[keep]
    train = run.examples().dropna(subset=["train_position"]).sort_values("train_position")
    flipped = train[train["original_label"].notna() & (train["original_label"] != train["label"])]
    position = int(flipped["train_position"].iloc[0])
    _, body = get(served + f"train/{position}")
    column = scores[:, position]
    assert ids(method_block(body, "datamodels", "helps"))[0] == int(targets[np.argmax(column)])
    assert ids(method_block(body, "datamodels", "hurts"))[0] == int(targets[np.argmin(column)])
    assert "<td>label flipped</td><td>yes</td>" in body
    self_score = run.self_scores()["downsampling"][position]
    assert f"self score (downsampling)</td><td>{self_score:.4g}" in body


def test_mislabel_and_leakage_rank_as_the_tables_do(served, run):
    values = run.self_scores()["downsampling"]
    _, body = get(served + "mislabel?method=downsampling")
    assert ids(body, 'id="grid"')[:5] == np.argsort(-values, kind="stable")[:5].tolist()
    top = leakage_from_run(run, "datamodels", k=24)["weight"].iloc[0]
    _, body = get(served + "leakage")
    assert ids(body, 'class="grid pairs"')[:2] == [int(top["target"]), int(top["train_position"])]


def test_methods_page_has_the_lds_table_and_disagreements(served, run):
    _, body = get(served + "methods")
    lds = run.evaluation().query("metric == 'lds'")
    for method, value in zip(lds["method"], lds["value"], strict=True):
        assert f"<td>{method}</td><td>{value:.4g}</td>" in body
    assert len(ids(body, 'id="disagree"')) == 12


def test_images_are_pngs_of_the_inputs(served, run):
    status, png = get(served + "image/train/3.png")
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert image.shape == (64, 64)
    expected = 255 - np.clip(run.inputs("train")[3].reshape(8, 8) * 255, 0, 255).astype(np.uint8)
    assert np.array_equal(image[::8, ::8], expected)


@pytest.mark.parametrize(
    "path",
    ["test/99999", "train/999999", "train/abc", "nope", "image/test/99999.png", "image/etc/1.png"],
)
def test_an_unknown_id_is_a_one_line_404(served, path):
    status, body = get(served + path)
    assert status == 404
    errors = re.findall(r'<p id="error">([^<]*)</p>', body)
    assert len(errors) == 1 and "\n" not in errors[0] and errors[0]


def test_nothing_writes(served):
    request = urllib.request.Request(served + "tests", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=30)
    assert error.value.code == 405


def test_text_from_a_run_is_escaped():
    import pandas as pd

    crafted = "<script>alert(1)</script>"
    html = table(pd.DataFrame({"name": [crafted]})) + thumb("test", 1, None, crafted, "", crafted)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'title="&lt;script&gt;alert(1)&lt;/script&gt;"' in html


def test_dm_serve_from_a_notebook_returns_its_url(serve_run):
    url = dm.serve(serve_run)
    try:
        status, body = get(url + "methods")
        assert status == 200 and "Linear datamodeling score" in body
    finally:
        url.stop()
    assert not url.thread.is_alive()


def test_the_command_prints_its_address_and_serves(serve_run):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(Path.cwd())}
    command = [sys.executable, "-m", "datamodels.cli", "serve", serve_run, "--port", "0"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        line = process.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        assert match, line
        status, body = get(match.group(1) + "tests")
        assert status == 200 and 'id="grid"' in body
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_command_refuses_a_directory_without_a_run(tmp_path):
    from typer.testing import CliRunner

    from datamodels.cli import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--port", "0"])
    assert result.exit_code == 2 and "not a run directory" in result.output
