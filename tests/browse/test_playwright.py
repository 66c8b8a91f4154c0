"""`datamodels serve` driven in headless Chromium (Playwright over the system's
/usr/bin/chromium): from the grid to a test example, on to its most helpful training
example and back, checking at each step that the pictures shown are the examples the run's
tables name (the ``data-split`` / ``data-id`` of each image, and its PNG bytes against the
run's own inputs), and taking the screenshots the docs show.

``DATAMODELS_SERVE_SCREENSHOTS=<folder>`` copies the screenshots there (``make
docs-screenshots`` regenerates the committed ones in analysis/figures/)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from datamodels.browse.app import start
from datamodels.browse.images import png_bytes
from datamodels.store import Run

CHROMIUM = "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev extra)")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no {CHROMIUM}")

SHOTS = {
    "tests": "serve_grid.png",
    "test": "serve_test_example.png",
    "train": "serve_train_example.png",
    "methods": "serve_methods.png",
    "mislabel": "serve_mislabel.png",
}


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def served(serve_run):
    url = start(serve_run, port=0)
    yield url
    url.stop()


def _shown(page, selector: str) -> list[tuple[str, int]]:
    """(data-split, data-id) of the images under ``selector``, in page order, once loaded."""
    images = page.locator(f"{selector} img[data-id]")
    images.first.wait_for()
    page.wait_for_function(
        "s => [...document.querySelectorAll(s + ' img[data-id]')]"
        ".every(i => i.complete && i.naturalWidth > 0)",
        arg=selector,
    )
    return [
        (image.get_attribute("data-split"), int(image.get_attribute("data-id")))
        for image in images.all()
    ]


def _png_of(page, base: str, split: str, ident: int) -> bytes:
    """The bytes the browser got for the image of ``split`` example ``ident``."""
    src = page.locator(f'img[data-split="{split}"][data-id="{ident}"]').first.get_attribute("src")
    return page.request.get(base.rstrip("/") + src).body()


def test_click_from_a_test_example_to_a_training_example_and_back(
    browser, served, serve_run, tmp_path
):
    run = Run(serve_run)
    examples = run.examples()
    test_ids = np.sort(examples.loc[examples["split"] == "test", "eval_position"].to_numpy(int))
    test_inputs, train_inputs = run.inputs("test"), run.inputs("train")
    targets, scores = run.scores("downsampling")
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    shots: dict[str, Path] = {}

    # the grid: its images are the test examples in id order, each the run's own input
    page.goto(served + "tests")
    grid = _shown(page, "#grid")
    assert grid[:200] == [("test", int(t)) for t in test_ids[:200]]
    assert _png_of(page, served, "test", int(test_ids[4])) == png_bytes(test_inputs[4])
    shots["tests"] = tmp_path / SHOTS["tests"]
    page.screenshot(path=shots["tests"])

    # click the fifth test example
    target = int(test_ids[4])
    page.locator(f'#grid a[href="/test/{target}"]').click()
    page.wait_for_url(f"**/test/{target}")
    assert _shown(page, ".big") == [("test", target)]
    row = scores[np.searchsorted(targets, target)]
    helpful = [i for i in np.argsort(-row, kind="stable")[:8].tolist() if row[i] > 0]
    column = '.method[data-method="downsampling"] .row.helpful'
    assert _shown(page, column) == [("train", i) for i in helpful]
    shots["test"] = tmp_path / SHOTS["test"]
    page.screenshot(path=shots["test"], full_page=True)

    # on to its most helpful training example (by downsampling), then back
    position = helpful[0]
    page.locator(f'{column} a[href="/train/{position}"]').click()
    page.wait_for_url(f"**/train/{position}")
    assert _shown(page, ".big") == [("train", position)]
    assert _png_of(page, served, "train", position) == png_bytes(train_inputs[position])
    label = int(examples.loc[examples["train_position"] == position, "label"].iloc[0])
    facts = page.locator("table").first.inner_text()
    assert f"label (trained on)\t{label}" in facts
    helps = '.method[data-method="downsampling"] .row.helps'
    column_scores = scores[:, position]
    best = int(targets[np.argmax(np.where(np.isin(targets, test_ids), column_scores, -np.inf))])
    assert _shown(page, helps)[0] == ("test", best)
    shots["train"] = tmp_path / SHOTS["train"]
    page.screenshot(path=shots["train"], full_page=True)
    page.go_back()
    page.wait_for_url(f"**/test/{target}")
    assert _shown(page, ".big") == [("test", target)]

    for name in ("methods", "mislabel"):
        page.goto(served + name)
        page.locator("h1").wait_for()
        shots[name] = tmp_path / SHOTS[name]
        page.screenshot(path=shots[name], full_page=name != "methods")
    page.close()
    for path in shots.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get("DATAMODELS_SERVE_SCREENSHOTS")
    if keep:
        for path in shots.values():
            shutil.copyfile(path, Path(keep) / path.name)
