"""Tests of CKKS-mode secure aggregation: sums per block, cohorts, and rejected messages."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedhft.protocol.ckks._aggregation import (
    CKKSAggregator,
    CKKSClient,
    CKKSSession,
    run_ckks_in_process,
)
from fedhft.protocol.ckks._messages import CKKSEncryptedSum, CKKSUpload, EncryptedSegmentSum
from fedhft.protocol.ckks._scheme import (
    CKKSCeremony,
    CKKSKeyring,
    CKKSParameters,
    CKKSServerContext,
    _build_context,
)
from fedhft.protocol.errors import (
    CohortTooSmallError,
    DuplicateMessageError,
    ForgedMessageError,
    InvalidInputError,
    MalformedMessageError,
    QuantizationOverflowError,
    ReplayError,
    SessionParamsError,
    StageError,
)

ORGS = ("org-a", "org-b", "org-c", "org-d", "org-e", "org-f")
MAX_CT = 1 << 20


@pytest.fixture(scope="module")
def ceremony_and_keys() -> tuple[CKKSCeremony, dict[str, CKKSKeyring]]:
    """A ceremony for six organizations (N = 2048, 1024 slots) and their opened keyrings."""
    sealing = {org: X25519PrivateKey.generate() for org in ORGS}
    parameters = CKKSParameters.choose(max_clients=len(ORGS), value_bound=1.0, scale_bits=30)
    assert parameters.slots == 1024
    ceremony = CKKSCeremony.create(
        consortium="c",
        sealing_keys={org: key.public_key() for org, key in sealing.items()},
        parameters=parameters,
    )
    keyrings = {
        org: CKKSKeyring.open(
            ceremony.sealed_keys[org], private_key=key, consortium="c", organization=org
        )
        for org, key in sealing.items()
    }
    return ceremony, keyrings


def _session(ceremony: CKKSCeremony, **changes: object) -> CKKSSession:
    fields: dict[str, object] = {
        "run_id": "run-1",
        "round": 3,
        "cluster": 1,
        "roster": ORGS,
        "key_id": ceremony.key_id,
        "min_cohort": 3,
        "block_lengths": {"shared.B": 1500, "top.B": 40, "low.B": 700},
        "block_supports": {
            "shared.B": frozenset(ORGS),
            "top.B": frozenset(ORGS[:4]),
            "low.B": frozenset(ORGS[2:]),
        },
    }
    fields.update(changes)
    return CKKSSession(**fields)  # type: ignore[arg-type]


def _inputs(session: CKKSSession, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        org: {
            block: rng.uniform(-1.0, 1.0, length)
            for block, length in session.block_lengths.items()
            if org in session.block_supports[block]
        }
        for org in session.roster
    }


def _plain_sum(
    session: CKKSSession, inputs: dict[str, dict[str, np.ndarray]], block: str, drop: set[str]
) -> np.ndarray:
    holders = [o for o in session.roster if o in session.block_supports[block] and o not in drop]
    return np.sum([inputs[o][block] for o in holders], axis=0)


# --------------------------------------------------------------------------- correctness


@given(
    data=st.data(),
    lengths=st.lists(st.integers(1, 1500), min_size=1, max_size=5),
)
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_sum_within_error_bound_for_random_supports_and_dropouts(
    ceremony_and_keys: tuple[CKKSCeremony, dict[str, CKKSKeyring]],
    data: st.DataObject,
    lengths: list[int],
) -> None:
    """Each block's decrypted sum is within the stated bound of the plain sum of its uploaders."""
    ceremony, keyrings = ceremony_and_keys
    supports = {
        f"block.{i}": frozenset(data.draw(st.sets(st.sampled_from(ORGS), min_size=1)))
        for i in range(len(lengths))
    }
    drop = data.draw(st.sets(st.sampled_from(ORGS), max_size=3))
    session = _session(
        ceremony,
        block_lengths={f"block.{i}": n for i, n in enumerate(lengths)},
        block_supports=supports,
    )
    inputs = _inputs(session, seed=data.draw(st.integers(0, 2**32 - 1)))
    survivors_of = {b: supports[b] - drop for b in supports}
    if all(len(s) < 3 for s in survivors_of.values()):
        with pytest.raises(CohortTooSmallError):
            run_ckks_in_process(
                session,
                public_context=ceremony.public_context,
                keyrings=keyrings,
                inputs=inputs,
                drop=drop,
            )
        return
    result = run_ckks_in_process(
        session, public_context=ceremony.public_context, keyrings=keyrings, inputs=inputs, drop=drop
    )
    parameters = ceremony.parameters
    for block, survivors in survivors_of.items():
        if len(survivors) < 3:
            assert block in result.withheld and block not in result.sums
            continue
        assert result.counts[block] == len(survivors)
        error = np.max(np.abs(result.sums[block] - _plain_sum(session, inputs, block, drop)))
        assert error <= parameters.typical_error_bound(len(survivors))
        assert error <= result.error_bound(block)


def test_every_client_decrypts_the_same_sums(
    ceremony_and_keys: tuple[CKKSCeremony, dict[str, CKKSKeyring]],
) -> None:
    """All organizations decrypt one released message to the same per-block sums."""
    ceremony, keyrings = ceremony_and_keys
    session = _session(ceremony)
    inputs = _inputs(session)
    server = CKKSAggregator(session, CKKSServerContext.from_bytes(ceremony.public_context))
    clients = {org: CKKSClient(session, keyrings[org]) for org in ORGS}
    for org, client in clients.items():
        server.receive(org, client.encrypt(inputs[org]))
    released = server.result().encode()
    results = [client.decrypt(released) for client in clients.values()]
    for block in session.block_lengths:
        plain = _plain_sum(session, inputs, block, set())
        bound = ceremony.parameters.typical_error_bound(len(session.block_supports[block]))
        for result in results:
            assert np.max(np.abs(result.sums[block] - plain)) <= bound


def test_server_sums_cannot_be_decrypted_by_the_server(
    ceremony_and_keys: tuple[CKKSCeremony, dict[str, CKKSKeyring]],
) -> None:
    """The released sums, loaded under the server's own context, do not decrypt."""
    ceremony, keyrings = ceremony_and_keys
    session = _session(ceremony)
    inputs = _inputs(session)
    server_context = CKKSServerContext.from_bytes(ceremony.public_context)
    server = CKKSAggregator(session, server_context)
    for org in ORGS:
        server.receive(org, CKKSClient(session, keyrings[org]).encrypt(inputs[org]))
    some_sum = server.result().released[0].ciphertexts[0]
    with pytest.raises(ValueError, match="secret"):
        ts.ckks_vector_from(server_context.tenseal_context, some_sum).decrypt()


def test_expansion_over_float32_below_target(
    ceremony_and_keys: tuple[CKKSCeremony, dict[str, CKKSKeyring]],
) -> None:
    """Bytes up per float32 byte stay below 8.5x for a dense upload at both ring sizes."""
    ceremony, keyrings = ceremony_and_keys
    for parameters in (
        ceremony.parameters,
        CKKSParameters.choose(max_clients=100, value_bound=1.0),
    ):
        context = _build_context(parameters)
        values = np.random.default_rng(1).uniform(-1, 1, parameters.slots)
        data = ts.ckks_vector(context, values).serialize()
        assert len(data) / (4 * parameters.slots) <= 8.5
    session = _session(ceremony, block_lengths={"x": 10_240}, block_supports={"x": frozenset(ORGS)})
    upload = CKKSClient(session, keyrings["org-a"]).encrypt(
        {"x": np.random.default_rng(2).uniform(-1, 1, 10_240)}
    )
    assert len(upload) / (4 * 10_240) <= 8.5


# --------------------------------------------------------------------------- cohorts


def test_block_below_cohort_is_withheld(
    ceremony_and_keys: tuple[CKKSCeremony, dict[str, CKKSKeyring]],
) -> None:
    """A block with two uploaders is withheld and named, the others are released."""
    ceremony, keyrings = ceremony_and_keys
    session = _session(ceremony)
    # "top.B" is held by org-a..org-d; dropping org-a and org-b leaves two holders.
    result = run_ckks_in_process(
        session,
        public_context=ceremony.public_context,
        keyrings=keyrings,
        inputs=_inputs(session),
        drop={"org-a", "org-b"},
    )
    assert result.withheld == {"top.B"}
    assert set(result.sums) == {"shared.B", "low.B"}
    assert result.counts == {"shared.B": 4, "low.B": 4}


def test_round_below_cohort_raises_naming_blocks(
    ceremony_and_keys: tuple[CKKSCeremony, dict[str, CKKSKeyring]],
) -> None:
    """With two uploaders nothing is released: a CohortTooSmallError naming every block."""
    ceremony, keyrings = ceremony_and_keys
    session = _session(ceremony)
    with pytest.raises(CohortTooSmallError) as caught:
        run_ckks_in_process(
            session,
            public_context=ceremony.public_context,
            keyrings=keyrings,
            inputs=_inputs(session),
            drop=set(ORGS[2:]),
        )
    assert set(caught.value.blocks) == set(session.block_lengths)


def test_client_refuses_a_sum_below_cohort(
    ceremony_and_keys: tuple[CKKSCeremony, dict[str, CKKSKeyring]],
) -> None:
    """A server that releases a two-member "sum" (one peer's update) is refused by clients."""
    ceremony, keyrings = ceremony_and_keys
    session = _session(ceremony)
    server = CKKSAggregator(session, CKKSServerContext.from_bytes(ceremony.public_context))
    inputs = _inputs(session)
    for org in ORGS:
        server.receive(org, CKKSClient(session, keyrings[org]).encrypt(inputs[org]))
    honest = server.result()
    first = honest.released[0]
    shrunk = dataclasses.replace(first, contributors=first.contributors[:2])
    forged = dataclasses.replace(honest, released=(shrunk, *honest.released[1:]))
    with pytest.raises(CohortTooSmallError):
        CKKSClient(session, keyrings["org-c"]).decrypt(forged.encode())


# --------------------------------------------------------------------------- rejected input


@pytest.fixture
def session_and_server(
    ceremony_and_keys: tuple[CKKSCeremony, dict[str, CKKSKeyring]],
) -> tuple[CKKSSession, CKKSAggregator, dict[str, CKKSKeyring]]:
    """A fresh session and server for one negative test."""
    ceremony, keyrings = ceremony_and_keys
    session = _session(ceremony)
    server = CKKSAggregator(session, CKKSServerContext.from_bytes(ceremony.public_context))
    return session, server, keyrings


def test_upload_from_another_round_is_a_replay(
    ceremony_and_keys: tuple[CKKSCeremony, dict[str, CKKSKeyring]],
    session_and_server: tuple[CKKSSession, CKKSAggregator, dict[str, CKKSKeyring]],
) -> None:
    """An upload made for round 2 is rejected by the round-3 server as a replay."""
    ceremony, _ = ceremony_and_keys
    _, server, keyrings = session_and_server
    old = _session(ceremony, round=2)
    upload = CKKSClient(old, keyrings["org-a"]).encrypt(_inputs(old)["org-a"])
    with pytest.raises(ReplayError):
        server.receive("org-a", upload)
    assert server.received == frozenset()


def test_sum_from_another_session_is_a_replay(
    ceremony_and_keys: tuple[CKKSCeremony, dict[str, CKKSKeyring]],
) -> None:
    """A client refuses encrypted sums of another cluster."""
    ceremony, keyrings = ceremony_and_keys
    session = _session(ceremony)
    other = _session(ceremony, cluster=2)
    server = CKKSAggregator(other, CKKSServerContext.from_bytes(ceremony.public_context))
    inputs = _inputs(other)
    for org in ORGS:
        server.receive(org, CKKSClient(other, keyrings[org]).encrypt(inputs[org]))
    with pytest.raises(ReplayError):
        CKKSClient(session, keyrings["org-a"]).decrypt(server.result().encode())


def test_upload_under_another_name_is_forged(
    session_and_server: tuple[CKKSSession, CKKSAggregator, dict[str, CKKSKeyring]],
) -> None:
    """An upload claiming another organization than its authenticated sender is refused."""
    session, server, keyrings = session_and_server
    upload = CKKSClient(session, keyrings["org-a"]).encrypt(_inputs(session)["org-a"])
    with pytest.raises(ForgedMessageError):
        server.receive("org-b", upload)
    with pytest.raises(ForgedMessageError):
        server.receive("outsider", upload)


def test_second_upload_is_a_duplicate(
    session_and_server: tuple[CKKSSession, CKKSAggregator, dict[str, CKKSKeyring]],
) -> None:
    """A second upload from one organization is refused; the first one counts once."""
    session, server, keyrings = session_and_server
    inputs = _inputs(session)
    upload = CKKSClient(session, keyrings["org-a"]).encrypt(inputs["org-a"])
    server.receive("org-a", upload)
    with pytest.raises(DuplicateMessageError):
        server.receive("org-a", upload)
    for org in ORGS[1:]:
        server.receive(org, CKKSClient(session, keyrings[org]).encrypt(inputs[org]))
    result = CKKSClient(session, keyrings["org-a"]).decrypt(server.result().encode())
    plain = _plain_sum(session, inputs, "shared.B", set())
    assert np.max(np.abs(result.sums["shared.B"] - plain)) <= result.error_bound("shared.B")


def _tampered_upload(upload: bytes, change: str, key_id_context: ts.Context) -> bytes:
    message = CKKSUpload.decode(upload, max_ciphertext_bytes=MAX_CT)
    segments = list(message.segments)
    if change == "drop-segment":
        segments = segments[1:]
    elif change == "drop-ciphertext":
        index, cts = segments[0]
        segments[0] = (index, cts[:-1])
    elif change == "wrong-length":
        index, cts = segments[0]
        short = ts.ckks_vector(key_id_context, [0.5] * 3).serialize()
        segments[0] = (index, (short, *cts[1:]))
    elif change == "garbage-ciphertext":
        index, cts = segments[0]
        segments[0] = (index, (b"\x00" * 200, *cts[1:]))
    return dataclasses.replace(message, segments=tuple(segments)).encode()


@pytest.mark.parametrize(
    "change", ["drop-segment", "drop-ciphertext", "wrong-length", "garbage-ciphertext"]
)
def test_malformed_upload_rejected_without_trace(
    session_and_server: tuple[CKKSSession, CKKSAggregator, dict[str, CKKSKeyring]],
    change: str,
) -> None:
    """Missing segments or ciphertexts, wrong sizes and garbage are refused and not counted."""
    session, server, keyrings = session_and_server
    upload = CKKSClient(session, keyrings["org-c"]).encrypt(_inputs(session)["org-c"])
    with pytest.raises(MalformedMessageError):
        server.receive("org-c", _tampered_upload(upload, change, keyrings["org-c"].tenseal_context))
    assert server.received == frozenset()


def test_ciphertext_at_another_scale_rejected(
    session_and_server: tuple[CKKSSession, CKKSAggregator, dict[str, CKKSKeyring]],
) -> None:
    """A ciphertext encoded at another scale, which would corrupt the sum, is refused."""
    session, server, keyrings = session_and_server
    context = keyrings["org-a"].tenseal_context.copy()
    context.global_scale = 2.0**20
    upload = CKKSClient(session, keyrings["org-a"]).encrypt(_inputs(session)["org-a"])
    message = CKKSUpload.decode(upload, max_ciphertext_bytes=MAX_CT)
    index, cts = message.segments[0]
    length = ts.ckks_vector_from(keyrings["org-a"].tenseal_context, cts[0]).size()
    rescaled = ts.ckks_vector(context, [0.1] * length).serialize()
    forged = dataclasses.replace(
        message, segments=((index, (rescaled, *cts[1:])), *message.segments[1:])
    )
    with pytest.raises(MalformedMessageError, match="scale"):
        server.receive("org-a", forged.encode())


@pytest.mark.parametrize("cut", [0, 3, 20, 60, -1])
def test_truncated_or_padded_upload_rejected(
    session_and_server: tuple[CKKSSession, CKKSAggregator, dict[str, CKKSKeyring]], cut: int
) -> None:
    """Truncated uploads and uploads with trailing bytes are MalformedMessageError."""
    session, server, keyrings = session_and_server
    upload = CKKSClient(session, keyrings["org-a"]).encrypt(_inputs(session)["org-a"])
    with pytest.raises(MalformedMessageError):
        server.receive("org-a", upload[:cut])
    with pytest.raises(MalformedMessageError, match="trailing"):
        server.receive("org-a", upload + b"\x00")


def test_oversized_ciphertext_rejected_before_parsing(
    session_and_server: tuple[CKKSSession, CKKSAggregator, dict[str, CKKSKeyring]],
) -> None:
    """A ciphertext field larger than any fresh ciphertext is refused by its length prefix."""
    session, server, _ = session_and_server
    huge = CKKSUpload(session.sid, "org-a", ((0, (b"\x00" * 200_000,)),)).encode()
    with pytest.raises(MalformedMessageError, match="exceeds"):
        server.receive("org-a", huge)


def test_receive_after_release_is_out_of_order(
    session_and_server: tuple[CKKSSession, CKKSAggregator, dict[str, CKKSKeyring]],
) -> None:
    """An upload arriving after the sums were released is refused with StageError."""
    session, server, keyrings = session_and_server
    inputs = _inputs(session)
    clients = {org: CKKSClient(session, keyrings[org]) for org in ORGS}
    for org in ORGS[:-1]:
        server.receive(org, clients[org].encrypt(inputs[org]))
    server.result()
    with pytest.raises(StageError):
        server.receive(ORGS[-1], clients[ORGS[-1]].encrypt(inputs[ORGS[-1]]))


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ("missing", InvalidInputError),
        ("extra", InvalidInputError),
        ("shape", InvalidInputError),
        ("nan", InvalidInputError),
        ("too-large", QuantizationOverflowError),
    ],
)
def test_bad_client_input_rejected(
    ceremony_and_keys: tuple[CKKSCeremony, dict[str, CKKSKeyring]],
    change: str,
    error: type[Exception],
) -> None:
    """Missing or foreign blocks, wrong shapes, NaN and values beyond the bound are refused."""
    ceremony, keyrings = ceremony_and_keys
    session = _session(ceremony)
    inputs = dict(_inputs(session)["org-a"])
    if change == "missing":
        del inputs["top.B"]
    elif change == "extra":
        inputs["low.B"] = np.zeros(700)
    elif change == "shape":
        inputs["top.B"] = np.zeros((4, 10))
    elif change == "nan":
        inputs["top.B"] = np.full(40, np.nan)
    else:
        inputs["top.B"] = np.full(40, 1.5)
    client = CKKSClient(session, keyrings["org-a"])
    with pytest.raises(error):
        client.encrypt(inputs)


def test_client_encrypts_once(
    ceremony_and_keys: tuple[CKKSCeremony, dict[str, CKKSKeyring]],
) -> None:
    """A client refuses to encrypt a second input in the same session."""
    ceremony, keyrings = ceremony_and_keys
    session = _session(ceremony)
    client = CKKSClient(session, keyrings["org-a"])
    client.encrypt(_inputs(session)["org-a"])
    with pytest.raises(StageError):
        client.encrypt(_inputs(session)["org-a"])


def test_malformed_sum_rejected(
    ceremony_and_keys: tuple[CKKSCeremony, dict[str, CKKSKeyring]],
) -> None:
    """A sum that omits a segment or names a non-holder as contributor is refused."""
    ceremony, keyrings = ceremony_and_keys
    session = _session(ceremony)
    server = CKKSAggregator(session, CKKSServerContext.from_bytes(ceremony.public_context))
    inputs = _inputs(session)
    for org in ORGS:
        server.receive(org, CKKSClient(session, keyrings[org]).encrypt(inputs[org]))
    honest = server.result()
    client = CKKSClient(session, keyrings["org-a"])
    omitted = dataclasses.replace(honest, released=honest.released[1:])
    with pytest.raises(MalformedMessageError, match="every segment"):
        client.decrypt(omitted.encode())
    # The last segment ("low.B") is held by org-c..org-f only; claim org-a contributed.
    last = honest.released[-1]
    assert "org-a" not in last.contributors
    outsider = EncryptedSegmentSum(last.index, ("org-a", *last.contributors), last.ciphertexts)
    forged = dataclasses.replace(honest, released=(*honest.released[:-1], outsider))
    with pytest.raises(MalformedMessageError, match="do not hold"):
        client.decrypt(forged.encode())
    with pytest.raises(MalformedMessageError):
        CKKSEncryptedSum.decode(honest.encode()[:-3], max_ciphertext_bytes=MAX_CT)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"min_cohort": 2}, "min_cohort"),
        ({"roster": ("b", "a")}, "roster"),
        ({"round": -1}, "round"),
        ({"block_supports": {"shared.B": frozenset({"stranger"})}}, "roster"),
    ],
)
def test_bad_session_rejected(
    ceremony_and_keys: tuple[CKKSCeremony, dict[str, CKKSKeyring]],
    changes: dict[str, object],
    match: str,
) -> None:
    """Cohorts below 3, unsorted rosters, negative rounds and outsider holders are refused."""
    ceremony, _ = ceremony_and_keys
    if "block_supports" in changes:
        changes = {**changes, "block_lengths": {"shared.B": 4}}
    with pytest.raises(SessionParamsError, match=match):
        _session(ceremony, **changes)


def test_roster_larger_than_parameters_rejected(
    ceremony_and_keys: tuple[CKKSCeremony, dict[str, CKKSKeyring]],
) -> None:
    """A roster above the ceremony's max_clients is refused: its sums could wrap."""
    ceremony, keyrings = ceremony_and_keys
    roster = tuple(sorted((*ORGS, "org-g")))
    session = _session(
        ceremony, roster=roster, block_lengths={"x": 4}, block_supports={"x": frozenset(roster)}
    )
    with pytest.raises(SessionParamsError, match="more than"):
        CKKSClient(session, keyrings["org-a"])


def test_session_under_another_key_rejected(
    ceremony_and_keys: tuple[CKKSCeremony, dict[str, CKKSKeyring]],
) -> None:
    """A session naming another key generation is refused by client and server."""
    ceremony, keyrings = ceremony_and_keys
    session = _session(ceremony, key_id="0" * 32)
    with pytest.raises(SessionParamsError, match="key generation"):
        CKKSClient(session, keyrings["org-a"])
    with pytest.raises(SessionParamsError, match="key generation"):
        CKKSAggregator(session, CKKSServerContext.from_bytes(ceremony.public_context))


def test_sid_binds_every_field(
    ceremony_and_keys: tuple[CKKSCeremony, dict[str, CKKSKeyring]],
) -> None:
    """Changing any session field changes the session id."""
    ceremony, _ = ceremony_and_keys
    base = _session(ceremony)
    variants = [
        {"run_id": "run-2"},
        {"round": 4},
        {"cluster": 0},
        {"min_cohort": 4},
        {"key_id": "1" * 32},
        {"config_hash": "ab"},
        {"model_hash": "cd"},
        {"block_lengths": {"shared.B": 1501, "top.B": 40, "low.B": 700}},
        {
            "block_supports": {
                "shared.B": frozenset(ORGS),
                "top.B": frozenset(ORGS[:3]),
                "low.B": frozenset(ORGS[2:]),
            }
        },
    ]
    sids = {base.sid} | {_session(ceremony, **v).sid for v in variants}
    assert len(sids) == len(variants) + 1
