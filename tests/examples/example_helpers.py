"""Shared helpers of the example tests: run an example's script, start and stop servers.

The examples are run as a user runs them: their shell scripts, with the `fedhft` CLI of
this environment on PATH and `FEDHFT_EXAMPLE_MODEL=tiny`, so nothing is downloaded and
the tiny random model stands in for MiniLM. Every server listens on 127.0.0.1 and is
stopped by the test that started it, also when the test fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def example_env() -> dict[str, str]:
    """The environment the scripts run in: this interpreter's `fedhft`, the tiny model."""
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        FEDHFT_EXAMPLE_MODEL="tiny",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_script(
    script: Path, *args: str, env: Mapping[str, str], cwd: Path, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run one of an example's scripts to completion; its output is in the result."""
    result = subprocess.run(
        [str(script), *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(f"{script.name} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@contextmanager
def running(
    script: Path, *args: str, env: Mapping[str, str], cwd: Path, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a long-running script in its own process group; stop the group on exit."""
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [str(script), *args],
            env=dict(env),
            cwd=cwd,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM the process group (the server stops cleanly on it), SIGKILL if it hangs."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def wait_for_port_file(path: Path, process: subprocess.Popen[bytes], log: Path) -> int:
    """The port a starting server wrote to ``path``; fails the test if the server exits.

    The generous guard only keeps a broken server from hanging the suite.
    """
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text().strip())
        if process.poll() is not None:
            pytest.fail(f"the server exited {process.returncode}:\n{log.read_text()}")
        time.sleep(0.2)
    pytest.fail(f"the server wrote no port to {path}:\n{log.read_text()}")


@contextmanager
def server_with_peers(
    config: Any, pki: Path, state_dir: Path, peers: Mapping[str, Callable[[str], Any]]
) -> Iterator[Any]:
    """A real aggregation server on 127.0.0.1 (mutual TLS, SQLite state under
    ``state_dir``) and one thread per peer organization running ``peers[org](address)``,
    a `FederatedClient` for it; the caller takes part as the remaining member inside the
    block. On exit the peers are joined, the server stopped (also when the block failed),
    and any peer's error or a peer still running fails the test."""
    from fedhft.aggregator import AggregatorServer, ServerOptions

    server = AggregatorServer(
        config,
        credentials=pki / "server",
        state_dir=state_dir,
        options=ServerOptions(join_timeout_s=60, retry_pause_s=0.2, poll_interval_ms=50),
        new_run=True,
    ).start()
    errors: dict[str, BaseException] = {}

    def peer(org: str) -> None:
        try:
            with peers[org](server.address) as client:
                client.run()
        except BaseException as error:  # Collected for the assertion below.
            errors[org] = error

    threads = [threading.Thread(target=peer, args=(org,), name=org) for org in peers]
    try:
        for thread in threads:
            thread.start()
        yield server
        for thread in threads:
            thread.join(600)
    finally:
        server.stop(grace=0.5)
    assert not errors, errors
    assert not [t.name for t in threads if t.is_alive()]
