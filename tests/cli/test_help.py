"""How the help reads: every command listed in order, descriptions rewrapped to the terminal
(no line broken where the source's docstring was), and ``--help`` shown as a plain flag."""

import subprocess
import sys

from typer.testing import CliRunner

from datamodels.cli import app
from datamodels.cli.help import paragraphs

runner = CliRunner()
COMMANDS = [
    "prepare", "train", "fit", "evaluate", "estimate", "attack", "removal", "run", "status",
    "compact", "sparse-layer", "verify", "report", "transfer-counterfactual", "transfer-report",
    "alpha-effect",
    "lds-curve", "query", "submit", "jobs",
]


def _help(*args: str) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_is_listed_in_order():
    lines = _help().splitlines()
    listed = [line.split()[1] for line in lines
              if line.startswith("│ ") and len(line.split()) > 2 and line[2] != " "]
    assert [name for name in listed if name in COMMANDS] == COMMANDS


def test_descriptions_are_rewrapped_not_broken_at_source_lines():
    text = _help()
    # the run command's docstring breaks its source line after "evaluate": rewrapped, the
    # sentence reads on across the break wherever the column width puts it
    flat = " ".join(text.replace("│", " ").split())
    assert "removal (with a removal plan), evaluate (each skips work already done)" in flat
    assert not any(line.rstrip(" │").endswith(("exits 1", "evaluate", "stored"))
                   for line in text.splitlines())


def test_help_is_a_plain_flag():
    for args in ((), ("run",), ("jobs",), ("jobs", "logs")):
        line = next(x for x in _help(*args).splitlines() if "--help" in x)
        assert "<bool>" not in line and "Show this message and exit." in line


def test_paragraphs_joins_lines_and_keeps_paragraphs():
    assert paragraphs("One\n    two.\n\n    Three\n    four.") == "One two.\n\nThree four."
    assert paragraphs(None) is None


def test_python_dash_m_runs_the_command_line():
    result = subprocess.run([sys.executable, "-m", "datamodels.cli", "jobs", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Ray Jobs on a cluster" in result.stdout
