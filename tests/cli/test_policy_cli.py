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


def _glen_with(examples_dir: Path, old: str, new: str) -> bytes:
    text = (examples_dir / "glen-clinic.yaml").read_text()
    assert old in text
    return text.replace(old, new, 1).encode()


_HOSTILE = {
    "duplicate-key": (
        lambda ex: _glen_with(ex, "  epsilon: 8.0\n", "  epsilon: 8.0\n  epsilon: 80.0\n"),
        "privacy.epsilon: given twice (lines 5 and 6); keep one",
    ),
    "infinite-epsilon": (
        lambda ex: _glen_with(ex, "epsilon: 8.0", "epsilon: .inf"),
        "privacy.epsilon: Input should be a finite number, got inf",
    ),
    "nan-epsilon": (
        lambda ex: _glen_with(ex, "epsilon: 8.0", "epsilon: .nan"),
        "privacy.epsilon: Input should be a finite number, got nan",
    ),
    "boolean-batch-size": (
        lambda ex: _glen_with(ex, "batch_size: 32", "batch_size: true"),
        "training.batch_size: Input should be a valid integer, got True",
    ),
    "boolean-noise-multiplier": (
        lambda ex: _glen_with(ex, "noise_multiplier: auto", "noise_multiplier: true"),
        "privacy.noise_multiplier: must be a number > 0 or 'auto', got True",
    ),
    "infinite-noise-multiplier": (
        lambda ex: _glen_with(ex, "noise_multiplier: auto", "noise_multiplier: .inf"),
        "privacy.noise_multiplier: must be a number > 0 or 'auto', got inf",
    ),
    "boolean-tier-layers": (
        lambda ex: (
            (ex / "consortium.yaml").read_text().replace("layers: all", "layers: true").encode()
        ),
        "tiers.full.layers: must be 'all' or a list of layer indices",
    ),
    "latin-1": (
        lambda ex: (ex / "glen-clinic.yaml").read_text().replace("edge", "édge").encode("latin-1"),
        "not UTF-8 text (byte 0xe9 at offset",
    ),
    "binary": (lambda ex: bytes(range(256)) * 64, "binary data (a NUL byte at offset 0)"),
    "deep-nesting": (
        lambda ex: b"[" * 100_000 + b"]" * 100_000,
        "nested more than 16 levels deep at line 1",
    ),
    "oversized": (
        lambda ex: (ex / "glen-clinic.yaml").read_bytes().ljust(1024 * 1024 + 1, b"\n"),
        "1048577 bytes, more than the 1048576 bytes (1 MiB) a policy file may hold",
    ),
}


@pytest.mark.parametrize("case", sorted(_HOSTILE))
def test_validate_hostile_file_is_one_line(tmp_path: Path, examples_dir: Path, case: str) -> None:
    """Each hostile file exits 1 with exactly one `file: problem` line and no traceback."""
    make, expected = _HOSTILE[case]
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(make(examples_dir))
    good = examples_dir / "harbour-bank.yaml"
    result = runner.invoke(app, ["policy", "validate", str(good), str(bad)])
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert result.stdout == f"ok: {good} (organization)\n"
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{bad}: {expected}"), line


def test_validate_deep_file_in_a_real_process(tmp_path: Path) -> None:
    """The installed CLI on 100,000 nested levels prints one line, exit 1, no traceback."""
    bad = tmp_path / "deep.yaml"
    bad.write_text("{a: " * 100_000 + "1" + "}" * 100_000)
    done = subprocess.run(
        [sys.executable, "-m", "fedhft.cli", "policy", "validate", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr == (
        f"{bad}: nested more than 16 levels deep at line 1; a policy file needs at most 4\n"
    )
