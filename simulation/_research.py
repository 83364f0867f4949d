"""One call from a researcher's own data to a federation's results, in one process.

`simulate_in_process` takes a consortium and each organization's (train, test) data and
tier, and assembles everything `run_federation_in_process` and `run_fedamole_in_process`
need: each organization's policy (the given ε, δ, clipping norm, ``noise_multiplier:
auto``), its privacy ledger and signed audit log in a folder of its own, one copy of the
base model per organization, the real trainer (DP-SGD with Opacus) and participant, and
the server's real coordinator. For a ``causal-lm`` consortium the organizations' data are
instruction records, each trains a `CausalAdapterModel` with a `CausalTrainer`, the
server starts from the weightless `initial_block_state`, and the metrics are ROUGE-L,
exact match and response loss of what each organization's model writes (see
`score_zero_shot` for the base model's, scored once for several methods). Every secure
sum is the real masking-mode protocol, as in those two functions; only the network and
the certificates are missing (each organization signs its audit log with a key made for
the run).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedhft.aggregator import MoLECoordinator, RoundCoordinator
from fedhft.audit import AuditLog, EventType, policy_loaded_payload
from fedhft.errors import SecurityWarning
from fedhft.model import (
    CausalAdapterModel,
    MaskedAdapterModel,
    build_base_model,
    initial_block_state,
    initial_mole_state,
    tier_mask,
)
from fedhft.policies import ConsortiumConfig, Method, OrganizationPolicy
from fedhft.sdk import (
    CausalTrainer,
    InstructionDataset,
    LocalTrainer,
    MoLETrainer,
    TextDataset,
    load_tokenizer,
    zero_shot_scores,
)
from fedhft.sdk.participants import MoLEParticipant, RoundParticipant
from fedhft.sdk.privacy import AccountedTrainer

from ._fedamole import run_fedamole_in_process
from ._fedhft import OrganizationRun, RoundRecord, run_federation_in_process
from .errors import SimulationError

DELTA = 1e-5
"""The δ of every organization's budget unless the caller gives another."""


@dataclass(frozen=True)
class SimulatedOrganization:
    """One organization of a simulation: its own data, already split, and its tier
    (labelled texts, or instruction records for a ``causal-lm`` consortium)."""

    train: TextDataset | InstructionDataset
    test: TextDataset | InstructionDataset
    tier: str
    domain: str = ""
    """A label carried into the metrics (e.g. the site's group); not used in training."""


@dataclass(frozen=True)
class LocalTraining:
    """What every organization's policy says about local training."""

    batch_size: int = 16
    local_steps: int = 8
    max_seq_length: int = 32


@dataclass
class SimulationResult:
    """What a simulated federation reached and what it cost.

    ``organizations`` maps each organization to its metrics on its own test set
    (``accuracy``, ``macro_f1``; for a causal LM ``rouge_l``, ``exact_match``, ``loss``
    and, unless skipped, the zero-shot base model's as ``zero_shot_*``), its ``epsilon``
    spent (None for the non-private baseline) of its ``epsilon_budget``, its
    ``bytes_up``/``bytes_down``, ``rounds_joined`` and ``refused_rounds``. ``rounds``
    holds each round's coordinator summary (None for `local`) and seconds.
    """

    method: Method
    epsilon: float | None
    organizations: dict[str, dict[str, Any]]
    rounds: list[RoundRecord]
    seconds: float
    workdir: Path | None
    """Where the policies, ledgers and audit logs are (None: a temporary folder, gone)."""
    audit_keys: dict[str, Ed25519PublicKey]
    """The public key each organization's audit log verifies with (its private half
    lived only for the run)."""

    def _evaluated(self, metric: str) -> list[float]:
        # An organization FedAMoLE could not assign experts to has no metrics.
        return [float(m[metric]) for m in self.organizations.values() if metric in m]

    def mean(self, metric: str) -> float:
        """``metric`` (e.g. ``accuracy``, ``rouge_l``, ``exact_match``) averaged over the
        organizations, each on its own test set."""
        return statistics.fmean(self._evaluated(metric))

    def worst(self, metric: str) -> float:
        """The lowest organization's ``metric``."""
        return min(self._evaluated(metric))

    @property
    def mean_accuracy(self) -> float:
        """Accuracy averaged over the organizations (each on its own test set)."""
        return self.mean("accuracy")

    @property
    def worst_accuracy(self) -> float:
        """The lowest organization's accuracy."""
        return self.worst("accuracy")

    @property
    def mean_macro_f1(self) -> float:
        """Macro-F1 averaged over the organizations."""
        return self.mean("macro_f1")

    @property
    def epsilon_spent(self) -> float | None:
        """The largest ε any organization spent (None for the non-private baseline)."""
        spent = [m["epsilon"] for m in self.organizations.values() if m["epsilon"] is not None]
        return max(spent) if spent else None


def simulate_in_process(
    consortium: ConsortiumConfig,
    organizations: Mapping[str, SimulatedOrganization],
    *,
    epsilon: float | None,
    delta: float = DELTA,
    max_grad_norm: float = 1.0,
    training: LocalTraining = LocalTraining(),
    rounds: int | None = None,
    seed: int = 0,
    workdir: str | Path | None = None,
    base_model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    on_round: Callable[[int, RoundRecord], None] | None = None,
    zero_shot: bool = True,
) -> SimulationResult:
    """Run the consortium's method (FedHFT, FedAvg, local or FedAMoLE) on ``organizations``.

    Args:
        consortium: the consortium's configuration; every organization must be enrolled
            in it and its tier one of its ``tiers``.
        organizations: organization name → its data and tier.
        epsilon: every organization's ε budget for the whole run (δ = ``delta``), the
            noise multiplier calibrated to spend it over ``rounds``; ``None`` runs the
            NON-PRIVATE baseline (no DP-SGD, nothing accounted), for comparison only.
        rounds: rounds to run (default: the consortium's ``rounds``).
        seed: seeds the run (organization ``i`` trains with seed ``100 * seed + i``).
        workdir: an empty or missing folder that keeps each organization's
            ``policy.yaml``, ledger, audit log and state (``<workdir>/<organization>/``);
            default: a temporary folder removed afterwards.
        base_model: the base model every organization copies (default: built from
            ``consortium.model``); it is never trained itself.
        tokenizer: default: the consortium model's own for a causal LM, the local MiniLM
            tokenizer for a classifier.
        on_round: called after each round (progress reporting).
        zero_shot: for a causal LM, also score the zero-shot base model per organization
            (``zero_shot_*``); ``False`` when the caller scores it once for several
            methods (`score_zero_shot`).

    Raises:
        SimulationError: an organization is not enrolled, has an unknown tier or data
            of the wrong kind for the task, or ``workdir`` already holds an
            organization's folder.
        RoundError: FedAMoLE found fewer organizations than the minimum cohort.
    """
    _check(consortium, organizations)
    total = rounds if rounds is not None else consortium.rounds
    base = base_model if base_model is not None else build_base_model(consortium.model)
    causal = consortium.model.task == "causal-lm"
    tokens = (
        tokenizer if tokenizer is not None else load_tokenizer(consortium.model if causal else None)
    )
    torch.manual_seed(seed)
    started = time.perf_counter()
    with ExitStack() as stack:
        if workdir is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        else:
            folder = Path(workdir)
            taken = sorted(org for org in organizations if (folder / org).exists())
            if taken:
                raise SimulationError(
                    f"workdir {folder} already holds {', '.join(taken)}: a ledger there "
                    "would carry its ε into this run; give an empty or new folder"
                )
        policies = {
            org: _write_policy(
                consortium, org, spec.tier, epsilon, delta, max_grad_norm, training, total, folder
            )
            for org, spec in organizations.items()
        }
        identities = {org: Ed25519PrivateKey.generate() for org in organizations}
        audit_logs = {
            org: stack.enter_context(_audit_log(policies[org], identities[org]))
            for org in organizations
        }

        def trainer_options(i: int, org: str) -> dict[str, Any]:
            return {
                "audit": audit_logs[org],
                "tokenizer": tokens,
                "non_private_baseline": epsilon is None,
                "seed": seed * 100 + i,
            }

        run_id = f"{consortium.consortium}-{seed}"
        with warnings.catch_warnings():
            if epsilon is None:
                # The caller asked for the non-private baseline; one warning per
                # organization would only repeat it.
                warnings.simplefilter("ignore", SecurityWarning)
            if consortium.method is Method.FEDAMOLE:
                mole_runs: dict[str, OrganizationRun[MoLEParticipant]] = {}
                for i, (org, spec) in enumerate(organizations.items()):
                    mole_trainer = MoLETrainer(
                        policies[org],
                        consortium,
                        base_factory=lambda: copy.deepcopy(base),
                        **trainer_options(i, org),
                    )
                    participant = MoLEParticipant(mole_trainer, spec.train, state_dir=folder / org)
                    mole_runs[org] = OrganizationRun(
                        participant, spec.tier, spec.test, spec.domain, identities[org]
                    )
                mole_coordinator = MoLECoordinator(
                    consortium, run_id=run_id, initial_state=initial_mole_state(consortium)
                )
                mole = run_fedamole_in_process(
                    consortium,
                    mole_coordinator,
                    mole_runs,
                    rounds=total,
                    on_round=on_round,
                    zero_shot=zero_shot,
                )
                metrics, records = mole.metrics, mole.rounds
            else:
                runs: dict[str, OrganizationRun[RoundParticipant]] = {}
                for i, (org, spec) in enumerate(organizations.items()):
                    trainer: AccountedTrainer
                    if causal:
                        trainer = CausalTrainer(
                            CausalAdapterModel(copy.deepcopy(base), consortium.adapter),
                            policies[org],
                            consortium,
                            **trainer_options(i, org),
                        )
                    else:
                        trainer = LocalTrainer(
                            MaskedAdapterModel(copy.deepcopy(base), consortium.adapter),
                            policies[org],
                            consortium,
                            **trainer_options(i, org),
                        )
                    round_participant = RoundParticipant(
                        trainer, spec.train, state_dir=folder / org
                    )
                    runs[org] = OrganizationRun(
                        round_participant, spec.tier, spec.test, spec.domain, identities[org]
                    )
                coordinator = RoundCoordinator(
                    consortium,
                    run_id=run_id,
                    initial_state=_initial_state(consortium, base),
                    tier_blocks={
                        t: tier_mask(consortium, t, tiny_config={"seed": 0})
                        for t in consortium.tiers
                    },
                )
                federation = run_federation_in_process(
                    consortium,
                    coordinator,
                    runs,
                    rounds=total,
                    on_round=on_round,
                    zero_shot=zero_shot,
                )
                metrics, records = federation.metrics, federation.rounds
    return SimulationResult(
        method=consortium.method,
        epsilon=epsilon,
        organizations=metrics,
        rounds=records,
        seconds=time.perf_counter() - started,
        workdir=None if workdir is None else Path(workdir),
        audit_keys={org: key.public_key() for org, key in identities.items()},
    )


def score_zero_shot(
    consortium: ConsortiumConfig,
    organizations: Mapping[str, SimulatedOrganization],
    *,
    max_seq_length: int,
    base_model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> dict[str, dict[str, Any]]:
    """The zero-shot base model's ``rouge_l``, ``exact_match`` and ``loss`` on each
    organization's test records (with its ``tier`` and ``domain``): the baseline of a
    ``causal-lm`` consortium, the same for every method, so scored once.

    Raises:
        SimulationError: the consortium is not ``causal-lm``, or an organization's data
            are not instruction records.
    """
    if consortium.model.task != "causal-lm":
        raise SimulationError(
            "score_zero_shot scores what a causal LM writes; the consortium's "
            f"`model.task` is {consortium.model.task!r}, not 'causal-lm'"
        )
    _check(consortium, organizations)
    base = base_model if base_model is not None else build_base_model(consortium.model)
    tokens = tokenizer if tokenizer is not None else load_tokenizer(consortium.model)
    # Zero B blocks: the adapters add nothing, and they are disabled while scoring.
    model = CausalAdapterModel(copy.deepcopy(base), consortium.adapter)
    scores: dict[str, dict[str, Any]] = {}
    for org, spec in organizations.items():
        assert isinstance(spec.test, InstructionDataset)  # _check
        scores[org] = {
            **zero_shot_scores(
                model,
                tokens,
                spec.test,
                max_seq_length=max_seq_length,
                max_new_tokens=consortium.evaluation.max_new_tokens,
            ),
            "tier": spec.tier,
            "domain": spec.domain,
        }
    return scores


def _initial_state(consortium: ConsortiumConfig, base: PreTrainedModel) -> dict[str, Any]:
    """The server's starting blocks: the weightless layout's for a causal LM, the base
    model's (with its seeded head) for a classifier."""
    if consortium.model.task == "causal-lm":
        return initial_block_state(consortium)
    return MaskedAdapterModel(copy.deepcopy(base), consortium.adapter).get_block_state()


def _check(
    consortium: ConsortiumConfig, organizations: Mapping[str, SimulatedOrganization]
) -> None:
    enrolled = set(consortium.enrolled())
    strangers = sorted(set(organizations) - enrolled)
    if strangers:
        raise SimulationError(
            f"organizations {strangers} are not in the consortium's `enrollment` "
            f"({sorted(enrolled)}); enroll them or leave them out"
        )
    causal = consortium.model.task == "causal-lm"
    wanted = InstructionDataset if causal else TextDataset
    kind = "instruction records (InstructionDataset)" if causal else "labelled texts (TextDataset)"
    for org, spec in organizations.items():
        if spec.tier not in consortium.tiers:
            raise SimulationError(
                f"{org}: tier {spec.tier!r} is not one of the consortium's `tiers` "
                f"({sorted(consortium.tiers)})"
            )
        if not (isinstance(spec.train, wanted) and isinstance(spec.test, wanted)):
            raise SimulationError(
                f"{org}: a {consortium.model.task} consortium trains on "
                f"{kind}; give its train and test data as such"
            )


def _write_policy(
    consortium: ConsortiumConfig,
    org: str,
    tier: str,
    epsilon: float | None,
    delta: float,
    max_grad_norm: float,
    training: LocalTraining,
    rounds: int,
    folder: Path,
) -> OrganizationPolicy:
    """The organization's policy, also written to ``<folder>/<org>/policy.yaml``."""
    document = {
        "organization": org,
        "consortium": consortium.consortium,
        "privacy": {
            # The non-private baseline spends nothing; its trainer never reads the budget.
            "epsilon": epsilon if epsilon is not None else 1.0,
            "delta": delta,
            "max_grad_norm": max_grad_norm,
            "noise_multiplier": "auto",
            "planned_rounds": rounds,
            "ledger_path": str(folder / org / "ledger.json"),
        },
        "training": {
            "tier": tier,
            "batch_size": training.batch_size,
            "local_steps": training.local_steps,
            "max_seq_length": training.max_seq_length,
        },
        "audit": {"log_path": str(folder / org / "audit.jsonl")},
    }
    policy = OrganizationPolicy.model_validate(document)
    (folder / org).mkdir(parents=True, exist_ok=True)
    (folder / org / "policy.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return policy


@contextmanager
def _audit_log(policy: OrganizationPolicy, identity: Ed25519PrivateKey) -> Iterator[AuditLog]:
    """The organization's signed audit log, opened for the run and closed after it."""
    log = AuditLog.open(policy.audit.log_path, party_id=policy.organization, signing_key=identity)
    try:
        log.append(EventType.POLICY_LOADED, policy_loaded_payload(policy))
        yield log
    finally:
        log.close()
