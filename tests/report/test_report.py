"""`datamodels report`: built from a small digits run this module makes (flipped labels, a
loo plan); every section present, every image a valid
PNG, the applications' run helpers agree with the tables; opened in headless Chromium when
one is installed (a screenshot is kept in the test's tmp dir)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html import unescape as html_unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import datamodels as dm
from datamodels.applications import (
    brittleness_from_run,
    embedding_from_run,
    leakage_from_run,
    loo_agreement_from_run,
)
from datamodels.report import SECTIONS
from tests.conftest import SMALL_DIGITS

REPORT_CONFIG = {
    **SMALL_DIGITS,
    "name": "digits_report",
    # a part of digits: every table and figure the report draws, at a fraction of the fits
    "dataset": {"name": "digits", "flip_fraction": 0.1, "limit_train": 300, "limit_test": 60},
    "train": {"epochs": 2, "batch_size": 32},
    "plans": [
        {"name": "train", "alpha": 0.5, "count": 30},
        {"name": "eval", "alpha": 0.5, "count": 6},
        {"name": "loo", "kind": "loo", "points": [0, 1, 2, 3, 4, 5]},
        {"name": "removal", "kind": "removal", "count": 3, "ks": [5], "seeds": 2},
        {"name": "grid", "kind": "alpha_grid", "levels": 3, "count": 30},  # the α effect
    ],
    "fit": {"n_lambdas": 4, "eps": 0.05, "tol": 1e-3},
}


_BUILT: dict[str, str] = {}  # tests/analysis/test_notebooks.py imports the fixture: build it once


@pytest.fixture(scope="session")
def report_run(tmp_path_factory) -> str:
    """A small finished digits run (serial executor): datamodels on the test targets,
    downsampling (self scores for mislabel detection), loo, evaluation, the α effect and the
    LDS-against-models curve."""
    from datamodels import api
    from datamodels.orchestrate.executor import SerialExecutor

    if "run" in _BUILT:
        return _BUILT["run"]
    out = str(tmp_path_factory.mktemp("report") / "run")
    config = dm.load_config(REPORT_CONFIG)
    dm.train(config, out, executor=SerialExecutor(), show_progress=False)
    dm.fit(out, show_progress=False)
    for method in ("downsampling", "loo"):
        dm.estimate(out, method, executor=SerialExecutor(), show_progress=False)
    dm.removal(out, executor=SerialExecutor(), show_progress=False)
    dm.evaluate(out)
    api.alpha_effect(out, k=5)  # applications/alpha_effect.parquet and lds_curve.parquet,
    api.lds_curve(out, (22, 25))  # which the report and the notebooks read
    _BUILT["run"] = out
    return out


@pytest.fixture(scope="session")
def report_html(report_run) -> Path:
    """``datamodels report RUN`` (default path: <run>/report.html), built once."""
    from typer.testing import CliRunner

    from datamodels.cli import app

    result = CliRunner().invoke(app, ["report", report_run])
    assert result.exit_code == 0, result.output
    path = Path(report_run) / "report.html"
    assert path.is_file() and str(path) in result.output.replace("\n", "")
    return path


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            if re.match(r"(https?:)?//", value):
                self.external.append(value)


def test_applications_read_the_run(report_run):
    run = dm.Run(report_run)
    n_train = run.n_train
    leakage = leakage_from_run(run, k=5)
    assert len(leakage["weight"]) == 5
    assert leakage["cosine"].empty  # fit.targets: test -> no train-split datamodels
    test_targets = run.examples().query("split == 'test'")["eval_position"]
    assert set(leakage["weight"]["target"]) <= set(test_targets.astype(int))
    embedding = embedding_from_run(run)
    assert embedding.coordinates.shape == (len(test_targets), 2)
    result = brittleness_from_run(run)
    assert result.n_train == n_train and len(result.support) == len(test_targets)
    assert 0 <= result.fraction_flipped(0.01) <= result.fraction_flipped(0.05) <= 1
    agreement = loo_agreement_from_run(run)
    assert agreement is not None and "loo" not in set(agreement["method"])
    assert {"datamodels", "downsampling"} <= set(agreement["method"])
    assert (agreement["n_points"] == 6).all()


def test_cosine_leakage_on_a_run_finds_a_planted_duplicate(report_run, tmp_path):
    """A score table over every eval target (train rows included) with test target 0's
    vector planted as a copy of train example 7's: the top cosine pair is (that target, 7)."""
    copy = tmp_path / "run"
    shutil.copytree(report_run, copy)
    run = dm.Run(str(copy))
    examples = run.examples()
    rng = np.random.default_rng(0)
    n_train, n_eval = run.sizes()
    scores = rng.normal(0, 1, size=(n_eval, n_train)).astype(np.float32)
    train = examples[examples["train_position"].notna() & examples["eval_position"].notna()]
    eval_of_train_7 = int(train.set_index("train_position").loc[7, "eval_position"])
    first_test = int(examples.query("split == 'test'")["eval_position"].min())
    scores[first_test] = 2.0 * scores[eval_of_train_7]
    run.write_scores("planted", np.arange(n_eval), scores)
    pairs = leakage_from_run(run, "planted", k=3)["cosine"]
    assert pairs[["target", "train_position"]].values[0].tolist() == [first_test, 7]
    assert pairs["cosine"].iloc[0] == pytest.approx(1.0, abs=1e-5)


def test_report_has_every_section_and_valid_inline_pngs(report_run, report_html):
    out = report_html
    page = _Page()
    page.feed(out.read_text(encoding="utf-8"))
    assert page.sections == [key for key, _ in SECTIONS]
    assert len(page.images) >= 8 and not page.external
    figures = [s for s in page.images if len(base64.b64decode(s.split(",", 1)[1])) > 1000]
    assert len(figures) >= 8
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 100  # thumbnails are small
    text = out.read_text(encoding="utf-8")
    assert "mislabel detection" in text and "no labels were flipped" not in text
    assert "the run has no loo plan" not in text
    for section in ("counterfactual", "brittleness_verified"):  # figures from removals/
        body = text.split(f'<section id="{section}">')[1].split("</section>")[0]
        assert "data:image/png;base64," in body and "no removals/results" not in body
    for alt in ("LDS against number of models", "effect of subset size"):
        assert f'alt="{alt}"' in text
    assert dm.Run(report_run).recorded_config_hash() in text


def test_report_only_reads_and_names_the_command_of_a_missing_or_stale_table(report_run, tmp_path):
    """A run whose LDS curve is gone and whose α-effect inputs changed since it was made: the
    page says so and names the commands; the report fits nothing and writes nothing but
    itself."""
    import json

    from datamodels.report import build_report
    from datamodels.stages.pipeline import declared_paths

    copy = tmp_path / "run"
    shutil.copytree(report_run, copy, ignore=shutil.ignore_patterns("report.html"))
    (copy / "applications" / "lds_curve.parquet").unlink()
    marker = copy / "_stages" / "alpha_effect.json"
    marker.write_text(json.dumps(json.loads(marker.read_text()) | {"digest": "0" * 12}))
    fit_marker = copy / "_stages" / "fit.json"  # a fit whose solver stopped short on 3 targets
    short = {"short": {"targets": 3, "of": 359, "tol": 1e-4}}
    fit_marker.write_text(json.dumps(json.loads(fit_marker.read_text()) | short))
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()}
    text = build_report(str(copy), tmp_path / "page.html").read_text(encoding="utf-8")
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()} == before
    assert (f"applications/lds_curve.parquet is missing; run `datamodels lds-curve {copy}`"
            in text)
    assert (f"applications/alpha_effect.parquet is stale; run `datamodels alpha-effect {copy}`"
            in text)
    assert "fit: 3 of 359 targets stopped at the solver&#x27;s iteration limit" in text
    import fnmatch  # every file of the finished run is some stage's, the contract's or the store's

    files = [str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()]
    assert not [f for f in files if not any(fnmatch.fnmatch(f, d) for d in declared_paths())]


def test_report_command_refuses_a_path_without_a_run(tmp_path):
    from typer.testing import CliRunner

    from datamodels.cli import app

    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "not a run directory" in missing.output


def test_report_renders_in_headless_chromium(report_html, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium binary (make test installs Debian's chromium package)")
    page = report_html
    screenshot = tmp_path / "report.png"
    flags = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--enable-logging=stderr",
        "--v=0",
    ]
    shot = subprocess.run(
        [*flags, f"--screenshot={screenshot}", "--window-size=1100,4000", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert screenshot.is_file() and screenshot.read_bytes()[:4] == b"\x89PNG", shot.stderr
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr
    # the page as the browser built it: every section, every image, no script errors
    rendered = _Page()
    rendered.feed(dom.stdout)
    assert rendered.sections == [key for key, _ in SECTIONS]
    assert len(rendered.images) >= 8
    console_errors = [
        line
        for line in (shot.stderr + dom.stderr).splitlines()
        if "CONSOLE" in line and ("ERROR" in line or "Uncaught" in line)
    ]
    assert not console_errors, console_errors
    assert screenshot.stat().st_size > 10_000


_BOXES = """<script>
window.addEventListener("load", () => {
  const box = (e) => { const r = e.getBoundingClientRect();
    return [r.left, r.top, r.right, r.bottom]; };
  const out = document.createElement("pre");
  out.id = "boxes";
  out.textContent = JSON.stringify({
    images: [...document.querySelectorAll("img")].map(box),
    captions: [...document.querySelectorAll("figcaption")].map(box),
    width: document.documentElement.scrollWidth,
  });
  document.body.appendChild(out);
});
</script>"""


def _overlaps(a, b) -> bool:
    return a[0] < b[2] - 0.5 and b[0] < a[2] - 0.5 and a[1] < b[3] - 0.5 and b[1] < a[3] - 0.5


def test_report_captions_do_not_overlap_images_in_chromium_at_1300px(report_html, tmp_path):
    """Laid out by headless Chromium at 1,300 px: no caption's box meets any image's box, and
    the page is no wider than the window (the boxes are written into the DOM by a script
    added to a copy of the page, read back with --dump-dom)."""
    import json

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium binary (make test installs Debian's chromium package)")
    page = tmp_path / "boxes.html"
    page.write_text(report_html.read_text(encoding="utf-8").replace("</body>", _BOXES + "</body>"),
                    encoding="utf-8")
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--window-size=1300,4000", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert dom.returncode == 0, dom.stderr
    found = re.search(r'<pre id="boxes">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stdout[-2000:]
    boxes = json.loads(html_unescape(found.group(1)))
    assert len(boxes["captions"]) >= 6 and len(boxes["images"]) >= 8
    clashes = [(c, i) for c in boxes["captions"] for i in boxes["images"] if _overlaps(c, i)]
    assert not clashes, clashes[:5]
    assert boxes["width"] <= 1300


def test_report_text_has_no_nan_and_says_how_to_read_each_section(report_html):
    from datamodels.report.notes import HOW_TO_READ

    text = report_html.read_text(encoding="utf-8")
    visible = re.sub(r'src="[^"]*"', "", text)
    assert not re.search(r">\s*nan\s*<", visible, re.I)
    assert set(HOW_TO_READ) == {key for key, _ in SECTIONS}
    assert visible.count('class="read"') == len(SECTIONS)
    assert "LDS is computed over the test targets only" in visible
    assert "split-half reliability" in visible  # whether the LOO ground truth can be trusted


def test_one_colour_per_method_same_everywhere_unique_within_a_figure():
    from datamodels.report.colors import KNOWN, method_color, palette

    assert len({method_color(m) for m in KNOWN}) == len(KNOWN)  # every shipped method its own
    methods = ["trak", "beta_shapley", "downsampling", "loo", "banzhaf", "datamodels",
               "influence", "tracin", "representer", "my_method", "other_method", "x"]
    colours = palette(methods)
    assert len(set(colours.values())) == len(methods)
    assert all(colours[m] == method_color(m) for m in methods if m in KNOWN)
    assert palette(["loo", "trak"]) == {"loo": method_color("loo"), "trak": method_color("trak")}


def test_identical_score_tables_are_detected(report_run, tmp_path):
    from datamodels.report.notes import equal_methods, lds_line

    copy = tmp_path / "run"
    shutil.copytree(report_run, copy)
    run = dm.Run(str(copy))
    assert equal_methods(run) == []
    ids, scores = run.scores("downsampling")
    run.write_scores("banzhaf", ids, scores)
    assert equal_methods(run) == [("banzhaf", "downsampling")]
    rows = run.evaluation().query("metric == 'lds'")
    assert "Identical score tables: banzhaf = downsampling" in lds_line(run, rows)


def test_missing_values_read_as_a_dash_with_a_footnote():
    import pandas as pd

    from datamodels.report.notes import table

    frame = pd.DataFrame({"metric": ["brittle_confirmed"], "trak": [float("nan")]})
    body = table(frame, "no target qualified")
    assert "nan" not in body.lower() and "<td>—</td>" in body and "— no target qualified" in body
    assert "—" not in table(frame.fillna(0.5))
