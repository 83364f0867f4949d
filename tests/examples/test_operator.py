"""The operator's runbook (examples/operator/), run end to end as its scripts.

It creates the CA and credentials, writes and validates the consortium config, starts
the server with the systemd unit's own command line on a free loopback port (a new run,
then a resume), builds the bundles, and rotates an organization out. The assertions are
the runbook's promises: a bundle holds exactly its organization's credentials, the
config and a policy, and no private key of another party or of the CA; the unit's
command line is the one that serves; a removed organization is out of the new config,
and the old run cannot be resumed under it.
"""

from __future__ import annotations

import re
import shlex
import tarfile
from pathlib import Path

import pytest
from example_helpers import EXAMPLES, free_port, run_script, running, stop, wait_for_port_file

from fedhft.policies import (
    compatibility_violations,
    consortium_hash,
    load_consortium_config,
    load_organization_policy,
)

OPERATOR = EXAMPLES / "operator"
ORGS = ("st-mary-hospital", "north-bank", "city-clinic")
CREDENTIAL_FILES = {
    "ca.crt",
    "tls.crt",
    "tls.key",
    "identity.crt",
    "identity.key",
    "sealing.crt",
    "sealing.key",
}


def _files(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


def _server_cmdline(pid: int) -> list[str]:
    """The argv of the server process (the script execs into it)."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


@pytest.mark.slow
def test_operator_runbook(tmp_path: Path, example_env: dict[str, str]) -> None:
    ops = tmp_path / "consortium"
    port = free_port()
    env = {**example_env, "OPS_DIR": str(ops), "PORT": str(port), "ORGANIZATIONS": " ".join(ORGS)}

    run_script(OPERATOR / "01-ca.sh", env=env, cwd=tmp_path)
    assert (ops / "pki" / "ca" / "ca.key").stat().st_mode & 0o077 == 0
    for party in ("server", *ORGS):
        assert (ops / "pki" / party / "identity.crt").is_file()

    run_script(OPERATOR / "02-config.sh", env=env, cwd=tmp_path)
    config = load_consortium_config(ops / "consortium.yaml")
    assert [entry.organization for entry in config.enrollment] == list(ORGS)
    assert config.model.source == "tiny"

    # The unit's ExecStart, rendered, is the command line the server runs.
    unit = run_script(OPERATOR / "render-unit.sh", env=env, cwd=tmp_path).stdout
    assert not re.search(r"@[A-Z_]+@", unit)
    exec_start = shlex.split(
        next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    )
    unit_args = exec_start[1:]  # after the fedhft executable
    assert unit_args[:2] == ["aggregator", "serve"]
    assert unit_args[unit_args.index("--host") :][:2] == ["--host", "127.0.0.1"]

    port_file = ops / "run" / "aggregator.port"
    log = tmp_path / "serve.log"
    with running(OPERATOR / "03-serve.sh", "--new-run", env=env, cwd=tmp_path, log=log) as server:
        assert wait_for_port_file(port_file, server, log) == port
        argv = _server_cmdline(server.pid)
        assert argv[-len(unit_args) - 1 :] == [*unit_args, "--new-run"]
        assert stop(server) == 0
    assert f"serving consortium 'example-consortium' on 127.0.0.1:{port}" in log.read_text()

    # systemd's own start: the same line without --new-run resumes the run just made.
    port_file.unlink()
    with running(OPERATOR / "03-serve.sh", env=env, cwd=tmp_path, log=log) as server:
        assert wait_for_port_file(port_file, server, log) == port
        assert _server_cmdline(server.pid)[-len(unit_args) :] == unit_args
        assert stop(server) == 0

    run_script(OPERATOR / "04-bundle.sh", env=env, cwd=tmp_path)
    old_hash = consortium_hash(load_consortium_config(ops / "consortium.yaml"))
    all_keys = {path: path.read_bytes() for path in (ops / "pki").rglob("*.key")}
    assert len(all_keys) == 1 + 2 + 3 * len(ORGS)  # the CA's, the server's, three each
    for org in ORGS:
        bundle = ops / "bundles" / org
        expected = {f"credentials/{name}" for name in CREDENTIAL_FILES}
        assert _files(bundle) == expected | {"consortium.yaml", "policy.yaml"}
        with tarfile.open(ops / "bundles" / f"{org}.tar.gz") as archive:
            members = {m.name for m in archive.getmembers() if m.isfile()}
        assert members == {f"{org}/{name}" for name in _files(bundle)}
        # No file of the bundle is anyone else's key, and its own keys are its own.
        contents = {path.read_bytes() for path in bundle.rglob("*") if path.is_file()}
        foreign = {key for path, key in all_keys.items() if path.parent.name != org}
        assert not contents & foreign
        own = {key for path, key in all_keys.items() if path.parent.name == org}
        assert own <= contents
        policy = load_organization_policy(bundle / "policy.yaml")
        assert policy.organization == org
        assert not compatibility_violations(policy, config)

    # An organization leaves: a new config (new hash) and a new run.
    run_script(OPERATOR / "05-remove-org.sh", "north-bank", env=env, cwd=tmp_path)
    config = load_consortium_config(ops / "consortium.yaml")
    assert [e.organization for e in config.enrollment] == ["st-mary-hospital", "city-clinic"]
    new_hash = consortium_hash(config)
    assert new_hash != old_hash
    assert not (ops / "bundles" / "north-bank").exists()
    assert not (ops / "bundles" / "north-bank.tar.gz").exists()
    assert (ops / f"consortium-{old_hash}.yaml").is_file()

    # The old run cannot go on under the new config: its state is refused, not reused.
    (ops / f"state-{old_hash}").rename(ops / "state")
    env = {**env, "ORGANIZATIONS": "st-mary-hospital city-clinic"}
    refused = run_script(OPERATOR / "03-serve.sh", env=env, cwd=tmp_path, check=False)
    assert refused.returncode == 1
    assert "another configuration" in refused.stderr


@pytest.mark.slow
def test_bundle_refuses_a_stray_ca_key(tmp_path: Path, example_env: dict[str, str]) -> None:
    """A CA key that ended up in an organization's credentials is not shipped."""
    ops = tmp_path / "consortium"
    env = {**example_env, "OPS_DIR": str(ops), "ORGANIZATIONS": "north-bank"}
    run_script(OPERATOR / "01-ca.sh", env=env, cwd=tmp_path)
    run_script(OPERATOR / "02-config.sh", env=env, cwd=tmp_path)
    (ops / "pki" / "north-bank" / "tls.key").write_bytes(
        (ops / "pki" / "ca" / "ca.key").read_bytes()
    )
    result = run_script(OPERATOR / "04-bundle.sh", "north-bank", env=env, cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert "held a copy of" in result.stderr
    assert not (ops / "bundles" / "north-bank").exists()
    assert not (ops / "bundles" / "north-bank.tar.gz").exists()
