"""`fedhft simulate`: a real server and client processes on loopback (mTLS), end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from fedhft.cli import app
from fedhft.policies import ConsortiumConfig, Method, SecureAggregationMode, parse_policy
from fedhft.simulation import consortium_document, provision, rounds_note


def _fedhft(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedhft.cli", *args], capture_output=True, text=True, check=False
    )


def _simulate(
    workdir: Path, clients: int, *options: str, model: str = "tiny"
) -> tuple[str, dict[str, Any]]:
    """A 2-round simulation (the tiny model by default): its console output and its JSON
    figures."""
    figures_path = workdir.parent / "figures.json"
    done = _fedhft(
        "simulate",
        *options,
        "--model",
        model,
        "--clients",
        str(clients),
        "--rounds",
        "2",
        "--local-steps",
        "3",
        "--samples",
        "60",
        "--workdir",
        str(workdir),
        "--json",
        str(figures_path),
        "--timeout",
        "600",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(figures_path.read_text())
    assert [a["status"] for a in figures["rounds"]] == ["completed", "completed"]
    organizations = figures["organizations"]
    assert len(organizations) == clients
    for row in organizations:
        assert 0.0 <= row["accuracy"] <= 1.0
        assert 0.0 < row["epsilon_spent"] <= row["epsilon_budget"] + 1e-9
        assert row["bytes_up_per_round"] > 0
        assert row["majority_accuracy"] in _majority_accuracies(
            workdir / "orgs" / row["organization"]
        )
    return done.stdout, figures


def _majority_accuracies(folder: Path) -> set[float]:
    """Test accuracy of each label tied for most common in the written training file."""

    def labels(name: str) -> list[str]:
        lines = (folder / name).read_text().splitlines()
        return [json.loads(line)["label"] for line in lines]

    train, test = Counter(labels("train.jsonl")), labels("test.jsonl")
    top = max(train.values())
    return {sum(y == label for y in test) / len(test) for label, n in train.items() if n == top}


def _mechanisms(workdir: Path, org: str) -> list[str]:
    """The mechanism of each privacy spend in the organization's audit log, in order."""
    records = [
        json.loads(line)
        for line in (workdir / "orgs" / org / "audit.jsonl").read_text().splitlines()
    ]
    return [r["payload"]["mechanism"] for r in records if r["event"] == "privacy_spend"]


def _verify_audit_log(workdir: Path, org: str) -> None:
    """`fedhft audit verify` accepts the organization's log against the server's."""
    log = workdir / "orgs" / org / "audit.jsonl"
    verify = _fedhft(
        "audit",
        "verify",
        str(log),
        "--server-log",
        str(workdir / "server" / "state" / "audit.jsonl"),
        "--policy",
        str(workdir / "orgs" / org / "policy.yaml"),
        "--certs",
        str(workdir / "pki"),
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"ok: {log}" in verify.stdout


@pytest.mark.slow
def test_simulate_tiny_runs_and_its_audit_logs_verify(tmp_path: Path) -> None:
    """A tiny 3-organization simulation completes its rounds within budget; logs verify.

    FedHFT's label prior and sketch are released once each (round 1, before its DP-SGD
    round) and the auditor recomputes ε from them with the DP-SGD rounds."""
    workdir = tmp_path / "run"
    stdout, figures = _simulate(workdir, 3)
    for row in figures["organizations"]:
        assert len(row["membership"]) == 2
    assert "mean personalized accuracy" in stdout
    org = figures["organizations"][0]["organization"]
    assert _mechanisms(workdir, org) == ["gaussian", "gaussian", "dp-sgd", "dp-sgd"]
    _verify_audit_log(workdir, org)


@pytest.mark.slow
def test_simulate_fedamole_runs_and_its_audit_logs_verify(tmp_path: Path) -> None:
    """A tiny 4-organization FedAMoLE run completes within budget; its audit logs verify."""
    workdir = tmp_path / "run"
    _, figures = _simulate(workdir, 4, "--method", "fedamole")
    assert figures["method"] == "fedamole"
    # The released affinity and both DP-SGD rounds are in each organization's log, and an
    # auditor recomputes ε from them.
    org = figures["organizations"][0]["organization"]
    assert _mechanisms(workdir, org) == ["gaussian", "dp-sgd", "dp-sgd"]
    _verify_audit_log(workdir, org)


@pytest.mark.parametrize("rounds", [1, 2, 3, 50])
@pytest.mark.parametrize("method", list(Method))
def test_every_allowed_rounds_value_gives_a_valid_consortium(method: Method, rounds: int) -> None:
    """Each --rounds the CLI accepts (1-50) writes a consortium that validates, every method."""
    data = consortium_document(
        organizations=[f"org-{i}" for i in range(4)],
        rounds=rounds,
        method=method,
        secure=SecureAggregationMode.MASKING,
        model="tiny",
        seed=0,
    )
    config = parse_policy(yaml.safe_load(yaml.safe_dump(data)), ConsortiumConfig, "sim")
    assert config.rounds == rounds
    spec = config.clustering
    assert spec.warmup_rounds < rounds or spec.clusters == 1
    if method is Method.FEDHFT:
        # Two clusters on the warm-up round's sketches whenever a later round follows it.
        assert (spec.clusters, spec.warmup_rounds) == ((1, 0) if rounds == 1 else (2, 1))


def test_one_round_provisions_and_says_what_it_changed(tmp_path: Path) -> None:
    """`simulate --rounds 1` writes and loads its files (no traceback) and notes the change."""
    orgs = provision(
        tmp_path,
        clients=3,
        rounds=1,
        method=Method.FEDHFT,
        secure=SecureAggregationMode.MASKING,
        model="tiny",
        epsilon=8.0,
        local_steps=1,
        samples=20,
        alpha=2.0,
        seed=0,
    ).organizations
    assert len(orgs) == 3
    written = yaml.safe_load((tmp_path / "consortium.yaml").read_text())
    assert written["rounds"] == 1 and written["clustering"]["clusters"] == 1
    note = rounds_note(Method.FEDHFT, 1)
    assert note is not None and "one cluster" in note and "--rounds 2" in note
    assert rounds_note(Method.FEDHFT, 2) is None
    assert rounds_note(Method.FEDAVG, 1) is None


@pytest.mark.slow
def test_simulate_on_ray_runs_and_its_audit_logs_verify(tmp_path: Path) -> None:
    """`simulate --engine ray`: 5 organizations on 2 workers complete both rounds within
    budget, with the same summary, and `fedhft audit verify` accepts every audit log."""
    workdir = tmp_path / "run"
    stdout, figures = _simulate(workdir, 5, "--engine", "ray", "--workers", "2")
    assert figures["engine"] == "ray" and figures["workers"] == 2
    assert "mean personalized accuracy" in stdout
    for row in figures["organizations"]:
        org = row["organization"]
        assert _mechanisms(workdir, org) == ["gaussian", "gaussian", "dp-sgd", "dp-sgd"]
        log = workdir / "orgs" / org / "audit.jsonl"
        verify = _fedhft(
            "audit",
            "verify",
            str(log),
            "--policy",
            str(workdir / "orgs" / org / "policy.yaml"),
            "--certs",
            str(workdir / "pki"),
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert f"ok: {log}" in verify.stdout


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--clients", "13"), "the process engine runs at most 12"),
        (("--workers", "2"), "belong to the Ray engine"),
        (("--engine", "ray", "--method", "fedamole"), "the Ray engine runs fedhft and fedavg"),
        (("--engine", "ray", "--secure", "ckks"), "use --engine process for ckks"),
        (("--engine", "ray", "--clients", "501"), "less than or equal to 500"),
    ],
)
def test_engine_options_it_cannot_run_are_refused(
    tmp_path: Path, options: tuple[str, ...], message: str
) -> None:
    """Options the chosen engine cannot run exit with code 2 and say what to use instead,
    before anything is written."""
    result = CliRunner().invoke(
        app, ["simulate", "--model", "tiny", "--workdir", str(tmp_path / "run"), *options]
    )
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()


def test_model_option_reads_a_local_folder_with_its_architectures_targets(
    tmp_path: Path,
) -> None:
    """`--model PATH` of a saved Llama or BERT folder picks its LoRA targets, head and layers."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from fedhft.model import build_base_model, load_tokenizer, tokenizer_fingerprint
    from fedhft.policies import ModelSpec
    from fedhft.simulation import SimulatedModel, SimulationError, consortium_document

    llama = tmp_path / "llama"
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=5,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=0,
    )
    LlamaForSequenceClassification(config).save_pretrained(llama)
    load_tokenizer().save_pretrained(llama)
    parsed = SimulatedModel.parse(str(llama))
    assert parsed.spec == {
        "source": "huggingface",
        "name": str(llama),
        "pooling": "cls",
        "tokenizer_sha256": tokenizer_fingerprint(llama),
    }
    assert (parsed.target_modules, parsed.num_layers) == (("q_proj", "v_proj"), 5)
    data = consortium_document(
        organizations=["a", "b", "c"],
        rounds=2,
        method=Method.FEDHFT,
        secure=SecureAggregationMode.MASKING,
        model=parsed,
        seed=0,
    )
    tiers = data["tiers"]
    assert tiers["edge"]["modules"] == ["v_proj"]
    assert tiers["standard"]["layers"] == [-3, -2, -1]
    bert = tmp_path / "bert"
    build_base_model(ModelSpec(source="tiny", num_labels=4)).save_pretrained(bert)
    load_tokenizer().save_pretrained(bert)
    parsed = SimulatedModel.parse(str(bert))
    assert parsed.spec["pooling"] == "mean" and parsed.target_modules == ("query", "value")
    assert SimulatedModel.parse("tiny").spec == {"source": "tiny"}
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_text("no")
    with pytest.raises(SimulationError, match="is not a GGUF file"):
        SimulatedModel.parse(str(not_gguf))
    with pytest.raises(SimulationError, match="is not `minilm`, `tiny`, `smollm2`"):
        SimulatedModel.parse(str(tmp_path / "absent"))


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["llama", "roberta"])
def test_simulate_trains_a_local_hugging_face_folder_with_its_own_tokenizer(
    tmp_path: Path, architecture: str
) -> None:
    """`fedhft simulate --model PATH --clients 3 --rounds 2` for a folder holding a tiny random
    Llama or RoBERTa saved by `transformers` with its own offline-trained tokenizer: both rounds
    complete over mTLS with DP-SGD and secure sums, the consortium pins that tokenizer, and every
    organization's audit log verifies against the server's."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "model"))
    from tiny_architectures import build_checkpoint

    from fedhft.model import tokenizer_fingerprint

    folder = build_checkpoint(architecture, tmp_path / architecture)
    workdir = tmp_path / "run"
    _, figures = _simulate(workdir, 3, model=str(folder))
    consortium = yaml.safe_load((workdir / "consortium.yaml").read_text())
    assert consortium["model"]["source"] == "huggingface"
    assert consortium["model"]["tokenizer_sha256"] == tokenizer_fingerprint(folder)
    for row in figures["organizations"]:
        _verify_audit_log(workdir, row["organization"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fedhft", "fedamole"])
def test_simulate_instruct_tiny_runs_and_its_audit_logs_verify(tmp_path: Path, method: str) -> None:
    """`simulate --task instruct --model tiny [--method fedamole]`: a tiny random Llama built
    into the workdir, 3 organizations on a real server over mTLS, 2 rounds of DP-SGD on
    instruction records (FedAMoLE: after the DP affinity release); each reports ROUGE-L and
    exact match against the zero-shot base, ε within its budget equal to what its ledger
    holds, and every audit log verifies."""
    workdir = tmp_path / "run"
    figures_path = tmp_path / "figures.json"
    done = _fedhft(
        "simulate",
        "--method",
        method,
        "--task",
        "instruct",
        "--model",
        "tiny",
        "--clients",
        "3",
        "--rounds",
        "2",
        "--local-steps",
        "2",
        "--samples",
        "40",
        "--workdir",
        str(workdir),
        "--json",
        str(figures_path),
        "--timeout",
        "600",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(figures_path.read_text())
    assert figures["task"] == "instruct"
    assert [a["status"] for a in figures["rounds"]] == ["completed", "completed"]
    consortium = yaml.safe_load((workdir / "consortium.yaml").read_text())
    assert consortium["model"]["task"] == "causal-lm"
    assert consortium["method"] == method
    assert len(figures["organizations"]) == 3
    for row in figures["organizations"]:
        for name in ("rouge_l", "zero_shot_rouge_l", "exact_match", "zero_shot_exact_match"):
            assert 0.0 <= row[name] <= 1.0, name
        assert 0.0 < row["epsilon_spent"] <= row["epsilon_budget"] + 1e-9
        ledger = json.loads(
            (workdir / "orgs" / row["organization"] / "privacy-ledger.json").read_text()
        )
        # FedAMoLE releases the organization's expert affinity once before round 1.
        spends = ["dp-sgd", "dp-sgd"] if method == "fedhft" else ["gaussian", "dp-sgd", "dp-sgd"]
        assert len(ledger["records"]) == len(spends)
        assert _mechanisms(workdir, row["organization"]) == spends
        _verify_audit_log(workdir, row["organization"])
    assert "mean ROUGE-L" in done.stdout and "fedhft audit verify" in done.stdout
