"""Regenerate `protocol/_generated/` from the `.proto` files, reproducibly.

Usage (from the repository root, in the project's virtual environment)::

    python protocol/proto/generate.py          # rewrite protocol/_generated/
    python protocol/proto/generate.py --check  # exit 1 when the committed code is stale

The output depends only on the `.proto` files and on the exact versions of the code
generators, so both are pinned below and checked before anything is written: protoc
(bundled in grpcio-tools) writes `*_pb2.py` and `*_pb2_grpc.py`, mypy-protobuf writes the
`.pyi` stubs that let `mypy --strict` check the code that calls them.

protoc names Python modules after the `.proto` path (`fedhft/v1/fedhft.proto` becomes
`fedhft.v1.fedhft_pb2`), which would collide with our own `fedhft` package, so the one
module path the generated files refer to is rewritten to where they are installed,
`fedhft.protocol._generated.v1`. The protobuf package name `fedhft.v1` inside the
descriptors is left untouched: it is what goes on the wire.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

# The generated code checks at import time that the runtime is at least as new as the
# generator, so these pins also set the floors of `grpcio` and `protobuf` in pyproject.
GRPCIO_TOOLS_VERSION = "1.85.1"
MYPY_PROTOBUF_VERSION = "5.1.0"

PROTO_ROOT = Path(__file__).resolve().parent
OUTPUT_ROOT = PROTO_ROOT.parent / "_generated"
# (proto file relative to PROTO_ROOT, protoc's module prefix, installed module prefix)
SOURCES = [("fedhft/v1/fedhft.proto", "fedhft.v1", "fedhft.protocol._generated.v1")]
PACKAGE_DOCSTRINGS = {
    Path(
        "__init__.py"
    ): '"""Code generated from `protocol/proto` by `generate.py`; do not edit."""\n',
    Path("v1/__init__.py"): '"""Generated code of the `fedhft.v1` wire protocol; do not edit."""\n',
}


def _check_versions() -> None:
    found = {
        "grpcio-tools": version("grpcio-tools"),
        "mypy-protobuf": version("mypy-protobuf"),
    }
    wanted = {"grpcio-tools": GRPCIO_TOOLS_VERSION, "mypy-protobuf": MYPY_PROTOBUF_VERSION}
    if found != wanted:
        pins = " ".join(f"{name}=={pin}" for name, pin in wanted.items())
        raise SystemExit(
            f"generator versions {found} differ from the pinned {wanted}; "
            f"run `pip install {pins}` so the output is reproducible"
        )


def _plugin(name: str) -> str:
    # The mypy-protobuf plugins are console scripts installed next to the interpreter.
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found; install mypy-protobuf=={MYPY_PROTOBUF_VERSION}")
    return found


def _generate(into: Path) -> None:
    import grpc_tools  # type: ignore[import-untyped]

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    staging = into / "staging"
    staging.mkdir()
    for proto, protoc_prefix, installed_prefix in SOURCES:
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={PROTO_ROOT}",
            f"--proto_path={well_known}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={staging}",
            f"--grpc_python_out={staging}",
            f"--mypy_out={staging}",
            f"--mypy_grpc_out={staging}",
            proto,
        ]
        # The plugins chat on stderr ("Writing mypy to ..."); show it only on failure.
        done = subprocess.run(  # noqa: S603 - fixed argv built above
            command, cwd=PROTO_ROOT, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"protoc failed on {proto}:\n{done.stderr}")
        source_dir = staging / Path(proto).parent
        target_dir = into / "out" / Path(*installed_prefix.split(".")[3:])
        target_dir.mkdir(parents=True, exist_ok=True)
        modules = sorted({path.name.split(".")[0] for path in source_dir.iterdir()})
        for generated in sorted(source_dir.iterdir()):
            text = generated.read_text(encoding="utf-8")
            # Only module paths are rewritten; the descriptors' own names (`.fedhft.v1.X`,
            # `/fedhft.v1.Aggregator/Hello`) are what goes on the wire and stay as they are.
            text = text.replace(f"from {protoc_prefix} import", f"from {installed_prefix} import")
            for module in modules:
                text = text.replace(f"{protoc_prefix}.{module}", f"{installed_prefix}.{module}")
            (target_dir / generated.name).write_text(text, encoding="utf-8")
    for relative, docstring in PACKAGE_DOCSTRINGS.items():
        (into / "out" / relative).write_text(docstring, encoding="utf-8")


def _differences(left: Path, right: Path) -> list[str]:
    comparison = filecmp.dircmp(left, right)
    problems = [f"only in one tree: {name}" for name in comparison.left_only]
    problems += [f"only in one tree: {name}" for name in comparison.right_only]
    problems += [f"differs: {name}" for name in comparison.diff_files]
    for name in comparison.common_dirs:
        problems += _differences(left / name, right / name)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    _check_versions()
    with tempfile.TemporaryDirectory() as scratch:
        _generate(Path(scratch))
        fresh = Path(scratch) / "out"
        for cache in fresh.rglob("__pycache__"):
            shutil.rmtree(cache)
        if args.check:
            ignore = shutil.ignore_patterns("__pycache__")
            mirror = Path(scratch) / "committed"
            shutil.copytree(OUTPUT_ROOT, mirror, ignore=ignore)
            problems = _differences(fresh, mirror)
            for problem in problems:
                print(f"protocol/_generated is stale: {problem}", file=sys.stderr)
            return 1 if problems else 0
        if OUTPUT_ROOT.exists():
            shutil.rmtree(OUTPUT_ROOT)
        shutil.copytree(fresh, OUTPUT_ROOT)
    print(f"wrote {OUTPUT_ROOT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
