"""The parameters of one secure-aggregation session as the server announces them.

A `SessionAnnouncement` carries the session's parameters as opaque bytes: the masking
mode's `SessionParams` or the CKKS mode's `CKKSSession`, encoded here as canonical JSON
(sorted keys, no whitespace) with a ``mode`` member. Decoding is strict: exactly the
expected members with the expected types, then the parameter object's own checks, and
any failure is one `MalformedMessageError` (INVALID_ARGUMENT).

Notes:
    The client never trusts these parameters as given: the session id is recomputed
    from them (so the announced ``session_id`` must match), and the client compares the
    security-relevant ones (threshold, minimum cohort, clip, scale, configuration and
    model hashes, its own blocks) with its own consortium file and the round
    announcement before it takes part (`fedhft.sdk.FederatedClient`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from .ckks._aggregation import CKKSSession
from .errors import MalformedMessageError, ProtocolError
from .secagg._params import SessionParams

MAX_ENCODED_BYTES: Final = 4 * 1024 * 1024
"""Largest encoded session description a client accepts."""

CKKS_SEALED_FILE: Final = "ckks-secret.sealed"
"""File of an organization's sealed CKKS secret context, in its credentials folder."""
CKKS_PUBLIC_FILE: Final = "ckks-public.context"
"""File of the server's keyless CKKS context, in the server's credentials folder."""

MODEL_FORMAT: Final = "safetensors/fedhft-cluster-v1"
"""Format of a downloaded cluster adapter (`fedhft.model._codec.encode_clusters`
of that one cluster)."""
_MODEL_HASH_DOMAIN: Final = b"fedhft/released-model/v1\x00"

_MASKING_FIELDS: Final = frozenset(
    {
        "mode",
        "run_id",
        "round",
        "cluster",
        "roster",
        "config_hash",
        "model_hash",
        "threshold",
        "min_cohort",
        "blocks",
        "clip",
        "scale",
        "neighbours",
    }
)
_CKKS_FIELDS: Final = frozenset(
    {
        "mode",
        "run_id",
        "round",
        "cluster",
        "roster",
        "key_id",
        "min_cohort",
        "blocks",
        "config_hash",
        "model_hash",
    }
)


def encode_session(session: SessionParams | CKKSSession) -> bytes:
    """Canonical JSON of a masking-mode or CKKS-mode session's parameters."""
    blocks = [
        [block, int(length), sorted(session.block_supports[block])]
        for block, length in sorted(session.block_lengths.items())
    ]
    document: dict[str, Any]
    if isinstance(session, SessionParams):
        document = {
            "mode": "masking",
            "run_id": session.run_id,
            "round": session.round,
            "cluster": session.cluster,
            "roster": list(session.roster),
            "config_hash": session.config_hash.hex(),
            "model_hash": session.model_hash.hex(),
            "threshold": session.threshold,
            "min_cohort": session.min_cohort,
            "blocks": blocks,
            "clip": float(session.clip),
            "scale": float(session.scale),
            "neighbours": session.neighbours,
        }
    else:
        document = {
            "mode": "ckks",
            "run_id": session.run_id,
            "round": session.round,
            "cluster": session.cluster,
            "roster": list(session.roster),
            "key_id": session.key_id,
            "min_cohort": session.min_cohort,
            "blocks": blocks,
            "config_hash": session.config_hash,
            "model_hash": session.model_hash,
        }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode_session(data: bytes) -> SessionParams | CKKSSession:
    """Parse what `encode_session` wrote; raise `MalformedMessageError` on any flaw."""
    if len(data) > MAX_ENCODED_BYTES:
        raise MalformedMessageError(
            f"session parameters have {len(data)} bytes, above the cap of {MAX_ENCODED_BYTES}"
        )
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MalformedMessageError("session parameters are not UTF-8 JSON") from None
    if not isinstance(document, dict):
        raise MalformedMessageError("session parameters must be a JSON object")
    mode = document.get("mode")
    expected = {"masking": _MASKING_FIELDS, "ckks": _CKKS_FIELDS}.get(str(mode))
    if expected is None:
        raise MalformedMessageError(f"`mode` must be 'masking' or 'ckks', got {mode!r:.40}")
    if set(document) != expected:
        raise MalformedMessageError(
            f"{mode} session parameters must have exactly the members {sorted(expected)}"
        )
    try:
        lengths, supports = _blocks(document["blocks"])
        roster = _strings(document["roster"], "roster")
        if mode == "masking":
            neighbours = document["neighbours"]
            return SessionParams(
                run_id=_string(document["run_id"], "run_id"),
                round=_integer(document["round"], "round"),
                cluster=_integer(document["cluster"], "cluster"),
                roster=roster,
                config_hash=_digest(document["config_hash"], "config_hash"),
                model_hash=_digest(document["model_hash"], "model_hash"),
                threshold=_integer(document["threshold"], "threshold"),
                min_cohort=_integer(document["min_cohort"], "min_cohort"),
                block_lengths=lengths,
                block_supports=supports,
                clip=_number(document["clip"], "clip"),
                scale=_number(document["scale"], "scale"),
                neighbours=None if neighbours is None else _integer(neighbours, "neighbours"),
            )
        return CKKSSession(
            run_id=_string(document["run_id"], "run_id"),
            round=_integer(document["round"], "round"),
            cluster=_integer(document["cluster"], "cluster"),
            roster=tuple(roster),
            key_id=_string(document["key_id"], "key_id"),
            min_cohort=_integer(document["min_cohort"], "min_cohort"),
            block_lengths=lengths,
            block_supports=supports,
            config_hash=_string(document["config_hash"], "config_hash"),
            model_hash=_string(document["model_hash"], "model_hash"),
        )
    except MalformedMessageError:
        raise
    except ProtocolError as error:
        # The parameter objects' own checks (threshold, cohort, roster, block ids).
        raise MalformedMessageError(f"invalid session parameters: {error}") from None


def _string(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedMessageError(f"`{field}` must be a non-empty string")
    return value


def _strings(value: object, field: str) -> list[str]:
    if not isinstance(value, list):
        raise MalformedMessageError(f"`{field}` must be a list of strings")
    return [_string(item, field) for item in value]


def _integer(value: object, field: str) -> int:
    if type(value) is not int or value < 0:
        raise MalformedMessageError(f"`{field}` must be an integer >= 0")
    return value


def _number(value: object, field: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(float(value)):  # type: ignore[arg-type]
        raise MalformedMessageError(f"`{field}` must be a finite number")
    return float(value)  # type: ignore[arg-type]


def _digest(value: object, field: str) -> bytes:
    text = _string(value, field)
    try:
        digest = bytes.fromhex(text)
    except ValueError:
        raise MalformedMessageError(f"`{field}` must be hex") from None
    if len(digest) != 32:
        raise MalformedMessageError(f"`{field}` must be a 32-byte digest")
    return digest


def _blocks(value: object) -> tuple[dict[str, int], dict[str, frozenset[str]]]:
    if not isinstance(value, list):
        raise MalformedMessageError("`blocks` must be a list of [id, length, holders]")
    lengths: dict[str, int] = {}
    supports: dict[str, frozenset[str]] = {}
    for item in value:
        if not isinstance(item, list) or len(item) != 3:
            raise MalformedMessageError("each of `blocks` must be [id, length, holders]")
        block = _string(item[0], "blocks.id")
        if block in lengths:
            raise MalformedMessageError(f"block {block!r:.80} appears twice")
        lengths[block] = _integer(item[1], "blocks.length")
        supports[block] = frozenset(_strings(item[2], "blocks.holders"))
    return lengths, supports


def encode_block_sums(sums: Mapping[str, npt.ArrayLike]) -> bytes:
    """A CKKS client's decrypted per-block sums, as safetensors (float64 vectors)."""
    return bytes(
        save_arrays(
            {
                block: np.ascontiguousarray(values, dtype=np.float64)
                for block, values in sums.items()
            }
        )
    )


def decode_block_sums(
    data: bytes, lengths: Mapping[str, int]
) -> dict[str, npt.NDArray[np.float64]]:
    """Parse `encode_block_sums` output holding exactly the blocks of ``lengths``.

    Raises `MalformedMessageError` for another set of blocks, a wrong length or dtype, or
    a value that is not finite.
    """
    try:
        arrays = load_arrays(data)
    except (SafetensorError, ValueError, TypeError):
        raise MalformedMessageError("decrypted sums are not a safetensors payload") from None
    if set(arrays) != set(lengths):
        raise MalformedMessageError("decrypted sums must name exactly the released blocks")
    sums: dict[str, npt.NDArray[np.float64]] = {}
    for block, length in lengths.items():
        values = arrays[block]
        if values.dtype != np.float64 or values.shape != (length,):
            raise MalformedMessageError(
                f"decrypted sum of block {block!r:.80} must be {length} float64 values"
            )
        if not np.all(np.isfinite(values)):
            raise MalformedMessageError(f"decrypted sum of block {block!r:.80} is not finite")
        sums[block] = values
    return sums


def released_model_hash(cluster_hashes: Sequence[bytes]) -> bytes:
    """The model hash a round announces: SHA-256 over its clusters' payload hashes.

    Each cluster adapter is downloaded separately with the SHA-256 of its bytes; this
    binds all of them, in cluster order, into the one hash that the announcement and
    every session id of the round carry.
    """
    return hashlib.sha256(_MODEL_HASH_DOMAIN + b"".join(cluster_hashes)).digest()
