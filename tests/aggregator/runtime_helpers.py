"""Helpers for tests of the running system: provisioning, a loopback server, client threads.

Every server listens on 127.0.0.1 with a free port and is stopped by the test that
started it; clients run as threads of the test process (subprocesses only where a test
must kill a process).
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from federation_helpers import ORGS, TINY, consortium, policy

from fedhft.aggregator import AggregatorServer, ServerOptions
from fedhft.aggregator._federation import decode_clusters
from fedhft.policies import ConsortiumConfig, OrganizationPolicy
from fedhft.protocol import init_ca, issue_organization, issue_server
from fedhft.protocol.blocks import clip_packed, row_average
from fedhft.sdk import (
    ClientReport,
    ClusterAdapters,
    FederatedClient,
    MaskedAdapterModel,
    MaskedUpdate,
    OrganizationData,
    PrivacyLedger,
    RetryPolicy,
    synthetic_federation,
)
from fedhft.sdk._participant import RoundParticipant

SERVER_NAME = "localhost"
FAST = ServerOptions(join_timeout_s=20, train_timeout_s=60, retry_pause_s=0.2, poll_interval_ms=50)


def fast_consortium(**overrides: Any) -> ConsortiumConfig:
    """The tiny consortium with short stage timeouts (stragglers drop out in 8 s).

    Eight seconds, not less: on a loaded two-core machine a live client thread took more
    than three seconds for a stage and was dropped, which failed the end-to-end tests.
    """
    secure = {"threshold_fraction": 0.75, "max_dropout_fraction": 0.25, "stage_timeout_s": 8.0}
    secure.update(overrides.pop("secure_aggregation", {}))
    return consortium(secure_aggregation=secure, **overrides)


@dataclass(frozen=True)
class Pki:
    """A provisioned consortium under one folder."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca"

    @property
    def server(self) -> Path:
        return self.root / "server"

    def org(self, organization: str) -> Path:
        return self.root / "orgs" / organization


def provision(root: Path, organizations: tuple[str, ...] = tuple(ORGS)) -> Pki:
    """A CA, the server's credentials (localhost) and each organization's."""
    ca = init_ca("tiny-test", root / "ca")
    issue_server(ca, SERVER_NAME, root / "server")
    for org in organizations:
        issue_organization(ca, org, root / "orgs" / org)
    return Pki(root)


@functools.cache
def federation_data() -> dict[str, OrganizationData]:
    """Seeded non-iid data of the four organizations, by organization."""
    data = synthetic_federation(num_organizations=4, alpha=1.0, samples_per_org=48, seed=1)
    return dict(zip(ORGS, data, strict=True))


@contextmanager
def running_server(
    config: ConsortiumConfig,
    pki: Pki,
    state: Path,
    options: ServerOptions = FAST,
    *,
    new_run: bool = True,
) -> Iterator[AggregatorServer]:
    """A started aggregation server (of a new run unless ``new_run`` is false), stopped on
    exit."""
    server = AggregatorServer(
        config, credentials=pki.server, state_dir=state, options=options, new_run=new_run
    ).start()
    try:
        yield server
    finally:
        server.stop(grace=0.5)


@dataclass
class Spy:
    """What each organization trained, round by round (spied on `RoundParticipant`)."""

    released: dict[int, ClusterAdapters] = field(default_factory=dict)
    updates: dict[int, dict[str, MaskedUpdate]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def spying() -> Iterator[Spy]:
    """Record every released model and every update `RoundParticipant.prepare` returns."""
    spy = Spy()
    original = RoundParticipant.prepare

    def prepare(self: RoundParticipant, round_number: int, clusters: ClusterAdapters) -> Any:
        update = original(self, round_number, clusters)
        with spy.lock:
            spy.released[round_number] = clusters
            spy.updates.setdefault(round_number, {})[self.organization] = update
        return update

    RoundParticipant.prepare = prepare  # type: ignore[method-assign]
    try:
        yield spy
    finally:
        RoundParticipant.prepare = original  # type: ignore[method-assign]


def make_client(
    org: str,
    data: OrganizationData,
    config: ConsortiumConfig,
    pki: Pki,
    address: str,
    state: Path,
    org_policy: OrganizationPolicy | None = None,
) -> FederatedClient:
    """A `FederatedClient` on the tiny model, its state and audit log under ``state``."""
    model = MaskedAdapterModel.from_consortium(config, tiny_config=TINY)
    return FederatedClient(
        model,
        data.train,
        org_policy or policy(org, state),
        config,
        credentials=pki.org(org),
        server=address,
        server_name=SERVER_NAME,
        state_dir=state / org / "state",
        test_dataset=data.test,
        seed=0,
        wait_ms=2000,
        retry=RetryPolicy(attempts=40, initial_backoff_s=0.2, max_backoff_s=2.0),
    )


@dataclass
class ClientRun:
    """Client threads and what they returned or raised."""

    threads: list[threading.Thread]
    reports: dict[str, ClientReport] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)

    def join(self, timeout: float = 120.0) -> None:
        for thread in self.threads:
            thread.join(timeout)
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"clients still running: {alive}"


def start_clients(
    factories: Mapping[str, Callable[[], FederatedClient]],
) -> ClientRun:
    """Run each client's `run()` in its own thread."""
    run = ClientRun(threads=[])

    def body(org: str, factory: Callable[[], FederatedClient]) -> None:
        try:
            with factory() as client:
                run.reports[org] = client.run()
        except BaseException as error:  # Collected for the test to assert on.
            run.errors[org] = error

    for org, factory in factories.items():
        thread = threading.Thread(target=body, args=(org, factory), name=f"client-{org}")
        run.threads.append(thread)
        thread.start()
    return run


def start_federation(
    config: ConsortiumConfig,
    pki: Pki,
    address: str,
    clients: Path,
    *,
    organizations: tuple[str, ...] = tuple(ORGS),
    policies: Mapping[str, OrganizationPolicy] | None = None,
) -> ClientRun:
    """One client thread per organization on the seeded data, state under ``clients``."""
    data = federation_data()
    return start_clients(
        {
            org: functools.partial(
                make_client,
                org,
                data[org],
                config,
                pki,
                address,
                clients,
                (policies or {}).get(org),
            )
            for org in organizations
        }
    )


def stored_models(state: Path) -> dict[int, ClusterAdapters]:
    """The model after each completed round, read from the server's SQLite state."""
    with sqlite3.connect(state / "state.sqlite") as db:
        rows = db.execute("SELECT round, state FROM models ORDER BY round").fetchall()
    return {int(r): decode_clusters(bytes(blob)) for r, blob in rows}


def assert_per_row_averages(
    config: ConsortiumConfig,
    before: ClusterAdapters,
    after: ClusterAdapters,
    updates: Mapping[str, MaskedUpdate],
    *,
    tolerance_per_holder: float,
) -> int:
    """Each cluster block moved by the clear per-row average of its holders' updates.

    Blocks held by fewer than the minimum cohort must not move. Returns how many blocks
    were checked against a clear average.
    """
    clip = config.secure_aggregation.clip
    checked = 0
    for j in range(after.k):
        for block_id, start in before.states[j].items():
            holders = [u for u in updates.values() if block_id in u.block_ids]
            if len(holders) < config.secure_aggregation.min_cohort:
                np.testing.assert_array_equal(after.states[j][block_id], start)
                continue
            rows, cols = holders[0].shapes[block_id]
            plain = sum(clip_packed(u.vectors(j)[block_id], rows, cols, clip) for u in holders)
            average, has_weight = row_average(np.asarray(plain), rows, cols)
            expected = np.array(start)
            expected[has_weight] += average[has_weight]
            np.testing.assert_allclose(
                after.states[j][block_id], expected, atol=len(holders) * tolerance_per_holder
            )
            checked += 1
    return checked


__all__ = [
    "FAST",
    "ORGS",
    "TINY",
    "ClientRun",
    "Pki",
    "Spy",
    "assert_per_row_averages",
    "fast_consortium",
    "federation_data",
    "make_client",
    "policy",
    "provision",
    "running_server",
    "spying",
    "start_clients",
    "start_federation",
    "stored_models",
]


def ledger_rounds(org: str, clients: Path) -> list[int]:
    """The rounds in an organization's privacy ledger, in order (the ledger must exist)."""
    privacy = policy(org, clients).privacy
    ledger = PrivacyLedger.open(
        privacy.ledger_path,
        organization=org,
        accountant=privacy.accountant,
        delta=privacy.delta,
        epsilon_budget=privacy.epsilon,
        create=False,
    )
    return [record.round for record in ledger.records]
