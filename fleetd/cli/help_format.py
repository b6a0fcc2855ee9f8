"""How fleetd's help reads: the typer classes every ``fleetd`` command and group is made with.

Typer shows an argument with its Python type (``paths... <list[Path]>``) and a group lists each command with its
docstring cut at the width of the terminal (``Show nodes and replicas, and whether the fleet matches the...``).
``FleetdTyper`` makes every command a ``FleetdCommand``, which lists an argument under its metavar alone
(``PATH...``) and a command by the first sentence of its docstring, whole. Options carry their own metavars
(``--database-url URL``) where they are declared.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from typer import _click as click
from typer.core import TyperCommand

F = TypeVar("F", bound=Callable[..., Any])

_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)\.(?=\s|$)")


def summary(help_text: str) -> str:
    """The first sentence of the first paragraph of ``help_text``, on one line."""
    paragraph = " ".join(help_text.strip().split("\n\n", 1)[0].split())
    end = _SENTENCE_END.search(paragraph)
    return paragraph[: end.end()] if end is not None else paragraph


class FleetdCommand(TyperCommand):
    """A command whose help lists arguments by metavar and whose summary is a whole sentence."""

    def get_short_help_str(self, limit: int = 45) -> str:
        return self.short_help or summary(self.help or "")

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        arguments: list[tuple[str, str]] = []
        options: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                name = param.metavar or (param.name or "").upper()
                arguments.append((name + ("..." if param.nargs != 1 else ""), record[1]))
            else:
                options.append(record)
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class FleetdTyper(typer.Typer):
    """``typer.Typer`` whose commands are ``FleetdCommand`` unless one asks for another class."""

    def command(self, name: str | None = None, **kwargs: Any) -> Callable[[F], F]:
        kwargs.setdefault("cls", FleetdCommand)
        decorator: Callable[[F], F] = super().command(name, **kwargs)
        return decorator
