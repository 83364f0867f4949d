"""What the round thread and the gRPC servicer of one aggregation server share.

`AggregatorServer` (``_server.py``) runs the rounds; `AggregatorService` (``_service.py``)
answers the organizations' calls. Both read and change the same round state: the open
`Attempt`, the last few attempts (so a client learns how its session ended), the final
model. That state lives here, in `RoundState`, which owns the one condition variable
that guards it and wakes whoever waits for a change; the servicer reaches the rest of
the server through a `ServerContext`. Neither of the two modules imports the other's
internals, so they import each other not at all: ``_server.py`` imports this module and
``_service.py``, ``_service.py`` imports only this module.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

from fedhft.audit import AuditLog
from fedhft.model import ClusterAdapters, encode_clusters
from fedhft.policies import ConsortiumConfig
from fedhft.protocol import Credentials
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol.session_codec import released_model_hash

from ._federation import RoundCoordinator
from ._mole_rounds import MoLECoordinator
from ._sessions import AggregationSession
from ._store import AggregatorStore

_T = TypeVar("_T")

RECENT_ATTEMPTS: Final = 3
"""How many ended attempts stay reachable by their run id and round."""

_POLL_S: Final = 0.5
"""The longest a waiter sleeps before it looks at the stop flag and its deadline again."""


@dataclass
class JoinAnswer:
    """An organization's answer to a round announcement."""

    participate: bool
    tier: str
    refusal: int


@dataclass(frozen=True)
class ReleasedModel:
    """The cluster adapters released for a round, serialized once per cluster."""

    round: int
    clusters: ClusterAdapters
    payloads: tuple[bytes, ...]
    hashes: tuple[bytes, ...]
    model_hash: bytes

    @classmethod
    def of(cls, round_number: int, clusters: ClusterAdapters) -> ReleasedModel:
        """Serialize each cluster of ``clusters``; ``model_hash`` binds all of them."""
        payloads = tuple(
            encode_clusters(
                ClusterAdapters(
                    states=(clusters.states[j],),
                    last_updates=(clusters.last_updates[j],),
                    centroids=clusters.centroids[j : j + 1],
                )
            )
            for j in range(clusters.k)
        )
        hashes = tuple(hashlib.sha256(payload).digest() for payload in payloads)
        return cls(
            round=round_number,
            clusters=clusters,
            payloads=payloads,
            hashes=hashes,
            model_hash=released_model_hash(hashes),
        )


@dataclass
class Attempt:
    """One attempt of a round, as the servicer sees it."""

    round: int
    attempt: int
    run_id: str
    model: ReleasedModel
    join_deadline_unix_ms: int
    phase: str = "joining"  # joining → [affinity →] aggregating → completed | aborted
    joins: dict[str, JoinAnswer] = field(default_factory=dict)
    sessions: dict[int, AggregationSession] = field(default_factory=dict)
    peers: dict[str, pb.PeerIdentity] = field(default_factory=dict)
    affinities: dict[str, tuple[float, ...]] = field(default_factory=dict)
    """FedAMoLE round 1: each organization's DP affinity release, by organization."""


class RoundState:
    """The open attempt, the recent attempts and the final model, with their lock.

    Every change goes through a method here, which takes the lock and wakes every
    waiter (`wait_until`); `read` and `update` run a caller's short critical section
    (one that also touches the coordinator's state, such as recording a join and its
    sketch) under that same lock. Plain attribute reads (`attempt`, `final`,
    `stopping`) need no lock: each is one reference, replaced whole.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._attempt: Attempt | None = None
        # Keyed by (run id, round): attempt numbers restart at 1 every round, so the
        # attempt's run id alone ("<run>.a1") names one attempt of every round. Keyed by
        # it, round 2 replaced round 1 while clients still read round 1's last broadcast.
        self._recent: dict[tuple[str, int], Attempt] = {}
        self._final: ReleasedModel | None = None
        self._stopping = False

    @property
    def attempt(self) -> Attempt | None:
        """The attempt open now (joining or aggregating), if any."""
        return self._attempt

    @property
    def final(self) -> ReleasedModel | None:
        """The final model, once the run finished."""
        return self._final

    @property
    def stopping(self) -> bool:
        """Whether the server is stopping (every waiter returns)."""
        return self._stopping

    @property
    def recent_attempts(self) -> dict[tuple[str, int], Attempt]:
        """A copy of the last few attempts by (attempt run id, round)."""
        with self._changed:
            return dict(self._recent)

    def recent(self, run_id: str, round_number: int) -> Attempt | None:
        """The recent attempt of ``round_number`` with attempt run id ``run_id``."""
        with self._changed:
            return self._recent.get((run_id, round_number))

    def completed_model(self, round_number: int) -> ReleasedModel | None:
        """The model a recently completed attempt of ``round_number`` served, if any."""
        with self._changed:
            for attempt in self._recent.values():
                if attempt.round == round_number and attempt.phase == "completed":
                    return attempt.model
        return None

    # ------------------------------------------------------------------ changes

    def publish(self, attempt: Attempt) -> None:
        """Open ``attempt``: it becomes the announced one and stays reachable for a while."""
        with self._changed:
            self._attempt = attempt
            self._recent[(attempt.run_id, attempt.round)] = attempt
            for old in list(self._recent)[:-RECENT_ATTEMPTS]:
                del self._recent[old]
            self._changed.notify_all()

    def set_phase(self, attempt: Attempt, phase: str) -> None:
        """Move ``attempt`` to ``phase`` (it stays the open attempt)."""
        with self._changed:
            attempt.phase = phase
            self._changed.notify_all()

    def close(self, attempt: Attempt, phase: str) -> None:
        """End ``attempt`` in ``phase`` (completed or aborted): no attempt is open."""
        with self._changed:
            attempt.phase = phase
            self._attempt = None
            self._changed.notify_all()

    def finish(self, final: ReleasedModel) -> None:
        """The run ended with ``final``."""
        with self._changed:
            self._final = final
            self._changed.notify_all()

    def stop(self) -> None:
        """Make every waiter return, now and from now on."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()

    def notify(self) -> None:
        """Wake every waiter: something they may wait for changed."""
        with self._changed:
            self._changed.notify_all()

    def read(self, section: Callable[[], _T]) -> _T:
        """``section()`` under the lock: a consistent view of several fields."""
        with self._changed:
            return section()

    def update(self, section: Callable[[], _T]) -> _T:
        """``section()`` under the lock, then wake every waiter."""
        with self._changed:
            try:
                return section()
            finally:
                self._changed.notify_all()

    # ------------------------------------------------------------------ waiting

    def wait_until(
        self,
        predicate: Callable[[], bool],
        deadline: float,
        *,
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        """Return once ``predicate()`` holds, the server stops, ``deadline`` (UNIX
        seconds) passed or ``active()`` turned false (a caller that went away);
        ``predicate`` is evaluated under the lock."""
        with self._changed:
            while not self._stopping and not predicate() and active():
                remaining = deadline - time.time()
                if remaining <= 0:
                    return
                self._changed.wait(min(remaining, _POLL_S))

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Whether ``predicate()`` holds within ``timeout`` seconds (or the stop)."""
        self.wait_until(predicate, time.time() + timeout)
        return self.read(predicate)


@dataclass(frozen=True)
class ServerContext:
    """What the gRPC servicer uses of its server: the consortium, the server's
    credentials, the durable state and audit log, the learning state, the round state
    and the polling limits (see `ServerOptions`)."""

    consortium: ConsortiumConfig
    config_hash: bytes
    run_id: str
    credentials: Credentials
    enrolled_organizations: tuple[str, ...]
    store: AggregatorStore
    audit: AuditLog
    coordinator: RoundCoordinator | MoLECoordinator
    rounds: RoundState
    poll_interval_ms: int
    max_wait_ms: int
