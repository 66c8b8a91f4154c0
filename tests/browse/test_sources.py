"""An ``imagefolder`` run names each example's file and class (``examples.parquet``'s
``source_path`` and ``class_name``): the serve pages and the report's example captions show
them, escaped (a class folder named like markup stays text), and SQL reads them."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from datamodels import api
from datamodels.browse.app import start
from datamodels.config import config_from_dict
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.report.support import support_section
from datamodels.store import Run
from datamodels.store.query import query
from tests.browse.test_browse import get

CRAFTED = '"><img src=x onerror=alert(1)>'  # a legal folder name
CLASSES = ("ant", "bee", CRAFTED)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> str:
    """A null-trainer run over 3 class folders of 6 random 4×6 PNGs, fitted."""
    root = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / "imgs" / name).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "imgs" / name / f"<i>{i}.png")
    config = config_from_dict(
        {
            "name": "folder",
            "dataset": {"name": "imagefolder", "path": str(root / "imgs"), "test_fraction": 0.3},
            "model": {"arch": "null"},
            "plans": [
                {"name": "train", "alpha": 0.5, "count": 60},
                {"name": "eval", "alpha": 0.5, "count": 6},
            ],
        }
    )
    out = str(root / "run")
    api.train(config, out, executor=SerialExecutor(), show_progress=False)
    api.fit(out, show_progress=False)
    return out


def _written(run: str) -> pd.DataFrame:
    """examples.parquet as written, every column (not the reader's subset)."""
    return Run(run).read_table("examples.parquet").to_pandas()


class _Text(HTMLParser):
    """The text of a page and the attributes of its elements, as a browser parses them."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []
        self.titles: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.titles += [v for k, v in attrs if k == "title" and v]

    def handle_data(self, data):
        self.text.append(data)


def _parse(html: str) -> _Text:
    parser = _Text()
    parser.feed(html)
    return parser


def test_sql_reads_the_source_path_of_each_example(folder_run):
    frame = query(Run(folder_run), "SELECT source_path, class_name FROM examples ORDER BY index")
    written = _written(folder_run).sort_values("index")
    assert frame["source_path"].tolist() == written["source_path"].tolist()
    expected = sorted(f"{c}/<i>{i}.png" for c in CLASSES for i in range(6))
    assert sorted(frame["source_path"]) == expected
    assert set(frame["class_name"]) == set(CLASSES)


def test_serve_pages_show_the_file_and_class_as_text(folder_run):
    written = _written(folder_run)
    test_row = written[written["split"] == "test"].iloc[0]
    train_row = written[written["train_position"].notna()].iloc[-1]
    url = start(folder_run, port=0)
    try:
        _, body = get(url + f"test/{int(test_row['eval_position'])}")
        page = _parse(body)
        text = "".join(page.text)
        assert f"class name{test_row['class_name']}" in text
        assert f"file{test_row['source_path']}" in text
        _, body = get(url + f"train/{int(train_row['train_position'])}")
        page = _parse(body)
        assert f"file{train_row['source_path']}" in "".join(page.text)
        assert f"{train_row['class_name']}: {train_row['source_path']}" in page.titles
        _, grid = get(url + "tests")
        for html in (body, grid):
            parsed = _parse(html)
            # the crafted folder name never becomes an element: only the app's own images
            assert parsed.tags.count("img") == len(re.findall(r'<img src="/image/', html))
            assert "onerror" not in "".join(re.findall(r"<img [^>]*>", html))
    finally:
        url.stop()


def test_report_captions_name_the_file_and_class(folder_run):
    run = Run(folder_run)
    html = support_section(run, "datamodels", n_targets=2, k=3)
    captions = [
        _parse(c).text for c in re.findall(r"<figcaption>(.*?)</figcaption>", html, flags=re.S)
    ]
    written = _written(folder_run)
    paths = set(written["source_path"])
    named = [c for c in captions if any(line in paths for line in c)]
    assert named, captions
    by_path = dict(zip(written["source_path"], written["class_name"], strict=True))
    for lines in named:
        path = next(line for line in lines if line in paths)
        assert by_path[path] in lines  # the class line sits beside its file
    parsed = _parse(html)
    assert parsed.tags.count("img") == html.count('<img alt="') and "<img src=x" not in html


def test_a_run_without_source_columns_shows_no_file_rows(serve_run):
    url = start(serve_run, port=0)
    try:
        _, body = get(url + "test/0")
        assert "<td>file</td>" not in body and "<td>class name</td>" not in body
    finally:
        url.stop()
    assert Path(serve_run, "examples.parquet").is_file()
