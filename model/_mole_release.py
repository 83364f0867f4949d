"""What the server releases to a FedAMoLE organization each round, and what it sends back.

`MoLERelease` is the global value of every block an organization holds (its part of the
public expert assignment); `upload_blocks` says which held blocks enter the secure sum.
Both sides use these, so they live in the model layer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from fedhft.policies import ConsortiumConfig

from ._adapters import HEAD_BLOCKS
from ._codec import safetensors_metadata
from .errors import ReleaseFormatError

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class MoLERelease:
    """What the server releases to one organization at the start of a round.

    ``experts`` is the organization's part of the public assignment; ``states`` the global
    value of every block it holds; ``aggregated`` the blocks the previous round averaged
    (every other block starts from the organization's own value).
    """

    round: int
    experts: tuple[int, ...]
    states: Mapping[str, FloatArray]
    aggregated: frozenset[str] = field(default_factory=frozenset)


def encode_release(release: MoLERelease) -> bytes:
    """Serialize a `MoLERelease` as safetensors bytes (no code runs when loading)."""
    arrays = {
        f"state/{block_id}": np.ascontiguousarray(values, dtype=np.float64)
        for block_id, values in release.states.items()
    }
    metadata = {
        "round": str(release.round),
        "experts": json.dumps(list(release.experts)),
        "aggregated": json.dumps(sorted(release.aggregated)),
    }
    return bytes(save_arrays(arrays, metadata=metadata))


def decode_release(data: bytes) -> MoLERelease:
    """Inverse of `encode_release`.

    Raises:
        ReleaseFormatError: the bytes are not a well-formed release.
    """
    try:
        arrays = load_arrays(data)
        metadata = safetensors_metadata(data)
        experts = json.loads(metadata["experts"])
        aggregated = json.loads(metadata["aggregated"])
        round_number = int(metadata["round"])
    except (KeyError, ValueError, TypeError, SafetensorError) as error:
        raise ReleaseFormatError(f"malformed FedAMoLE release: {type(error).__name__}") from None
    if not all(type(e) is int for e in experts) or not all(isinstance(b, str) for b in aggregated):
        raise ReleaseFormatError("malformed FedAMoLE release: experts or aggregated blocks")
    states = {
        name[6:]: values.astype(np.float64)
        for name, values in arrays.items()
        if name.startswith("state/")
    }
    return MoLERelease(round_number, tuple(experts), states, frozenset(aggregated))


def upload_blocks(block_ids: Sequence[str], consortium: ConsortiumConfig) -> tuple[str, ...]:
    """The held blocks an organization puts into the secure sum: all but a personal head."""
    if consortium.shares_head:
        return tuple(block_ids)
    return tuple(b for b in block_ids if b not in HEAD_BLOCKS)
