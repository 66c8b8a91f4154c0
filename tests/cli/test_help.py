"""How the help reads: every command listed in order, descriptions rewrapped to the terminal
(no line broken where the source's docstring was), and ``--help`` shown as a plain flag."""

import subprocess
import sys

import pytest
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


def _commands() -> list[tuple[tuple[str, ...], object]]:
    """(argv prefix, click command) of the app, every group and every sub-command."""
    import typer.main

    found = []

    def walk(prefix: tuple[str, ...], command) -> None:
        found.append((prefix, command))
        for name, sub in getattr(command, "commands", {}).items():
            walk((*prefix, name), sub)

    walk((), typer.main.get_command(app))
    return found


def _flat(text: str) -> str:
    """The help as one line of words: box-drawing and padding gone."""
    return " ".join("".join(c if c not in "│╭╮╰╯─" else " " for c in text).split())


@pytest.mark.parametrize("width", [80, 120])
def test_every_command_reads_cleanly_at_80_and_120_columns(width):
    """The help of the app, of ``jobs`` and of every (sub-)command at ``width`` columns: no
    line wider than the terminal, no ``<bool>`` on any flag, every option listed, and each
    description paragraph as the docstring says it with its source line breaks gone (a
    sentence reads on across them)."""
    commands = _commands()
    assert len(commands) >= len(COMMANDS) + 4  # jobs list/status/logs/stop
    for prefix, command in commands:
        result = runner.invoke(app, [*prefix, "--help"], env={"COLUMNS": str(width)})
        assert result.exit_code == 0, (prefix, result.output)
        text = result.output
        wide = [line for line in text.splitlines() if len(line) > width]
        assert not wide, (prefix, width, wide)
        assert "<bool>" not in text, (prefix, text)
        for param in command.params:
            if param.param_type_name == "option":
                assert param.opts[0] in text, (prefix, param.opts[0])
        flat = _flat(text)
        for paragraph in paragraphs(command.help or "").split("\n\n"):
            assert paragraph in flat, (prefix, width, paragraph)


def test_paragraphs_joins_lines_and_keeps_paragraphs():
    assert paragraphs("One\n    two.\n\n    Three\n    four.") == "One two.\n\nThree four."
    assert paragraphs(None) is None


def test_python_dash_m_runs_the_command_line():
    result = subprocess.run([sys.executable, "-m", "datamodels.cli", "jobs", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Ray Jobs on a cluster" in result.stdout
