"""Many organizations on Ray: a bounded pool of workers, each holding one base model.

A federation of hundreds of organizations does not fit one process per organization
(each holds its own model). Here ``W`` Ray actors each build the base model once and, in
every round, train whichever organizations they are given. An organization's state is
its folder (`OrganizationFolder`: policy, data, privacy ledger, signed audit log, state
folder with π, personal rows and the staged update), and a task reopens all of it,
trains with the real `LocalTrainer` and `RoundParticipant` and closes it again, so
nothing an organization owns stays in a worker between tasks. The driver runs the real
`RoundCoordinator` and every cluster's secure sum as the real masking protocol
(`fedhft.protocol.run_secagg_in_process`, SecAgg+ on a k-regular graph when the
consortium sets `secure_aggregation.neighbours`), each organization's messages signed
with its own identity key. Flower simulates on Ray for the same reason.

Notes:
    The guarantees are those of the process engine because the same code holds them:
    the ledger commits each spend before the update exists and the audit log records
    it (`AccountedTrainer`), the trained update is staged in the organization's state
    folder before it is contributed (`RoundParticipant`), and the server side sees only
    masked inputs and their sum. A worker that dies takes the organization it was
    training out of that round, as a client process that dies would: it is left out of
    the round's roster, and its staged update, if any, is never contributed. With a Ray
    cluster (``address``) every node must see the organizations' folders at the same
    path (a shared file system), since that is where their state lives.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from fedhft.aggregator import RoundCoordinator, RoundSummary
from fedhft.audit import AuditLog, EventType, policy_loaded_payload, round_joined_payload
from fedhft.model import (
    MaskedAdapterModel,
    decode_clusters,
    encode_clusters,
    load_tokenizer,
    tier_mask,
)
from fedhft.policies import (
    ConsortiumConfig,
    Method,
    SecureAggregationMode,
    load_consortium_config,
    load_organization_policy,
)
from fedhft.protocol import (
    AggregateResult,
    SessionStats,
    load_credentials,
    run_secagg_in_process,
)
from fedhft.sdk import BudgetExhaustedError, LocalTrainer, load_dataset_file
from fedhft.sdk.participants import RoundParticipant
from fedhft.sdk.privacy import open_organization_ledger

from .errors import RayUnavailableError, SimulationError

FloatArray = npt.NDArray[np.float64]

# One thread per worker: several workers share the cores, and OpenMP spin-waits made
# training several times slower when they did not (see `fedhft simulate`).
_WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
}
# A worker that dies is restarted (building its model again) this many times.
_WORKER_RESTARTS = 3
# How often a restarting worker is asked whether it is back, and for how long.
_PROBE_INTERVAL_S = 0.5
_RESTART_WAIT_S = 300.0


def require_ray() -> ModuleType:
    """The `ray` module; raises `RayUnavailableError` naming the install command."""
    try:
        import ray
    except ImportError as error:
        raise RayUnavailableError(
            "the Ray engine needs Ray, which is not installed; install it with "
            "`pip install 'fedhft[ray]'`, or use the process engine (`--engine process`)"
        ) from error
    return ray


@dataclass(frozen=True)
class OrganizationFolder:
    """Where one organization's files live; a worker opens them for each task.

    Args:
        policy: its policy file (which names its privacy ledger and audit log).
        data: its training data (CSV, TSV, JSONL or a `datasets` folder).
        test: test data its personalized model is evaluated on at the end, if any.
        state: its state folder (personal state and the update of an unfinished round).
        credentials: its credentials folder; the identity key signs its audit log and
            its secure-aggregation messages.
        labels: label names in the consortium's order (default: sorted).
    """

    organization: str
    tier: str
    policy: Path
    data: Path
    state: Path
    credentials: Path
    test: Path | None = None
    labels: tuple[str, ...] | None = None


@dataclass(frozen=True)
class _Trained:
    """What a worker sends back for one organization's round (no raw records)."""

    refused: bool
    # Per cluster: every block of the update, clipped to the consortium's bound; the
    # driver keeps those of the cluster's session, as `RoundParticipant.contributions`.
    contributions: tuple[dict[str, FloatArray], ...] = ()
    sketch: FloatArray | None = None


class OrganizationWorker:
    """A Ray actor's body: one base model, and any organization's round trained on it."""

    def __init__(self, consortium_path: str) -> None:
        import torch

        torch.set_num_threads(1)
        self.consortium = load_consortium_config(consortium_path)
        self.model = MaskedAdapterModel.from_consortium(self.consortium)
        self.tokenizer = load_tokenizer()
        # Every task starts from these weights: nothing one organization trained (its
        # personal rows, its head, its label prior) is left for the next.
        self._pristine = copy.deepcopy(self.model.peft_model.state_dict())

    def ready(self) -> bool:
        """Answers once the worker is up (after its model is built)."""
        return True

    def train(
        self,
        organization: OrganizationFolder,
        round_number: int,
        clusters_blob: bytes,
        completed: int | None,
    ) -> _Trained:
        """Train ``organization``'s round from its folder, after completing ``completed``."""
        clusters = decode_clusters(clusters_blob)
        with self._participant(organization) as participant:
            if completed is not None:
                participant.complete(completed)
            try:
                update = participant.prepare(round_number, clusters)
            except BudgetExhaustedError:
                return _Trained(refused=True)
            sketch = (
                participant.sketch(round_number)
                if self.consortium.takes_sketches(round_number)
                else None
            )
            self._audit_round_joined(participant, round_number, update.clusters)
            everything = dict.fromkeys(update.block_ids, 0)
            clip = self.consortium.secure_aggregation.clip
            contributions = tuple(
                participant.contributions(update, cluster=j, block_lengths=everything, clip=clip)
                for j in range(update.clusters)
            )
            return _Trained(refused=False, contributions=contributions, sketch=sketch)

    def finish(
        self, organization: OrganizationFolder, clusters_blob: bytes, completed: int | None
    ) -> dict[str, Any]:
        """Complete the last round and evaluate the personalized model on the test data."""
        clusters = decode_clusters(clusters_blob)
        with self._participant(organization) as participant:
            if completed is not None:
                participant.complete(completed)
            trainer = participant.trainer
            scores: dict[str, float] = {}
            if organization.test is not None:
                test = load_dataset_file(organization.test, label_names=organization.labels)
                scores = participant.evaluate(test, clusters)
            personal = participant.personal
            return {
                **scores,
                "epsilon_spent": trainer.ledger.spent() if trainer.ledger is not None else None,
                "epsilon_budget": trainer.policy.privacy.epsilon,
                "delta": trainer.policy.privacy.delta,
                "membership": [] if personal is None else [float(p) for p in personal.membership],
            }

    def _participant(self, organization: OrganizationFolder) -> _OpenParticipant:
        self.reset_model()
        return _OpenParticipant(self, organization)

    def reset_model(self) -> None:
        """Back to the base model's weights, with no label prior: done before and after
        every task, so no organization's trained weights wait in the worker."""
        self.model.peft_model.load_state_dict(self._pristine)
        self.model.set_label_prior(None)

    @staticmethod
    def _audit_round_joined(
        participant: RoundParticipant, round_number: int, clusters: int
    ) -> None:
        audit = participant.trainer.audit
        if audit is not None:
            audit.append(
                EventType.ROUND_JOINED, round_joined_payload(round_number, range(clusters))
            )


class _OpenParticipant:
    """One organization opened from its folder for one task, closed (audit log
    released) when the task ends, whatever happens."""

    def __init__(self, worker: OrganizationWorker, organization: OrganizationFolder) -> None:
        self.worker = worker
        self.organization = organization
        self.audit_log: AuditLog | None = None

    def __enter__(self) -> RoundParticipant:
        folder = self.organization
        policy = load_organization_policy(folder.policy)
        identity = load_credentials(folder.credentials).identity_key
        new_log = not Path(policy.audit.log_path).exists()
        self.audit_log = AuditLog.open(
            policy.audit.log_path,
            party_id=policy.organization,
            signing_key=identity,
            repair=True,
        )
        if new_log:
            self.audit_log.append(EventType.POLICY_LOADED, policy_loaded_payload(policy))
        ledger = open_organization_ledger(policy, state_dir=folder.state)
        trainer = LocalTrainer(
            self.worker.model,
            policy,
            self.worker.consortium,
            ledger=ledger,
            audit=self.audit_log,
            tokenizer=self.worker.tokenizer,
        )
        dataset = load_dataset_file(folder.data, label_names=folder.labels)
        return RoundParticipant(trainer, dataset, state_dir=folder.state)

    def __exit__(self, *exc: object) -> None:
        if self.audit_log is not None:
            self.audit_log.close()
        self.worker.reset_model()


@dataclass
class RayRound:
    """What one round on Ray did: its summary, time, and who was missing."""

    round: int
    summary: RoundSummary | None
    seconds: float
    refused: tuple[str, ...]
    lost: tuple[str, ...]

    def as_attempt(self) -> dict[str, Any]:
        """The round as the server's store reports an attempt (`fedhft simulate`)."""
        summary = self.summary.as_json() if self.summary is not None else None
        if summary is not None:
            summary["lost_workers"] = list(self.lost)
        return {
            "round": self.round,
            "attempt": 1,
            "status": "completed" if self.summary is not None else "aborted",
            "seconds": self.seconds,
            "summary": summary,
        }


@dataclass
class _Tally:
    bytes_up: int = 0
    bytes_down: int = 0
    joined: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    pending: int | None = None


@dataclass
class RayFederationResult:
    """The rounds, and each organization's report (``ClientReport.as_json`` keys)."""

    rounds: list[RayRound]
    reports: dict[str, dict[str, Any]]


class RayFederation:
    """A federation of organization folders trained on a pool of Ray workers.

    Args:
        consortium_path: the consortium configuration every worker loads.
        organizations: each organization's folder.
        workers: the pool size W (each worker holds one base model).
        address: an existing Ray cluster's address; None starts Ray on this machine.
        run_id: the run's identifier, bound into every secure-aggregation session.
    """

    def __init__(
        self,
        consortium_path: Path,
        organizations: Sequence[OrganizationFolder],
        *,
        workers: int,
        address: str | None = None,
        run_id: str = "ray-simulation",
    ) -> None:
        if workers < 1:
            raise SimulationError(f"`workers` must be at least 1, got {workers}")
        self.ray = require_ray()
        self.consortium: ConsortiumConfig = load_consortium_config(consortium_path)
        if self.consortium.method not in (Method.FEDHFT, Method.FEDAVG):
            raise SimulationError(
                f"the Ray engine runs methods fedhft and fedavg, not "
                f"{self.consortium.method.value!r}; use the process engine (`--engine "
                "process`) for it"
            )
        if self.consortium.secure_aggregation.mode is not SecureAggregationMode.MASKING:
            raise SimulationError(
                "the Ray engine sums with secure_aggregation mode `masking`; use the "
                "process engine (`--engine process`) for `ckks`"
            )
        self.organizations = {o.organization: o for o in organizations}
        # Each organization signs its own secure-aggregation messages.
        self.identities = {
            org: load_credentials(folder.credentials).identity_key
            for org, folder in self.organizations.items()
        }
        server_model = MaskedAdapterModel.from_consortium(self.consortium)
        self.coordinator = RoundCoordinator(
            self.consortium,
            run_id=run_id,
            initial_state=server_model.get_block_state(),
            tier_blocks={t: tier_mask(self.consortium, t) for t in self.consortium.tiers},
        )
        del server_model
        self._tally = {org: _Tally() for org in self.organizations}
        # Restarting workers: their readiness probes, and since when each is lost.
        self._probes: dict[Any, Any] = {}
        self._lost_since: dict[int, float] = {}
        self._started_ray = False
        if not self.ray.is_initialized():
            self._start_ray(address, workers)
        actor = self.ray.remote(num_cpus=1, max_restarts=_WORKER_RESTARTS, max_task_retries=0)(
            OrganizationWorker
        )
        self.workers = [actor.remote(str(consortium_path)) for _ in range(workers)]

    def _start_ray(self, address: str | None, workers: int) -> None:
        options: dict[str, Any] = {
            "runtime_env": {"env_vars": _WORKER_ENV},
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": "warning",
        }
        if address is None:
            # A local Ray: exactly the pool's cores, and a small object store (a round's
            # clusters and contributions are a few MiB).
            options.update(num_cpus=workers, object_store_memory=256 * 1024 * 1024)
        self.ray.init(address=address, **options)
        self._started_ray = True

    def close(self) -> None:
        """Stop the workers (and Ray, when this federation started it)."""
        for worker in self.workers:
            self.ray.kill(worker, no_restart=True)
        self.workers = []
        if self._started_ray:
            self.ray.shutdown()
            self._started_ray = False

    def __enter__(self) -> RayFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ rounds

    def run(
        self,
        *,
        rounds: int | None = None,
        on_round: Callable[[RayRound], None] | None = None,
        on_task: Callable[[int, str], None] | None = None,
        after_submit: Callable[[int, list[Any]], None] | None = None,
    ) -> RayFederationResult:
        """Run ``rounds`` rounds (default: the consortium's) and evaluate everyone.

        Args:
            on_round: called after each round (progress).
            on_task: called with ``(round, organization)`` as each training task ends.
            after_submit: called with ``(round, workers)`` once a round's first tasks
                are submitted (fault injection in tests: killing a worker).
        """
        total = rounds if rounds is not None else self.consortium.rounds
        records = []
        for round_number in range(1, total + 1):
            record = self.run_round(round_number, on_task=on_task, after_submit=after_submit)
            records.append(record)
            if on_round is not None:
                on_round(record)
        return RayFederationResult(records, self.finish())

    def run_round(
        self,
        round_number: int,
        *,
        on_task: Callable[[int, str], None] | None = None,
        after_submit: Callable[[int, list[Any]], None] | None = None,
    ) -> RayRound:
        """Train every organization's round on the pool and apply its secure sums."""
        started = time.perf_counter()
        clusters = self.coordinator.model_for_round(round_number)
        blob = encode_clusters(clusters)
        blob_ref = self.ray.put(blob)
        tasks = [
            (org, (folder, round_number, blob_ref, self._tally[org].pending))
            for org, folder in self.organizations.items()
        ]
        outcomes = self._map(
            "train",
            tasks,
            on_done=(lambda org: on_task(round_number, org)) if on_task else None,
            after_submit=(lambda: after_submit(round_number, self.workers))
            if after_submit
            else None,
        )
        lost = tuple(sorted(org for org, outcome in outcomes.items() if outcome is None))
        refused = []
        trained: dict[str, _Trained] = {}
        for org, outcome in outcomes.items():
            tally = self._tally[org]
            if outcome is None:
                continue
            # The round it completed in this task is done.
            tally.pending = None
            if outcome.refused:
                tally.refused.append(round_number)
                refused.append(org)
                continue
            trained[org] = outcome
            tally.joined.append(round_number)
            tally.bytes_down += len(blob)
            if outcome.sketch is not None:
                self.coordinator.sketches[org] = outcome.sketch
        summary = None
        if self.consortium.method is not Method.LOCAL:
            summary = self._aggregate(round_number, clusters.k, trained)
        for org in trained:
            self._tally[org].pending = round_number
        return RayRound(
            round_number, summary, time.perf_counter() - started, tuple(sorted(refused)), lost
        )

    def _aggregate(
        self, round_number: int, clusters: int, trained: Mapping[str, _Trained]
    ) -> RoundSummary:
        participants = {org: self.organizations[org].tier for org in trained}
        results: dict[int, AggregateResult] = {}
        skipped: dict[int, dict[str, int]] = {}
        for cluster in range(clusters):
            params, skipped[cluster] = self.coordinator.session_params(
                round_number=round_number,
                attempt=1,
                cluster=cluster,
                participants=participants,
            )
            if params.clip != self.consortium.secure_aggregation.clip:
                raise SimulationError(
                    f"session clip {params.clip} differs from the consortium's "
                    f"`secure_aggregation.clip` {self.consortium.secure_aggregation.clip}"
                )
            inputs = {
                org: {
                    block_id: vector
                    for block_id, vector in outcome.contributions[cluster].items()
                    if block_id in params.block_lengths
                }
                for org, outcome in trained.items()
            }
            stats = SessionStats()
            results[cluster] = run_secagg_in_process(
                params,
                inputs,
                {org: self.identities[org] for org in inputs},
                stats=stats,
            )
            for org in inputs:
                self._tally[org].bytes_up += stats.bytes_up.get(org, 0)
                self._tally[org].bytes_down += stats.bytes_down.get(org, 0)
        return self.coordinator.apply(
            round_number=round_number,
            participants=list(trained),
            results=results,
            skipped=skipped,
        )

    def finish(self) -> dict[str, dict[str, Any]]:
        """Complete each organization's last round and evaluate it: its report."""
        blob_ref = self.ray.put(encode_clusters(self.coordinator.clusters))
        tasks = [
            (org, (folder, blob_ref, self._tally[org].pending))
            for org, folder in self.organizations.items()
        ]
        scores = self._map("finish", tasks)
        reports: dict[str, dict[str, Any]] = {}
        for org, score in scores.items():
            tally = self._tally[org]
            if score is None:
                continue
            reports[org] = {
                "organization": org,
                "tier": self.organizations[org].tier,
                "rounds_joined": list(tally.joined),
                "rounds_refused": list(tally.refused),
                "bytes_up": tally.bytes_up,
                "bytes_down": tally.bytes_down,
                "accuracy": score.get("accuracy"),
                "macro_f1": score.get("macro_f1"),
                **{k: v for k, v in score.items() if k not in ("accuracy", "macro_f1")},
            }
        return reports

    def _map(
        self,
        method: str,
        tasks: list[tuple[str, tuple[Any, ...]]],
        *,
        on_done: Callable[[str], None] | None = None,
        after_submit: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Run ``method`` for every organization on whichever worker is free.

        An organization whose worker dies during its task maps to None (a dropout). Ray
        restarts the worker; it takes new organizations once it answers again, and a
        worker that is not back within `_RESTART_WAIT_S` leaves the pool.
        """
        ray = self.ray
        pending = deque(tasks)
        # A reference maps to its worker and organization; None for a readiness probe
        # of a restarting worker, which may outlast the previous call.
        in_flight: dict[Any, tuple[Any, str | None]] = {
            reference: (worker, None) for reference, worker in self._probes.items()
        }
        probing = {id(worker) for worker in self._probes.values()}
        idle = [worker for worker in self.workers if id(worker) not in probing]
        outcomes: dict[str, Any] = {}
        lost_since = self._lost_since
        submitted_once = False
        while pending or any(org is not None for _, org in in_flight.values()):
            while idle and pending:
                worker = idle.pop()
                organization, arguments = pending.popleft()
                in_flight[getattr(worker, method).remote(*arguments)] = (worker, organization)
            if not submitted_once:
                submitted_once = True
                if after_submit is not None:
                    after_submit()
            if not in_flight:
                raise SimulationError(
                    f"every Ray worker died and could not be restarted; {len(pending)} "
                    "organizations were not run"
                )
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for reference in done:
                worker, org = in_flight.pop(reference)
                try:
                    result = ray.get(reference)
                except ray.exceptions.RayActorError:
                    # The worker died: its organization drops out of this call, and the
                    # worker is probed until Ray has restarted it, or leaves the pool.
                    if org is not None:
                        outcomes[org] = None
                        if on_done is not None:
                            on_done(org)
                        lost_since.setdefault(id(worker), time.monotonic())
                    if time.monotonic() - lost_since[id(worker)] > _RESTART_WAIT_S:
                        self.workers = [w for w in self.workers if w is not worker]
                        continue
                    if org is None:
                        time.sleep(_PROBE_INTERVAL_S)
                    in_flight[worker.ready.remote()] = (worker, None)
                    continue
                except ray.exceptions.RayTaskError as error:
                    raise SimulationError(
                        f"{method} of {org} failed in its worker: {error.cause!r}"
                    ) from error.cause
                lost_since.pop(id(worker), None)
                idle.append(worker)
                if org is not None:
                    outcomes[org] = result
                    if on_done is not None:
                        on_done(org)
        self._probes = {ref: worker for ref, (worker, org) in in_flight.items() if org is None}
        return outcomes


def organization_folders(
    root: Path,
    organizations: Sequence[str],
    tiers: Mapping[str, str],
    labels: Sequence[str],
) -> list[OrganizationFolder]:
    """The folders `provision` writes (``orgs/ORG``, ``pki/ORG``) as `OrganizationFolder`s."""
    return [
        OrganizationFolder(
            organization=org,
            tier=tiers[org],
            policy=root / "orgs" / org / "policy.yaml",
            data=root / "orgs" / org / "train.jsonl",
            test=root / "orgs" / org / "test.jsonl",
            state=root / "orgs" / org / "state",
            credentials=root / "pki" / org,
            labels=tuple(labels),
        )
        for org in organizations
    ]
