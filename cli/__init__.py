"""The `fedhft` command-line interface; each role adds its own command group."""

from ._app import app as app
from ._policy import policy_app

app.add_typer(policy_app, name="policy")


def main() -> None:
    """Entry point of the `fedhft` console script."""
    app()


__all__ = ["app", "main"]
