"""`fedhft policy ...`: validate policy files, check compatibility, print JSON Schemas."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from fedhft.policies import (
    ConsortiumConfig,
    OrganizationPolicy,
    PolicyError,
    compatibility_violations,
    load_any,
    load_consortium_config,
    load_organization_policy,
)

policy_app = typer.Typer(help="Validate and inspect policy files.", no_args_is_help=True)


class SchemaKind(StrEnum):
    ORGANIZATION = "organization"
    CONSORTIUM = "consortium"


@policy_app.command("validate")
def validate(
    paths: Annotated[list[Path], typer.Argument(help="Policy or consortium YAML files.")],
) -> None:
    """Validate files; exit 1 with one line per problem when any is invalid."""
    problems: list[str] = []
    for path in paths:
        try:
            loaded = load_any(path)
        except PolicyError as exc:
            problems.extend(exc.problems)
        else:
            typer.echo(f"ok: {path} ({loaded.kind})")
    for problem in problems:
        typer.echo(problem, err=True)
    if problems:
        raise typer.Exit(code=1)


@policy_app.command("check-compat")
def check_compat(
    organization: Annotated[Path, typer.Argument(help="The organization's policy file.")],
    consortium: Annotated[Path, typer.Argument(help="The consortium configuration file.")],
) -> None:
    """Check that an organization's policy allows joining the consortium."""
    try:
        policy = load_organization_policy(organization)
        config = load_consortium_config(consortium)
    except PolicyError as exc:
        for problem in exc.problems:
            typer.echo(problem, err=True)
        raise typer.Exit(code=1) from exc
    violations = compatibility_violations(policy, config)
    for violation in violations:
        typer.echo(f"{organization}: {violation}", err=True)
    if violations:
        raise typer.Exit(code=1)
    typer.echo(f"compatible: {policy.organization} may join {config.consortium}")


@policy_app.command("schema")
def schema(
    kind: Annotated[SchemaKind, typer.Option("--kind", help="Which file's schema.")],
) -> None:
    """Print the JSON Schema of a policy file kind (for editors and CI)."""
    model = OrganizationPolicy if kind is SchemaKind.ORGANIZATION else ConsortiumConfig
    document = model.model_json_schema()
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    typer.echo(json.dumps(document, indent=2, sort_keys=True))
