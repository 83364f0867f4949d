"""Write a synthetic CSV of labelled texts from several sites, so the sweep runs without
anyone's data.

One row per text: ``site,tier,text,label`` with ``label`` one of low, medium, high,
critical. Sites alternate between two domains (clinical triage notes, bank transaction
descriptions) whose cue words mean different labels, and each site has its own label
mix (fedhft's seeded generator, `fedhft.sdk.synthetic_federation`); ``tier`` is the
compute each site trains with (full, standard, edge in turn). Replace this file with
your own CSV of the same columns (``tier`` may be left out).

    python make_data.py --out texts.csv --sites 6 --samples 200
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fedhft.sdk import synthetic_federation

TIERS = ("full", "standard", "edge")


def write_texts(
    out: Path, *, sites: int = 6, samples: int = 200, alpha: float = 1.0, seed: int = 0
) -> Path:
    """Write ``sites`` sites of ``samples`` labelled texts each to the CSV ``out``."""
    frames = []
    for i, site in enumerate(
        synthetic_federation(
            num_organizations=sites, alpha=alpha, samples_per_org=samples, seed=seed
        )
    ):
        # The generator splits each site's texts; the researcher's CSV is one table, and
        # sweep.py makes its own split.
        texts = site.train.texts + site.test.texts
        labels = site.train.labels + site.test.labels
        frames.append(
            pd.DataFrame(
                {
                    "site": f"site-{i:02d}",
                    "tier": TIERS[i % len(TIERS)],
                    "text": list(texts),
                    "label": [site.train.label_names[label] for label in labels],
                }
            )
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.concat(frames).to_csv(out, index=False)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("texts.csv"), help="the CSV to write")
    parser.add_argument("--sites", type=int, default=6, help="organizations (at least 3)")
    parser.add_argument("--samples", type=int, default=200, help="texts per site")
    parser.add_argument("--alpha", type=float, default=1.0, help="label skew: smaller, more")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(
        write_texts(
            args.out, sites=args.sites, samples=args.samples, alpha=args.alpha, seed=args.seed
        )
    )


if __name__ == "__main__":
    main()
