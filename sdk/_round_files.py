"""Crash-safe files of an organization's rounds: current state, staged output and state.

Both `RoundParticipant` (FedHFT) and `MoLEParticipant` (FedAMoLE) keep, in
``state_dir``:

- the *current* personal state (what the last completed round left);
- while a round is unfinished, its *staged* output (the DP update to upload) and the
  personal state that becomes current when the round completes;
- its one-shot DP releases (`kept_release`), kept from the moment they exist.

Notes:
    Training spends privacy, and the spend is in the ledger before the output exists.
    The output is staged on disk before anything is uploaded, so a retry after a crash
    or an aborted round re-sends the *same* DP output instead of training again:
    re-sending a released output is post-processing, and the ledger shows each round's
    spend exactly once. An aborted round leaves the old personal state in force. Every
    write is atomic (`fedhft._files.atomic_write`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from fedhft._files import atomic_write

FloatArray = npt.NDArray[np.float64]


class RoundFiles:
    """The current, staged-output and staged-state files of one organization."""

    def __init__(self, state_dir: str | Path, *, state_name: str, output_name: str) -> None:
        self.state_dir = Path(state_dir)
        self.state_path = self.state_dir / state_name
        self.output_path = self.state_dir / output_name
        self.staged_state_path = self.state_dir / f"pending-{state_name}"

    def current_state(self) -> bytes | None:
        """The personal state of the last completed round, if any."""
        return self.state_path.read_bytes() if self.state_path.exists() else None

    def staged_output(self) -> bytes | None:
        """The output of an unfinished round, if any."""
        return self.output_path.read_bytes() if self.output_path.exists() else None

    def staged_state(self) -> bytes | None:
        """The personal state an unfinished round will make current, if any."""
        return self.staged_state_path.read_bytes() if self.staged_state_path.exists() else None

    def stage(self, output: bytes, next_state: bytes) -> None:
        """Keep a trained round's output and its next personal state until it completes."""
        atomic_write(self.output_path, output)
        atomic_write(self.staged_state_path, next_state)

    def kept_release(self, name: str, release: Callable[[], npt.ArrayLike]) -> FloatArray:
        """The one-shot DP release ``name``: made by ``release`` the first time, then
        read back from disk. Using a kept release again is post-processing; releasing
        again would spend the budget twice."""
        kept = self.release(name)
        if kept is not None:
            return kept
        values = np.asarray(release(), dtype=np.float64).reshape(-1)
        atomic_write(self._release_path(name), bytes(save_arrays({"values": values})))
        return values

    def release(self, name: str) -> FloatArray | None:
        """The kept release ``name``, or None if it was not made yet."""
        path = self._release_path(name)
        if not path.exists():
            return None
        kept: FloatArray = load_arrays(path.read_bytes())["values"].astype(np.float64)
        return kept

    def _release_path(self, name: str) -> Path:
        return self.state_dir / f"release-{name}.safetensors"

    def complete(self, state: bytes | None) -> None:
        """Make ``state`` current (when given) and forget the staged round."""
        if state is not None:
            atomic_write(self.state_path, state)
        self.staged_state_path.unlink(missing_ok=True)
        self.output_path.unlink(missing_ok=True)
