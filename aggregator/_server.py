"""The aggregation server: round state machine, durable state and the gRPC endpoint.

`AggregatorServer` runs the consortium's rounds ``completed + 1 .. rounds`` one at a
time in a background thread (ARCHITECTURE.md §7):

1. open an attempt of the round in SQLite and announce it (join deadline);
2. collect joins until every enrolled organization answered or the deadline passed;
   with fewer participants than the minimum cohort the attempt is aborted and retried
   after a pause, or the run ends when too few organizations can still join (the others
   refused for budget or policy);
3. open one secure-aggregation session per cluster (`_sessions.py`) and step them in
   lockstep: a stage closes when every expected participant answered or its deadline
   passed (stragglers become dropouts). The first stage also covers local training, so
   its deadline is the longer ``train_timeout_s``;
4. move the cluster adapters by the per-row averages (`RoundCoordinator.apply`) and
   store the new model together with the round's completion in one transaction.

FedAMoLE (`MoLECoordinator`) runs through the same steps with one session per round;
in round 1, between 2 and 3, the server waits for every participant's DP affinity
(`SubmitAffinity`), runs RSEA, stores the assignment in SQLite and announces it.

Killing the process at any moment loses nothing: at start the open attempt is aborted
(`AggregatorStore.abort_open_attempts`), the model of the last completed round is
restored, and the interrupted round is redone as a new attempt, whose session ids differ
because the attempt is part of the run id. Clients re-send the update they already
trained, so no round is trained or counted twice.

Notes:
    The server stores and keeps in memory only what secure aggregation gives it: masked
    inputs (uniformly random words), encrypted shares it relays, running and final sums.
    Receipts are signed with the server's identity key and logged in its own audit log
    (``<state>/audit.jsonl``).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from cryptography import x509

from fedhft.audit import AuditLog, EventType, round_aggregated_payload, sum_rejected_payload
from fedhft.files import atomic_write
from fedhft.model import initial_block_state, sketch_dimension, tier_mask
from fedhft.policies import ConsortiumConfig, Method, SecureAggregationMode, consortium_hash
from fedhft.protocol import (
    CKKSServerContext,
    CKKSSession,
    Credentials,
    EnrollmentInterceptor,
    Role,
    create_server,
    load_credentials,
    verify_identity_certificate,
)
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol import fedhft_pb2_grpc as pb_grpc
from fedhft.protocol.errors import CohortTooSmallError, ProtocolError, SumOutOfBoundsError
from fedhft.protocol.session_codec import CKKS_PUBLIC_FILE

from ._assignment import InfeasibleAssignmentError
from ._federation import RoundCoordinator, RoundSummary, decode_clusters, encode_clusters
from ._mole_rounds import MoLECoordinator, mole_coordinator_for_server
from ._round_state import Attempt, ReleasedModel, RoundState, ServerContext
from ._service import AggregatorService
from ._sessions import AggregationSession, CKKSRoundSession, MaskingSession
from ._store import AggregatorStore
from .errors import AggregatorError, RoundError

_LOG = logging.getLogger("fedhft.aggregator")

_SPARE_WORKERS: Final = 8
"""Worker threads beyond every organization's quota: they answer refused calls."""
_PERMANENT_REFUSALS: Final = frozenset(
    {pb.REFUSAL_REASON_BUDGET_EXHAUSTED, pb.REFUSAL_REASON_POLICY_INCOMPATIBLE}
)


@dataclass(frozen=True)
class ServerOptions:
    """Timing and limits of the aggregation server (all have production defaults).

    Attributes:
        join_timeout_s: how long a round waits for every enrolled organization to
            answer its announcement.
        train_timeout_s: deadline of the first secure-aggregation stage, which starts
            when joins close and so includes each organization's local training.
        stage_timeout_s: deadline of every later stage; default: the consortium's
            ``secure_aggregation.stage_timeout_s``.
        retry_pause_s: pause before a failed attempt of a round is retried.
        poll_interval_ms: how soon clients are told to ask again.
        max_wait_ms: the longest a long-polling call is held.
        max_message_bytes: gRPC message limit (larger payloads are chunked).
        max_calls_per_organization: the most calls one organization may have in flight
            (long polls and streams included); more are refused with
            RESOURCE_EXHAUSTED before they reach the servicer. An SDK client makes one
            call at a time.
        stream_idle_timeout_s: an upload or download stream that moves no message for
            this long is cancelled, and its organization's slot freed.
        max_workers: gRPC worker threads (each call in flight holds one). Default:
            ``max_calls_per_organization`` for every enrolled organization plus 8 spare
            threads, so that all organizations but one, each at its quota, still leave
            the last its whole quota; a smaller number is refused.
    """

    join_timeout_s: float = 120.0
    train_timeout_s: float = 600.0
    stage_timeout_s: float | None = None
    retry_pause_s: float = 5.0
    poll_interval_ms: int = 250
    max_wait_ms: int = 20_000
    max_message_bytes: int = 16 * 1024 * 1024
    max_calls_per_organization: int = 8
    stream_idle_timeout_s: float = 60.0
    max_workers: int | None = None

    def worker_threads(self, organizations: int) -> int:
        """The gRPC worker pool for `organizations` enrolled organizations (see above)."""
        if self.max_calls_per_organization < 1:
            raise AggregatorError(
                f"`max_calls_per_organization` must be >= 1, got {self.max_calls_per_organization}"
            )
        if not self.stream_idle_timeout_s > 0:
            raise AggregatorError(
                f"`stream_idle_timeout_s` must be > 0, got {self.stream_idle_timeout_s}"
            )
        quotas = organizations * self.max_calls_per_organization
        if self.max_workers is None:
            return quotas + _SPARE_WORKERS
        if self.max_workers <= quotas:
            raise AggregatorError(
                f"`max_workers` is {self.max_workers}, but {organizations} organizations "
                f"with `max_calls_per_organization` {self.max_calls_per_organization} may "
                f"hold {quotas} workers; set it above {quotas} (or leave it unset) so that "
                "no organizations can take every worker"
            )
        return self.max_workers


class _Outcome(enum.Enum):
    COMPLETED = "completed"
    RETRY = "retry"
    FINISHED = "finished"
    STOPPED = "stopped"


class AggregatorServer:
    """The consortium's aggregation server: gRPC over mutual TLS plus the round thread.

    Args:
        consortium: the consortium configuration (every party holds the same file).
        credentials: the server's credentials folder (``fedhft ca issue --server``) or
            the loaded credentials. In CKKS mode it must also hold the public CKKS
            context (``ckks-public.context``, see `ckks_ceremony`).
        state_dir: the SQLite state and the server's audit log; reuse it to resume.
        host, port: where to listen (port 0 picks a free port, see `port`).
        options: timeouts and limits.
        new_run: start a new run with a new run id in ``state_dir``, which must not
            hold a state yet. Without it the state must be the intact state of a run:
            a missing, empty or damaged one is refused, never replaced by a new run.

    Raises:
        StateError: the state is missing (and ``new_run`` is false), damaged, belongs
            to another configuration, or exists although ``new_run`` is true.

    Use `start()`, then `wait()` until the run finished, then `stop()`; or use the
    object as a context manager.
    """

    def __init__(
        self,
        consortium: ConsortiumConfig,
        *,
        credentials: Credentials | str | os.PathLike[str],
        state_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        options: ServerOptions | None = None,
        new_run: bool = False,
    ) -> None:
        if (
            consortium.method is Method.FEDAMOLE
            and consortium.secure_aggregation.mode is not SecureAggregationMode.MASKING
        ):
            raise AggregatorError(
                "method fedamole runs with masking-mode secure aggregation only; set "
                "`secure_aggregation.mode: masking`"
            )
        self.consortium = consortium
        self.options = options or ServerOptions()
        self.credentials = (
            credentials if isinstance(credentials, Credentials) else load_credentials(credentials)
        )
        if self.credentials.role is not Role.SERVER:
            raise AggregatorError(
                f"the aggregation server needs server credentials (`fedhft ca issue "
                f"--server`), got those of organization {self.credentials.name!r}"
            )
        self.state_dir = Path(state_dir)
        self.config_hash = bytes.fromhex(consortium_hash(consortium))
        self.enrolled_organizations = tuple(consortium.enrolled())
        self.stage_timeout_s = (
            self.options.stage_timeout_s or consortium.secure_aggregation.stage_timeout_s
        )
        self.ckks_context = self._load_ckks_context()

        # Bind first: a taken port fails before any state is opened.
        self.bound = create_server(
            self.credentials,
            port=port,
            host=host,
            max_message_bytes=self.options.max_message_bytes,
            max_workers=self.options.worker_threads(len(self.enrolled_organizations)),
            interceptors=[
                EnrollmentInterceptor(
                    self.enrolled_organizations,
                    ca_certificate=self.credentials.ca_certificate,
                    max_calls_per_peer=self.options.max_calls_per_organization,
                    stream_idle_timeout_s=self.options.stream_idle_timeout_s,
                )
            ],
        )
        try:
            self.store = self._open_store(new_run=new_run)
        except BaseException:
            self.bound.stop(None)
            raise
        try:
            self._open_state()
        except BaseException:
            self.store.close()
            self.bound.stop(None)
            raise
        self.rounds = RoundState()
        self.summaries: list[RoundSummary] = []
        self._started = False
        self._finished = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fedhft-rounds", daemon=True)

        context = ServerContext(
            consortium=consortium,
            config_hash=self.config_hash,
            run_id=self.run_id,
            credentials=self.credentials,
            enrolled_organizations=self.enrolled_organizations,
            store=self.store,
            audit=self.audit,
            coordinator=self.coordinator,
            rounds=self.rounds,
            poll_interval_ms=self.options.poll_interval_ms,
            max_wait_ms=self.options.max_wait_ms,
        )
        pb_grpc.add_AggregatorServicer_to_server(AggregatorService(context), self.bound.server)

    # ------------------------------------------------------------------ setup

    def _open_store(self, *, new_run: bool) -> AggregatorStore:
        """A new run's state (only when asked for) or the checked state of the run."""
        if new_run:
            return AggregatorStore.create(
                self.state_dir,
                consortium=self.consortium.consortium,
                config_hash=self.config_hash.hex(),
                run_id=f"{self.consortium.consortium}-{secrets.token_hex(8)}",
            )
        return AggregatorStore(self.state_dir)

    def _open_state(self) -> None:
        """Check the state belongs to this config, restore the model, open the audit log."""
        self.run_id = self.store.bind(
            consortium=self.consortium.consortium, config_hash=self.config_hash.hex()
        )
        for round_number, attempt in self.store.abort_open_attempts():
            _LOG.warning(
                "round %d attempt %d was interrupted; it is aborted and will be redone",
                round_number,
                attempt,
            )
        self.coordinator = self._coordinator()
        self.audit = AuditLog.open(
            self.state_dir / "audit.jsonl",
            party_id=self.credentials.name,
            signing_key=self.credentials.identity_key,
            repair=True,
        )

    def _load_ckks_context(self) -> CKKSServerContext | None:
        if self.consortium.secure_aggregation.mode is not SecureAggregationMode.CKKS:
            return None
        path = self.credentials.directory / CKKS_PUBLIC_FILE
        if not path.is_file():
            raise AggregatorError(
                f"CKKS mode needs the consortium's public CKKS context at {path}; run the "
                "key ceremony (fedhft.aggregator.ckks_ceremony) when provisioning"
            )
        context = CKKSServerContext.from_bytes(path.read_bytes())
        if context.consortium != self.consortium.consortium:
            raise AggregatorError(
                f"{path} belongs to consortium {context.consortium!r}, not "
                f"{self.consortium.consortium!r}"
            )
        return context

    def _coordinator(self) -> RoundCoordinator | MoLECoordinator:
        if self.consortium.method is Method.FEDAMOLE:
            return mole_coordinator_for_server(
                self.consortium, run_id=self.run_id, store=self.store
            )
        # The starting values and the tier masks come from the model's structure alone
        # (`fedhft.model.initial_block_state`): the server never loads base weights.
        tiers = {tier: tier_mask(self.consortium, tier) for tier in self.consortium.tiers}
        stored = self.store.latest_model()
        coordinator = RoundCoordinator(
            self.consortium,
            run_id=self.run_id,
            initial_state=initial_block_state(self.consortium),
            tier_blocks=tiers,
            clusters=decode_clusters(stored[1]) if stored is not None else None,
            sketch_length=sketch_dimension(self.consortium)
            if self.consortium.clustering.signal == "sketch"
            else None,
        )
        coordinator.sketches = {
            org: np.asarray(sketch, dtype=np.float64)
            for org, sketch in self.store.sketches().items()
        }
        if stored is None:
            self.store.set_initial_model(encode_clusters(coordinator.clusters))
        else:
            _LOG.info("resuming run %s after round %d", self.run_id, stored[0])
        return coordinator

    # ------------------------------------------------------------------ lifecycle

    @property
    def address(self) -> str:
        """``host:port`` the server listens on."""
        return self.bound.address

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return self.bound.port

    @property
    def finished(self) -> bool:
        """Whether the run has ended (all rounds, or nobody left who could join)."""
        return self._finished.is_set()

    @property
    def stopping(self) -> bool:
        """Whether `stop()` was called."""
        return self.rounds.stopping

    @property
    def attempt(self) -> Attempt | None:
        """The attempt open now, if any (see `RoundState`)."""
        return self.rounds.attempt

    @property
    def recent_attempts(self) -> dict[tuple[str, int], Attempt]:
        """The last few attempts by (attempt run id, round) (see `RoundState`)."""
        return self.rounds.recent_attempts

    @property
    def final(self) -> ReleasedModel | None:
        """The final model, once the run finished."""
        return self.rounds.final

    def start(self) -> AggregatorServer:
        """Start serving and running rounds; returns self."""
        if self._started:
            raise AggregatorError("the server was already started")
        self._started = True
        self.bound.start()
        self._thread.start()
        _LOG.info(
            "aggregation server for %s listening on %s", self.consortium.consortium, self.address
        )
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run finished (or `timeout` seconds); returns whether it did.

        Raises `RoundError` when the round thread failed.
        """
        done = self._finished.wait(timeout)
        if self._failure is not None:
            raise RoundError(f"the round thread failed: {self._failure}") from self._failure
        return done

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop the rounds and the gRPC server; an open attempt is aborted (retried later)."""
        self.rounds.stop()
        if self._thread.is_alive():
            self._thread.join()
        self.bound.stop(grace)
        self.store.close()
        self.audit.close()

    def __enter__(self) -> AggregatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def notify(self) -> None:
        """Wake the round thread and long-polling calls (state changed)."""
        self.rounds.notify()

    # ------------------------------------------------------------------ round thread

    def _run(self) -> None:
        try:
            while not self.stopping:
                round_number = self.store.completed_rounds() + 1
                if round_number > self.consortium.rounds:
                    break
                outcome = self._run_attempt(round_number)
                if outcome in (_Outcome.FINISHED, _Outcome.STOPPED):
                    break
                if outcome is _Outcome.RETRY:
                    self.rounds.wait_until(lambda: False, time.time() + self.options.retry_pause_s)
            if not self.stopping:
                self._finish()
        except Exception as error:  # Reported through wait(); the thread must not die silently.
            _LOG.error("the round thread failed with %s", type(error).__name__, exc_info=True)
            self._failure = error
            self._finished.set()
            self.notify()

    def _run_attempt(self, round_number: int) -> _Outcome:
        attempt_number = self.store.begin_attempt(round_number)
        model = ReleasedModel.of(round_number, self.coordinator.model_for_round(round_number))
        join_deadline = time.time() + self.options.join_timeout_s
        attempt = Attempt(
            round=round_number,
            attempt=attempt_number,
            run_id=f"{self.run_id}.a{attempt_number}",
            model=model,
            join_deadline_unix_ms=int(join_deadline * 1000),
        )
        self.rounds.publish(attempt)
        _LOG.info(
            "round %d (attempt %d, %d clusters) is open for joining",
            round_number,
            attempt_number,
            model.clusters.k,
        )
        enrolled = set(self.enrolled_organizations)
        self.rounds.wait_until(lambda: enrolled <= set(attempt.joins), join_deadline)
        if self.stopping:
            return self._abort(attempt, "the server is stopping", _Outcome.STOPPED)

        def close_joins() -> tuple[dict[str, str], set[str]]:
            attempt.phase = "aggregating"
            participants = {o: a.tier for o, a in attempt.joins.items() if a.participate}
            refused = {o for o, a in attempt.joins.items() if a.refusal in _PERMANENT_REFUSALS}
            return participants, refused

        participants, refused = self.rounds.update(close_joins)
        _LOG.info(
            "round %d: %d organizations joined, %d refused, %d did not answer",
            round_number,
            len(participants),
            len(attempt.joins) - len(participants),
            len(enrolled - set(attempt.joins)),
        )
        min_cohort = self.consortium.secure_aggregation.min_cohort
        could_join = len(enrolled - refused)
        if len(participants) < min_cohort:
            outcome = _Outcome.FINISHED if could_join < min_cohort else _Outcome.RETRY
            return self._abort(
                attempt,
                f"{len(participants)} participants, fewer than the minimum cohort {min_cohort}",
                outcome,
            )
        if isinstance(self.coordinator, MoLECoordinator):
            assigned = self._assign_experts(attempt, participants)
            if isinstance(assigned, str):
                outcome = _Outcome.FINISHED if could_join < min_cohort else _Outcome.RETRY
                return self._abort(attempt, assigned, outcome)
            participants = assigned
        if self.consortium.method is Method.LOCAL:
            # Local-only baseline: every organization trains on its own; nothing is summed.
            summary = RoundSummary(round_number, 1, tuple(sorted(participants)), ())
            return self._complete(attempt, summary)
        try:
            attempt.peers = self._peers(participants)
            sessions = {
                cluster: self._open_session(attempt, cluster, participants)
                for cluster in range(model.clusters.k)
            }
        except CohortTooSmallError as error:
            outcome = _Outcome.FINISHED if could_join < min_cohort else _Outcome.RETRY
            return self._abort(attempt, str(error), outcome)
        self.rounds.update(lambda: attempt.sessions.update(sessions))
        return self._aggregate(attempt, sessions, participants)

    def _assign_experts(
        self, attempt: Attempt, participants: Mapping[str, str]
    ) -> dict[str, str] | str:
        """FedAMoLE: the participants that hold experts, or why the attempt cannot go on.

        In round 1 the assignment does not exist yet: wait (up to the join timeout) for
        every participant's DP affinity, run RSEA, store the assignment and announce it.
        """
        coordinator = self.coordinator
        assert isinstance(coordinator, MoLECoordinator)
        min_cohort = self.consortium.secure_aggregation.min_cohort
        if coordinator.assignment is None:
            self.rounds.set_phase(attempt, "affinity")
            deadline = time.time() + self.options.join_timeout_s
            self.rounds.wait_until(lambda: set(participants) <= set(attempt.affinities), deadline)
            if self.stopping:
                return "the server is stopping"
            affinities = self.rounds.read(
                lambda: {o: a for o, a in attempt.affinities.items() if o in participants}
            )
            if len(affinities) < min_cohort:
                return (
                    f"{len(affinities)} affinity releases, fewer than the minimum cohort "
                    f"{min_cohort}"
                )
            try:
                tiers = {org: participants[org] for org in affinities}
                assignment = self.rounds.update(lambda: coordinator.assign(affinities, tiers))
            except InfeasibleAssignmentError as error:
                return f"no expert assignment: {error}"
            self.store.save_assignment(assignment)
            _LOG.info(
                "round %d: experts assigned to %d organizations", attempt.round, len(assignment)
            )
        self.rounds.set_phase(attempt, "aggregating")
        held = coordinator.assignment or {}
        return {org: tier for org, tier in participants.items() if org in held}

    def _aggregate(
        self,
        attempt: Attempt,
        sessions: dict[int, AggregationSession],
        participants: Mapping[str, str],
    ) -> _Outcome:
        stages = next(iter(sessions.values())).stages
        for index, stage in enumerate(stages):
            timeout = self.options.train_timeout_s if index == 0 else self.stage_timeout_s
            deadline = time.time() + timeout
            for session in sessions.values():
                session.deadline_unix_ms = int(deadline * 1000)
            self.notify()
            self.rounds.wait_until(
                lambda: all(not s.pending() for s in sessions.values()), deadline
            )
            if self.stopping:
                return self._abort(attempt, "the server is stopping", _Outcome.STOPPED)
            late = sorted({org for s in sessions.values() for org in s.pending()})
            if late:
                _LOG.warning(
                    "round %d stage %s closed without %d organizations (dropouts)",
                    attempt.round,
                    stage,
                    len(late),
                )
            for session in sessions.values():
                session.close_stage()
            self.notify()
            failed = [s for s in sessions.values() if s.aborted is not None]
            if failed:
                reason = f"cluster {failed[0].cluster}: {failed[0].aborted}"
                return self._abort(attempt, reason, _Outcome.RETRY)
        results = {cluster: session.result() for cluster, session in sessions.items()}
        try:
            summary = self.coordinator.apply(
                round_number=attempt.round,
                participants=list(participants),
                results=results,
                skipped={cluster: session.skipped for cluster, session in sessions.items()},
                sum_error=(
                    self.ckks_context.parameters.error_bound
                    if self.ckks_context is not None
                    else None
                ),
            )
        except SumOutOfBoundsError as error:
            return self._reject_sum(attempt, results, error)
        return self._complete(attempt, summary)

    def _reject_sum(
        self, attempt: Attempt, results: Mapping[int, Any], error: SumOutOfBoundsError
    ) -> _Outcome:
        """Abort the attempt without applying anything, and log which bound failed.

        Notes:
            The logged event names the block and the bound, never a value: the sum is a
            public output, but the log need not carry it to show what was refused.
        """
        cluster = error.cluster if error.cluster is not None else min(results)
        self.audit.append(
            EventType.SUM_REJECTED,
            sum_rejected_payload(
                attempt.round,
                cluster,
                attempt=attempt.attempt,
                block=error.block,
                bound=error.bound,
            ),
        )
        return self._abort(attempt, f"sum rejected, nothing applied: {error}", _Outcome.RETRY)

    def _complete(self, attempt: Attempt, summary: RoundSummary) -> _Outcome:
        self.store.complete_attempt(
            attempt.round,
            attempt.attempt,
            encode_clusters(self.coordinator.clusters),
            summary.as_json(),
        )
        for cluster in range(summary.clusters if summary.outcomes else 0):
            self.audit.append(
                EventType.ROUND_AGGREGATED,
                round_aggregated_payload(
                    attempt.round,
                    cluster,
                    attempt=attempt.attempt,
                    survivors=len(summary.outcomes[cluster].survivors),
                ),
            )
        self.summaries.append(summary)
        self.rounds.close(attempt, "completed")
        _LOG.info("round %d completed (attempt %d)", attempt.round, attempt.attempt)
        return _Outcome.COMPLETED

    def _abort(self, attempt: Attempt, reason: str, outcome: _Outcome) -> _Outcome:
        self.store.abort_attempt(attempt.round, attempt.attempt, reason)
        error = RoundError(f"round {attempt.round} attempt {attempt.attempt} aborted: {reason}")
        for session in attempt.sessions.values():
            session.abort(ProtocolError(str(error)))
        self.rounds.close(attempt, "aborted")
        _LOG.warning("%s", error)
        return outcome

    def _finish(self) -> None:
        completed = self.store.completed_rounds()
        self.rounds.finish(ReleasedModel.of(completed, self.coordinator.clusters))
        self._finished.set()
        _LOG.info("the run finished after %d of %d rounds", completed, self.consortium.rounds)

    # ------------------------------------------------------------------ sessions

    def _peers(self, participants: Mapping[str, str]) -> dict[str, pb.PeerIdentity]:
        enrolled = self.store.enrolled()
        missing = sorted(set(participants) - set(enrolled))
        if missing:
            raise RoundError(f"participants without enrollment records: {missing}")
        return {
            org: pb.PeerIdentity(
                organization=org,
                identity_certificate=enrolled[org].identity_certificate,
                sealing_certificate=enrolled[org].sealing_certificate,
            )
            for org in participants
        }

    def _open_session(
        self, attempt: Attempt, cluster: int, participants: Mapping[str, str]
    ) -> AggregationSession:
        params, skipped = self.coordinator.session_params(
            round_number=attempt.round,
            attempt=attempt.attempt,
            cluster=cluster,
            participants=participants,
        )
        # Bind the session to the model exactly as it was served (see ReleasedModel).
        params = dataclasses.replace(params, model_hash=attempt.model.model_hash)
        session: AggregationSession
        if self.ckks_context is not None:
            session = CKKSRoundSession(
                CKKSSession(
                    run_id=params.run_id,
                    round=params.round,
                    cluster=cluster,
                    roster=tuple(params.roster),
                    key_id=self.ckks_context.key_id,
                    min_cohort=params.min_cohort,
                    block_lengths=dict(params.block_lengths),
                    block_supports={b: frozenset(h) for b, h in params.block_supports.items()},
                    config_hash=self.config_hash.hex(),
                    model_hash=attempt.model.model_hash.hex(),
                ),
                server_context=self.ckks_context,
            )
        else:
            identities = {
                org: verify_identity_certificate(
                    x509.load_der_x509_certificate(attempt.peers[org].identity_certificate),
                    self.credentials.ca_certificate,
                    org,
                )
                for org in params.roster
            }
            session = MaskingSession(params, peer_identities=identities)
        session.skipped = dict(skipped)
        return session


def serve(
    consortium: ConsortiumConfig,
    *,
    credentials: Credentials | str | os.PathLike[str],
    state_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 0,
    port_file: str | os.PathLike[str] | None = None,
    options: ServerOptions | None = None,
    new_run: bool = False,
) -> AggregatorServer:
    """Start an aggregation server and return it (running); see `AggregatorServer`.

    With ``port_file``, the port it listens on is written there (atomically) once it
    listens, so that a launcher using port 0 can find it.
    """
    server = AggregatorServer(
        consortium,
        credentials=credentials,
        state_dir=state_dir,
        host=host,
        port=port,
        options=options,
        new_run=new_run,
    ).start()
    if port_file is not None:
        atomic_write(port_file, f"{server.port}\n".encode())
    return server
