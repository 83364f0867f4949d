"""Parsers of numeric command-line options that refuse a bad value in one line.

Typer reports a value it cannot convert in a framed usage box of several lines; these
parsers run in its place (``typer.Option(parser=...)``) and refuse a value that is not a
number, or not a positive finite one, with one ``error:`` line naming the option, the
values allowed, the value given and the default, then exit 1, as the commands do for
every other error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NoReturn

import typer


def _refuse(option: str, allowed: str, text: str, default: str) -> NoReturn:
    typer.echo(
        f"error: `{option}` must be {allowed}, got {text!r}; pass one or leave the option "
        f"out for the default ({default})",
        err=True,
    )
    raise typer.Exit(code=1)


def positive_int(option: str, *, default: str) -> Callable[[str], int]:
    """A parser of ``option`` accepting whole numbers >= 1."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            _refuse(option, "a whole number > 0", text, default)
        if value < 1:
            _refuse(option, "a whole number > 0", text, default)
        return value

    return parse


def positive_seconds(option: str, *, default: str) -> Callable[[str], float]:
    """A parser of ``option`` accepting finite numbers of seconds > 0."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            _refuse(option, "a finite number of seconds > 0", text, default)
        if not (math.isfinite(value) and value > 0):
            _refuse(option, "a finite number of seconds > 0", text, default)
        return value

    return parse
