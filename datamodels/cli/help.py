"""How the command line's help reads: typer's app, group and command classes with two fixes.

* A command's docstring is wrapped at 100 columns in the source; its paragraphs are joined
  into single lines (`paragraphs`) so that rich rewraps them to the terminal, in the command
  list as in the command's own help.
* A flag (``--help``, ``--quiet``, ``--follow``...) takes no value: it prints as
  ``--quiet  -q  no progress bar``, without the ``<bool>`` type typer shows for options
  that take one.
"""

from __future__ import annotations

import inspect
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup


def paragraphs(text: str | None) -> str | None:
    """``text`` with each paragraph (blank-line separated) on one line, spaces collapsed."""
    if text is None:
        return None
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n"))


def _plain_help_option(option: Any) -> Any:
    if option is not None:
        option.metavar = ""  # a flag takes no value: no type column
    return option


def _plain_flags(params: list[Any]) -> None:
    """Every boolean flag among ``params`` shown without a type (``--quiet``, not
    ``--quiet <bool>``)."""
    for param in params:
        if getattr(param, "is_flag", False):  # typer's own click: no isinstance
            _plain_help_option(param)


class Command(TyperCommand):
    """A command whose help is rewrapped by rich and whose flags show no type."""

    def __init__(self, *args: Any, help: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, help=paragraphs(help), **kwargs)
        _plain_flags(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        return _plain_help_option(super().get_help_option(ctx))


class Group(TyperGroup):
    """A group of commands (the app, ``jobs``) with the same two fixes."""

    def __init__(self, *args: Any, help: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, help=paragraphs(help), **kwargs)
        _plain_flags(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        return _plain_help_option(super().get_help_option(ctx))


class App(typer.Typer):
    """``typer.Typer`` whose groups are `Group` and whose commands are `Command`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=Group, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)
