"""What every method's rounds share inside a `FederatedClient` (ARCHITECTURE.md §7).

`FederatedClient` owns one `ClientContext` (the organization's identity, policy and
consortium file, its data and state folder, the audit log, the connection and the run's
bookkeeping) and one `RoundMethod`, picked by ``consortium.method``: FedHFT, FedAvg and
local rounds (`FedHFTRounds`), FedAMoLE rounds (`fedhft.sdk.mole.FedAMoLERounds`), or
`RefusedRounds` when the organization's policy forbids the consortium. The client waits
for each announcement, completes the round before it and hands the announcement to the
method; the method checks it, trains and takes part in the round's sessions through the
context's wire operations (refusals, model download, session set-up), which read and
write nothing but the context.
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedhft.audit import AuditLog, EventType, refusal_payload
from fedhft.policies import ConsortiumConfig, IncompatiblePolicyError, OrganizationPolicy
from fedhft.protocol import (
    CKKSKeyring,
    Credentials,
    SecAggClient,
    SessionParams,
    validate_model_header,
    validate_session_announcement,
)
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol.errors import ChunkIntegrityError, ConsortiumMismatchError, RemoteError
from fedhft.protocol.session_codec import MODEL_FORMAT

from ._client_sessions import (
    ATTEMPT_OVER,
    MaskingRun,
    SessionContext,
    check_masking_session,
    peer_identities,
)
from ._data import TextDataset
from ._instructions import InstructionDataset
from ._round_files import EnteredSums
from .connection import Connection
from .errors import RunMismatchError
from .privacy._ledger import PrivacyLedger

_LOG = logging.getLogger("fedhft.sdk.client")
FloatArray = npt.NDArray[np.float64]

OutcomeStatus = Literal["joined", "refused", "late", "aborted", "finished"]


@dataclass(frozen=True)
class RoundOutcome:
    """What `FederatedClient.run_round` did."""

    round: int
    status: OutcomeStatus
    detail: str = ""


class CompletedRounds(Protocol):
    """The files that record which rounds this organization completed."""

    @property
    def completed_round(self) -> int: ...

    def complete(self, round_number: int) -> None: ...


@dataclass
class ClientContext:
    """What a `FederatedClient` shares with its round method: who it is, what it runs
    under, and the run's state so far (the connection once `connect()` opened it)."""

    organization: str
    policy: OrganizationPolicy
    consortium: ConsortiumConfig
    config_hash: bytes
    credentials: Credentials
    server: str
    dataset: TextDataset | InstructionDataset
    test_dataset: TextDataset | InstructionDataset | None
    state_dir: Path
    audit_log: AuditLog | None
    wait_ms: int
    rpc_timeout_s: float
    max_message_bytes: int
    keyring: CKKSKeyring | None = None
    connection: Connection | None = None
    server_identity: Ed25519PublicKey | None = None
    run_id: str | None = None
    """The server's run at `connect()`; every announcement must name it."""
    rounds_joined: list[int] = field(default_factory=list)
    rounds_refused: list[int] = field(default_factory=list)
    final_round: int = 0
    scores: dict[str, float] | None = None
    pending_round: int | None = None
    """The round whose update was sent and whose completion is not yet known."""
    handled: set[tuple[int, str]] = field(default_factory=set)
    """(round, attempt run id) pairs already handled: never handled twice."""

    # ------------------------------------------------------------------ run state

    def require_connection(self) -> Connection:
        if self.connection is None:
            raise RuntimeError("call connect() first")
        return self.connection

    def check_server_run(self, announcement: pb.RoundAnnouncement) -> None:
        """Stop when the announcement names another run than the server ran at `connect()`.

        Raises:
            RunMismatchError: the server's state was reset or replaced meanwhile.
        """
        if announcement.server_run_id and announcement.server_run_id != self.run_id:
            raise RunMismatchError(
                f"the server at {self.server} now runs run "
                f"{announcement.server_run_id!r}, not {self.run_id!r} it ran when this "
                "client connected: its state was reset or replaced while the client "
                "waited. Ask the operator to restore the server's --state folder"
            )

    def mark_joined(self, round_number: int) -> None:
        if round_number not in self.rounds_joined:
            self.rounds_joined.append(round_number)

    def mark_refused(self, round_number: int) -> None:
        if round_number not in self.rounds_refused:
            self.rounds_refused.append(round_number)

    def refuse(
        self, round_number: int, reason: int, text: str, *, audit: bool = True, **details: object
    ) -> None:
        """Tell the server this organization refuses the round (audited unless the
        refusal already was)."""
        if audit and self.audit_log is not None:
            self.audit_log.append(EventType.REFUSAL, refusal_payload(round_number, text, **details))
        self.mark_refused(round_number)
        _LOG.info("%s refuses round %d: %s", self.organization, round_number, text)
        try:
            self.require_connection().unary(
                "JoinRound",
                pb.JoinRequest(round=round_number, participate=False, refusal=reason),  # type: ignore[arg-type]
                timeout=self.rpc_timeout_s,
            )
        except RemoteError as error:
            # The server moved on before the refusal arrived; it is audited all the same.
            if error.code not in ATTEMPT_OVER:
                raise

    def refuse_other_configuration(self, announcement: pb.RoundAnnouncement) -> None:
        """Refuse (and raise) a round announced under another consortium configuration."""
        if announcement.consortium_config_hash == self.config_hash:
            return
        error = ConsortiumMismatchError(
            "the announced round uses another consortium configuration than this "
            "client's file; refusing it"
        )
        self.refuse(int(announcement.round), pb.REFUSAL_REASON_POLICY_INCOMPATIBLE, str(error))
        raise error

    # ------------------------------------------------------------------ wire

    def fetch_model(self, round_number: int, cluster: int, *, values: int) -> tuple[bytes, bytes]:
        """One model part (``values`` floats at most) streamed and checked against its
        own hash: ``(hash, data)``."""

        def check(header: pb.ModelHeader) -> None:
            validate_model_header(header, expected_round=round_number, expected_cluster=cluster)
            if header.format != MODEL_FORMAT:
                raise ConsortiumMismatchError(f"unknown model format {header.format!r:.40}")

        header, data = self.require_connection().download(
            pb.ModelRequest(round=round_number, cluster=cluster),
            max_total=16 * values + 1024 * 1024,
            check_header=check,
            timeout=self.rpc_timeout_s,
        )
        if hashlib.sha256(data).digest() != header.model_hash:
            raise ChunkIntegrityError(f"model part {cluster} does not match its hash")
        return header.model_hash, data

    def await_session(
        self, round_number: int, cluster: int, run_id: str = ""
    ) -> pb.SessionAnnouncement | None:
        """The session of ``cluster`` in ``round_number`` (of attempt ``run_id``, when
        given) once ready, or None without one."""
        while True:
            session: pb.SessionAnnouncement = self.require_connection().unary(
                "AwaitSession",
                pb.SessionRequest(
                    round=round_number, cluster=cluster, wait_ms=self.wait_ms, run_id=run_id
                ),
                timeout=self.rpc_timeout_s + self.wait_ms / 1000,
            )
            validate_session_announcement(
                session, expected_round=round_number, expected_cluster=cluster
            )
            if session.status != pb.SESSION_STATUS_PENDING:
                break
        if session.status != pb.SESSION_STATUS_READY:
            _LOG.warning(
                "round %d cluster %d: no session for %s (status %d)",
                round_number,
                cluster,
                self.organization,
                session.status,
            )
            return None
        return session

    def session_context(
        self, block_shapes: Mapping[str, tuple[int, int]], uploaded_blocks: Iterable[str]
    ) -> SessionContext:
        """What every session of this round needs: the model's ``block_shapes`` and the
        blocks this organization uploads."""
        assert self.server_identity is not None  # connect() verified it
        return SessionContext(
            organization=self.organization,
            policy=self.policy,
            consortium=self.consortium,
            config_hash=self.config_hash,
            ca_certificate=self.credentials.ca_certificate,
            identity_key=self.credentials.identity_key,
            server_identity=self.server_identity,
            block_shapes=dict(block_shapes),
            uploaded_blocks=frozenset(uploaded_blocks),
            audit=self.audit_log,
            connection=self.require_connection(),
            wait_ms=self.wait_ms,
            rpc_timeout_s=self.rpc_timeout_s,
            max_broadcast_bytes=self.max_message_bytes,
        )

    def masking_run(
        self,
        params: SessionParams,
        session: pb.SessionAnnouncement,
        announcement: pb.RoundAnnouncement,
        cluster: int,
        context: SessionContext,
        contributions: Callable[[dict[str, int], float], dict[str, FloatArray]],
        *,
        entered: EnteredSums | None = None,
    ) -> MaskingRun:
        """This side of a masking session, after checking it against the announcement;
        ``contributions(block_lengths, clip)`` gives the vectors to mask, ``entered`` the
        sums the staged update already took part in."""
        check_masking_session(
            params,
            context=context,
            announcement=announcement,
            cluster=cluster,
            session_id=session.session.session_id,
        )
        identities = peer_identities(
            list(session.peers), tuple(params.roster), self.credentials.ca_certificate
        )
        lengths = {b: params.block_lengths[b] for b in params.blocks_of(self.organization)}
        return MaskingRun(
            context=context,
            ref=session.session,
            inputs=contributions(lengths, params.clip),
            client=SecAggClient(
                params,
                organization=self.organization,
                identity_key=self.credentials.identity_key,
                peer_identities=identities,
            ),
            entered=entered,
        )


class RoundMethod(ABC):
    """One method's rounds on the organization's side, driven by `FederatedClient`.

    The client passes each open round attempt it has not handled yet to `take_part`, and
    the final announcement to `finish` after completing every round before it.
    """

    @property
    @abstractmethod
    def participant(self) -> CompletedRounds | None:
        """The files that record this organization's completed rounds (None: none)."""

    @property
    @abstractmethod
    def ledger(self) -> PrivacyLedger | None:
        """The privacy ledger the rounds spend from (None: baseline or refused policy)."""

    @abstractmethod
    def take_part(self, announcement: pb.RoundAnnouncement) -> RoundOutcome:
        """Check the announced round attempt and do this organization's part of it."""

    @abstractmethod
    def finish(self, announcement: pb.RoundAnnouncement) -> None:
        """The run ended: evaluate the personalized model (``context.scores``)."""

    def membership(self) -> tuple[float, ...]:
        """The organization's cluster membership, for its report (empty: none)."""
        return ()


class RefusedRounds(RoundMethod):
    """The rounds of an organization whose policy forbids the consortium: each refused.

    Raises `IncompatiblePolicyError` (after telling the server, audited) from every round.
    """

    def __init__(self, context: ClientContext, violations: list[str]) -> None:
        self.context = context
        self.violations = violations

    @property
    def participant(self) -> None:
        return None

    @property
    def ledger(self) -> None:
        return None

    def take_part(self, announcement: pb.RoundAnnouncement) -> RoundOutcome:
        context = self.context
        context.handled.add((int(announcement.round), announcement.run_id))
        context.refuse_other_configuration(announcement)
        error = IncompatiblePolicyError(self.violations)
        context.refuse(int(announcement.round), pb.REFUSAL_REASON_POLICY_INCOMPATIBLE, str(error))
        raise error

    def finish(self, announcement: pb.RoundAnnouncement) -> None:
        raise IncompatiblePolicyError(self.violations)
