"""The `fedhft` command: a root Typer app with one sub-app per role."""

from __future__ import annotations

from typing import Annotated

import typer

from fedhft import __version__

app = typer.Typer(
    name="fedhft",
    help="Privacy-hardened personalized federated fine-tuning of language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"fedhft {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """fedhft: federated LoRA fine-tuning with DP-SGD, secure aggregation and audit."""
