"""Crash-safe files of an organization's rounds: current state, staged output and state.

Both `RoundParticipant` (FedHFT) and `MoLEParticipant` (FedAMoLE) keep, in
``state_dir``:

- the *current* personal state (what the last completed round left);
- while a round is unfinished, its *staged* output (the DP update to upload) and the
  personal state that becomes current when the round completes;
- its one-shot DP releases (`kept_release`), kept from the moment they exist;
- for the staged output, the secure sum of each cluster it entered (`EnteredSums`).

Notes:
    Training spends privacy, and the spend is in the ledger before the output exists.
    The output is staged on disk before anything is uploaded, so a retry after a crash
    or an aborted round re-sends the *same* DP output instead of training again:
    re-sending a released output is post-processing, and the ledger shows each round's
    spend exactly once. An aborted round leaves the old personal state in force. Every
    write is atomic (`fedhft.files.atomic_write`).

    Re-sending is safe only into the *same* sum. Two secure sums of one cluster over
    different sets of organizations, both holding this output, differ by the others'
    contributions; if the sets differ by one organization, the server learns its update.
    So the first sum a staged output enters, per cluster, is written down before its
    masked input leaves (roster) and before the client answers the unmask request
    (survivors), and a retry over another roster or survivor set is refused
    (`SumAlreadyEnteredError`). An identical retry recomputes the same sum.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from fedhft.files import atomic_write

from .errors import SumAlreadyEnteredError

FloatArray = npt.NDArray[np.float64]

ENTERED_SUMS_FILE = "entered-sums.json"
_RELEASE_PREFIX = "release-"


class RoundFiles:
    """The current, staged-output and staged-state files of one organization."""

    def __init__(self, state_dir: str | Path, *, state_name: str, output_name: str) -> None:
        self.state_dir = Path(state_dir)
        self.state_path = self.state_dir / state_name
        self.output_path = self.state_dir / output_name
        self.staged_state_path = self.state_dir / f"pending-{state_name}"
        self.entered_sums_path = self.state_dir / ENTERED_SUMS_FILE

    @staticmethod
    def files_in(state_dir: Path) -> list[str]:
        """Names of the round files in ``state_dir`` (sorted): personal states, staged
        outputs, kept releases and entered sums, of either method."""
        if not state_dir.is_dir():
            return []
        return sorted(
            path.name
            for path in state_dir.iterdir()
            if path.is_file() and (path.suffix == ".safetensors" or path.name == ENTERED_SUMS_FILE)
        )

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
        return self.state_dir / f"{_RELEASE_PREFIX}{name}.safetensors"

    def entered_sums(self) -> EnteredSums | None:
        """The sums the staged output entered, or None when no output is staged."""
        staged = self.staged_output()
        if staged is None:
            return None
        return EnteredSums(self.entered_sums_path, hashlib.sha256(staged).hexdigest())

    def complete(self, state: bytes | None) -> None:
        """Make ``state`` current (when given) and forget the staged round."""
        if state is not None:
            atomic_write(self.state_path, state)
        self.staged_state_path.unlink(missing_ok=True)
        self.output_path.unlink(missing_ok=True)
        self.entered_sums_path.unlink(missing_ok=True)


class EnteredSums:
    """Per cluster, the one secure sum a staged output takes part in (durably on disk).

    Args:
        path: the file (``entered-sums.json`` in the state folder).
        output_sha256: SHA-256 of the staged output; entries of another output (an
            earlier round's) are ignored.
    """

    def __init__(self, path: Path, output_sha256: str) -> None:
        self.path = path
        self.output_sha256 = output_sha256

    def clusters(self) -> dict[int, dict[str, Any]]:
        """The sums entered so far: cluster -> ``{"sid", "roster", "survivors"}``."""
        if not self.path.exists():
            return {}
        document = json.loads(self.path.read_bytes())
        if document.get("output_sha256") != self.output_sha256:
            return {}
        return {int(cluster): entry for cluster, entry in document["clusters"].items()}

    def enter(self, cluster: int, *, roster: Collection[str], sid: bytes) -> None:
        """Allow this output into cluster ``cluster``'s sum over ``roster``, and record it
        before the masked input is sent.

        Raises:
            SumAlreadyEnteredError: it already entered that cluster's sum over another
                roster.
        """
        entries = self.clusters()
        entry = entries.get(cluster)
        members = sorted(roster)
        if entry is not None:
            if entry["roster"] != members:
                raise SumAlreadyEnteredError(
                    f"cluster {cluster}: this round's update already entered the secure sum "
                    f"of session {entry['sid'][:16]}... over {len(entry['roster'])} "
                    f"organizations; refusing session {sid.hex()[:16]}... over another roster "
                    f"({len(members)} organizations), whose sum would differ from the first "
                    "by the contributions of those that changed. Only an identical-roster "
                    f"retry is allowed ({self.path})"
                )
            return
        entries[cluster] = {"sid": sid.hex(), "roster": members, "survivors": None}
        self._write(entries)

    def unmask(self, cluster: int, *, survivors: Collection[str], sid: bytes) -> None:
        """Allow answering cluster ``cluster``'s unmask request for ``survivors``, and
        record them before the answer is sent: from then on the sum over them can be
        computed.

        Raises:
            SumAlreadyEnteredError: the output's sum in that cluster was unmasked over
                other survivors, or it never entered that cluster (`enter`).
        """
        entries = self.clusters()
        entry = entries.get(cluster)
        members = sorted(survivors)
        if entry is None:
            raise SumAlreadyEnteredError(
                f"cluster {cluster}: asked to unmask a sum this update never entered "
                f"({self.path}); refusing"
            )
        if entry["survivors"] is not None and entry["survivors"] != members:
            raise SumAlreadyEnteredError(
                f"cluster {cluster}: this round's update was already unmasked in a sum of "
                f"{len(entry['survivors'])} survivors (session {entry['sid'][:16]}...); "
                f"refusing to unmask it in session {sid.hex()[:16]}..., whose "
                f"{len(members)} survivors differ ({self.path})"
            )
        if entry["survivors"] is None:
            entry["survivors"] = members
            self._write(entries)

    def _write(self, entries: dict[int, dict[str, Any]]) -> None:
        document = {
            "output_sha256": self.output_sha256,
            "clusters": {str(cluster): entry for cluster, entry in sorted(entries.items())},
        }
        atomic_write(self.path, json.dumps(document, indent=2, sort_keys=True).encode() + b"\n")
