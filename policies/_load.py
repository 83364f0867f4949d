"""Loading policy files from YAML with errors that name the file, the field and the rule.

A policy file is untrusted input until it validates: it is read only up to
`MAX_POLICY_BYTES`, must be UTF-8 text, and is parsed by PyYAML's safe loader with three
refusals added (`_PolicyLoader`): a key given twice in one mapping, an alias, and
nesting deeper than `MAX_POLICY_DEPTH`. Every refusal is one `PolicyError` line.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from ._schema import ConsortiumConfig, OrganizationPolicy, PrivacyBudget, TierSpec
from .errors import PolicyError

MAX_POLICY_BYTES = 1024 * 1024
"""Largest policy file read, checked before parsing (the examples are under 2 KiB)."""
MAX_POLICY_DEPTH = 16
"""Deepest nesting of mappings and sequences read from a policy file."""
_SCHEMA_DEPTH = 4
"""The deepest nesting the schema has: `tiers.<name>.layers` inside the file's mapping."""

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


_Loc = tuple[int | str, ...]
"""A field's path in a validation error: names, dict keys and list indices."""

_UNION_FORMS: dict[tuple[type[BaseModel], str], str] = {
    (PrivacyBudget, "noise_multiplier"): "a number > 0 or 'auto'",
    (TierSpec, "layers"): "'all' or a list of layer indices (whole numbers)",
}
"""How to write each field whose type is a union of forms, for its one-line error."""


def _union_field(model: type[BaseModel], loc: _Loc) -> tuple[int, str] | None:
    """Where ``loc`` passes a field typed as a union of forms (`float | "auto"`): the
    length of that field's path and the forms it allows; None elsewhere.

    Pydantic reports such a field once per form, at the field's path plus the form's
    tag (``privacy.noise_multiplier.float``), which the caller folds into one problem.
    """
    current: Any = model
    for depth, part in enumerate(loc):
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            # A dict or list level (tiers, enrollment): ``part`` is a key or an index.
            args = getattr(current, "__args__", ())
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if not models:
                return None
            current = models[0]
            continue
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        forms = [a for a in get_args(field.annotation) if a is not type(None)]
        if get_origin(field.annotation) in (Union, UnionType) and len(forms) > 1:
            allowed = _UNION_FORMS.get((current, str(part)), " or ".join(map(str, forms)))
            return depth + 1, allowed
        current = field.annotation
    return None


def describe_validation_error(
    error: ValidationError, model: type[BaseModel], source: str
) -> list[str]:
    """One line per problem: ``file: field.path: what is wrong (what is allowed)``.

    A field typed as a union of forms (`noise_multiplier: float | "auto"`, `layers:
    "all" | list[int]`) that matches none of them is one problem naming every form,
    not one line per form. A value of a form's shape that fails inside it (a list of
    layers with a text item) keeps only that form's problems, at their own paths.
    """
    entries: list[str | _Loc] = []
    # Union fields by path: their allowed forms and each form's problems, in order.
    unions: dict[_Loc, tuple[str, list[tuple[_Loc, Any]]]] = {}
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        union = _union_field(model, loc)
        if union is not None and len(loc) > union[0]:
            depth, allowed = union
            if loc[:depth] not in unions:
                unions[loc[:depth]] = (allowed, [])
                entries.append(loc[:depth])
            # Drop the form's tag: ``layers.list[int].1`` is ``layers.1`` to the user.
            unions[loc[:depth]][1].append((loc[:depth] + loc[depth + 1 :], item))
        elif item["type"] == "extra_forbidden":
            fields = _allowed_fields(model, loc)
            hint = f"; allowed here: {', '.join(fields)}" if fields else ""
            entries.append(f"{source}: {_path(loc)}: unknown field{hint}")
        else:
            entries.append(_problem(source, loc, _message(item), item))
    lines: list[str] = []
    for entry in entries:
        if isinstance(entry, str):
            lines.append(entry)
            continue
        allowed, problems = unions[entry]
        inside = [(loc, item) for loc, item in problems if len(loc) > len(entry)]
        if inside:
            lines += [_problem(source, loc, _message(item), item) for loc, item in inside]
        else:
            lines.append(_problem(source, entry, f"must be {allowed}", problems[0][1]))
    return lines


def _path(loc: _Loc) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _message(item: Any) -> str:
    return str(item["msg"]).removeprefix("Value error, ")


def _problem(source: str, loc: _Loc, message: str, item: Any) -> str:
    """``file: field.path: message, got <value>`` (the value only when it is a scalar)."""
    shown = item.get("input")
    got = ""
    if item["type"] != "missing" and isinstance(shown, str | int | float | bool):
        got = f", got {shown!r}"
    return f"{source}: {_path(loc)}: {message}{got}"


def _too_large(path: Path, size: int | None) -> PolicyError:
    held = f"{size} bytes, more" if size is not None else "more"
    return PolicyError(
        [f"{path}: {held} than the {MAX_POLICY_BYTES} bytes (1 MiB) a policy file may hold"]
    )


def _read_text(path: Path) -> str:
    """The file's text: at most `MAX_POLICY_BYTES`, UTF-8, no NUL bytes.

    The size is checked before anything is read (and again while reading, for a file
    that grows or a device that reports no size), so a huge file costs nothing.
    """
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_POLICY_BYTES:
                raise _too_large(path, size)
            raw = handle.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise PolicyError([f"{path}: cannot read file ({exc.strerror})"]) from exc
    if len(raw) > MAX_POLICY_BYTES:
        raise _too_large(path, None)
    if b"\x00" in raw:
        offset = raw.index(b"\x00")
        raise PolicyError([f"{path}: binary data (a NUL byte at offset {offset}), not YAML text"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(
            [
                f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                "save the file as UTF-8"
            ]
        ) from None


class _PolicyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, stricter: no duplicate keys, no aliases, bounded nesting.

    Notes:
        Depth is counted while composing, before a collection is entered, so a file of
        100,000 opening brackets stops at level `MAX_POLICY_DEPTH` instead of recursing
        until Python gives up. Aliases are refused because they let a small file stand
        for a large or deep value, around both limits; no policy needs one.
    """

    def __init__(self, text: str, source: str) -> None:
        super().__init__(text)
        self.source = source
        self._depth = 0
        self._paths: dict[int, str] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise PolicyError(
                [
                    f"{self.source}: alias *{event.anchor} at line {line}: aliases are not "
                    "allowed in policy files; write the value out"
                ]
            )
        if not isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            return super().compose_node(parent, index)
        if self._depth >= MAX_POLICY_DEPTH:
            raise PolicyError(
                [
                    f"{self.source}: nested more than {MAX_POLICY_DEPTH} levels deep at line "
                    f"{line}; a policy file needs at most {_SCHEMA_DEPTH}"
                ]
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def name_mappings(self, root: yaml.Node) -> None:
        """Remember each mapping's dotted path (`privacy`, `tiers.edge`) for messages."""
        pending: list[tuple[yaml.Node, str]] = [(root, "")]
        while pending:
            node, path = pending.pop()
            prefix = f"{path}." if path else ""
            if isinstance(node, yaml.MappingNode):
                self._paths[id(node)] = path
                pending += [(value, f"{prefix}{key.value}") for key, value in node.value]
            elif isinstance(node, yaml.SequenceNode):
                pending += [(item, f"{prefix}{i}") for i, item in enumerate(node.value)]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                earlier = first_line.get(key)
            except TypeError:
                continue  # An unhashable key: SafeLoader reports it below.
            if earlier is not None:
                parent = self._paths.get(id(node), "")
                field = f"{parent}.{key}" if parent else str(key)
                raise PolicyError(
                    [f"{self.source}: {field}: given twice (lines {earlier} and {line}); keep one"]
                )
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


# PyYAML implements YAML 1.1, where a float needs a dot: `1e-5` would be the string
# "1e-5", which strict types then refuse as "not a number". Policies are full of such δ
# values (and JSON writes them that way), so a number with an exponent and no dot is a
# float here, as in YAML 1.2 and JSON.
_PolicyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _read_yaml(path: Path) -> dict[str, Any]:
    loader = _PolicyLoader(_read_text(path), str(path))
    try:
        root = loader.get_single_node()
        data = None
        if root is not None:
            loader.name_mappings(root)
            data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PolicyError([f"{path}: not valid YAML{where}"]) from exc
    finally:
        loader.dispose()
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


def _canonical_sha256(document: BaseModel) -> str:
    return hashlib.sha256(document.model_dump_json(round_trip=True).encode()).hexdigest()


def policy_hash(policy: OrganizationPolicy) -> str:
    """SHA-256 of an organization policy's canonical JSON, for its audit records."""
    return _canonical_sha256(policy)


def consortium_hash(consortium: ConsortiumConfig) -> str:
    """SHA-256 of a consortium configuration's canonical JSON: the configuration hash every
    round announcement carries and every organization checks against its own file."""
    return _canonical_sha256(consortium)
