"""examples/research_sweep end to end: a researcher's CSV in, a results table and a plot out.

The example's `make_data.py` writes a CSV of three sites' labelled texts; its `sweep.py`
runs, as the researcher runs it, one in-process federation per (method, ε) on a reduced
grid on the tiny model, and must write `results.csv` with one row per pair (finite
metrics in range, ε spent within each budget, none for the non-private runs) and
`accuracy_vs_epsilon.png`, a real PNG image.

Tiny model by default; ``FEDHFT_EXAMPLE_MODEL=minilm`` runs the same reduced grid on
all-MiniLM-L6-v2 (3 rounds, 8 local steps, as `sweep.py` defaults to).
"""

from __future__ import annotations

import csv
import math
import os
import sys
from pathlib import Path

import matplotlib.image
import pytest
from example_helpers import EXAMPLES, run_script

EXAMPLE = EXAMPLES / "research_sweep"
METHODS = ("local", "fedavg", "fedhft")
EPSILONS = ("4", "none")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODEL = os.environ.get("FEDHFT_EXAMPLE_MODEL", "tiny")
# The tiny model's run: one short round; MiniLM's: sweep.py's own defaults.
TRAINING = (
    ()
    if MODEL == "minilm"
    else ("--rounds", "1", "--local-steps", "2", "--batch-size", "8", "--max-seq-length", "16")
)


@pytest.mark.slow
def test_the_sweep_writes_one_row_per_method_and_epsilon_and_the_plot(
    example_env: dict[str, str], tmp_path: Path
) -> None:
    python = Path(sys.executable)
    run_script(
        python,
        str(EXAMPLE / "make_data.py"),
        "--out",
        "texts.csv",
        "--sites",
        "3",
        "--samples",
        "40",
        env=example_env,
        cwd=tmp_path,
    )
    done = run_script(
        python,
        str(EXAMPLE / "sweep.py"),
        "--data",
        "texts.csv",
        "--out",
        "results",
        "--methods",
        *METHODS,
        "--epsilons",
        *EPSILONS,
        *TRAINING,
        env={**example_env, "FEDHFT_EXAMPLE_MODEL": MODEL},
        cwd=tmp_path,
    )
    assert f"model {MODEL}" in done.stdout  # FEDHFT_EXAMPLE_MODEL reached the script

    with (tmp_path / "results" / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["method"], r["epsilon"]) for r in rows) == sorted(
        (m, e) for m in METHODS for e in EPSILONS
    )
    for row in rows:
        for metric in ("mean_accuracy", "worst_accuracy", "mean_macro_f1"):
            assert 0.0 <= float(row[metric]) <= 1.0, row
        assert float(row["worst_accuracy"]) <= float(row["mean_accuracy"]), row
        assert math.isfinite(float(row["seconds"])) and float(row["seconds"]) >= 0, row
        if row["epsilon"] == "none":
            assert row["epsilon_spent"] == "", row  # nothing private to account for
        else:
            assert 0.0 < float(row["epsilon_spent"]) <= float(row["epsilon"]), row

    png = tmp_path / "results" / "accuracy_vs_epsilon.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert png.stat().st_size > 10_000
    pixels = matplotlib.image.imread(png)
    height, width = pixels.shape[:2]
    assert width > 400 and height > 300
    # Something was drawn: the image is not one flat colour.
    assert float(pixels[..., :3].std()) > 0.05
