"""Write a small synthetic prompt/response JSONL for one bank, so the example runs without
customer data.

Each line is one record, ``{"prompt": ..., "completion": ...}``: a case description with
one of four questions (its priority, the team that handles it, the amount to set aside,
whether to escalate) and the bank's short answer. The records come from fedhft's seeded
generator (banking domain, the bank's own mix of cases and questions), so a site's files
depend only on ``--site`` and ``--seed``.

    python make_data.py --out data/harbour-bank --site 0
    # -> data/harbour-bank/train.jsonl and test.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from fedhft.sdk import InstructionDataset, synthetic_instruction_federation


def _write(path: Path, dataset: InstructionDataset) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for example in dataset:
            # The generator writes chat prompts of one user turn; a bank's export has
            # plain prompt/completion pairs.
            prompt = (
                example.prompt if isinstance(example.prompt, str) else example.prompt[-1].content
            )
            handle.write(json.dumps({"prompt": prompt, "completion": example.response}) + "\n")


def write_site(out: Path, *, site: int, samples: int = 400, seed: int = 0) -> tuple[Path, Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` (a quarter of the records) for one bank."""
    # Bank i is the i-th organization of a banking-only federation: its own case mix.
    data = synthetic_instruction_federation(
        num_organizations=site + 1,
        alpha=2.0,
        samples_per_org=samples,
        seed=seed,
        domains=("banking",),
    )[site]
    out.mkdir(parents=True, exist_ok=True)
    train, test = out / "train.jsonl", out / "test.jsonl"
    _write(train, data.train)
    _write(test, data.test)
    return train, test


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSONL files")
    parser.add_argument("--site", type=int, default=0, help="which synthetic bank (0, 1, ...)")
    parser.add_argument("--samples", type=int, default=400, help="records in both files")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in write_site(args.out, site=args.site, samples=args.samples, seed=args.seed):
        print(path)


if __name__ == "__main__":
    main()
