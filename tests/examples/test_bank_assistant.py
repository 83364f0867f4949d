"""examples/bank_assistant end to end: a bank instruction-tunes with FedAMoLE, chats without
fedhft.

A real aggregation server on 127.0.0.1 (mutual TLS, SQLite state) and three peer banks
(threads running `FederatedClient`) make the consortium of four the expert pool needs; the
example's `train.py` takes part for Harbour Bank and exports its mixture; the example's
`chat.py` runs in a subprocess where fedhft cannot be imported and must answer exactly as
fedhft's own personalized model does, token for token.

Tiny random Llama by default; ``FEDHFT_EXAMPLE_MODEL=smollm2`` runs the example's own
consortium (SmolLM2-135M-Instruct from the installed package, 3 rounds) instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from example_helpers import server_with_peers
from test_hospital_triage import NO_FEDHFT

from fedhft.audit import verify_log
from fedhft.model import CausalMoLEModel
from fedhft.policies import ConsortiumConfig, OrganizationPolicy
from fedhft.protocol import init_ca, issue_organization, issue_server, load_credentials
from fedhft.sdk import (
    FederatedClient,
    RetryPolicy,
    build_base_model,
    load_instructions,
    load_tokenizer,
)
from fedhft.sdk._generation import generate_responses
from fedhft.sdk._instructions import prompt_ids

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bank_assistant"
BANK = "harbour-bank"
PEERS = ("quay-savings", "anchor-credit", "tide-mutual")
REAL = os.environ.get("FEDHFT_EXAMPLE_MODEL", "tiny") == "smollm2"


def _example_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bank_assistant_{name}", EXAMPLE / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # `dataclass` looks its module up there
    spec.loader.exec_module(module)
    return module


def _consortium(path: Path, workdir: Path) -> ConsortiumConfig:
    """The example's consortium file; on a tiny random Llama for a fast run."""
    data: dict[str, Any] = yaml.safe_load((EXAMPLE / "policies" / "consortium.yaml").read_text())
    if not REAL:
        from fedhft.simulation._instruct import causal_model_spec

        data["model"], _ = causal_model_spec("tiny", workdir, seed=0)
        # The tiny model has two layers: the top one only, so that a side which ignored
        # `fedamole.layers` would disagree with the other.
        data["fedamole"]["layers"] = [-1]
        data["rounds"] = 2
        data["training"]["learning_rate"] = 0.02
        data["secure_aggregation"]["stage_timeout_s"] = 20.0
    path.write_text(yaml.safe_dump(data))
    return ConsortiumConfig.model_validate(data)


def _policy(org: str, state: Path, path: Path, rounds: int) -> OrganizationPolicy:
    """The example's bank policy for ``org``, its evidence kept under ``state``."""
    data: dict[str, Any] = yaml.safe_load((EXAMPLE / "policies" / f"{BANK}.yaml").read_text())
    data["organization"] = org
    data["privacy"]["ledger_path"] = str(state / org / "privacy-ledger.json")
    data["privacy"]["planned_rounds"] = rounds
    data["audit"]["log_path"] = str(state / org / "audit.jsonl")
    if not REAL:
        data["training"].update(batch_size=8, local_steps=2)
    path.write_text(yaml.safe_dump(data))
    return OrganizationPolicy.model_validate(data)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_bank_tunes_with_fedamole_and_chats_without_fedhft(tmp_path: Path) -> None:
    make_data = _example_module("make_data.py")
    train = _example_module("train.py")
    samples = 400 if REAL else 48
    ca = init_ca("harbour-banks", tmp_path / "pki" / "ca")
    issue_server(ca, "localhost", tmp_path / "pki" / "server")
    state = tmp_path / "state"
    config = _consortium(tmp_path / "consortium.yaml", tmp_path)
    policies, data = {}, {}
    for site, org in enumerate((BANK, *PEERS)):
        issue_organization(ca, org, tmp_path / "pki" / org)
        policies[org] = _policy(org, state, tmp_path / f"{org}.yaml", config.rounds)
        data[org] = make_data.write_site(tmp_path / "data" / org, site=site, samples=samples)

    bases = {org: build_base_model(config.model) for org in PEERS}
    tokenizer = load_tokenizer(config.model)

    def peer(org: str) -> Callable[[str], FederatedClient]:
        return lambda address: FederatedClient(
            bases[org],
            load_instructions(data[org][0]),
            policies[org],
            config,
            credentials=tmp_path / "pki" / org,
            server=address,
            server_name="localhost",
            state_dir=state / org / "client",
            tokenizer=tokenizer,
            wait_ms=2000,
            # Give up soon once the server is gone (the test failed elsewhere).
            retry=RetryPolicy(attempts=5, initial_backoff_s=0.2, max_backoff_s=1.0),
        )

    peers = {org: peer(org) for org in PEERS}
    with server_with_peers(config, tmp_path / "pki", tmp_path / "server-state", peers) as server:
        trained = train.train(
            policy=tmp_path / f"{BANK}.yaml",
            consortium=tmp_path / "consortium.yaml",
            credentials=tmp_path / "pki" / BANK,
            server=server.address,
            server_name="localhost",
            state=state / BANK / "client",
            train_jsonl=data[BANK][0],
            test_jsonl=data[BANK][1],
            export=tmp_path / "export",
        )

    report = trained.report
    print(json.dumps(report.as_json()))  # The figures the example's README quotes (`-s`).
    assert report.rounds_joined == tuple(range(1, config.rounds + 1))
    assert report.generation is not None and 0.0 <= report.generation["rouge_l"] <= 1.0
    assert "zero_shot_rouge_l" in report.generation
    assert report.epsilon_spent is not None and report.epsilon_spent <= report.epsilon_budget
    model: CausalMoLEModel = trained.model
    # The bank holds two or three of the pool's three experts, on `fedamole.layers` only.
    assert 2 <= len(model.expert_ids) <= 3
    layers = config.fedamole.layers
    assert layers != "all" and len({b.layer for b in model.adapter_blocks}) == len(layers)
    identity = load_credentials(tmp_path / "pki" / BANK).identity_key.public_key()
    verify_log(
        state / BANK / "audit.jsonl", public_key=identity, policy=policies[BANK]
    ).raise_if_failed()

    prompts = [str(example.prompt) for example in load_instructions(data[BANK][1]).examples[:6]]
    served = subprocess.run(
        [sys.executable, "-I", "-c", NO_FEDHFT, str(EXAMPLE / "chat.py"), "--json",
         "--export", str(tmp_path / "export"), *prompts],
        capture_output=True, text=True, check=False, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert served.returncode == 0, served.stderr
    output = json.loads(served.stdout)
    settings = json.loads((tmp_path / "export" / "inference.json").read_text())
    ours = [
        generate_responses(
            model,
            tokenizer,
            [prompt_ids(tokenizer, prompt)],
            max_new_tokens=settings["max_new_tokens"],
        )[0]
        for prompt in prompts
    ]
    assert output["tokens"] == ours
    # The mixture matters: the base model alone answers differently somewhere.
    with model.adapters_disabled():
        base_answers = [
            generate_responses(model, tokenizer, [prompt_ids(tokenizer, p)], max_new_tokens=8)[0]
            for p in prompts
        ]
    assert base_answers != [tokens[:8] for tokens in ours]
