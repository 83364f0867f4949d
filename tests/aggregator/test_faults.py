"""Fault injection on the aggregation server: killed at each stage of a round, or started
on a damaged state.

A killed server (SIGKILL of a real `fedhft aggregator serve` process, at an exact point
of its round through a hook installed before the CLI runs) restarted on the same state
must resume: every round completes exactly once, each organization's ledger holds each
round once, and every stored model is the per-row average of the updates its round's
clients sent, as a clean run computes it. A damaged state must be refused with a
`StateError` naming the file, and left as it was: never reset into a new run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from runtime_helpers import (
    FAST,
    ORGS,
    TINY,
    ClientRun,
    Pki,
    assert_per_row_averages,
    fast_consortium,
    federation_data,
    ledger_rounds,
    make_client,
    provision,
    spying,
    start_federation,
    stored_models,
)
from state_damage import sql_damage, truncate_half
from typer.testing import CliRunner

from fedhft.aggregator import AggregatorServer
from fedhft.aggregator._server import ReleasedModel
from fedhft.aggregator._store import AggregatorStore
from fedhft.aggregator.errors import StateError
from fedhft.cli import app
from fedhft.policies import ConsortiumConfig, consortium_hash, dump_yaml
from fedhft.sdk import ClusterAdapters, MaskedAdapterModel, RunMismatchError

# Installed in the server process before the CLI runs: SIGKILL itself at one point of
# one round, named by FEDHFT_KILL_AT as "<stage>:<round>".
_KILL_HOOK = """
import os, signal, sys
from fedhft.aggregator._server import AggregatorServer
from fedhft.aggregator._store import AggregatorStore

stage, _, at_round = os.environ.get("FEDHFT_KILL_AT", "none:0").partition(":")
at_round = int(at_round)
uploads = set()

def die():
    os.kill(os.getpid(), signal.SIGKILL)

open_session = AggregatorServer._open_session
def _open_session(self, attempt, *args, **kwargs):
    if stage == "announced" and attempt.round == at_round:
        die()  # Every organization joined the announced round; nothing uploaded yet.
    return open_session(self, attempt, *args, **kwargs)
AggregatorServer._open_session = _open_session

record_stage = AggregatorStore.record_stage
def _record_stage(self, **kwargs):
    record_stage(self, **kwargs)
    if stage == "uploads" and kwargs["round_number"] == at_round:
        if kwargs["stage"] == "masked_input":
            uploads.add((kwargs["cluster"], kwargs["organization"]))
            if len(uploads) == int(os.environ["FEDHFT_UPLOADS"]):
                die()  # Every masked input is stored; nothing unmasked yet.
AggregatorStore.record_stage = _record_stage

complete_attempt = AggregatorStore.complete_attempt
def _complete_attempt(self, round_number, *args, **kwargs):
    if stage == "unmasked" and round_number == at_round:
        die()  # The sums are unmasked and applied in memory, not committed.
    complete_attempt(self, round_number, *args, **kwargs)
    if stage == "committed" and round_number == at_round:
        die()  # Committed; the next round not announced.
AggregatorStore.complete_attempt = _complete_attempt

from fedhft.cli import main
main()
"""

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")


class ServerProcess:
    """`fedhft aggregator serve` in a subprocess on one state folder and port."""

    def __init__(self, root: Path, config: ConsortiumConfig, pki: Pki) -> None:
        self.root = root
        self.config_file = root / "consortium.yaml"
        self.config_file.write_text(dump_yaml(config))
        self.tls = pki.server
        self.state = root / "server"
        self.port_file = root / "port"
        self.port = 0
        self.uploads = len(ORGS) * config.clustering.clusters
        self.starts = 0

    def start(self, kill_at: str = "none:0", *extra: str) -> subprocess.Popen[bytes]:
        """Start the server (killing itself at ``kill_at``); returns once it listens."""
        self.port_file.unlink(missing_ok=True)
        command = [
            sys.executable,
            "-c",
            _KILL_HOOK,
            "aggregator",
            "serve",
            "--config",
            str(self.config_file),
            "--tls",
            str(self.tls),
            "--state",
            str(self.state),
            "--port",
            str(self.port),
            "--port-file",
            str(self.port_file),
            "--join-timeout",
            "60",
            "--train-timeout",
            "120",
            "--retry-pause",
            "0.2",
            *extra,
        ]
        environment = {**os.environ, "FEDHFT_KILL_AT": kill_at, "FEDHFT_UPLOADS": str(self.uploads)}
        self.starts += 1
        # A file, not a pipe: an unread pipe fills up and blocks the server's logging.
        with (self.root / f"server-{self.starts}.log").open("wb") as log:
            process = subprocess.Popen(
                command, env=environment, stdout=subprocess.DEVNULL, stderr=log
            )
        deadline = time.monotonic() + 120
        while not self.port_file.exists() and process.poll() is None:
            assert time.monotonic() < deadline, "the server did not start listening"
            time.sleep(0.05)
        assert process.poll() is None, (self.root / f"server-{self.starts}.log").read_text()
        self.port = int(self.port_file.read_text())
        return process

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _statuses(state: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(state / "state.sqlite") as db:
        rows = db.execute("SELECT round, status FROM attempts ORDER BY round, attempt").fetchall()
    db.close()
    return [(int(r), str(s)) for r, s in rows]


def _spends(org: str, clients: Path) -> list[int]:
    lines = (clients / org / "audit.jsonl").read_text().splitlines()
    return [
        json.loads(line)["payload"]["round"]
        for line in lines
        if json.loads(line)["event"] == "privacy_spend"
    ]


# Two kills per run (round 1, then round 2 in the restarted process), named
# "<stage>:<round>" as `_KILL_HOOK` reads them; the two runs cover the four stages, the
# announcement in round 1, where the clusters split. Expected attempts: a round killed
# before its commit is redone once; a committed one is not.
KILLS = {
    "announced-then-committed": (
        ("announced:1", "committed:2"),
        [(1, "aborted"), (1, "completed"), (2, "completed")],
    ),
    "uploads-then-unmasked": (
        ("uploads:1", "unmasked:2"),
        [(1, "aborted"), (1, "completed"), (2, "aborted"), (2, "completed")],
    ),
}


def _killed(process: subprocess.Popen[bytes], run: ClientRun) -> bool:
    """Wait for the server to kill itself; False as soon as a client failed instead (a
    client that stopped for good leaves the rest short of the cohort, retrying)."""
    deadline = time.monotonic() + 300
    while process.poll() is None and not run.errors and time.monotonic() < deadline:
        time.sleep(0.2)
    return process.poll() == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize("kills", sorted(KILLS))
def test_server_killed_at_each_stage_resumes_and_counts_each_round_once(
    tmp_path: Path, kills: str
) -> None:
    """SIGKILL after the announcement, after the uploads, after unmasking before the
    commit, and after the commit: the restarted server resumes, each round completes
    once, each ledger holds each round once, and each model is its round's per-row
    average of the clients' updates."""
    config = fast_consortium()
    pki = provision(tmp_path / "pki")
    server = ServerProcess(tmp_path, config, pki)
    clients = tmp_path / "clients"
    (first_kill, second_kill), expected = KILLS[kills]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with spying() as spy:
            processes.append(server.start(first_kill, "--new-run"))
            run = start_federation(config, pki, server.address, clients)
            for kill_at in (second_kill, "none:0"):
                assert _killed(processes[-1], run), run.errors
                processes.append(server.start(kill_at))
            run.join(timeout=300)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
    assert run.errors == {}
    assert _statuses(server.state) == expected
    for org in ORGS:
        assert run.reports[org].final_round == 2
        assert ledger_rounds(org, clients) == [1, 2]
        assert _spends(org, clients) == [1, 2]
    models = stored_models(server.state)
    assert sorted(models) == [0, 1, 2]
    step = 1.0 / config.secure_aggregation.scale
    for round_number in (1, 2):
        assert assert_per_row_averages(
            config,
            spy.released[round_number],
            models[round_number],
            spy.updates[round_number],
            tolerance_per_holder=step,
        )


def _announced_model(server: AggregatorServer) -> tuple[int, str, bytes]:
    """The (round, attempt run id, model hash) the started server announces first."""
    assert server.rounds.wait_for(lambda: server.attempt is not None, timeout=60)
    attempt = server.attempt
    assert attempt is not None
    return attempt.round, attempt.run_id, attempt.model.model_hash


def test_restarted_server_announces_the_model_the_killed_attempt_announced(
    tmp_path: Path,
) -> None:
    """Round 1 splits the adapter into the K clusters. A server stopped right after
    announcing it and restarted on its state (the split's input now read back from
    SQLite), again and again, must announce the same model each time: a client of the
    old attempt that fetches the model from the restarted server checks it against the
    old announcement, and a mismatch stops that client for good."""
    config = fast_consortium()
    assert config.clustering.clusters > 1 and config.clustering.warmup_rounds == 0
    pki = provision(tmp_path / "pki")
    announced = []
    for start in range(5):
        server = AggregatorServer(
            config,
            credentials=pki.server,
            state_dir=tmp_path / "s",
            options=FAST,
            new_run=start == 0,
        ).start()
        try:
            announced.append(_announced_model(server))
        finally:
            server.stop(grace=0)
    assert {round_number for round_number, _, _ in announced} == {1}
    assert len({attempt for _, attempt, _ in announced}) == 5  # Redone as new attempts ...
    assert len({model_hash for _, _, model_hash in announced}) == 1  # ... of one model.


def test_a_released_model_is_the_same_bytes_each_time_it_is_encoded() -> None:
    """The released model's hash binds its bytes, so encoding the same cluster adapters
    twice (a restarted server does) must give the same bytes."""
    config = fast_consortium()
    coordinator_model = MaskedAdapterModel.from_consortium(config, tiny_config=TINY)
    clusters = ClusterAdapters(
        states=(coordinator_model.get_block_state(),) * 2,
        last_updates=(None, coordinator_model.get_block_state()),
        centroids=(),
    )
    hashes = {ReleasedModel.of(1, clusters).model_hash for _ in range(20)}
    assert len(hashes) == 1


# --------------------------------------------------------------------------- damaged state


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "empty file": lambda path: path.write_bytes(b""),
    "models table dropped": sql_damage("DROP TABLE models"),
    "truncated": truncate_half,
    "overwritten with garbage": lambda path: path.write_bytes(os.urandom(64 * 1024)),
}


@pytest.fixture(scope="module")
def completed_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Pki]:
    """A server state whose run completed both rounds, written through the store (the
    real encoded model, no clients), and the consortium's credentials."""
    root = tmp_path_factory.mktemp("completed")
    pki = provision(root / "pki")
    AggregatorServer(
        fast_consortium(),
        credentials=pki.server,
        state_dir=root / "server",
        options=FAST,
        new_run=True,
    ).stop()
    store = AggregatorStore(root / "server")
    latest = store.latest_model()
    assert latest is not None
    for round_number in (1, 2):
        store.complete_attempt(round_number, store.begin_attempt(round_number), latest[1], {})
    store.close()
    return root / "server", pki


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Pki, Path]:
    """A run whose clients completed both rounds: the server state and client folders."""
    root = tmp_path_factory.mktemp("finished")
    config = fast_consortium()
    pki = provision(root / "pki")
    server = AggregatorServer(
        config, credentials=pki.server, state_dir=root / "server", options=FAST, new_run=True
    ).start()
    try:
        run = start_federation(config, pki, server.address, root / "clients")
        run.join()
        assert server.wait(5)
    finally:
        server.stop(grace=0.2)
    assert run.errors == {}
    return root / "server", pki, root / "clients"


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_damaged_state_is_refused_and_left_as_it_was(
    tmp_path: Path, completed_state: tuple[Path, Pki], corruption: str
) -> None:
    """Each corruption of a finished run's state: the server refuses to start with a
    `StateError` naming the file, and the file is not replaced by a new run."""
    finished, pki = completed_state
    state = tmp_path / "server"
    shutil.copytree(finished, state)
    CORRUPTIONS[corruption](state / "state.sqlite")
    damaged = (state / "state.sqlite").read_bytes()
    with pytest.raises(StateError, match=r"(?i)restore .*backup") as refused:
        AggregatorServer(fast_consortium(), credentials=pki.server, state_dir=state, options=FAST)
    assert str(state / "state.sqlite") in str(refused.value)
    assert (state / "state.sqlite").read_bytes() == damaged
    with pytest.raises(StateError, match="already holds a run"):
        AggregatorServer(
            fast_consortium(), credentials=pki.server, state_dir=state, options=FAST, new_run=True
        )


@pytest.mark.parametrize("corruption", ["models table dropped", "overwritten with garbage"])
def test_serve_refuses_a_damaged_state_in_one_line(
    tmp_path: Path, completed_state: tuple[Path, Pki], corruption: str
) -> None:
    """`fedhft aggregator serve` on a damaged state: exit code 1 and one `error:` line
    naming the file, no traceback, and no run served."""
    finished, pki = completed_state
    state = tmp_path / "server"
    shutil.copytree(finished, state)
    CORRUPTIONS[corruption](state / "state.sqlite")
    config_file = tmp_path / "consortium.yaml"
    config_file.write_text(dump_yaml(fast_consortium()))
    arguments = ["aggregator", "serve", "--config", str(config_file), "--tls", str(pki.server)]
    result = runner.invoke(app, [*arguments, "--state", str(state), "--exit-after-finish", "0"])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(state / "state.sqlite") in lines[0]


def test_missing_state_needs_new_run(tmp_path: Path) -> None:
    """A --state folder without a state is refused unless --new-run asks for a new run."""
    pki = provision(tmp_path / "pki")
    with pytest.raises(StateError, match="--new-run"):
        AggregatorServer(
            fast_consortium(), credentials=pki.server, state_dir=tmp_path / "s", options=FAST
        )
    assert not (tmp_path / "s" / "state.sqlite").exists()


# --------------------------------------------------------------------------- clients


@pytest.mark.slow
def test_client_stops_on_a_server_of_another_run_or_an_older_backup(
    tmp_path: Path, finished_run: tuple[Path, Pki, Path]
) -> None:
    """Over real gRPC/TLS: a client of the finished run stops with `RunMismatchError`
    facing a server started as a new run, and facing its own run's state restored from
    a backup that holds fewer completed rounds than the client saw."""
    finished, pki, clients = finished_run
    config = fast_consortium()
    org = next(iter(ORGS))
    data = federation_data()[org]

    def attempt(state: Path, *, new_run: bool) -> RunMismatchError:
        server = AggregatorServer(
            config, credentials=pki.server, state_dir=state, options=FAST, new_run=new_run
        ).start()
        try:
            client = make_client(org, data, config, pki, server.address, clients)
            with client, pytest.raises(RunMismatchError) as refused:
                client.run_round()
        finally:
            server.stop(grace=0.2)
        return refused.value

    another = attempt(tmp_path / "new-run", new_run=True)
    assert "reset or restored" in str(another)

    older = tmp_path / "older"
    shutil.copytree(finished, older)
    with sqlite3.connect(older / "state.sqlite") as db:  # As the backup after round 1.
        db.execute("DELETE FROM models WHERE round = 2")
        db.execute("DELETE FROM attempts WHERE round = 2")
    db.close()
    rolled_back = attempt(older, new_run=False)
    assert "holds 1 completed rounds" in str(rolled_back)


def test_restarted_server_names_its_run_and_ends_a_joined_attempt_it_no_longer_runs(
    tmp_path: Path,
) -> None:
    """Over real gRPC/TLS: `Hello` and every announcement carry the state's run id, the
    same after a restart; a client still waiting for the sessions of the attempt it
    joined before the restart is told ABORTED at once instead of waiting out the join
    window of the redone attempt."""
    from cryptography.hazmat.primitives import serialization

    from fedhft.protocol import PROTOCOL_VERSION, create_channel, load_credentials
    from fedhft.protocol import fedhft_pb2 as pb
    from fedhft.protocol import fedhft_pb2_grpc as pb_grpc

    config = fast_consortium()
    pki = provision(tmp_path / "pki")
    org = next(iter(ORGS))
    credentials = load_credentials(pki.org(org))
    der = serialization.Encoding.DER
    hello = pb.HelloRequest(
        protocol=PROTOCOL_VERSION,
        consortium_config_hash=bytes.fromhex(consortium_hash(config)),
        identity_certificate=credentials.identity_certificate.public_bytes(der),
        sealing_certificate=credentials.sealing_certificate.public_bytes(der),  # type: ignore[union-attr]
    )
    seen: list[tuple[str, str, str]] = []
    for new_run in (True, False):
        server = AggregatorServer(
            config, credentials=pki.server, state_dir=tmp_path / "s", options=FAST, new_run=new_run
        ).start()
        channel = create_channel(credentials, server.address, "localhost")
        try:
            stub = pb_grpc.AggregatorStub(channel)
            answer = stub.Hello(hello, timeout=20)
            announced = stub.AwaitRound(pb.RoundRequest(after_round=0, wait_ms=10_000), timeout=20)
            assert announced.status == pb.ROUND_STATUS_OPEN
            seen.append((answer.run_id, announced.server_run_id, announced.run_id))
            if not new_run:
                stale = seen[0][2]
                assert stale != announced.run_id  # The round is redone as a new attempt.
                request = pb.SessionRequest(round=1, cluster=0, wait_ms=60_000, run_id=stale)
                ended = stub.AwaitSession(request, timeout=60)
                assert ended.status == pb.SESSION_STATUS_ABORTED
                # Told while the redone attempt still waits for joins, not when it ends.
                attempt = server.attempt
                assert attempt is not None and attempt.run_id == announced.run_id
                assert attempt.phase == "joining"
        finally:
            channel.close()
            server.stop(grace=0)
    (first_hello, first_announced, _), (second_hello, second_announced, _) = seen
    assert first_hello == first_announced == second_hello == second_announced
    assert first_hello.startswith("tiny-test-")
