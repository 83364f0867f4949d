"""examples/hospital_triage end to end: a hospital trains with fedhft, serves without it.

A real aggregation server on 127.0.0.1 (mutual TLS, SQLite state) and two peer hospitals
(threads running `FederatedClient`) make the minimum cohort of three; the example's
`train.py` takes part for St Mary's and exports its adapter; the example's `predict.py`
runs in a subprocess where fedhft cannot be imported and must reproduce fedhft's own
personalized model: same predicted level, logits equal to float tolerance.

Tiny model by default; ``FEDHFT_EXAMPLE_MODEL=minilm`` runs the example's own consortium
(all-MiniLM-L6-v2, 3 rounds, 400 notes per hospital) instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from example_helpers import server_with_peers

from fedhft.audit import verify_log
from fedhft.policies import ConsortiumConfig, OrganizationPolicy
from fedhft.protocol import init_ca, issue_organization, issue_server, load_credentials
from fedhft.sdk import FederatedClient, MaskedAdapterModel, RetryPolicy, load_tokenizer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hospital_triage"
HOSPITAL = "st-mary-hospital"
PEERS = ("royal-infirmary", "glen-clinic")
REAL = os.environ.get("FEDHFT_EXAMPLE_MODEL", "tiny") == "minilm"

# Runs predict.py with every import of fedhft refused, and checks at the end that no
# fedhft module was loaded (the venv's editable install would otherwise provide it).
NO_FEDHFT = textwrap.dedent(
    """
    import runpy, sys

    class NoFedhft:
        def find_spec(self, name, path=None, target=None):
            if name == "fedhft" or name.startswith("fedhft."):
                raise ImportError(f"{name} must not be imported by the inference script")
            return None

    sys.meta_path.insert(0, NO_FEDHFT := NoFedhft())
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    assert not [m for m in sys.modules if m.split(".")[0] == "fedhft"], "fedhft was imported"
    """
)


def _example_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"hospital_triage_{name}", EXAMPLE / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # `dataclass` looks its module up there
    spec.loader.exec_module(module)
    return module


def _consortium(path: Path, pooling: str) -> ConsortiumConfig:
    """The example's consortium file with ``pooling``, on the tiny model for a fast run."""
    data: dict[str, Any] = yaml.safe_load((EXAMPLE / "policies" / "consortium.yaml").read_text())
    data["model"]["pooling"] = pooling
    if not REAL:
        data["model"] = {"source": "tiny", "num_labels": 4, "pooling": pooling}
        data["rounds"] = 1
        data["secure_aggregation"]["stage_timeout_s"] = 20.0
    path.write_text(yaml.safe_dump(data))
    return ConsortiumConfig.model_validate(data)


def _policy(org: str, state: Path, path: Path) -> OrganizationPolicy:
    """The example's hospital policy for ``org``, its evidence kept under ``state``."""
    data: dict[str, Any] = yaml.safe_load((EXAMPLE / "policies" / f"{HOSPITAL}.yaml").read_text())
    data["organization"] = org
    data["privacy"]["ledger_path"] = str(state / org / "privacy-ledger.json")
    data["audit"]["log_path"] = str(state / org / "audit.jsonl")
    if not REAL:
        data["training"].update(batch_size=8, local_steps=2)
    path.write_text(yaml.safe_dump(data))
    return OrganizationPolicy.model_validate(data)


def _fedhft_logits(model: MaskedAdapterModel, notes: list[str], max_length: int) -> np.ndarray:
    """fedhft's own personalized model on ``notes`` (label prior included)."""
    tokens = load_tokenizer()(
        notes, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )
    model.peft_model.eval()
    with torch.no_grad():
        return model.logits(tokens["input_ids"], tokens["attention_mask"]).numpy()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
# mean: the example's own head, which predict.py computes in plain PyTorch; cls: the
# plain `transformers` forward pass that predict.py uses for the other pooling.
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_hospital_trains_with_fedhft_and_serves_without_it(tmp_path: Path, pooling: str) -> None:
    make_data = _example_module("make_data.py")
    train = _example_module("train.py")
    samples = 400 if REAL else 48
    ca = init_ca("regional-triage", tmp_path / "pki" / "ca")
    issue_server(ca, "localhost", tmp_path / "pki" / "server")
    state = tmp_path / "state"
    config = _consortium(tmp_path / "consortium.yaml", pooling)
    policies, data = {}, {}
    for site, org in enumerate((HOSPITAL, *PEERS)):
        issue_organization(ca, org, tmp_path / "pki" / org)
        policies[org] = _policy(org, state, tmp_path / f"{org}.yaml")
        data[org] = make_data.write_site(tmp_path / "data" / org, site=site, samples=samples)

    # Built here, not in the threads: `build_base_model` seeds torch's global generator,
    # so concurrent builds of the tiny model interleave draws and differ.
    models = {org: MaskedAdapterModel.from_consortium(config) for org in PEERS}

    def peer(org: str) -> Callable[[str], FederatedClient]:
        return lambda address: FederatedClient(
            models[org],
            train.read_notes(data[org][0]),
            policies[org],
            config,
            credentials=tmp_path / "pki" / org,
            server=address,
            server_name="localhost",
            state_dir=state / org / "client",
            wait_ms=2000,
            # Give up soon once the server is gone (the test failed elsewhere).
            retry=RetryPolicy(attempts=5, initial_backoff_s=0.2, max_backoff_s=1.0),
        )

    peers = {org: peer(org) for org in PEERS}
    with server_with_peers(config, tmp_path / "pki", tmp_path / "server-state", peers) as server:
        trained = train.train(
            policy=tmp_path / f"{HOSPITAL}.yaml",
            consortium=tmp_path / "consortium.yaml",
            credentials=tmp_path / "pki" / HOSPITAL,
            server=server.address,
            server_name="localhost",
            state=state / HOSPITAL / "client",
            train_csv=data[HOSPITAL][0],
            test_csv=data[HOSPITAL][1],
            export=tmp_path / "export",
        )

    report = trained.report
    assert report.rounds_joined == tuple(range(1, config.rounds + 1))
    assert report.accuracy is not None
    assert report.epsilon_spent is not None and report.epsilon_spent <= report.epsilon_budget
    # What the README says to back up exists where the policy and the script put it,
    # and the audit log verifies against the hospital's key and policy.
    assert (state / HOSPITAL / "privacy-ledger.json").is_file()
    assert (state / HOSPITAL / "client" / "server-run.json").is_file()
    identity = load_credentials(tmp_path / "pki" / HOSPITAL).identity_key.public_key()
    verify_log(
        state / HOSPITAL / "audit.jsonl", public_key=identity, policy=policies[HOSPITAL]
    ).raise_if_failed()

    notes = list(train.read_notes(data[HOSPITAL][1]).texts[:6])
    served = subprocess.run(
        [sys.executable, "-I", "-c", NO_FEDHFT, str(EXAMPLE / "predict.py"), "--json",
         "--export", str(tmp_path / "export"), *notes],
        capture_output=True, text=True, check=False, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert served.returncode == 0, served.stderr
    output = json.loads(served.stdout)
    expected = _fedhft_logits(trained.model, notes, policies[HOSPITAL].training.max_seq_length)
    np.testing.assert_allclose(np.array(output["logits"]), expected, rtol=1e-4, atol=1e-5)
    assert output["labels"] == [train.TRIAGE_LEVELS[i] for i in expected.argmax(axis=1)]
