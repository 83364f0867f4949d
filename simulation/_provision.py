"""A synthetic consortium on disk: CA, consortium configuration, policies and data.

What `fedhft simulate` writes before anything runs, whichever engine runs it: a
throw-away certificate authority and credentials for the server and every organization,
a consortium configuration, one policy per organization, and seeded synthetic non-iid
data (`fedhft.sdk.synthetic_federation`). Each organization owns one folder,
``orgs/ORG/``: its policy, its training and test data, its privacy ledger, its signed
audit log and its state folder. The folder is everything the organization keeps, so a
Ray worker can train any organization from it (ARCHITECTURE.md, "Simulation").
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedhft.aggregator import ckks_ceremony
from fedhft.policies import (
    CAUSAL_TARGETS,
    ConsortiumConfig,
    Method,
    SecureAggregationMode,
    load_consortium_config,
    load_organization_policy,
)
from fedhft.protocol import init_ca, issue_organization, issue_server
from fedhft.sdk import TextDataset, synthetic_federation

from ._instruct import (
    INSTRUCT_MAX_SEQ_LENGTH,
    causal_model_spec,
    instruct_tiers,
    instruction_federation,
    write_instructions,
)
from .errors import SimulationError

CONSORTIUM = "simulated-consortium"
TIER_CYCLE = ("full", "standard", "edge", "full", "standard", "edge")
LABELS = ("low", "medium", "high", "critical")
# Above this many organizations the secure sums use SecAgg+ (a k-regular graph) instead
# of the complete graph: the process engine's cap, so its consortia are unchanged.
COMPLETE_GRAPH_UP_TO = 12


@dataclass(frozen=True)
class SimulatedConsortium:
    """What `provision` wrote: the folder, the organizations and their figures."""

    root: Path
    organizations: tuple[str, ...]
    tiers: dict[str, str]
    domains: dict[str, str]
    majority: dict[str, float]
    task: str = "classify"
    """``classify`` (labelled texts) or ``instruct`` (instruction records, a causal LM)."""

    @property
    def consortium_path(self) -> Path:
        return self.root / "consortium.yaml"

    def folder(self, organization: str) -> Path:
        """The organization's own folder: policy, data, ledger, audit log, state."""
        return self.root / "orgs" / organization


def secagg_neighbours(organizations: int) -> int | None:
    """The SecAgg+ degree k for a cohort of this size; None (complete graph) for small ones.

    Bell et al. (CCS 2020) need k = O(log n) for security and correctness against a
    bounded fraction of dropouts and corrupt clients; three times log2(n) keeps every
    Shamir threshold well above the tolerated dropouts (40 %) at a few hundred clients.
    """
    if organizations <= COMPLETE_GRAPH_UP_TO:
        return None
    return min(organizations - 1, 3 * math.ceil(math.log2(organizations)))


def clustering_section(method: Method, rounds: int) -> dict[str, Any]:
    """The clustering section: FedHFT's two clusters on the warm-up round's sketches.

    The sketches are collected in the warm-up round and the clusters split after it, so
    a later round must follow; a one-round FedHFT run trains one cluster instead
    (`rounds_note` says so). The baselines keep one cluster.
    """
    if method is not Method.FEDHFT or rounds == 1:
        return {"clusters": 1, "warmup_rounds": 0, "membership": "soft", "temperature": 0.05}
    return {
        "clusters": 2,
        "warmup_rounds": 1,
        "membership": "soft",
        "temperature": 0.05,
        "signal": "sketch",
    }


def rounds_note(method: Method, rounds: int) -> str | None:
    """What the run changes to fit ``--rounds``, for the console; None when nothing."""
    if method is Method.FEDHFT and rounds == 1:
        return (
            "note: --rounds 1 leaves no round after the warm-up, so FedHFT trains one "
            "cluster (no sketches, no split); give --rounds 2 or more for two clusters"
        )
    return None


@dataclass(frozen=True)
class SimulatedModel:
    """The base model of a simulation: the consortium's `model` section (less
    ``num_labels``), its LoRA targets and how many layers the tiers address."""

    label: str
    spec: dict[str, str]
    target_modules: tuple[str, ...]
    num_layers: int

    @classmethod
    def parse(cls, value: str) -> SimulatedModel:
        """`minilm`, `tiny`, `smollm2`, or the path of a Hugging Face folder or `.gguf` file.

        Reads the model's configuration (a GGUF file is dequantized into the user cache
        here, once, so that every organization finds it there), takes the architecture's
        default LoRA targets, and pins the model's own tokenizer by its fingerprint.

        Raises:
            SimulationError: the value is none of these, or the model cannot be read.
        """
        if value == "minilm":
            return cls("minilm", {"source": "minilm"}, ("query", "value"), 6)
        if value == "tiny":
            return cls("tiny", {"source": "tiny"}, ("query", "value"), 2)
        from fedhft.model import (
            ModelError,
            base_config,
            default_target_modules,
            model_location,
            tokenizer_fingerprint,
        )
        from fedhft.policies import ModelSpec

        spec: dict[str, str]
        if value == "smollm2":
            spec = {"source": "smollm2"}
        else:
            path = Path(value).expanduser()
            if path.suffix.lower() == ".gguf":
                spec = {"source": "gguf", "name": str(path.resolve())}
            elif path.is_dir():
                spec = {"source": "huggingface", "name": str(path.resolve())}
            else:
                raise SimulationError(
                    f"{value!r} is not `minilm`, `tiny`, `smollm2`, a Hugging Face model "
                    "folder or a `.gguf` file"
                )
        try:
            model_spec = ModelSpec.model_validate({**spec, "num_labels": len(LABELS)})
            config = base_config(model_spec)
            model_type = str(config.model_type)
            if spec["source"] == "huggingface":
                # Mean pooling is what BERT-family sentence encoders are trained for;
                # every other architecture classifies with its own head.
                spec["pooling"] = "mean" if model_type == "bert" else "cls"
            targets = default_target_modules(model_type)
            spec["tokenizer_sha256"] = tokenizer_fingerprint(model_location(model_spec))
        except (ModelError, OSError, ValueError) as error:
            raise SimulationError(f"cannot use {value!r} as the base model: {error}") from error
        return cls(value, spec, tuple(targets), int(config.num_hidden_layers))


def consortium_document(
    *,
    organizations: list[str],
    rounds: int,
    method: Method,
    secure: SecureAggregationMode,
    model: SimulatedModel | str,
    seed: int,
) -> dict[str, Any]:
    """The simulated consortium configuration, as the YAML file holds it (``model``: a
    `SimulatedModel` or what `SimulatedModel.parse` reads)."""
    if isinstance(model, str):
        model = SimulatedModel.parse(model)
    if model.spec.get("task") == "causal-lm":
        return _instruct_consortium(
            organizations=organizations,
            rounds=rounds,
            method=method,
            secure=secure,
            model=model,
            seed=seed,
        )
    fedhft = method is Method.FEDHFT
    fedamole: dict[str, Any] = {}
    if method is Method.FEDAMOLE:
        # A pool of one expert per organization, three holders each; tiers hold 1-3,
        # 2-4 or 3-5 experts, which fits any number of organizations cycling the tiers.
        fedamole = {"num_experts": len(organizations), "holders_per_expert": 3}
    experts = {"edge": (1, 3), "standard": (2, 4), "full": (3, 5)} if fedamole else {}
    neighbours = secagg_neighbours(len(organizations))
    return {
        "kind": "consortium",
        "consortium": CONSORTIUM,
        "model": {**model.spec, "num_labels": len(LABELS)},
        "adapter": {
            "target_modules": list(model.target_modules),
            "rank": 8,
            "alpha": 16,
            "a_seed": 1000 + seed,
        },
        "tiers": {
            "edge": {
                "layers": [-1],
                "modules": [model.target_modules[-1]],
                "keep_ratio": 0.5,
            },
            # The top three layers (MiniLM has six; the tiny model's two are all of it).
            "standard": {
                "layers": list(range(-min(3, model.num_layers), 0)),
                "keep_ratio": 0.5,
            },
            "full": {"layers": "all", "keep_ratio": 0.5},
        }
        if not experts
        else {
            tier: {"min_experts": low, "max_experts": high} for tier, (low, high) in experts.items()
        },
        "method": method.value,
        "rounds": rounds,
        # FedHFT clusters on the organizations' DP sketches (the DP updates of a few
        # hundred records are too noisy to cluster on) and shares a head calibrated by
        # each organization's DP label prior; the baselines keep their plain forms.
        "clustering": clustering_section(method, rounds),
        **({"personalization": {"head": "shared", "label_prior": "dp"}} if fedhft else {}),
        "training": {"learning_rate": 0.01, "head_learning_rate": 0.05},
        "secure_aggregation": {
            "mode": secure.value,
            "threshold_fraction": 0.6,
            "min_cohort": 3,
            "max_dropout_fraction": 0.4,
            "stage_timeout_s": 120,
            **({"neighbours": neighbours} if neighbours is not None else {}),
        },
        **({"fedamole": fedamole} if fedamole else {}),
        "enrollment": [{"organization": org} for org in organizations],
    }


def _secure_aggregation(secure: SecureAggregationMode, organizations: int) -> dict[str, Any]:
    neighbours = secagg_neighbours(organizations)
    return {
        "mode": secure.value,
        "threshold_fraction": 0.6,
        "min_cohort": 3,
        "max_dropout_fraction": 0.4,
        "stage_timeout_s": 120,
        **({"neighbours": neighbours} if neighbours is not None else {}),
    }


def _instruct_consortium(
    *,
    organizations: list[str],
    rounds: int,
    method: Method,
    secure: SecureAggregationMode,
    model: SimulatedModel,
    seed: int,
) -> dict[str, Any]:
    """Instruction tuning of a causal LM: LoRA on the attention projections.

    FedHFT: one cluster (causal sketches need σ ≈ 3 to split this federation's domains at
    300 records each, not the default 10: see benchmarks/causal_sketch.py). FedAMoLE: a
    pool of one expert per organization, three holders each, the mixture on the top two
    layers (on every layer of SmolLM2 a step costs about 4x). Learning rates (Adam): 0.01
    for FedHFT, whose full tier trains every layer (0.3, the learning benchmark's rate for
    LoRA on the top two layers, drove the full-tier organizations' ROUGE-L to 0 here); 0.1
    for FedAMoLE's mixture on the top two layers, the benchmark's.
    """
    if method is Method.FEDAMOLE:
        experts = {"edge": (1, 3), "standard": (2, 4), "full": (3, 5)}
        tiers: dict[str, Any] = {
            tier: {"min_experts": low, "max_experts": high} for tier, (low, high) in experts.items()
        }
        extra: dict[str, Any] = {
            "fedamole": {
                "num_experts": len(organizations),
                "holders_per_expert": 3,
                "layers": list(range(-min(2, model.num_layers), 0)),
            }
        }
        learning_rate = 0.1
    else:
        tiers = instruct_tiers(model.num_layers)
        extra = {"clustering": {"clusters": 1, "warmup_rounds": 0, "membership": "soft"}}
        learning_rate = 0.01
    return {
        "kind": "consortium",
        "consortium": CONSORTIUM,
        "model": dict(model.spec),
        "adapter": {
            "target_modules": list(model.target_modules),
            "rank": 8,
            "alpha": 16,
            "a_seed": 1000 + seed,
        },
        "tiers": tiers,
        "method": method.value,
        "rounds": rounds,
        **extra,
        "training": {"learning_rate": learning_rate},
        "secure_aggregation": _secure_aggregation(secure, len(organizations)),
        "enrollment": [{"organization": org} for org in organizations],
    }


def policy_document(
    organization: str,
    tier: str,
    *,
    rounds: int,
    epsilon: float,
    steps: int,
    folder: Path,
    secure: SecureAggregationMode,
    instruct: bool = False,
) -> dict[str, Any]:
    """One simulated organization's policy, its ledger and audit log in ``folder``
    (``instruct``: batches and record lengths for instruction records)."""
    return {
        "kind": "organization",
        "organization": organization,
        "consortium": CONSORTIUM,
        "privacy": {
            "epsilon": epsilon,
            "delta": 1.0e-5,
            "accountant": "rdp",
            "max_grad_norm": 1.0,
            "noise_multiplier": "auto",
            "planned_rounds": rounds,
            "ledger_path": str(folder / "privacy-ledger.json"),
        },
        "training": {
            "tier": tier,
            "batch_size": 8 if instruct else 32,
            "local_steps": steps,
            "max_seq_length": INSTRUCT_MAX_SEQ_LENGTH if instruct else 32,
        },
        "secure_aggregation": {"accepted_modes": [secure.value], "min_cohort": 3},
        "audit": {"log_path": str(folder / "audit.jsonl")},
    }


def _write_jsonl(path: Path, texts: tuple[str, ...], labels: tuple[int, ...]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for text, label in zip(texts, labels, strict=True):
            handle.write(json.dumps({"text": text, "label": LABELS[label]}) + "\n")


def provision(
    root: Path,
    *,
    clients: int,
    rounds: int,
    method: Method,
    secure: SecureAggregationMode,
    model: SimulatedModel | str,
    epsilon: float,
    local_steps: int,
    samples: int,
    alpha: float,
    seed: int,
    task: str = "classify",
) -> SimulatedConsortium:
    """Write the CA, the consortium, one folder per organization and the server's folder.

    ``task: instruct`` writes the instruction federation for ``model`` (a causal LM:
    `tiny`, `smollm2`, a folder or a `.gguf` file; FedHFT or FedAMoLE).
    """
    if task == "instruct":
        return _provision_instruct(
            root,
            clients=clients,
            rounds=rounds,
            method=method,
            secure=secure,
            model=model if isinstance(model, str) else model.label,
            epsilon=epsilon,
            local_steps=local_steps,
            samples=samples,
            alpha=alpha,
            seed=seed,
        )

    data = synthetic_federation(
        num_organizations=clients, alpha=alpha, samples_per_org=samples, seed=seed
    )
    orgs = [d.organization for d in data]
    tiers = {org: TIER_CYCLE[i % len(TIER_CYCLE)] for i, org in enumerate(orgs)}
    domains = {d.organization: d.domain for d in data}
    majority = {d.organization: majority_accuracy(d.train, d.test) for d in data}
    consortium = consortium_document(
        organizations=orgs, rounds=rounds, method=method, secure=secure, model=model, seed=seed
    )
    config, folders = _write_configuration(
        root, consortium, tiers, rounds=rounds, epsilon=epsilon, steps=local_steps, secure=secure
    )
    for org_data in data:
        folder = folders[org_data.organization]
        _write_jsonl(folder / "train.jsonl", org_data.train.texts, org_data.train.labels)
        _write_jsonl(folder / "test.jsonl", org_data.test.texts, org_data.test.labels)
    _write_pki(root, orgs, config, secure)
    return SimulatedConsortium(root, tuple(orgs), tiers, domains, majority)


def _write_configuration(
    root: Path,
    consortium: dict[str, Any],
    tiers: dict[str, str],
    *,
    rounds: int,
    epsilon: float,
    steps: int,
    secure: SecureAggregationMode,
    instruct: bool = False,
) -> tuple[ConsortiumConfig, dict[str, Path]]:
    """Write ``consortium.yaml`` and each organization's ``orgs/ORG/policy.yaml``, each
    validated as `fedhft` will load it; the configuration and every organization's folder."""
    import yaml

    (root / "consortium.yaml").write_text(yaml.safe_dump(consortium, sort_keys=False))
    config = load_consortium_config(root / "consortium.yaml")
    folders: dict[str, Path] = {}
    for org, tier in tiers.items():
        folder = root / "orgs" / org
        folder.mkdir(parents=True)
        policy = policy_document(
            org,
            tier,
            rounds=rounds,
            epsilon=epsilon,
            steps=steps,
            folder=folder,
            secure=secure,
            instruct=instruct,
        )
        (folder / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
        load_organization_policy(folder / "policy.yaml")
        folders[org] = folder
    return config, folders


def _write_pki(
    root: Path, orgs: list[str], config: ConsortiumConfig, secure: SecureAggregationMode
) -> None:
    """A throw-away CA, the server's and every organization's credentials (and the CKKS
    key ceremony's sealed keys), and the server's folder."""
    ca = init_ca(CONSORTIUM, root / "pki" / "ca")
    # `fedhft audit verify --certs pki` finds the CA certificate next to the parties'.
    shutil.copyfile(root / "pki" / "ca" / "ca.crt", root / "pki" / "ca.crt")
    issue_server(ca, "localhost", root / "pki" / "server")
    for org in orgs:
        issue_organization(ca, org, root / "pki" / org)
    (root / "server").mkdir()
    if secure is SecureAggregationMode.CKKS:
        ckks_ceremony(config, [root / "pki" / org for org in orgs], root / "pki" / "server")


def _provision_instruct(
    root: Path,
    *,
    clients: int,
    rounds: int,
    method: Method,
    secure: SecureAggregationMode,
    model: str,
    epsilon: float,
    local_steps: int,
    samples: int,
    alpha: float,
    seed: int,
) -> SimulatedConsortium:

    spec, num_layers = causal_model_spec(model, root, seed=seed)
    simulated = SimulatedModel(model, spec, CAUSAL_TARGETS, num_layers)
    data = instruction_federation(clients=clients, alpha=alpha, samples=samples, seed=seed)
    orgs = [d.organization for d in data]
    tiers = {org: TIER_CYCLE[i % len(TIER_CYCLE)] for i, org in enumerate(orgs)}
    consortium = consortium_document(
        organizations=orgs,
        rounds=rounds,
        method=method,
        secure=secure,
        model=simulated,
        seed=seed,
    )
    config, folders = _write_configuration(
        root,
        consortium,
        tiers,
        rounds=rounds,
        epsilon=epsilon,
        steps=local_steps,
        secure=secure,
        instruct=True,
    )
    for org_data in data:
        folder = folders[org_data.organization]
        write_instructions(folder / "train.jsonl", org_data.train)
        write_instructions(folder / "test.jsonl", org_data.test)
    _write_pki(root, orgs, config, secure)
    domains = {d.organization: d.domain for d in data}
    return SimulatedConsortium(root, tuple(orgs), tiers, domains, {}, task="instruct")


def majority_accuracy(train: TextDataset, test: TextDataset) -> float:
    """Test accuracy of always predicting the training split's most common label.

    What a model that learned only the organization's label mix scores: the reference
    that tells a reader whether training learned anything beyond it.
    """
    counts = train.label_counts()
    label = counts.index(max(counts))
    return sum(1 for y in test.labels if y == label) / len(test)


def organization_rows(
    consortium: SimulatedConsortium, reports: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each organization's figures from its report (``ClientReport.as_json`` form)."""
    rows = []
    for org in consortium.organizations:
        report = reports.get(org, {})
        joined = max(1, len(report.get("rounds_joined", [])) or 1)
        rows.append(
            {
                "organization": org,
                "domain": consortium.domains[org],
                "tier": consortium.tiers[org],
                "accuracy": report.get("accuracy"),
                "majority_accuracy": consortium.majority[org],
                "macro_f1": report.get("macro_f1"),
                "epsilon_spent": report.get("epsilon_spent"),
                "epsilon_budget": report.get("epsilon_budget"),
                "bytes_up_per_round": report.get("bytes_up", 0) / joined,
                "bytes_down_per_round": report.get("bytes_down", 0) / joined,
                "membership": report.get("membership", []),
                "rounds_refused": report.get("rounds_refused", []),
            }
        )
    return rows


def dropped_in(summary: dict[str, Any] | None) -> list[str]:
    """The organizations a round summary (``RoundSummary.as_json``) lists as dropped."""
    if not summary:
        return []
    dropped: set[str] = set()
    for outcome in summary.get("outcomes", []):
        dropped.update(outcome.get("dropped", []))
    # The Ray engine's organizations whose worker died before they contributed.
    dropped.update(summary.get("lost_workers", []))
    return sorted(dropped)
