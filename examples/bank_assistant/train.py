"""Harbour Bank takes part in the consortium's FedAMoLE rounds and exports its assistant.

This is the bank's own training script with fedhft embedded: it reads the bank's
prompt/response records (JSON Lines, one ``{"prompt": ..., "completion": ...}`` per line),
joins every round its policy and privacy budget allow (DP affinity release, then DP-SGD
rounds of its mixture of LoRA experts under secure aggregation), and exports the
personalized model for `chat.py`, which runs it with `transformers` and PyTorch alone.

    python train.py --policy policies/harbour-bank.yaml \
        --consortium policies/consortium.yaml --credentials pki/harbour-bank \
        --server aggregator.example.org:7443 --state state/harbour-bank/client \
        --train data/harbour-bank/train.jsonl --test data/harbour-bank/test.jsonl \
        --export export/harbour-bank

What lives where (back up the three state items together, see the README):
    --policy       the bank's policy: budget, tier, and the paths of its privacy ledger
                   (`privacy.ledger_path`) and audit log (`audit.log_path`)
    --consortium   the consortium's file, the same for every member
    --credentials  from `fedhft ca issue --org harbour-bank` (keys: keep secret)
    --state        the client's state folder: DP releases, staged uploads, the run it
                   belongs to, and the personalized mixture after the last round
    --export       what goes to the serving machine (no customer record in it)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedhft.model import CausalMoLEModel
from fedhft.policies import load_consortium_config, load_organization_policy
from fedhft.sdk import (
    ClientReport,
    FederatedClient,
    build_base_model,
    load_instructions,
    load_tokenizer,
)
from fedhft.sdk.mole import PERSONALIZED_FILE


@dataclass(frozen=True)
class Trained:
    """What a run leaves: the report, the personalized mixture, the export folder."""

    report: ClientReport
    model: CausalMoLEModel
    export: Path


def train(
    *,
    policy: Path,
    consortium: Path,
    credentials: Path,
    server: str,
    state: Path,
    train_jsonl: Path,
    test_jsonl: Path,
    export: Path,
    server_name: str | None = None,
) -> Trained:
    """Join the consortium's rounds, then export the personalized assistant."""
    org_policy = load_organization_policy(policy)
    config = load_consortium_config(consortium)
    # The base model (the consortium's `model:` section: SmolLM2-135M-Instruct from the
    # installed package) is built offline, never downloaded, and saved for the serving
    # machine first: the mixture is only right on the exact weights it was trained on.
    base = build_base_model(config.model)
    tokenizer = load_tokenizer(config.model)
    base.save_pretrained(export / "base")
    tokenizer.save_pretrained(export / "base")
    # A record that cannot be used (no completion, too long for `max_seq_length`) is an
    # error naming its file, line and field, before anything is trained or spent.
    records = load_instructions(train_jsonl)
    with FederatedClient(
        base,  # FedAMoLE installs the bank's experts into (copies of) the base model.
        records,
        org_policy,
        config,
        credentials=credentials,
        server=server,
        server_name=server_name,
        state_dir=state,
        tokenizer=tokenizer,
        # Scored when the run ends: ROUGE-L and exact match of the greedy answers, and
        # the same for the base model alone (zero-shot), on the bank's held-out records.
        test_dataset=load_instructions(test_jsonl),
    ) as client:
        report = client.run()

    # After the last round the client keeps the bank's personalized mixture (its
    # experts, the shared expert and the router, averaged with their other holders, plus
    # its own last round) in its state folder. The export for `chat.py` writes every
    # tensor of it, the frozen A included, keyed by the module it adapts.
    model = CausalMoLEModel.load(state / PERSONALIZED_FILE, build_base_model(config.model))
    model.save_for_inference(export / "mixture.safetensors")
    (export / "inference.json").write_text(
        json.dumps(
            {
                # The answer length the consortium scores with (`evaluation.max_new_tokens`).
                "max_new_tokens": config.evaluation.max_new_tokens,
                "max_length": org_policy.training.max_seq_length,
            }
        )
        + "\n"
    )
    return Trained(report=report, model=model, export=export)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, required=True)
    parser.add_argument("--consortium", type=Path, required=True)
    parser.add_argument("--credentials", type=Path, required=True)
    parser.add_argument("--server", required=True, help="HOST:PORT of the aggregation server")
    parser.add_argument("--server-name", help="host name on the server's certificate")
    parser.add_argument("--state", type=Path, required=True, help="the client's state folder")
    parser.add_argument("--train", type=Path, required=True, help="JSONL: prompt, completion")
    parser.add_argument("--test", type=Path, required=True, help="held-out JSONL, same fields")
    parser.add_argument("--export", type=Path, required=True, help="folder for chat.py")
    args = parser.parse_args(argv)
    trained = train(
        policy=args.policy,
        consortium=args.consortium,
        credentials=args.credentials,
        server=args.server,
        server_name=args.server_name,
        state=args.state,
        train_jsonl=args.train,
        test_jsonl=args.test,
        export=args.export,
    )
    # The report holds aggregates only (scores, ε spent, bytes), never a record.
    report = trained.report
    print(f"rounds joined: {list(report.rounds_joined)}")
    if report.generation is not None:
        scores = report.generation
        print(
            f"held-out ROUGE-L {scores['rouge_l']:.3f} (base model alone "
            f"{scores['zero_shot_rouge_l']:.3f}), exact match {scores['exact_match']:.3f} "
            f"(base {scores['zero_shot_exact_match']:.3f})"
        )
    print(f"privacy spent: ε = {report.epsilon_spent} of {report.epsilon_budget}")
    print(f"exported to {trained.export}")


if __name__ == "__main__":
    main()
