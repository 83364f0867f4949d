"""`FederatedClient`: the API an organization embeds to take part in federated rounds.

Give it a model, a data set, the organization's policy, the consortium configuration and
its credentials folder; `run()` then, round after round (ARCHITECTURE.md §7):

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

Steps 1 to 3 and the final evaluation are the consortium method's (`RoundMethod`:
`FedHFTRounds` for FedHFT, FedAvg and local rounds, `FedAMoLERounds` for FedAMoLE,
`RefusedRounds` when the policy forbids the consortium); the client enrolls, waits for
the announcements, completes rounds and reports. Both share the client's
`ClientContext` (`_rounds.py`).

Network faults are retried with exponential backoff (`RetryPolicy`), then
`ServerUnreachableError`. The audit log (``policy.audit.log_path``) is signed with the
organization's identity key and receives every event: ``policy_loaded`` once per start,
``round_joined``, ``privacy_spend`` (from the trainer), ``update_committed``,
``aggregation_receipt`` and ``refusal``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedhft import __version__
from fedhft.audit import AuditLog, EventType, policy_loaded_payload
from fedhft.model import (
    CausalAdapterModel,
    ClusterAdapters,
    MaskedAdapterModel,
    load_tokenizer,
)
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
    CKKSKeyring,
    Credentials,
    Role,
    load_credentials,
    server_in_certificate,
    validate_hello_response,
    validate_round_announcement,
    verify_server_identity_certificate,
)
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol.errors import (
    CertificateVerificationError,
    ConsortiumMismatchError,
    CredentialsError,
)
from fedhft.protocol.session_codec import CKKS_SEALED_FILE

from ._causal import CausalTrainer
from ._client_state import Evidence, check_evidence, check_server_run, record_evidence
from ._data import TextDataset
from ._fedhft_rounds import FedHFTRounds
from ._instructions import InstructionDataset
from ._participant import RoundParticipant
from ._rounds import ClientContext, RefusedRounds, RoundMethod, RoundOutcome
from ._trainer import LocalTrainer
from .connection import Connection, RetryPolicy
from .errors import LedgerMissingError
from .mole._rounds import FedAMoLERounds
from .privacy._ledger import check_server_participation, open_organization_ledger

_LOG = logging.getLogger("fedhft.sdk.client")


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
    generation: dict[str, float] | None = None
    """A causal LM's test scores: ROUGE-L, exact match and response loss of the
    personalized model, and the zero-shot base model's as ``zero_shot_*``."""

    def as_json(self) -> dict[str, Any]:
        """The report as a JSON object (``generation`` only for a causal LM)."""
        extra = {} if self.generation is None else {"generation": dict(self.generation)}
        return {
            **extra,
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
            wrapped `MaskedAdapterModel`; for a FedAMoLE consortium the base model, a
            classifier or for ``model.task: causal-lm`` the causal LM (its rounds are
            `fedhft.sdk.mole.FedAMoLERounds`).
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
        model: MaskedAdapterModel | CausalAdapterModel | PreTrainedModel,
        dataset: TextDataset | InstructionDataset,
        policy: OrganizationPolicy | str | os.PathLike[str],
        consortium: ConsortiumConfig | str | os.PathLike[str],
        *,
        credentials: Credentials | str | os.PathLike[str],
        server: str,
        state_dir: str | os.PathLike[str],
        test_dataset: TextDataset | InstructionDataset | None = None,
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
        policy = (
            policy
            if isinstance(policy, OrganizationPolicy)
            else load_organization_policy(Path(policy))
        )
        consortium = (
            consortium
            if isinstance(consortium, ConsortiumConfig)
            else load_consortium_config(Path(consortium))
        )
        credentials = (
            credentials if isinstance(credentials, Credentials) else load_credentials(credentials)
        )
        if credentials.role is not Role.ORGANIZATION or credentials.name != policy.organization:
            raise CredentialsError(
                f"the credentials in {credentials.directory} belong to "
                f"{credentials.role.value} {credentials.name!r}, not to organization "
                f"{policy.organization!r} of the policy"
            )
        self.server_name = server_name or _host_of(server)
        self.retry = retry or RetryPolicy()
        self.evidence = Evidence(
            ledger_path=None if non_private_baseline else Path(policy.privacy.ledger_path),
            audit_path=Path(policy.audit.log_path) if audit else None,
        )
        check_evidence(Path(state_dir), self.evidence)
        audit_log: AuditLog | None = None
        if audit:
            audit_log = AuditLog.open(
                policy.audit.log_path,
                party_id=policy.organization,
                signing_key=credentials.identity_key,
                repair=True,
            )
            audit_log.append(EventType.POLICY_LOADED, policy_loaded_payload(policy))
        self.context = ClientContext(
            organization=policy.organization,
            policy=policy,
            consortium=consortium,
            config_hash=bytes.fromhex(consortium_hash(consortium)),
            credentials=credentials,
            server=server,
            dataset=dataset,
            test_dataset=test_dataset,
            state_dir=Path(state_dir),
            audit_log=audit_log,
            wait_ms=wait_ms,
            rpc_timeout_s=rpc_timeout_s,
            max_message_bytes=max_message_bytes,
        )
        self.violations = compatibility_violations(policy, consortium)
        # A lost ledger is refused here, before any trainer could start one at ε = 0
        # (FedAMoLE's trainer then opens the file this call checked or created). A
        # ledger created now is checked against the server's view at `Hello`.
        self._ledger_created = (
            not non_private_baseline and not Path(policy.privacy.ledger_path).exists()
        )
        ledger = (
            None
            if self.violations or non_private_baseline
            else open_organization_ledger(policy, state_dir=self.context.state_dir)
        )
        self.rounds: RoundMethod
        if self.violations:
            self.rounds = RefusedRounds(self.context, self.violations)
        elif consortium.method is Method.FEDAMOLE:
            # FedAMoLE: `model` is the base model (a classifier or a causal LM).
            if isinstance(model, MaskedAdapterModel | CausalAdapterModel):
                raise ConsortiumMismatchError(
                    "a FedAMoLE consortium needs the base model, not a MaskedAdapterModel or "
                    "CausalAdapterModel"
                )
            self.rounds = FedAMoLERounds(
                self.context,
                model,
                tokenizer=tokenizer,
                seed=seed,
                non_private_baseline=non_private_baseline,
            )
        elif consortium.model.task == "causal-lm":
            if isinstance(model, MaskedAdapterModel):
                raise ConsortiumMismatchError(
                    "a causal-lm consortium needs the causal LM (or a CausalAdapterModel), "
                    "not a MaskedAdapterModel"
                )
            causal = (
                model
                if isinstance(model, CausalAdapterModel)
                else CausalAdapterModel(model, consortium.adapter)
            )
            causal_trainer = CausalTrainer(
                causal,
                policy,
                consortium,
                tokenizer=tokenizer or load_tokenizer(consortium.model),
                ledger=ledger,
                audit=audit_log,
                seed=seed,
                non_private_baseline=non_private_baseline,
            )
            self.rounds = FedHFTRounds(self.context, causal_trainer)
        else:
            if isinstance(model, CausalAdapterModel):
                raise ConsortiumMismatchError(
                    "a classification consortium needs a sequence classifier, not a "
                    "CausalAdapterModel; set `model.task: causal-lm` for instruction tuning"
                )
            trainer = LocalTrainer(
                model,
                policy,
                consortium,
                ledger=ledger,
                audit=audit_log,
                tokenizer=tokenizer,
                seed=seed,
                non_private_baseline=non_private_baseline,
            )
            self.rounds = FedHFTRounds(self.context, trainer)
        self.context.keyring = self._open_keyring() if not self.violations else None

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
            max_message_bytes=self.context.max_message_bytes,
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
                timeout=self.context.rpc_timeout_s,
            )
            self.context.server_identity = self._verify_server(response)
            validate_hello_response(response)
            self._check_server_participation(response)
            participant = self.rounds.participant
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
        ledger = self.rounds.ledger
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
        if self.context.audit_log is not None:
            self.context.audit_log.close()
            self.context.audit_log = None
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
        announcement = self._next_announcement()
        if announcement.status != pb.ROUND_STATUS_FINISHED:
            return self.rounds.take_part(announcement)
        final_round = int(announcement.round)
        self._complete_through(final_round)
        self.context.final_round = final_round
        self.rounds.finish(announcement)
        return RoundOutcome(final_round, "finished")

    def _next_announcement(self) -> pb.RoundAnnouncement:
        """The next round attempt not yet handled, or the end of the run."""
        context = self.context
        while True:
            participant = self.rounds.participant
            completed = 0 if participant is None else participant.completed_round
            announcement: pb.RoundAnnouncement = context.require_connection().unary(
                "AwaitRound",
                pb.RoundRequest(after_round=completed, wait_ms=context.wait_ms),
                timeout=context.rpc_timeout_s + context.wait_ms / 1000,
            )
            validate_round_announcement(announcement)
            context.check_server_run(announcement)
            if announcement.status == pb.ROUND_STATUS_FINISHED:
                return announcement
            if announcement.status == pb.ROUND_STATUS_OPEN:
                # A round after our pending one is announced: the pending one completed.
                self._complete_through(int(announcement.round) - 1)
                if (int(announcement.round), announcement.run_id) not in context.handled:
                    return announcement
            time.sleep(max(announcement.retry_after_ms, 50) / 1000)

    def _complete_through(self, last_completed: int) -> None:
        """The server completed every round up to ``last_completed``: so is our pending one."""
        pending = self.context.pending_round
        participant = self.rounds.participant
        if pending is not None and pending <= last_completed and participant is not None:
            participant.complete(pending)
            self.context.pending_round = None

    # ------------------------------------------------------------------ report

    def report(self) -> ClientReport:
        """The organization's figures so far (accuracy once the run finished)."""
        if isinstance(self.rounds, RefusedRounds):
            raise IncompatiblePolicyError(self.violations)
        ledger = self.rounds.ledger
        context = self.context
        connection = context.connection
        scores = context.scores
        return ClientReport(
            organization=context.organization,
            tier=context.policy.training.tier,
            rounds_joined=tuple(context.rounds_joined),
            rounds_refused=tuple(context.rounds_refused),
            final_round=context.final_round,
            accuracy=None if scores is None else scores.get("accuracy"),
            macro_f1=None if scores is None else scores.get("macro_f1"),
            generation=scores if scores is not None and "rouge_l" in scores else None,
            epsilon_spent=None if ledger is None else ledger.spent(),
            epsilon_budget=context.policy.privacy.epsilon,
            delta=context.policy.privacy.delta,
            bytes_up=0 if connection is None else connection.bytes_up,
            bytes_down=0 if connection is None else connection.bytes_down,
            membership=self.rounds.membership(),
        )

    # ------------------------------------------------------------------ accessors

    @property
    def organization(self) -> str:
        return self.context.organization

    @property
    def policy(self) -> OrganizationPolicy:
        return self.context.policy

    @property
    def consortium(self) -> ConsortiumConfig:
        return self.context.consortium

    @property
    def credentials(self) -> Credentials:
        return self.context.credentials

    @property
    def config_hash(self) -> bytes:
        """SHA-256 of the consortium configuration (`consortium_hash`)."""
        return self.context.config_hash

    @property
    def server(self) -> str:
        return self.context.server

    @property
    def state_dir(self) -> Path:
        return self.context.state_dir

    @property
    def audit_log(self) -> AuditLog | None:
        return self.context.audit_log

    @property
    def connection(self) -> Connection | None:
        """The channel to the server once `connect()` opened it."""
        return self.context.connection

    @connection.setter
    def connection(self, connection: Connection | None) -> None:
        self.context.connection = connection

    @property
    def run_id(self) -> str | None:
        """The server's run at `connect()`."""
        return self.context.run_id

    @run_id.setter
    def run_id(self, run_id: str | None) -> None:
        self.context.run_id = run_id

    @property
    def server_identity(self) -> Ed25519PublicKey | None:
        """The server's identity key, verified at `connect()`."""
        return self.context.server_identity

    @server_identity.setter
    def server_identity(self, server_identity: Ed25519PublicKey | None) -> None:
        self.context.server_identity = server_identity

    @property
    def rounds_joined(self) -> list[int]:
        return self.context.rounds_joined

    @property
    def rounds_refused(self) -> list[int]:
        return self.context.rounds_refused

    @property
    def final_round(self) -> int:
        return self.context.final_round

    @property
    def scores(self) -> dict[str, float] | None:
        """The personalized model's test scores once the run finished."""
        return self.context.scores

    @property
    def final_model(self) -> ClusterAdapters | None:
        """FedHFT: the final cluster adapters once the run finished."""
        return self.rounds.final_model if isinstance(self.rounds, FedHFTRounds) else None

    @property
    def trainer(self) -> LocalTrainer | CausalTrainer | None:
        """FedHFT, FedAvg and local rounds: the organization's trainer."""
        return self.rounds.trainer if isinstance(self.rounds, FedHFTRounds) else None

    @property
    def participant(self) -> RoundParticipant | None:
        """FedHFT, FedAvg and local rounds: the organization's round participant."""
        return self.rounds.participant if isinstance(self.rounds, FedHFTRounds) else None

    @property
    def mole(self) -> FedAMoLERounds | None:
        """FedAMoLE: the organization's rounds (trainer and participant)."""
        return self.rounds if isinstance(self.rounds, FedAMoLERounds) else None


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
