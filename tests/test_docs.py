"""The documentation: the site builds with warnings as errors, the generated configuration
reference lists every field of the typed config, and the README stays short with working links.

The build runs ``mkdocs build --strict`` (broken links and anchors, missing API references
and docstrings that do not render all fail it) into a temporary folder; nothing is fetched
(the theme's web fonts are off and no plugin downloads).
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from datamodels.config import Config

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250

pytest.importorskip("mkdocs", reason="the docs tools are in the dev extras")
pytest.importorskip("material", reason="the docs tools are in the dev extras")
pytest.importorskip("mkdocstrings", reason="the docs tools are in the dev extras")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "NO_MKDOCS_2_WARNING": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-4000:]}"
    return out


def config_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of every field of ``model``, nested sections included (``plans[].count``,
    ``transfer.source.path``)."""
    names = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        names.append(dotted)
        args = typing.get_args(field.annotation) or (field.annotation,)
        nested = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested:
            many = typing.get_origin(field.annotation) in (tuple, list)
            names.extend(config_fields(nested[0], dotted + ("[]" if many else "") + "."))
    return names


def test_site_builds_strict(site: Path) -> None:
    for page in ("index.html", "getting-started.html", "run-directory.html", "api.html"):
        assert (site / page).is_file(), page
    assert (site / "figures" / "report_screenshot.png").is_file()


def test_config_reference_lists_every_field(site: Path) -> None:
    text = html.unescape((site / "configuration" / "reference.html").read_text())
    listed = set(re.findall(r"<code>([\w.\[\]]+)</code>", text))
    fields = config_fields(Config)
    assert len(fields) > 100
    missing = [name for name in fields if name not in listed]
    assert not missing, f"fields missing from the configuration reference: {missing}"
    # the hashed column follows the config hash: a hashed section's field says yes
    from datamodels.config import HASHED_SECTIONS

    rows = dict(re.findall(r"<td><code>([\w.\[\]]+)</code></td>(?:\s*<td>.*?</td>){3}\s*"
                           r"<td>(yes|no)</td>", text, flags=re.S))
    assert rows["train.epochs"] == "yes" and rows["gradients.solver"] == "no"
    for name, hashed in rows.items():
        assert (hashed == "yes") == (name.split(".")[0].removesuffix("[]") in HASHED_SECTIONS)


def test_config_descriptions_name_real_fields() -> None:
    """docs/configuration/descriptions.yaml describes fields the code does not describe yet;
    a key that is no longer a field must go."""
    import yaml

    described = yaml.safe_load((ROOT / "docs" / "configuration" / "descriptions.yaml").read_text())
    stale = sorted(set(described) - set(config_fields(Config)))
    assert not stale, f"descriptions.yaml names fields that do not exist: {stale}"


def test_api_reference_lists_the_public_verbs(site: Path) -> None:
    import datamodels

    text = (site / "api.html").read_text()
    missing = [name for name in datamodels.__all__ if f'id="datamodels.{name}"' not in text]
    assert not missing, f"public names missing from the API reference: {missing}"


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def test_readme_relative_links_exist() -> None:
    text = (ROOT / "README.md").read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # code blocks hold no links
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets
    broken = []
    for target in targets:
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (ROOT / path).exists():
            broken.append(target)
    assert not broken, f"README.md links to missing files: {broken}"
