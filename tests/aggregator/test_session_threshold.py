"""One Shamir threshold for every session: FedHFT clusters, FedAMoLE sums and the check
a client makes all use `fedhft.protocol.session_threshold`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fedhft.aggregator import _experts
from fedhft.aggregator._federation import cohort_session
from fedhft.policies import ConsortiumConfig, SecureAggregationSpec
from fedhft.protocol import SessionParams, session_threshold


def _expected(n: int, spec: SecureAggregationSpec) -> int:
    """The threshold from the design's rules, computed without the library's helpers:
    share holders = neighbours + 1 (k rounded up to make n·k even; complete graph when
    k ≥ n − 1), t a strict majority of them, ≥ ⌈fraction · holders⌉, above the colluders,
    and at least 2."""
    k = spec.neighbours
    degree = n - 1 if k is None or k >= n - 1 else k + (n * k) % 2
    holders = degree + 1
    return max(
        holders // 2 + 1,
        2,
        math.ceil(spec.threshold_fraction * holders - 1e-9),
        spec.max_colluding_clients + 1,
    )


def _consortium(roster: list[str], secure: dict[str, Any]) -> ConsortiumConfig:
    return ConsortiumConfig.model_validate(
        {
            "consortium": "t",
            "model": {"source": "tiny", "num_labels": 2},
            "adapter": {"target_modules": ["value"], "rank": 2, "alpha": 4, "a_seed": 3},
            "tiers": {"full": {}},
            "rounds": 1,
            "secure_aggregation": secure,
            "enrollment": [{"organization": o} for o in roster],
        }
    )


class _Captured(Exception):
    def __init__(self, params: SessionParams) -> None:
        super().__init__("captured")
        self.params = params


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(3, 40),
    fraction=st.sampled_from([0.51, 0.6, 0.67, 0.75, 0.9, 1.0]),
    colluders=st.integers(0, 3),
    neighbours=st.one_of(st.none(), st.integers(2, 12)),
)
def test_every_session_gets_the_one_threshold(
    n: int, fraction: float, colluders: int, neighbours: int | None
) -> None:
    """FedHFT's `cohort_session` and FedAMoLE's `aggregate_mole_blocks` build their
    session with the same t, the one the design's rules give for that cohort."""
    roster = [f"org-{i:02d}" for i in range(n)]
    secure = {
        "threshold_fraction": fraction,
        "max_dropout_fraction": 0.0,
        "max_colluding_clients": colluders,
        "neighbours": neighbours,
    }
    try:
        config = _consortium(roster, secure)
    except ValidationError:
        reject()
    spec = config.secure_aggregation
    expected = _expected(n, spec)
    assert session_threshold(n, neighbours=spec.neighbours, at_least=spec.threshold) == expected
    params, _ = cohort_session(
        config,
        run_id="r",
        round_number=1,
        cluster=0,
        roster=roster,
        config_hash=bytes(32),
        model_hash=bytes(32),
        shapes={"b": (2, 2)},
        supports={"b": roster},
    )
    assert params.threshold == expected

    def capture(params: SessionParams, *_: Any, **__: Any) -> None:
        raise _Captured(params)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_experts, "run_secagg_in_process", capture)
        with pytest.raises(_Captured) as captured:
            _experts.aggregate_mole_blocks(
                config,
                {org: {"b": np.zeros((2, 2))} for org in roster},
                {},
                run_id="r",
                round_number=1,
                config_hash=bytes(32),
                model_hash=bytes(32),
            )
    assert captured.value.params.threshold == expected
