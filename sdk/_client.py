"""`FederatedClient`: the API an organization embeds to take part in federated rounds.

Give it a model, a data set, the organization's policy, the consortium configuration and
its credentials folder; `run()` then, round after round (DESIGN §7):

1. waits for the server's round announcement and checks it: the consortium
   configuration hash must be its own, the policy must allow the consortium
   (`require_compatible`), and the announced tier mask must be its tier's; otherwise it
   refuses the round (`JoinRequest` with a reason, a ``refusal`` audit record) and
   raises the typed error;
2. refuses rounds that would exceed its privacy budget (``BUDGET_EXHAUSTED``, audited)
   and keeps waiting: the run goes on without it;
3. joins, downloads the K cluster adapters (streamed, each checked against the announced
   model hash), trains one DP-SGD round through `RoundParticipant` (or re-sends the
   update it already trained when the server redoes an interrupted round), and takes
   part in every cluster's secure aggregation (`_client_sessions.py`);
4. marks the round complete when the server announces the next one (personal state on
   disk, `RoundParticipant.complete`), and at the end downloads the final model and
   evaluates its personalized model on the test set.

Network faults are retried with exponential backoff (`RetryPolicy`), then
`ServerUnreachableError`. The audit log (``policy.audit.log_path``) is signed with the
organization's identity key and receives every event: ``policy_loaded`` once per start,
``round_joined``, ``privacy_spend`` (from the trainer), ``update_committed``,
``aggregation_receipt`` and ``refusal``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedhft import __version__
from fedhft.audit import (
    AuditLog,
    EventType,
    policy_loaded_payload,
    refusal_payload,
    round_joined_payload,
)
from fedhft.model import ClusterAdapters, MaskedAdapterModel, decode_clusters
from fedhft.policies import (
    ConsortiumConfig,
    IncompatiblePolicyError,
    Method,
    OrganizationPolicy,
    SecureAggregationMode,
    compatibility_violations,
    consortium_hash,
    load_consortium_config,
    load_organization_policy,
)
from fedhft.protocol import (
    PROTOCOL_VERSION,
    CKKSClient,
    CKKSKeyring,
    CKKSSession,
    Credentials,
    Role,
    SecAggClient,
    SessionParams,
    load_credentials,
    server_in_certificate,
    validate_hello_response,
    validate_model_header,
    validate_round_announcement,
    validate_session_announcement,
    verify_server_identity_certificate,
)
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol.errors import (
    CertificateVerificationError,
    ChunkIntegrityError,
    ConsortiumMismatchError,
    CredentialsError,
    RemoteError,
)
from fedhft.protocol.session_codec import (
    CKKS_SEALED_FILE,
    MODEL_FORMAT,
    decode_session,
    released_model_hash,
)

from ._client_sessions import (
    ATTEMPT_OVER,
    CKKSRun,
    ClusterRun,
    MaskingRun,
    SessionContext,
    check_ckks_session,
    check_masking_session,
    peer_identities,
    run_sessions,
)
from ._client_state import Evidence, check_evidence, check_server_run, record_evidence
from ._connection import Connection, RetryPolicy
from ._data import TextDataset
from ._participant import RoundParticipant
from ._round_files import EnteredSums
from ._trainer import LocalTrainer
from ._update import MaskedUpdate
from .errors import BudgetExhaustedError, LedgerMissingError, RunMismatchError
from .mole._client import MoLEClientRounds
from .mole._participant import MoLEParticipant
from .privacy._ledger import PrivacyLedger, check_server_participation, open_organization_ledger

_LOG = logging.getLogger("fedhft.sdk.client")
FloatArray = npt.NDArray[np.float64]

OutcomeStatus = Literal["joined", "refused", "late", "aborted", "finished"]


@dataclass(frozen=True)
class RoundOutcome:
    """What `FederatedClient.run_round` did."""

    round: int
    status: OutcomeStatus
    detail: str = ""


@dataclass(frozen=True)
class ClientReport:
    """An organization's summary of a federated run (no individual value in it)."""

    organization: str
    tier: str
    rounds_joined: tuple[int, ...]
    rounds_refused: tuple[int, ...]
    final_round: int
    accuracy: float | None
    macro_f1: float | None
    epsilon_spent: float | None
    epsilon_budget: float
    delta: float
    bytes_up: int
    bytes_down: int
    membership: tuple[float, ...]

    def as_json(self) -> dict[str, Any]:
        """The report as a JSON object."""
        return {
            "organization": self.organization,
            "tier": self.tier,
            "rounds_joined": list(self.rounds_joined),
            "rounds_refused": list(self.rounds_refused),
            "final_round": self.final_round,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "epsilon_spent": self.epsilon_spent,
            "epsilon_budget": self.epsilon_budget,
            "delta": self.delta,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "membership": list(self.membership),
        }


class FederatedClient:
    """An organization's participation in a consortium's federated fine-tuning.

    Args:
        model: the base model (a Hugging Face sequence classifier) or an already
            wrapped `MaskedAdapterModel`; for a FedAMoLE consortium the base model
            (its rounds are `_mole_client.MoLEClientRounds`).
        dataset: the organization's training data.
        policy: its policy (object or YAML path).
        consortium: the consortium configuration (object or YAML path).
        credentials: its credentials folder (``fedhft ca issue --org``); in CKKS mode it
            also holds ``ckks-secret.sealed`` from the key ceremony.
        server: ``host:port`` of the aggregation server.
        state_dir: where personal state and the pending update are kept between rounds.
        test_dataset: evaluated with the personalized model at the end of `run()`.
        audit: keep the signed audit log at ``policy.audit.log_path``.
        server_name: the host name the server's certificate is issued to; default: the
            host of ``server`` (an IP address is matched against the certificate's IP
            addresses).
        tokenizer, seed, non_private_baseline: passed to `LocalTrainer`.
        retry: reconnection policy.
        wait_ms: how long one long-polling call may wait at the server.
        rpc_timeout_s: deadline of every other call.
        max_message_bytes: gRPC message limit (must not be below the server's).

    Raises:
        CredentialsError: the credentials are not this organization's.
        LedgerMissingError: the privacy ledger is missing although the state folder or
            the audit log shows earlier rounds (`fedhft ledger rebuild` restores it);
            from `connect()` (and `run_round()`): the server accepted uploads in rounds
            the ledger holds no DP-SGD spend for.
    """

    def __init__(
        self,
        model: MaskedAdapterModel | PreTrainedModel,
        dataset: TextDataset,
        policy: OrganizationPolicy | str | os.PathLike[str],
        consortium: ConsortiumConfig | str | os.PathLike[str],
        *,
        credentials: Credentials | str | os.PathLike[str],
        server: str,
        state_dir: str | os.PathLike[str],
        test_dataset: TextDataset | None = None,
        audit: bool = True,
        server_name: str | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        seed: int | None = None,
        non_private_baseline: bool = False,
        retry: RetryPolicy | None = None,
        wait_ms: int = 10_000,
        rpc_timeout_s: float = 60.0,
        max_message_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.policy = (
            policy
            if isinstance(policy, OrganizationPolicy)
            else load_organization_policy(Path(policy))
        )
        self.consortium = (
            consortium
            if isinstance(consortium, ConsortiumConfig)
            else load_consortium_config(Path(consortium))
        )
        self.organization = self.policy.organization
        self.credentials = (
            credentials if isinstance(credentials, Credentials) else load_credentials(credentials)
        )
        if (
            self.credentials.role is not Role.ORGANIZATION
            or self.credentials.name != self.organization
        ):
            raise CredentialsError(
                f"the credentials in {self.credentials.directory} belong to "
                f"{self.credentials.role.value} {self.credentials.name!r}, not to organization "
                f"{self.organization!r} of the policy"
            )
        self.server = server
        self.server_name = server_name or _host_of(server)
        self.dataset = dataset
        self.test_dataset = test_dataset
        self.state_dir = Path(state_dir)
        self.config_hash = bytes.fromhex(consortium_hash(self.consortium))
        self.retry = retry or RetryPolicy()
        self.wait_ms = wait_ms
        self.rpc_timeout_s = rpc_timeout_s
        self.max_message_bytes = max_message_bytes
        self.evidence = Evidence(
            ledger_path=None if non_private_baseline else Path(self.policy.privacy.ledger_path),
            audit_path=Path(self.policy.audit.log_path) if audit else None,
        )
        check_evidence(self.state_dir, self.evidence)
        self.run_id: str | None = None

        self.audit_log: AuditLog | None = None
        if audit:
            self.audit_log = AuditLog.open(
                self.policy.audit.log_path,
                party_id=self.organization,
                signing_key=self.credentials.identity_key,
                repair=True,
            )
            self.audit_log.append(EventType.POLICY_LOADED, policy_loaded_payload(self.policy))
        self.violations = compatibility_violations(self.policy, self.consortium)
        # A lost ledger is refused here, before any trainer could start one at ε = 0
        # (FedAMoLE's trainer then opens the file this call checked or created). A
        # ledger created now is checked against the server's view at `Hello`.
        self._ledger_created = (
            not non_private_baseline and not Path(self.policy.privacy.ledger_path).exists()
        )
        ledger = (
            None
            if self.violations or non_private_baseline
            else open_organization_ledger(self.policy, state_dir=self.state_dir)
        )
        self.trainer: LocalTrainer | None = None
        self.participant: RoundParticipant | None = None
        self.mole: MoLEClientRounds | None = None
        if not self.violations and self.consortium.method is Method.FEDAMOLE:
            # FedAMoLE: `model` is the base classifier; its rounds live in `_mole_client`.
            if isinstance(model, MaskedAdapterModel):
                raise ConsortiumMismatchError(
                    "a FedAMoLE consortium needs the base model, not a MaskedAdapterModel"
                )
            self.mole = MoLEClientRounds(
                self,
                model,
                tokenizer=tokenizer,
                seed=seed,
                non_private_baseline=non_private_baseline,
            )
        elif not self.violations:
            self.trainer = LocalTrainer(
                model,
                self.policy,
                self.consortium,
                ledger=ledger,
                audit=self.audit_log,
                tokenizer=tokenizer,
                seed=seed,
                non_private_baseline=non_private_baseline,
            )
            self.participant = RoundParticipant(self.trainer, dataset, state_dir=self.state_dir)
        self.keyring = self._open_keyring() if not self.violations else None

        self.connection: Connection | None = None
        self.server_identity: Ed25519PublicKey | None = None
        self.rounds_joined: list[int] = []
        self.rounds_refused: list[int] = []
        self.final_round = 0
        self.final_model: ClusterAdapters | None = None
        self.scores: dict[str, float] | None = None
        self._handled: set[tuple[int, str]] = set()
        self._pending_round: int | None = None

    def _open_keyring(self) -> CKKSKeyring | None:
        if self.consortium.secure_aggregation.mode is not SecureAggregationMode.CKKS:
            return None
        path = self.credentials.directory / CKKS_SEALED_FILE
        if not path.is_file():
            raise CredentialsError(
                f"CKKS mode needs the consortium's sealed CKKS key at {path} (from the key "
                "ceremony at provisioning)"
            )
        return CKKSKeyring.open(
            path.read_bytes(),
            private_key=self.credentials.sealing_key,
            consortium=self.consortium.consortium,
            organization=self.organization,
        )

    # ------------------------------------------------------------------ lifecycle

    def connect(self) -> None:
        """Open the channel and enroll (`Hello`); verifies the server's identity."""
        if self.connection is not None:
            return
        connection = Connection(
            self.credentials,
            self.server,
            self.server_name,
            retry=self.retry,
            max_message_bytes=self.max_message_bytes,
        )
        sealing = self.credentials.sealing_certificate
        assert sealing is not None  # Organization credentials always hold one.
        try:
            response = connection.unary(
                "Hello",
                pb.HelloRequest(
                    protocol=PROTOCOL_VERSION,
                    consortium_config_hash=self.config_hash,
                    identity_certificate=_der(self.credentials.identity_certificate),
                    sealing_certificate=_der(sealing),
                    software_version=__version__,
                ),
                timeout=self.rpc_timeout_s,
            )
            self.server_identity = self._verify_server(response)
            validate_hello_response(response)
            self._check_server_participation(response)
            participant = self._round_participant()
            check_server_run(
                self.state_dir,
                server=self.server,
                run_id=response.run_id,
                server_completed=int(response.current_round),
                client_completed=0 if participant is None else participant.completed_round,
            )
            self.run_id = response.run_id
        except BaseException:
            connection.close()
            raise
        self.connection = connection
        record_evidence(self.state_dir, self.evidence)
        _LOG.info("%s enrolled with the aggregation server at %s", self.organization, self.server)

    def _check_server_participation(self, response: pb.HelloResponse) -> None:
        """Stop when the server saw uploads in rounds the ledger holds no spend for.

        Runs at every `Hello`, before any round is trained. A ledger this client created
        at ε = 0 is removed on refusal, so the next start does not take it for a new
        organization's.
        """
        ledger = self._ledger()
        if ledger is None:
            return
        try:
            check_server_participation(
                ledger,
                response.rounds_uploaded,
                server=self.server,
                audit_log=self.evidence.audit_path,
                state_dir=self.state_dir,
            )
        except LedgerMissingError:
            if self._ledger_created:
                ledger.discard_unused()
            raise

    def _verify_server(self, response: pb.HelloResponse) -> Ed25519PublicKey:
        if response.organization != self.organization:
            raise CertificateVerificationError(
                f"the server authenticated this client as {response.organization!r}"
            )
        if response.consortium_config_hash != self.config_hash:
            raise ConsortiumMismatchError(
                "the server runs another consortium configuration than this client's file"
            )
        certificate = x509.load_der_x509_certificate(response.server_identity_certificate)
        try:
            name = server_in_certificate(certificate)
        except CertificateVerificationError as error:
            raise CertificateVerificationError(
                f"the server's identity certificate names no server: {error}"
            ) from None
        if not _is_ip(self.server_name) and name != self.server_name.lower():
            raise CertificateVerificationError(
                f"the server's identity certificate is issued to {name!r}, not {self.server_name!r}"
            )
        return verify_server_identity_certificate(
            certificate, self.credentials.ca_certificate, name
        )

    def close(self) -> None:
        """Close the channel and the audit log; record how far the evidence reaches."""
        if self.connection is not None:
            self.connection.close()
            self.connection = None
        if self.audit_log is not None:
            self.audit_log.close()
            self.audit_log = None
        if self.run_id is not None:
            record_evidence(self.state_dir, self.evidence)

    def __enter__(self) -> FederatedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ rounds

    def run(self) -> ClientReport:
        """Take part in rounds until the server announces the end; return the report."""
        while self.run_round().status != "finished":
            pass
        return self.report()

    def run_round(self) -> RoundOutcome:
        """Wait for the next round (or the end) and do this organization's part of it.

        Returns after the client has sent its part of the round (it learns that the
        round completed from the next announcement), or when the run finished.

        Raises:
            ConsortiumMismatchError: the server runs another configuration or announces
                sessions the consortium file does not allow.
            IncompatiblePolicyError: the policy forbids this consortium.
            ServerUnreachableError: the server stayed unreachable.
        """
        self.connect()
        if self.mole is not None:
            return self.mole.run_round()
        announcement = self._next_announcement()
        if announcement.status == pb.ROUND_STATUS_FINISHED:
            self._finish(announcement)
            return RoundOutcome(announcement.round, "finished")
        round_number = int(announcement.round)
        self._handled.add((round_number, announcement.run_id))
        refusal = self._refusal(announcement)
        if refusal is not None:
            return refusal
        try:
            return self._take_part(announcement)
        except RemoteError as error:
            if error.code not in ATTEMPT_OVER:
                raise
            _LOG.warning(
                "round %d: this attempt ended for %s (%s)", round_number, self.organization, error
            )
            return RoundOutcome(round_number, "aborted", str(error))

    def _next_announcement(self) -> pb.RoundAnnouncement:
        """The next round attempt not yet handled, or the end of the run."""
        while True:
            participant = self._round_participant()
            completed = 0 if participant is None else participant.completed_round
            announcement: pb.RoundAnnouncement = self._connection().unary(
                "AwaitRound",
                pb.RoundRequest(after_round=completed, wait_ms=self.wait_ms),
                timeout=self.rpc_timeout_s + self.wait_ms / 1000,
            )
            validate_round_announcement(announcement)
            self._check_server_run(announcement)
            if announcement.status == pb.ROUND_STATUS_FINISHED:
                return announcement
            if announcement.status == pb.ROUND_STATUS_OPEN:
                self._complete_before(int(announcement.round))
                if (int(announcement.round), announcement.run_id) not in self._handled:
                    return announcement
            time.sleep(max(announcement.retry_after_ms, 50) / 1000)

    def _check_server_run(self, announcement: pb.RoundAnnouncement) -> None:
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

    def _complete_before(self, round_number: int) -> None:
        """A round after our pending one is announced: the pending one completed."""
        self._complete_through(round_number - 1)

    def _complete_through(self, last_completed: int) -> None:
        """The server completed every round up to ``last_completed``: so is our pending one."""
        pending = self._pending_round
        participant = self._round_participant()
        if pending is not None and pending <= last_completed and participant is not None:
            participant.complete(pending)
            self._pending_round = None

    def _refusal(self, announcement: pb.RoundAnnouncement) -> RoundOutcome | None:
        """Refuse the round when it or the budget does not allow taking part."""
        round_number = int(announcement.round)
        if announcement.consortium_config_hash != self.config_hash:
            error: Exception = ConsortiumMismatchError(
                "the announced round uses another consortium configuration than this "
                "client's file; refusing it"
            )
            self._refuse(round_number, pb.REFUSAL_REASON_POLICY_INCOMPATIBLE, str(error))
            raise error
        if self.violations:
            error = IncompatiblePolicyError(self.violations)
            self._refuse(round_number, pb.REFUSAL_REASON_POLICY_INCOMPATIBLE, str(error))
            raise error
        trainer = self._trainer()
        model = trainer.model
        layout = {block.block_id: (block.rows, block.cols) for block in announcement.blocks}
        masks = {mask.tier: set(mask.block_ids) for mask in announcement.tier_masks}
        if layout != {b: model.block(b).shape for b in model.block_ids}:
            problem = "the server's adapter blocks differ from this organization's model"
        elif masks.get(self.policy.training.tier) != set(trainer.uploaded_blocks):
            problem = f"the server's mask of tier {self.policy.training.tier!r} differs"
        else:
            problem = ""
        if problem:
            error = ConsortiumMismatchError(f"{problem}; refusing the round")
            self._refuse(round_number, pb.REFUSAL_REASON_POLICY_INCOMPATIBLE, str(error))
            raise error
        ledger = trainer.ledger
        if ledger is None or self._participant().pending_update(round_number) is not None:
            return None
        try:
            ledger.check(trainer.mechanism_record(round_number, len(self.dataset)))
        except BudgetExhaustedError as refusal:
            self._refuse(
                round_number,
                pb.REFUSAL_REASON_BUDGET_EXHAUSTED,
                "privacy budget exhausted",
                spent=refusal.spent,
                requested=refusal.requested,
                budget=refusal.budget,
            )
            return RoundOutcome(round_number, "refused", "privacy budget exhausted")
        return None

    def _refuse(
        self, round_number: int, reason: int, text: str, *, audit: bool = True, **details: object
    ) -> None:
        """Tell the server this organization refuses the round (audited unless the
        refusal already was)."""
        if audit and self.audit_log is not None:
            self.audit_log.append(EventType.REFUSAL, refusal_payload(round_number, text, **details))
        if round_number not in self.rounds_refused:
            self.rounds_refused.append(round_number)
        _LOG.info("%s refuses round %d: %s", self.organization, round_number, text)
        try:
            self._connection().unary(
                "JoinRound",
                pb.JoinRequest(round=round_number, participate=False, refusal=reason),  # type: ignore[arg-type]
                timeout=self.rpc_timeout_s,
            )
        except RemoteError as error:
            # The server moved on before the refusal arrived; it is audited all the same.
            if error.code not in ATTEMPT_OVER:
                raise

    def _take_part(self, announcement: pb.RoundAnnouncement) -> RoundOutcome:
        round_number = int(announcement.round)
        participant = self._participant()
        sketch: FloatArray | None = None
        if self.consortium.takes_sketches(round_number):
            try:
                sketch = participant.sketch(round_number)
            except BudgetExhaustedError as refusal:
                # The trainer has audited the refusal; the server learns of it here.
                self._refuse(
                    round_number, pb.REFUSAL_REASON_BUDGET_EXHAUSTED, str(refusal), audit=False
                )
                return RoundOutcome(round_number, "refused", str(refusal))
        joined: pb.JoinResponse = self._connection().unary(
            "JoinRound",
            pb.JoinRequest(
                round=round_number,
                participate=True,
                tier=self.policy.training.tier,
                sketch=[] if sketch is None else [float(v) for v in sketch],
            ),
            timeout=self.rpc_timeout_s,
        )
        if not joined.accepted:
            return RoundOutcome(round_number, "late", "the round's join phase had closed")
        clusters = self._download(round_number, announcement.clusters, announcement.model_hash)
        if self.audit_log is not None:
            self.audit_log.append(
                EventType.ROUND_JOINED, round_joined_payload(round_number, range(clusters.k))
            )
        try:
            update = participant.prepare(round_number, clusters)
        except BudgetExhaustedError as refusal:
            # The trainer has audited the refusal; the server sees this one drop out.
            if round_number not in self.rounds_refused:
                self.rounds_refused.append(round_number)
            return RoundOutcome(round_number, "refused", str(refusal))
        self._pending_round = round_number
        if self.consortium.method is Method.LOCAL:
            self._mark_joined(round_number)
            return RoundOutcome(round_number, "joined")
        runs = [self._open_session(announcement, cluster, update) for cluster in range(clusters.k)]
        selected = [run for run in runs if run is not None]
        completed = run_sessions(selected, round_number) and len(selected) == len(runs)
        if completed:
            self._mark_joined(round_number)
            return RoundOutcome(round_number, "joined")
        return RoundOutcome(round_number, "aborted", "a session ended without this organization")

    def _mark_joined(self, round_number: int) -> None:
        if round_number not in self.rounds_joined:
            self.rounds_joined.append(round_number)

    # ------------------------------------------------------------------ models

    def _download(self, round_number: int, count: int, model_hash: bytes) -> ClusterAdapters:
        """Download and check the ``count`` cluster adapters of ``round_number``."""
        model = self._trainer().model
        values = sum(model.block(b).shape[0] * model.block(b).shape[1] for b in model.block_ids)
        parts: list[ClusterAdapters] = []
        hashes: list[bytes] = []
        for cluster in range(count):
            part_hash, data = self._fetch_model(round_number, cluster, values=values)
            hashes.append(part_hash)
            parts.append(decode_clusters(data))
        if released_model_hash(hashes) != model_hash:
            raise ChunkIntegrityError("the downloaded adapters are not the announced model")
        states = tuple(part.states[0] for part in parts)
        if set(states[0]) != set(model.block_ids):
            raise ConsortiumMismatchError("the server's adapters have other blocks than this model")
        return ClusterAdapters(
            states=states,
            last_updates=tuple(part.last_updates[0] for part in parts),
            centroids=tuple(c for part in parts for c in part.centroids),
        )

    def _fetch_model(self, round_number: int, cluster: int, *, values: int) -> tuple[bytes, bytes]:
        """One model part (``values`` floats at most) streamed and checked against its
        own hash: ``(hash, data)``."""

        def check(header: pb.ModelHeader) -> None:
            validate_model_header(header, expected_round=round_number, expected_cluster=cluster)
            if header.format != MODEL_FORMAT:
                raise ConsortiumMismatchError(f"unknown model format {header.format!r:.40}")

        header, data = self._connection().download(
            pb.ModelRequest(round=round_number, cluster=cluster),
            max_total=16 * values + 1024 * 1024,
            check_header=check,
            timeout=self.rpc_timeout_s,
        )
        if hashlib.sha256(data).digest() != header.model_hash:
            raise ChunkIntegrityError(f"model part {cluster} does not match its hash")
        return header.model_hash, data

    def _finish(self, announcement: pb.RoundAnnouncement) -> None:
        final_round = int(announcement.round)
        self._complete_through(final_round)
        self.final_round = final_round
        self.final_model = self._download(
            final_round, announcement.clusters, announcement.model_hash
        )
        if self.test_dataset is not None:
            self.scores = self._participant().evaluate(self.test_dataset, self.final_model)
        _LOG.info("%s: the run finished after round %d", self.organization, final_round)

    # ------------------------------------------------------------------ sessions

    def _open_session(
        self, announcement: pb.RoundAnnouncement, cluster: int, update: MaskedUpdate
    ) -> ClusterRun | None:
        """Wait for cluster ``cluster``'s session, check it, and prepare this side of it."""
        session = self._await_session(int(announcement.round), cluster, announcement.run_id)
        if session is None:
            return None
        trainer = self._trainer()
        model = trainer.model
        context = self._session_context(
            {b: model.block(b).shape for b in model.block_ids}, trainer.uploaded_blocks
        )
        params = decode_session(session.session_params)
        participant = self._participant()
        if isinstance(params, SessionParams):
            return self._masking_run(
                params,
                session,
                announcement,
                cluster,
                context,
                lambda lengths, clip: participant.contributions(
                    update, cluster=cluster, block_lengths=lengths, clip=clip
                ),
                entered=participant.files.entered_sums(),
            )
        return self._ckks_run(
            params,
            session,
            announcement,
            cluster,
            update,
            context,
            entered=participant.files.entered_sums(),
        )

    def _await_session(
        self, round_number: int, cluster: int, run_id: str = ""
    ) -> pb.SessionAnnouncement | None:
        """The session of ``cluster`` in ``round_number`` (of attempt ``run_id``, when
        given) once ready, or None without one."""
        while True:
            session: pb.SessionAnnouncement = self._connection().unary(
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

    def _masking_run(
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

    def _ckks_run(
        self,
        params: CKKSSession,
        session: pb.SessionAnnouncement,
        announcement: pb.RoundAnnouncement,
        cluster: int,
        update: MaskedUpdate,
        context: SessionContext,
        *,
        entered: EnteredSums | None = None,
    ) -> ClusterRun:
        keyring = self.keyring
        if keyring is None:
            raise ConsortiumMismatchError(
                "the server runs a CKKS session but the consortium file says masking mode"
            )
        check_ckks_session(
            params,
            context=context,
            announcement=announcement,
            cluster=cluster,
            session_id=session.session.session_id,
            keyring=keyring,
        )
        lengths = {
            b: length
            for b, length in params.block_lengths.items()
            if self.organization in params.block_supports[b]
        }
        clip = min(self.consortium.secure_aggregation.clip, keyring.parameters.value_bound)
        inputs = self._participant().contributions(
            update, cluster=cluster, block_lengths=lengths, clip=clip
        )
        return CKKSRun(
            context=context,
            ref=session.session,
            inputs=inputs,
            client=CKKSClient(params, keyring),
            entered=entered,
        )

    def _session_context(
        self, block_shapes: Mapping[str, tuple[int, int]], uploaded_blocks: Iterable[str]
    ) -> SessionContext:
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
            connection=self._connection(),
            wait_ms=self.wait_ms,
            rpc_timeout_s=self.rpc_timeout_s,
            max_broadcast_bytes=self.max_message_bytes,
        )

    # ------------------------------------------------------------------ report

    def report(self) -> ClientReport:
        """The organization's figures so far (accuracy once the run finished)."""
        membership: tuple[float, ...] = ()
        if self.mole is not None:
            ledger = self.mole.trainer.ledger
        else:
            ledger = self._trainer().ledger
            personal = self._participant().personal
            if personal is not None:
                membership = tuple(float(p) for p in personal.membership)
        connection = self.connection
        return ClientReport(
            organization=self.organization,
            tier=self.policy.training.tier,
            rounds_joined=tuple(self.rounds_joined),
            rounds_refused=tuple(self.rounds_refused),
            final_round=self.final_round,
            accuracy=None if self.scores is None else self.scores["accuracy"],
            macro_f1=None if self.scores is None else self.scores["macro_f1"],
            epsilon_spent=None if ledger is None else ledger.spent(),
            epsilon_budget=self.policy.privacy.epsilon,
            delta=self.policy.privacy.delta,
            bytes_up=0 if connection is None else connection.bytes_up,
            bytes_down=0 if connection is None else connection.bytes_down,
            membership=membership,
        )

    # ------------------------------------------------------------------ accessors

    def _ledger(self) -> PrivacyLedger | None:
        """The trainer's privacy ledger (``None`` without one: baseline or refused policy)."""
        if self.mole is not None:
            return self.mole.trainer.ledger
        return None if self.trainer is None else self.trainer.ledger

    def _round_participant(self) -> RoundParticipant | MoLEParticipant | None:
        """The participant whose files record this organization's completed rounds."""
        return self.mole.participant if self.mole is not None else self.participant

    def _connection(self) -> Connection:
        if self.connection is None:
            raise RuntimeError("call connect() first")
        return self.connection

    def _trainer(self) -> LocalTrainer:
        if self.trainer is None:
            raise IncompatiblePolicyError(self.violations)
        return self.trainer

    def _participant(self) -> RoundParticipant:
        if self.participant is None:
            raise IncompatiblePolicyError(self.violations)
        return self.participant


def _host_of(server: str) -> str:
    host = urlsplit(f"//{server}").hostname
    if not host:
        raise ValueError(f"`server` must be host:port, got {server!r}")
    return host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)
