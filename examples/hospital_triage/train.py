"""St Mary's hospital takes part in the consortium's rounds and exports its adapter.

This is the hospital's own training script with fedhft embedded: it reads the triage
notes the way the hospital's pipeline already does (pandas), joins every round its
policy and privacy budget allow, and exports the personalized adapter for `predict.py`,
which serves it with plain `transformers` + `peft`.

    python train.py --policy policies/st-mary-hospital.yaml \
        --consortium policies/consortium.yaml --credentials pki/st-mary-hospital \
        --server aggregator.example.org:7443 --state state/st-mary-hospital/client \
        --train data/st-mary-hospital/train.csv --test data/st-mary-hospital/test.csv \
        --export export/st-mary-hospital

What lives where (back up the three state items together, see the README):
    --policy       the hospital's policy: budget, tier, and the paths of its privacy
                   ledger (`privacy.ledger_path`) and audit log (`audit.log_path`)
    --consortium   the consortium's file, the same for every member
    --credentials  from `fedhft ca issue --org st-mary-hospital` (keys: keep secret)
    --state        the client's state folder: personal adapter rows, staged update, DP
                   releases, the run it belongs to
    --export       what goes to the inference server (no patient data in it)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fedhft.policies import load_consortium_config, load_organization_policy
from fedhft.sdk import (
    ClientReport,
    FederatedClient,
    MaskedAdapterModel,
    TextDataset,
    build_base_model,
    export_peft,
    load_tokenizer,
)

# The consortium's label space, in the order of the model's outputs.
TRIAGE_LEVELS = ("low", "medium", "high", "critical")


def read_notes(path: Path) -> TextDataset:
    """The hospital's CSV (``note,triage`` columns) as fedhft's `TextDataset`."""
    frame = pd.read_csv(path, usecols=["note", "triage"], dtype=str, keep_default_na=False)
    unknown = sorted(set(frame["triage"]) - set(TRIAGE_LEVELS))
    if unknown:
        raise ValueError(f"{path}: column `triage` has {unknown}, expected one of {TRIAGE_LEVELS}")
    return TextDataset(
        texts=tuple(frame["note"]),
        labels=tuple(TRIAGE_LEVELS.index(level) for level in frame["triage"]),
        label_names=TRIAGE_LEVELS,
    )


@dataclass(frozen=True)
class Trained:
    """What a run leaves: the report, the personalized model, the export folder."""

    report: ClientReport
    model: MaskedAdapterModel
    export: Path


def train(
    *,
    policy: Path,
    consortium: Path,
    credentials: Path,
    server: str,
    state: Path,
    train_csv: Path,
    test_csv: Path,
    export: Path,
    server_name: str | None = None,
) -> Trained:
    """Join the consortium's rounds, then export the personalized adapter."""
    org_policy = load_organization_policy(policy)
    config = load_consortium_config(consortium)
    # The base model (the consortium's `model:` section) is built offline, never
    # downloaded. It is saved for the inference server before the adapter wraps it:
    # the export must carry the very weights the adapter was trained on (the tiny test
    # model, for one, cannot be rebuilt without fedhft).
    base = build_base_model(config.model)
    base.save_pretrained(export / "base")
    load_tokenizer(config.model).save_pretrained(export / "base")
    model = MaskedAdapterModel(base, config.adapter)
    with FederatedClient(
        model,
        read_notes(train_csv),
        org_policy,
        config,
        credentials=credentials,
        server=server,
        server_name=server_name,
        state_dir=state,
        # Evaluated on the hospital's held-out notes when the run ends; this also leaves
        # `model` holding the personalized adapter (cluster mixture + personal rows,
        # with the hospital's DP label prior), which is what gets exported.
        test_dataset=read_notes(test_csv),
    ) as client:
        report = client.run()

    # The rest of the export: the PEFT adapter (LoRA B, frozen A and the head; the
    # label prior is folded into the head bias) and how to read the head.
    export_peft(model, export / "adapter")
    (export / "inference.json").write_text(
        json.dumps(
            {
                "pooling": config.model.pooling,
                "labels": list(TRIAGE_LEVELS),
                "max_length": org_policy.training.max_seq_length,
            },
            indent=2,
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
    parser.add_argument("--train", type=Path, required=True, help="CSV with note,triage")
    parser.add_argument("--test", type=Path, required=True, help="held-out CSV, same columns")
    parser.add_argument("--export", type=Path, required=True, help="folder for predict.py")
    args = parser.parse_args(argv)
    trained = train(
        policy=args.policy,
        consortium=args.consortium,
        credentials=args.credentials,
        server=args.server,
        server_name=args.server_name,
        state=args.state,
        train_csv=args.train,
        test_csv=args.test,
        export=args.export,
    )
    # The report holds aggregates only (accuracy, ε spent, bytes), never a note.
    print(json.dumps(trained.report.as_json(), indent=2))


if __name__ == "__main__":
    main()
