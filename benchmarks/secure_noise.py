"""Throughput of DP-SGD noise: fedhft's ChaCha20 sampler vs torch's generator.

For each size (number of noised parameters per DP-SGD step), three ways to draw
N(0, σ²) noise are timed on the same machine, single-threaded:

- ``torch.normal``: torch's default Mersenne-Twister generator, one draw per value —
  what Opacus does without ``secure_mode`` (predictable: the baseline, not an option);
- ``torch 4-sum``: Opacus ``secure_mode``'s floating-point defence (four draws summed,
  halved) on torch's generator — the arithmetic cost of the defence without a CSPRNG;
- ``SecureGaussian``: fedhft's sampler (ChaCha20 keystream from `cryptography`, 53-bit
  uniforms, Box-Muller, four draws summed and halved).

Sizes include the trainable parameters of frozen-A LoRA on all-MiniLM-L6-v2 (rank 8 on
query and value in all six layers, plus a four-label head: 38 k) and the 100 k – 1 M range
of larger adapters. Reported: median CPU seconds (``time.process_time``, so other load on
a shared machine does not inflate them) over repeats, million normals per
second, and the slowdown against ``torch.normal``; plus the sample mean and standard
deviation of each sampler's largest draw as a sanity check.

Run: ``python benchmarks/secure_noise.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from fedhft.sdk.privacy import SecureGaussian

# Frozen-A LoRA on MiniLM: 6 layers x (query, value) x B of 384 x 8, plus a 384 x 4 head.
MINILM_LORA_PARAMETERS = 6 * 2 * 384 * 8 + 384 * 4 + 4

Sampler = Callable[[int], torch.Tensor]


def torch_normal(n: int) -> torch.Tensor:
    return torch.normal(0.0, 1.0, size=(n,))


def torch_four_sum(n: int) -> torch.Tensor:
    total = torch.zeros(n)
    for _ in range(4):
        total += torch.normal(0.0, 1.0, size=(n,))
    return total / 2


def median_seconds(sampler: Sampler, n: int, repeats: int) -> tuple[float, torch.Tensor]:
    sampler(min(n, 1024))  # warm up allocators and code paths
    times, last = [], torch.empty(0)
    for _ in range(repeats):
        start = time.process_time()
        last = sampler(n)
        times.append(time.process_time() - start)
    return statistics.median(times), last


def run(sizes: list[int], repeats: int) -> list[dict[str, object]]:
    secure = SecureGaussian()
    samplers: dict[str, Sampler] = {
        "torch.normal": torch_normal,
        "torch 4-sum": torch_four_sum,
        "SecureGaussian": lambda n: secure.normal((n,), std=1.0),
    }
    rows: list[dict[str, object]] = []
    for n in sizes:
        baseline = None
        for name, sampler in samplers.items():
            seconds, sample = median_seconds(sampler, n, repeats)
            baseline = baseline or seconds
            rows.append(
                {
                    "size": n,
                    "sampler": name,
                    "seconds": seconds,
                    "million_per_second": n / seconds / 1e6,
                    "slowdown_vs_torch_normal": seconds / baseline,
                    "sample_mean": float(sample.mean()),
                    "sample_std": float(sample.std()),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two sizes, a few seconds")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = (
        [MINILM_LORA_PARAMETERS, 1_000_000]
        if args.quick
        else [MINILM_LORA_PARAMETERS, 100_000, 1_000_000, 4_000_000]
    )
    rows = run(sizes, repeats=3 if args.quick else 7)

    table = Table(title=f"DP noise per step ({args.threads} thread, median CPU time)")
    for column in ("values", "sampler", "CPU ms", "M normals/s", "× torch.normal", "mean", "std"):
        table.add_column(column, justify="left" if column == "sampler" else "right")
    for row in rows:
        table.add_row(
            f"{row['size']:,}",
            str(row["sampler"]),
            f"{float(str(row['seconds'])) * 1e3:.2f}",
            f"{float(str(row['million_per_second'])):.1f}",
            f"{float(str(row['slowdown_vs_torch_normal'])):.1f}",
            f"{float(str(row['sample_mean'])):+.4f}",
            f"{float(str(row['sample_std'])):.4f}",
        )
    Console().print(table)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "benchmark": "secure_noise",
                    "machine": platform.platform(),
                    "torch": torch.__version__,
                    "threads": args.threads,
                    "rows": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
