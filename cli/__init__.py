"""The `fedhft` command-line interface; each role adds its own command group."""

from ._aggregator import aggregator_app
from ._app import app as app
from ._audit import audit_app
from ._ca import ca_app
from ._client import client_app
from ._ledger import ledger_app
from ._policy import policy_app
from ._simulate import simulate_app

app.add_typer(policy_app, name="policy")
app.add_typer(ca_app, name="ca")
app.add_typer(audit_app, name="audit")
app.add_typer(aggregator_app, name="aggregator")
app.add_typer(client_app, name="client")
app.add_typer(ledger_app, name="ledger")
app.add_typer(simulate_app, name="simulate")


def main() -> None:
    """Entry point of the `fedhft` console script."""
    app()


__all__ = ["app", "main"]
