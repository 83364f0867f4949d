"""`fedhft aggregator serve`: run the consortium's aggregation server.

It listens with mutual TLS, runs the consortium's rounds and keeps every piece of state
in SQLite under ``--state``: stop it (Ctrl-C, SIGTERM) or kill it at any moment and
start it again on the same folder to resume. A new run is started only with
``--new-run`` on an empty folder; a missing, empty or damaged state is refused with one
line naming the file and what to do, never replaced by a new run. After the last round
it keeps serving the final model until stopped (or for ``--exit-after-finish`` seconds).
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import typer

from fedhft.errors import FedHFTError

from ._options import positive_int, positive_seconds

aggregator_app = typer.Typer(
    help="The consortium's aggregation server (gRPC over mutual TLS).",
    no_args_is_help=True,
)


@aggregator_app.command("serve")
def serve_command(
    config: Annotated[Path, typer.Option("--config", help="The consortium configuration.")],
    tls: Annotated[
        Path, typer.Option("--tls", help="The server's credentials (`fedhft ca issue --server`).")
    ],
    state: Annotated[Path, typer.Option("--state", help="State folder (SQLite, audit log).")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port; 0 picks a free one.")] = 0,
    port_file: Annotated[
        Path | None, typer.Option("--port-file", help="Write the port listened on here.")
    ] = None,
    join_timeout: Annotated[
        float, typer.Option("--join-timeout", help="Seconds a round waits for joins.")
    ] = 120.0,
    train_timeout: Annotated[
        float,
        typer.Option("--train-timeout", help="Deadline of the first stage (local training)."),
    ] = 600.0,
    stage_timeout: Annotated[
        float | None,
        typer.Option("--stage-timeout", help="Deadline of later stages (default: config)."),
    ] = None,
    retry_pause: Annotated[
        float, typer.Option("--retry-pause", help="Pause before a failed round is retried.")
    ] = 5.0,
    new_run: Annotated[
        bool,
        typer.Option(
            "--new-run",
            help="Start a new run in an empty --state folder (without it: resume the run there).",
        ),
    ] = False,
    exit_after_finish: Annotated[
        float | None,
        typer.Option("--exit-after-finish", help="Exit this many seconds after the last round."),
    ] = None,
    max_calls_per_organization: Annotated[
        int | None,
        typer.Option(
            "--max-calls-per-organization",
            parser=positive_int("--max-calls-per-organization", default="8"),
            metavar="N",
            help="Calls one organization may have in flight, more are refused (default 8).",
        ),
    ] = None,
    stream_idle_timeout: Annotated[
        float | None,
        typer.Option(
            "--stream-idle-timeout",
            parser=positive_seconds("--stream-idle-timeout", default="60"),
            metavar="SECONDS",
            help="Seconds a stream may stay idle before it is cancelled (default 60).",
        ),
    ] = None,
) -> None:
    """Serve a consortium's federated rounds until stopped."""
    from fedhft.aggregator import ServerOptions, serve
    from fedhft.policies import load_consortium_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)
    # Left out, a limit keeps the server's default (`ServerOptions`).
    limits: dict[str, Any] = {}
    if max_calls_per_organization is not None:
        limits["max_calls_per_organization"] = max_calls_per_organization
    if stream_idle_timeout is not None:
        limits["stream_idle_timeout_s"] = stream_idle_timeout
    try:
        consortium = load_consortium_config(config)
        options = ServerOptions(
            join_timeout_s=join_timeout,
            train_timeout_s=train_timeout,
            stage_timeout_s=stage_timeout,
            retry_pause_s=retry_pause,
            **limits,
        )
        server = serve(
            consortium,
            credentials=tls,
            state_dir=state,
            host=host,
            port=port,
            port_file=port_file,
            options=options,
            new_run=new_run,
        )
    except FedHFTError as error:
        _fail(error)
    typer.echo(f"serving consortium {consortium.consortium!r} on {server.address}")
    try:
        while not server.wait(0.5):
            pass
        typer.echo(f"the run finished; serving the final model from {server.address}")
        finished_at = time.monotonic()
        while exit_after_finish is None or time.monotonic() - finished_at < exit_after_finish:
            time.sleep(0.5)
    except KeyboardInterrupt:
        typer.echo("stopping")
    except FedHFTError as error:
        server.stop()
        _fail(error)
    server.stop()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _fail(error: FedHFTError) -> NoReturn:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(code=1)
