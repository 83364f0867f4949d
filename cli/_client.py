"""`fedhft client run`: take part in a federation as one organization, from config files.

Trains on ``--data`` (CSV, TSV, JSONL or a folder saved with `datasets`), joins every
round the policy and the budget allow, evaluates the personalized model on ``--test`` at
the end and prints (and with ``--report`` writes as JSON) the organization's summary:
accuracy, macro-F1, ε spent of the budget, bytes up and down, tier, membership, rounds
joined and refused. For a consortium with ``model.task: causal-lm`` the data files hold
instruction records (`fedhft.sdk.load_instructions`) and the summary gives ROUGE-L and
exact match of the personalized model's answers next to the zero-shot base model's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from fedhft.errors import FedHFTError

from ._options import positive_int

if TYPE_CHECKING:
    from fedhft.sdk import ClientReport

client_app = typer.Typer(
    help="Take part in a federation as one organization.",
    no_args_is_help=True,
)


@client_app.command("run")
def run_command(
    policy: Annotated[Path, typer.Option("--policy", help="The organization's policy file.")],
    consortium: Annotated[Path, typer.Option("--consortium", help="The consortium configuration.")],
    server: Annotated[str, typer.Option("--server", help="The server as HOST:PORT.")],
    tls: Annotated[
        Path, typer.Option("--tls", help="The organization's credentials (`fedhft ca issue`).")
    ],
    data: Annotated[Path, typer.Option("--data", help="Training data (CSV/TSV/JSONL/folder).")],
    state: Annotated[
        Path | None,
        typer.Option("--state", help="Personal state folder (default ./fedhft-state/ORG)."),
    ] = None,
    test: Annotated[
        Path | None, typer.Option("--test", help="Test data evaluated at the end.")
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the summary as JSON here.")
    ] = None,
    server_name: Annotated[
        str | None,
        typer.Option("--server-name", help="Host name in the server's certificate."),
    ] = None,
    labels: Annotated[
        str | None,
        typer.Option(
            "--labels",
            help="Label names in the consortium's order, comma-separated (default: sorted).",
        ),
    ] = None,
    text_column: Annotated[str, typer.Option("--text-column")] = "text",
    label_column: Annotated[str, typer.Option("--label-column")] = "label",
    max_record_bytes: Annotated[
        int | None,
        typer.Option(
            "--max-record-bytes",
            parser=positive_int("--max-record-bytes", default="1 MiB"),
            metavar="N",
            help="Refuse a data record (row or line) over this many bytes (default 1 MiB).",
        ),
    ] = None,
) -> None:
    """Join the federation's rounds until the server announces the end."""
    from fedhft.policies import Method, load_consortium_config, load_organization_policy
    from fedhft.sdk import (
        FederatedClient,
        InstructionDataset,
        MaskedAdapterModel,
        TextDataset,
        build_base_model,
        load_dataset_file,
        load_instructions,
    )

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # Left out, the cap is `load_dataset_file`'s default.
    record_cap: dict[str, Any] = {}
    if max_record_bytes is not None:
        record_cap["max_record_bytes"] = max_record_bytes
    try:
        organization_policy = load_organization_policy(policy)
        consortium_config = load_consortium_config(consortium)
        train: TextDataset | InstructionDataset
        evaluation: TextDataset | InstructionDataset | None
        if consortium_config.model.task == "causal-lm":
            # Instruction records (`instruction`/`output`, `prompt`/`completion` or chat
            # `messages`); the label options do not apply.
            train = load_instructions(data, **record_cap)
            evaluation = load_instructions(test, **record_cap) if test is not None else None
        else:
            names = [name.strip() for name in labels.split(",")] if labels else None
            train = load_dataset_file(
                data,
                label_names=names,
                text_column=text_column,
                label_column=label_column,
                **record_cap,
            )
            evaluation = (
                load_dataset_file(
                    test,
                    label_names=train.label_names,
                    text_column=text_column,
                    label_column=label_column,
                    **record_cap,
                )
                if test is not None
                else None
            )
        # FedAMoLE installs its experts into the plain base model; the client wraps a
        # causal LM with the consortium's adapters itself.
        model = (
            build_base_model(consortium_config.model)
            if consortium_config.method is Method.FEDAMOLE
            or consortium_config.model.task == "causal-lm"
            else MaskedAdapterModel.from_consortium(consortium_config)
        )
        folder = state or Path("fedhft-state") / organization_policy.organization
        with FederatedClient(
            model,
            train,
            organization_policy,
            consortium_config,
            credentials=tls,
            server=server,
            state_dir=folder,
            test_dataset=evaluation,
            server_name=server_name,
        ) as client:
            result = client.run()
    except FedHFTError as error:
        _fail(error)
    except ConnectionError as error:
        _fail(error)
    _print(result)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result.as_json(), indent=2, sort_keys=True) + "\n")


def _print(result: ClientReport) -> None:
    from rich.console import Console
    from rich.table import Table

    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    table = Table(title=f"fedhft: {result.organization}", show_header=False)
    rows = [
        ("tier", result.tier),
        *(
            [
                ("ROUGE-L (zero-shot base)", _versus(result.generation, "rouge_l")),
                ("exact match (zero-shot base)", _versus(result.generation, "exact_match")),
            ]
            if result.generation is not None
            else [
                ("accuracy", number(result.accuracy)),
                ("macro-F1", number(result.macro_f1)),
            ]
        ),
        ("ε spent / budget", f"{number(result.epsilon_spent)} / {result.epsilon_budget}"),
        ("bytes up / down", f"{result.bytes_up:,} / {result.bytes_down:,}"),
        ("membership π", ", ".join(f"{p:.2f}" for p in result.membership)),
        ("rounds joined", ", ".join(map(str, result.rounds_joined)) or "none"),
        ("rounds refused", ", ".join(map(str, result.rounds_refused)) or "none"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


def _versus(scores: dict[str, float], name: str) -> str:
    """A personalized model's score next to the zero-shot base model's."""
    return f"{scores[name]:.3f} ({scores['zero_shot_' + name]:.3f})"


def _fail(error: Exception) -> NoReturn:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(code=1)
