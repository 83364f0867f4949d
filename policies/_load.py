"""Loading policy files from YAML with errors that name the file, the field and the rule."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from ._models import ConsortiumConfig, OrganizationPolicy
from .errors import PolicyError

ModelT = TypeVar("ModelT", bound=BaseModel)
AnyPolicy = OrganizationPolicy | ConsortiumConfig

_KINDS: dict[str, type[BaseModel]] = {
    "organization": OrganizationPolicy,
    "consortium": ConsortiumConfig,
}


def _allowed_fields(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str] | None:
    """The field names allowed next to ``loc`` (the path of an unknown field)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        else:
            # A dict or list level (tiers, enrollment): the value type is the model.
            args = getattr(current, "__args__", ())
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if not models:
                return None
            current = models[0]
            if isinstance(part, str) and part in current.model_fields:
                current = current.model_fields[part].annotation
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    args = getattr(current, "__args__", ())
    models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    return sorted(models[0].model_fields) if models else None


def describe_validation_error(
    error: ValidationError, model: type[BaseModel], source: str
) -> list[str]:
    """One line per problem: ``file: field.path: what is wrong (what is allowed)``."""
    lines = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            allowed = _allowed_fields(model, loc)
            hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
            lines.append(f"{source}: {path}: unknown field{hint}")
            continue
        message = str(item["msg"]).removeprefix("Value error, ")
        shown = item.get("input")
        got = ""
        if item["type"] != "missing" and isinstance(shown, str | int | float | bool):
            got = f", got {shown!r}"
        lines.append(f"{source}: {path}: {message}{got}")
    return lines


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([f"{path}: cannot read file ({exc.strerror})"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PolicyError([f"{path}: not valid YAML{where}"]) from exc
    if not isinstance(data, dict):
        raise PolicyError([f"{path}: expected a mapping of fields at the top level"])
    return data


def parse_policy(data: dict[str, Any], model: type[ModelT], source: str) -> ModelT:
    """Validate a mapping as ``model``; raise `PolicyError` naming ``source`` and fields."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(describe_validation_error(exc, model, source)) from exc


def load_organization_policy(path: str | Path) -> OrganizationPolicy:
    """Load and validate an organization policy YAML file."""
    path = Path(path)
    return parse_policy(_read_yaml(path), OrganizationPolicy, str(path))


def load_consortium_config(path: str | Path) -> ConsortiumConfig:
    """Load and validate a consortium configuration YAML file."""
    path = Path(path)
    return parse_policy(_read_yaml(path), ConsortiumConfig, str(path))


def load_any(path: str | Path) -> AnyPolicy:
    """Load either kind of file, chosen by its `kind` field."""
    path = Path(path)
    data = _read_yaml(path)
    kind = data.get("kind")
    model = _KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise PolicyError(
            [f"{path}: kind: must be one of {', '.join(sorted(_KINDS))}, got {kind!r}"]
        )
    result = parse_policy(data, model, str(path))
    assert isinstance(result, OrganizationPolicy | ConsortiumConfig)
    return result


def dump_yaml(policy: BaseModel) -> str:
    """The policy as YAML that loads back to an equal object."""
    return yaml.safe_dump(policy.model_dump(mode="json"), sort_keys=False)


def policy_hash(policy: BaseModel) -> str:
    """SHA-256 of the policy's canonical JSON, for audit records and session ids."""
    canonical = policy.model_dump_json(round_trip=True).encode()
    return hashlib.sha256(canonical).hexdigest()
