"""Write a small synthetic CSV of triage notes, so the example runs without patient data.

Each row is one note: ``note_id,note,triage`` with ``triage`` one of low, medium, high,
critical. The notes come from fedhft's seeded generator (clinical domain, a hospital's
own label mix), so a site's file depends only on ``--site`` and ``--seed``.

    python make_data.py --out data/st-mary-hospital --site 0
    # -> data/st-mary-hospital/train.csv and test.csv
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fedhft.sdk import TextDataset, synthetic_federation


def _frame(dataset: TextDataset, prefix: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "note_id": [f"{prefix}-{i:05d}" for i in range(len(dataset))],
            "note": list(dataset.texts),
            "triage": [dataset.label_names[label] for label in dataset.labels],
        }
    )


def write_site(out: Path, *, site: int, samples: int = 400, seed: int = 0) -> tuple[Path, Path]:
    """Write ``train.csv`` and ``test.csv`` (a quarter of the notes) for one site."""
    # Site i is the i-th organization of a clinical-only federation: its own label mix.
    data = synthetic_federation(
        num_organizations=site + 1,
        alpha=2.0,
        samples_per_org=samples,
        seed=seed,
        domains=("clinical",),
    )[site]
    out.mkdir(parents=True, exist_ok=True)
    train, test = out / "train.csv", out / "test.csv"
    _frame(data.train, "train").to_csv(train, index=False)
    _frame(data.test, "test").to_csv(test, index=False)
    return train, test


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for train.csv, test.csv")
    parser.add_argument("--site", type=int, default=0, help="which synthetic hospital (0, 1, ...)")
    parser.add_argument("--samples", type=int, default=400, help="notes in both files together")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in write_site(args.out, site=args.site, samples=args.samples, seed=args.seed):
        print(path)


if __name__ == "__main__":
    main()
