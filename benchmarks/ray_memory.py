"""Peak memory of `fedhft simulate --engine ray` at several federation sizes, same pool.

The Ray engine promises that memory grows with the workers, not with the organizations:
each worker holds one base model and opens an organization from its folder for each
task. This runs ``fedhft simulate --engine ray`` once per size with the same
``--workers`` and samples, every half second, the resident memory (RSS) of the whole
process tree it starts: the driver (`fedhft simulate`, which also runs the coordinator
and the secure sums), Ray's own processes (GCS, raylet) and the workers. The first size
is the baseline the others are compared with.

Usage:
    python benchmarks/ray_memory.py --sizes 50,200 --workers 2 --model tiny --rounds 2

Prints a table: organizations, workers, peak RSS of the workers, of the driver, of the
whole tree, and its ratio to the baseline's, and the run's wall-clock seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

MIB = 1024 * 1024


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _rss(process: psutil.Process) -> tuple[str, int]:
    try:
        return " ".join(process.cmdline()[:3]), process.memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "", 0


def measure(
    size: int, *, workers: int, model: str, rounds: int, steps: int, log: Path | None
) -> dict[str, float]:
    """Run one simulation of ``size`` organizations; its peak RSS figures in MiB."""
    with tempfile.TemporaryDirectory(prefix="fedhft-ray-memory-") as tmp:
        figures_path = Path(tmp) / "figures.json"
        command = [
            sys.executable,
            "-m",
            "fedhft.cli",
            "simulate",
            "--engine",
            "ray",
            "--workers",
            str(workers),
            "--clients",
            str(size),
            "--model",
            model,
            "--rounds",
            str(rounds),
            "--local-steps",
            str(steps),
            "--workdir",
            str(Path(tmp) / "run"),
            "--json",
            str(figures_path),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        started = time.monotonic()
        driver = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        root = psutil.Process(driver.pid)
        peaks = {"workers": 0, "driver": 0, "total": 0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                sizes = [_rss(p) for p in _tree(root)]
                workers_rss = sum(r for name, r in sizes if "OrganizationWorker" in name)
                driver_rss = sizes[0][1] if sizes else 0
                peaks["workers"] = max(peaks["workers"], workers_rss)
                peaks["driver"] = max(peaks["driver"], driver_rss)
                peaks["total"] = max(peaks["total"], sum(r for _, r in sizes))
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        output, _ = driver.communicate()
        stop.set()
        sampler.join()
        seconds = time.monotonic() - started
        if log is not None:
            log.mkdir(parents=True, exist_ok=True)
            (log / f"simulate-{model}-{size}.txt").write_bytes(output)
        if driver.returncode != 0:
            sys.stdout.write(output.decode(errors="replace")[-4000:])
            raise SystemExit(f"simulate --clients {size} failed ({driver.returncode})")
        figures = json.loads(figures_path.read_text())
        completed = sum(1 for r in figures["rounds"] if r["status"] == "completed")
        return {
            "organizations": size,
            "workers": workers,
            "workers_mib": peaks["workers"] / MIB,
            "driver_mib": peaks["driver"] / MIB,
            "total_mib": peaks["total"] / MIB,
            "rounds_completed": completed,
            "seconds": seconds,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200", help="Organizations, comma-separated.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=12)
    parser.add_argument("--log", type=Path, help="Keep each run's console output here.")
    args = parser.parse_args()
    rows = [
        measure(
            int(size),
            workers=args.workers,
            model=args.model,
            rounds=args.rounds,
            steps=args.local_steps,
            log=args.log,
        )
        for size in args.sizes.split(",")
    ]
    baseline = rows[0]["total_mib"]
    print(
        f"{'orgs':>5} {'workers':>7} {'workers MiB':>11} {'driver MiB':>10} "
        f"{'tree MiB':>9} {'× baseline':>10} {'rounds':>6} {'seconds':>8}"
    )
    for row in rows:
        print(
            f"{row['organizations']:>5} {row['workers']:>7} {row['workers_mib']:>11.0f} "
            f"{row['driver_mib']:>10.0f} {row['total_mib']:>9.0f} "
            f"{row['total_mib'] / baseline:>10.2f} {row['rounds_completed']:>6} "
            f"{row['seconds']:>8.0f}"
        )


if __name__ == "__main__":
    main()
