"""Session parameters: validation, the session id, and derived public structure."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError
from secagg_helpers import CONFIG_HASH, MODEL_HASH, make_identities, make_params, roster_of

from fedhft.policies import SecureAggregationSpec
from fedhft.protocol import SecAggClient, SecAggServer, SessionParams, default_threshold
from fedhft.protocol.errors import CohortTooSmallError, SessionParamsError
from fedhft.protocol.secagg.graph import effective_degree


def _base(**overrides: Any) -> dict[str, Any]:
    roster = roster_of(5)
    fields: dict[str, Any] = {
        "run_id": "run-1",
        "round": 1,
        "cluster": 0,
        "roster": roster,
        "config_hash": CONFIG_HASH,
        "model_hash": MODEL_HASH,
        "threshold": 3,
        "min_cohort": 3,
        "block_lengths": {"a": 4, "b": 2},
        "block_supports": {"a": set(roster), "b": set(roster[1:])},
        "clip": 1.0,
        "scale": 1024.0,
        "neighbours": None,
    }
    fields.update(overrides)
    return fields


def test_sid_is_deterministic_and_ignores_roster_order() -> None:
    """Equal parameters give equal session ids, whatever order the roster was given in."""
    first = SessionParams(**_base())
    second = SessionParams(**_base(roster=list(reversed(roster_of(5)))))
    assert first.sid == second.sid and first == second and len(first.sid) == 32
    assert first.roster == tuple(roster_of(5))


@pytest.mark.parametrize(
    "change",
    [
        {"run_id": "run-2"},
        {"round": 2},
        {"cluster": 1},
        {"config_hash": b"\x00" * 32},
        {"model_hash": b"\x00" * 32},
        {"threshold": 4},
        {"min_cohort": 4},
        {"block_lengths": {"a": 4, "b": 3}},
        {"block_supports": {"a": set(roster_of(5)), "b": set(roster_of(5)[:4])}},
        {"clip": 2.0},
        {"scale": 2048.0},
        {"neighbours": 2},
    ],
    ids=lambda change: next(iter(change)),
)
def test_every_parameter_is_bound_into_the_sid(change: dict[str, Any]) -> None:
    """Changing any single parameter changes the session id."""
    assert SessionParams(**_base(**change)).sid != SessionParams(**_base()).sid


def test_roster_is_bound_into_the_sid() -> None:
    """Another roster (same size) is another session."""
    other = ["org-000", "org-001", "org-002", "org-003", "org-999"]
    assert (
        SessionParams(**_base(roster=other, block_supports={"a": other, "b": other})).sid
        != SessionParams(**_base(block_supports={"a": roster_of(5), "b": roster_of(5)})).sid
    )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"run_id": "bad run"}, "run_id"),
        ({"round": -1}, "round"),
        ({"cluster": 2**32}, "cluster"),
        ({"config_hash": b"short"}, "config_hash"),
        ({"roster": ["org-000", "org-000", "org-001", "org-002"]}, "twice"),
        ({"roster": ["Org-A", "org-001", "org-002"]}, "organization id"),
        ({"roster": roster_of(2)}, "between 3"),
        ({"min_cohort": 2}, "at least 3"),
        ({"threshold": 2}, "strict majority"),
        ({"threshold": 6}, "strict majority"),
        ({"neighbours": 1}, "at least 2"),
        ({"block_lengths": {"a": 4}}, "same blocks"),
        ({"block_lengths": {"a": 0, "b": 2}}, "length"),
        (
            {
                "block_lengths": {"a b": 4, "b": 2},
                "block_supports": {"a b": roster_of(5), "b": roster_of(5)},
            },
            "block id",
        ),
        ({"block_supports": {"a": roster_of(5), "b": ["org-000", "org-001", "zed"]}}, "outside"),
        ({"clip": 0.0}, "clip"),
        ({"scale": float("nan")}, "scale"),
    ],
)
def test_invalid_parameters_are_refused(change: dict[str, Any], match: str) -> None:
    """Each inconsistent parameter is a ValueError that names the field."""
    with pytest.raises(ValueError, match=match):
        SessionParams(**_base(**change))


def test_invalid_parameters_are_session_param_errors() -> None:
    """Parameter errors are typed (SessionParamsError) as well as ValueErrors."""
    with pytest.raises(SessionParamsError):
        SessionParams(**_base(threshold=1))


def test_min_cohort_larger_than_roster_is_a_cohort_error() -> None:
    """A roster smaller than the minimum cohort is refused as a too-small cohort."""
    with pytest.raises(CohortTooSmallError):
        SessionParams(**_base(min_cohort=6))


def test_threshold_follows_the_neighbourhood_in_secagg_plus() -> None:
    """With k neighbours the threshold is a majority of k + 1 holders, not of n."""
    params = make_params(20, neighbours=6, threshold=4)
    assert all(params.share_holders(org) == params.graph[org] | {org} for org in params.roster)
    assert default_threshold(20, 6) == 4 and default_threshold(5) == 3
    with pytest.raises(SessionParamsError):
        make_params(20, neighbours=6, threshold=11)


def test_support_groups_and_holder_indices() -> None:
    """Blocks with the same holders share a group; x-coordinates are roster positions + 1."""
    roster = roster_of(5)
    params = make_params(
        5,
        block_lengths={"a": 1, "b": 1, "c": 1},
        block_supports={"a": roster, "b": roster[1:], "c": roster},
    )
    assert params.group_of_block["a"] == params.group_of_block["c"]
    assert params.group_of_block["a"] != params.group_of_block["b"]
    assert len(params.groups_of("org-000")) == 1 and len(params.groups_of("org-001")) == 2
    assert params.blocks_of("org-000") == ("a", "c")
    assert [params.holder_index[org] for org in roster] == [1, 2, 3, 4, 5]


def test_params_are_immutable() -> None:
    """Session parameters cannot be changed after the sid is derived."""
    params = make_params()
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.round = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        params.block_lengths["x"] = 1  # type: ignore[index]


def test_client_and_server_require_consistent_identities() -> None:
    """A client outside the roster, a missing identity or a wrong own key is refused."""
    params = make_params()
    identities = make_identities(params.roster)
    public = {org: key.public_key() for org, key in identities.items()}
    with pytest.raises(SessionParamsError, match="not in the roster"):
        SecAggClient(
            params, organization="zed", identity_key=identities["org-000"], peer_identities=public
        )
    partial = {org: key for org, key in public.items() if org != "org-004"}
    with pytest.raises(SessionParamsError, match="no identity key"):
        SecAggServer(params, peer_identities=partial)
    with pytest.raises(SessionParamsError, match="does not match"):
        SecAggClient(
            params,
            organization="org-000",
            identity_key=Ed25519PrivateKey.generate(),
            peer_identities=public,
        )


# --------------------------------------------------------------------------- colluders


@pytest.mark.parametrize(
    "spec",
    [
        # Complete graph: the smallest session has min_cohort share holders per client.
        {"min_cohort": 3, "max_colluding_clients": 3},
        {"min_cohort": 5, "max_colluding_clients": 5},
        # SecAgg+: k + 1 share holders, fewer than the cohort.
        {"min_cohort": 10, "neighbours": 4, "max_colluding_clients": 5},
        # The threshold would exceed the survivors of the allowed dropouts.
        {"min_cohort": 10, "max_dropout_fraction": 0.3, "max_colluding_clients": 8},
        # CKKS: one colluding client already decrypts everything.
        {"mode": "ckks", "max_colluding_clients": 1},
    ],
    ids=["cohort", "cohort-5", "neighbours", "dropouts", "ckks"],
)
def test_colluders_the_threshold_cannot_exceed_are_refused(spec: dict[str, Any]) -> None:
    """A consortium whose smallest neighbourhood cannot keep t above
    `max_colluding_clients` is refused at validation, naming the field."""
    with pytest.raises(ValidationError, match="max_colluding_clients"):
        SecureAggregationSpec.model_validate(spec)


def test_threshold_used_exceeds_max_colluding_clients() -> None:
    """The threshold every session is built with is above the colluders, even where
    `threshold_fraction` alone would give less, and a session accepts it."""
    spec = SecureAggregationSpec(
        min_cohort=8, threshold_fraction=0.51, max_dropout_fraction=0.2, max_colluding_clients=5
    )
    assert math.ceil(0.51 * 8) <= 5 < spec.threshold(8) == 6
    assert all(spec.threshold(cohort) > 5 for cohort in range(8, 60))
    params = make_params(8, threshold=spec.threshold(8))
    assert all(params.threshold_of(org) > spec.max_colluding_clients for org in params.roster)
    plus = SecureAggregationSpec(min_cohort=10, neighbours=6, max_colluding_clients=4)
    threshold = max(default_threshold(30, 6), plus.threshold(effective_degree(30, 6) + 1))
    assert threshold > 4
    make_params(30, neighbours=6, threshold=threshold)


def test_no_colluders_keeps_the_fraction_threshold() -> None:
    """With the default of 0 colluders the threshold is the fraction's, as before."""
    spec = SecureAggregationSpec()
    assert spec.max_colluding_clients == 0
    assert [spec.threshold(n) for n in (3, 5, 10)] == [3, 4, 7]
