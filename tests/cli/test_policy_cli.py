"""`fedhft policy ...` and `fedhft --version`: exit codes and messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from fedhft import __version__
from fedhft.cli import app

runner = CliRunner()


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_version_via_console_script() -> None:
    """The installed `fedhft` script prints the package version."""
    exe = Path(sys.executable).with_name("fedhft")
    done = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"fedhft {__version__}"


def test_validate_examples_exits_zero(examples_dir: Path) -> None:
    """All example files validate with exit code 0 and one ok line each."""
    paths = sorted(str(p) for p in examples_dir.glob("*.yaml"))
    result = runner.invoke(app, ["policy", "validate", *paths])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("ok: ") == len(paths) == 6


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("  epsilon: 8.0", "  epsilonn: 8.0", "privacy.epsilonn: unknown field"),
        ("  epsilon: 8.0", "  epsilon: -8.0", "privacy.epsilon: Input should be greater than 0"),
        ("  tier: edge", "  tier: Edge!", "training.tier: String should match pattern"),
    ],
)
def test_validate_reports_file_and_field(
    tmp_path: Path, examples_dir: Path, old: str, new: str, expected: str
) -> None:
    """A typo, a negative epsilon or a malformed tier exits 1 naming file and field."""
    text = (examples_dir / "glen-clinic.yaml").read_text()
    assert old in text
    bad = _write(tmp_path, "glen.yaml", text.replace(old, new))
    good = examples_dir / "harbour-bank.yaml"
    result = runner.invoke(app, ["policy", "validate", str(good), str(bad)])
    assert result.exit_code == 1
    assert f"ok: {good}" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith(f"{bad}: ") for line in lines)
    assert any(line.startswith(f"{bad}: {expected}") for line in lines), lines


def test_unknown_tier_fails_compat(tmp_path: Path, examples_dir: Path) -> None:
    """An organization whose tier the consortium lacks fails check-compat, naming it."""
    text = (examples_dir / "glen-clinic.yaml").read_text().replace("tier: edge", "tier: micro")
    org = _write(tmp_path, "glen.yaml", text)
    result = runner.invoke(
        app, ["policy", "check-compat", str(org), str(examples_dir / "consortium.yaml")]
    )
    assert result.exit_code == 1
    assert f"{org}: training.tier: 'micro' is not a consortium tier" in result.stderr


def test_compatible_pair_exits_zero(examples_dir: Path) -> None:
    """A compatible organization and consortium exit 0."""
    result = runner.invoke(
        app,
        [
            "policy",
            "check-compat",
            str(examples_dir / "royal-infirmary.yaml"),
            str(examples_dir / "consortium.yaml"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "compatible: royal-infirmary" in result.stdout


def test_check_compat_reports_invalid_file(tmp_path: Path, examples_dir: Path) -> None:
    """An invalid file given to check-compat is reported, not crashed on."""
    org = _write(tmp_path, "o.yaml", "kind: organization\n")
    result = runner.invoke(
        app, ["policy", "check-compat", str(org), str(examples_dir / "consortium.yaml")]
    )
    assert result.exit_code == 1
    assert f"{org}: organization: Field required" in result.stderr


@pytest.mark.parametrize("kind", ["organization", "consortium"])
def test_schema_validates_examples(kind: str, examples_dir: Path) -> None:
    """The printed schema is valid JSON Schema and the examples of its kind satisfy it."""
    result = runner.invoke(app, ["policy", "schema", "--kind", kind])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    matched = 0
    for path in examples_dir.glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        if data["kind"] == kind:
            jsonschema.validate(data, schema)
            matched += 1
    assert matched >= 1


def test_schema_rejects_unknown_kind() -> None:
    """`--kind` accepts only the two file kinds."""
    result = runner.invoke(app, ["policy", "schema", "--kind", "bank"])
    assert result.exit_code == 2
