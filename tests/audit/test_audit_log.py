"""The audit log writer: known-answer chain, durability, resume, torn tails, one writer."""

from __future__ import annotations

import fcntl
import itertools
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, runtime_checkable

import pytest
from audit_helpers import FixedClock, fixed_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedhft.audit import (
    GENESIS_PREV,
    AuditLog,
    AuditLogError,
    Check,
    EventType,
    SecretPayloadError,
    Severity,
    TornTailError,
    verify_log,
)

# ----------------------------------------------------------------------- known answer
#
# How these were produced: `AuditLog.open("kat.jsonl", party_id="kat-org",
# signing_key=Ed25519PrivateKey.from_private_bytes(bytes(range(32))), clock=...)` with
# the clock returning 2025-01-01T00:00:00Z, 00:00:01.5Z and 00:00:02Z, and the three
# appends of `_write_kat_log` below. They were then checked without fedhft:
#   - each `prev` is `printf '%s' "<previous line>" | sha256sum`;
#   - each `sig` verifies with OpenSSL 3.0: the message is the bytes
#     `fedhft/audit-record/v1\0` followed by the line with `,"sig":"..."` removed
#     (`openssl pkeyutl -verify -pubin -inkey pub.pem -rawin -in msg -sigfile sig`),
#     pub.pem being the raw public key below in SubjectPublicKeyInfo form.
# Ed25519 signatures are deterministic (RFC 8032), so the lines are stable bytes.

KAT_SEED = bytes(range(32))
KAT_PUBLIC_KEY = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
KAT_LINES = [
    b'{"event":"round_joined","party":"kat-org","payload":{"clusters":[0],"round":0},'
    b'"prev":"0000000000000000000000000000000000000000000000000000000000000000","seq":1,'
    b'"sig":"0e6ab59a75671641fb3ad4925f4d27c545f7bbd53dc3b72af7fb1ffac10da9cc7ef9f45d2faedf2b'
    b'cd07425c477682fd10535e3ae1c7fdb411ed9407cb123008","time":"2025-01-01T00:00:00.000000Z",'
    b'"v":1}',
    b'{"event":"privacy_spend","party":"kat-org","payload":{"accountant":"rdp",'
    b'"delta":0.00001,"epsilon_after":0.8535025542436351,"max_grad_norm":1,'
    b'"mechanism":"dp-sgd","noise_multiplier":1.1,"noise_source":"secure","round":0,'
    b'"sample_rate":0.01,"steps":20},'
    b'"prev":"e10ac80abc5f316ba8a283d83a42ee775c5961849ad77e1bdf806a0c7c947a90","seq":2,'
    b'"sig":"ece25074d9258344b70fb0c1beee01a46965de57453b6b730948ae4397fd078e0923bc229d9fd08b'
    b'82530a319e52e911dab61c4efa69466e7e6d30def14c5100","time":"2025-01-01T00:00:01.500000Z",'
    b'"v":1}',
    '{"event":"refusal","party":"kat-org","payload":{"reason":"budget: ε would reach 4.2 > 4",'
    '"round":1},"prev":"3a286ed92fb970a56ff99947e89011d2942764919081c994a241cdddf3c46561",'
    '"seq":3,"sig":"86f6b16b47a3892620ff275ad97d34a707ad629a728117b074d7b35332386ec731a5e0769f'
    '4464ed97f1b79756a14b71c71f38a32a02064cb8329a1e05740502",'
    '"time":"2025-01-01T00:00:02.000000Z","v":1}'.encode(),
]
KAT_HASHES = [
    "e10ac80abc5f316ba8a283d83a42ee775c5961849ad77e1bdf806a0c7c947a90",
    "3a286ed92fb970a56ff99947e89011d2942764919081c994a241cdddf3c46561",
    "6761abe76025da1ddd5a185b0aee0d844d394b24004069704167becf5a8530e5",
]
KAT_FILE_SHA256 = "49c338105a190b9e60e49294ad6abf9812966724fac8d8497da1a24fb011d471"


def _write_kat_log(path: Path) -> list[str]:
    key = Ed25519PrivateKey.from_private_bytes(KAT_SEED)
    times = iter(
        [
            datetime(2025, 1, 1, 0, 0, 0, tzinfo=UTC),
            datetime(2025, 1, 1, 0, 0, 1, 500000, tzinfo=UTC),
            datetime(2025, 1, 1, 0, 0, 2, tzinfo=UTC),
        ]
    )
    with AuditLog.open(path, party_id="kat-org", signing_key=key, clock=lambda: next(times)) as log:
        records = [
            log.append("round_joined", {"round": 0, "clusters": [0]}),
            log.append(
                "privacy_spend",
                {
                    "round": 0,
                    "mechanism": "dp-sgd",
                    "accountant": "rdp",
                    "noise_multiplier": 1.1,
                    "sample_rate": 0.01,
                    "steps": 20,
                    "max_grad_norm": 1.0,
                    "epsilon_after": 0.8535025542436351,
                    "delta": 1e-5,
                    "noise_source": "secure",
                },
            ),
            log.append("refusal", {"round": 1, "reason": "budget: ε would reach 4.2 > 4"}),
        ]
    return [record.digest() for record in records]


def test_known_answer_log_bytes_and_hash_chain(tmp_path: Path) -> None:
    """A fixed key, fixed times and fixed payloads give exactly the known lines, whose
    SHA-256s (computed with sha256sum) chain through `prev`."""
    path = tmp_path / "kat.jsonl"
    digests = _write_kat_log(path)
    data = path.read_bytes()
    assert data.split(b"\n") == [*KAT_LINES, b""]
    assert digests == KAT_HASHES
    import hashlib

    assert hashlib.sha256(data).hexdigest() == KAT_FILE_SHA256
    assert [hashlib.sha256(line).hexdigest() for line in KAT_LINES] == KAT_HASHES


def test_known_answer_log_verifies_with_the_known_public_key(tmp_path: Path) -> None:
    """The known-answer log verifies against the public key of the 32-byte seed."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = tmp_path / "kat.jsonl"
    path.write_bytes(b"\n".join(KAT_LINES) + b"\n")
    public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(KAT_PUBLIC_KEY))
    report = verify_log(path, public_key=public_key)
    assert report.ok, [f.line_text() for f in report.findings]
    assert report.head_sha256 == KAT_HASHES[-1]
    assert report.epsilon[0].recomputed == pytest.approx(0.8535025542436351, rel=1e-12)


# ----------------------------------------------------------------------- behaviour


def test_each_line_is_the_returned_record_and_links_to_the_one_before(tmp_path: Path) -> None:
    """`append` returns the record exactly as written; seq counts up from 1 and `prev`
    is the hash of the previous line (genesis: 64 zeros)."""
    path = tmp_path / "a.jsonl"
    key = fixed_key("a")
    with AuditLog.open(path, party_id="org-a", signing_key=key, clock=FixedClock()) as log:
        records = [
            log.append(EventType.ROUND_JOINED, {"round": r, "clusters": [0]}) for r in range(4)
        ]
        assert log.last_seq == 4
        assert log.head_sha256 == records[-1].digest()
    lines = path.read_bytes().splitlines()
    assert [r.canonical_bytes() for r in records] == lines
    assert [r.seq for r in records] == [1, 2, 3, 4]
    assert records[0].prev == GENESIS_PREV
    assert all(later.prev == earlier.digest() for earlier, later in itertools.pairwise(records))


def test_every_append_is_fsynced_before_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durability: each append writes its full line and fsyncs the file before returning."""
    path = tmp_path / "d.jsonl"
    log = AuditLog.open(path, party_id="org-a", signing_key=fixed_key("a"))
    synced_sizes: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced_sizes.append(os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    for round_number in range(3):
        log.append(EventType.ROUND_JOINED, {"round": round_number, "clusters": [0]})
        assert synced_sizes and synced_sizes[-1] == path.stat().st_size
    assert len(synced_sizes) == 3
    log.close()


def test_log_is_opened_append_only_and_private(tmp_path: Path) -> None:
    """The file descriptor has O_APPEND and a new log is readable by its owner only."""
    path = tmp_path / "p.jsonl"
    with AuditLog.open(path, party_id="org-a", signing_key=fixed_key("a")) as log:
        flags = fcntl.fcntl(log._fd, fcntl.F_GETFL)  # type: ignore[arg-type]
        assert flags & os.O_APPEND
    assert path.stat().st_mode & 0o077 == 0


def test_resume_continues_the_chain(tmp_path: Path) -> None:
    """Reopening verifies the existing records and appends after them; the whole log
    then verifies."""
    path = tmp_path / "r.jsonl"
    key = fixed_key("a")
    with AuditLog.open(path, party_id="org-a", signing_key=key) as log:
        first = log.append(EventType.ROUND_JOINED, {"round": 0, "clusters": [0]})
    with AuditLog.open(path, party_id="org-a", signing_key=key) as log:
        assert log.last_seq == 1
        second = log.append(EventType.ROUND_JOINED, {"round": 1, "clusters": [0]})
    assert second.seq == 2 and second.prev == first.digest()
    assert verify_log(path, public_key=key.public_key()).ok


def test_resume_refuses_a_log_that_does_not_verify(tmp_path: Path) -> None:
    """A party never extends a history it cannot vouch for: an altered record refuses
    the resume, naming the line."""
    path = tmp_path / "t.jsonl"
    key = fixed_key("a")
    with AuditLog.open(path, party_id="org-a", signing_key=key) as log:
        log.append(EventType.ROUND_JOINED, {"round": 0, "clusters": [0]})
        log.append(EventType.ROUND_JOINED, {"round": 1, "clusters": [0]})
    path.write_bytes(path.read_bytes().replace(b'"round":0', b'"round":7'))
    with pytest.raises(AuditLogError, match=r"t\.jsonl:1: seq 1: error \[signature\]"):
        AuditLog.open(path, party_id="org-a", signing_key=key)


def test_resume_refuses_another_partys_key_or_id(tmp_path: Path) -> None:
    """Opening someone else's log (other key or other party id) is refused."""
    path = tmp_path / "o.jsonl"
    with AuditLog.open(path, party_id="org-a", signing_key=fixed_key("a")) as log:
        log.append(EventType.ROUND_JOINED, {"round": 0, "clusters": [0]})
    with pytest.raises(AuditLogError, match="signature"):
        AuditLog.open(path, party_id="org-a", signing_key=fixed_key("b"))
    with pytest.raises(AuditLogError, match="party"):
        AuditLog.open(path, party_id="org-b", signing_key=fixed_key("a"))


def test_torn_tail_is_reported_and_only_repaired_on_request(tmp_path: Path) -> None:
    """A crash mid-write leaves an incomplete line: opening reports it (TornTailError);
    `repair=True` truncates it and logs `log_repaired` with the size and hash of the
    removed bytes; the log then verifies, with the repair as a notice."""
    import hashlib

    path = tmp_path / "torn.jsonl"
    key = fixed_key("a")
    with AuditLog.open(path, party_id="org-a", signing_key=key) as log:
        log.append(EventType.ROUND_JOINED, {"round": 0, "clusters": [0]})
        full = log.append(EventType.ROUND_JOINED, {"round": 1, "clusters": [0]})
    intact = path.read_bytes()
    torn_bytes = full.canonical_bytes()[:37]
    path.write_bytes(intact + torn_bytes)

    with pytest.raises(TornTailError, match="repair=True"):
        AuditLog.open(path, party_id="org-a", signing_key=key)
    assert path.read_bytes() == intact + torn_bytes  # nothing changed without consent

    with AuditLog.open(path, party_id="org-a", signing_key=key, repair=True) as log:
        assert log.last_seq == 3
    lines = path.read_bytes().splitlines()
    assert path.read_bytes().startswith(intact)
    assert len(lines) == 3
    report = verify_log(path, public_key=key.public_key())
    assert report.ok
    repaired = [f for f in report.findings if f.check is Check.REPAIRED]
    assert len(repaired) == 1 and repaired[0].severity is Severity.NOTICE and repaired[0].seq == 3
    import json

    payload = json.loads(lines[2])["payload"]
    assert payload == {
        "offset": len(intact),
        "truncated_bytes": len(torn_bytes),
        "truncated_sha256": hashlib.sha256(torn_bytes).hexdigest(),
    }


def test_a_log_has_one_writer(tmp_path: Path) -> None:
    """A second open of a log that is open for writing is refused."""
    path = tmp_path / "w.jsonl"
    key = fixed_key("a")
    with (
        AuditLog.open(path, party_id="org-a", signing_key=key),
        pytest.raises(AuditLogError, match="one writer"),
    ):
        AuditLog.open(path, party_id="org-a", signing_key=key)
    AuditLog.open(path, party_id="org-a", signing_key=key).close()


def test_times_never_go_backwards_when_the_clock_does(tmp_path: Path) -> None:
    """A clock stepping back does not produce a record earlier than its predecessor."""
    path = tmp_path / "c.jsonl"
    start = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
    times = iter([start, start - timedelta(hours=1), start + timedelta(seconds=5)])
    with AuditLog.open(
        path, party_id="org-a", signing_key=fixed_key("a"), clock=lambda: next(times)
    ) as log:
        stamps = [
            log.append(EventType.ROUND_JOINED, {"round": r, "clusters": [0]}).time for r in range(3)
        ]
    assert stamps == sorted(stamps) and stamps[0] == stamps[1]


def test_refused_payload_writes_nothing(tmp_path: Path) -> None:
    """A refused payload leaves the log untouched and the sequence unchanged."""
    path = tmp_path / "s.jsonl"
    with AuditLog.open(path, party_id="org-a", signing_key=fixed_key("a")) as log:
        with pytest.raises(SecretPayloadError):
            log.append(
                EventType.KEY_EVENT, {"kind": "x", "fingerprint": "0" * 64, "private_key": "k"}
            )
        assert log.last_seq == 0
    assert path.read_bytes() == b""


def test_append_after_close_is_refused(tmp_path: Path) -> None:
    """A closed log refuses appends with a typed error."""
    log = AuditLog.open(tmp_path / "x.jsonl", party_id="org-a", signing_key=fixed_key("a"))
    log.close()
    with pytest.raises(AuditLogError, match="closed"):
        log.append(EventType.ROUND_JOINED, {"round": 0, "clusters": [0]})


@pytest.mark.parametrize("party", ["Org A", "", "-x", "a" * 254, "st mary", "a/b"])
def test_bad_party_ids_are_refused(tmp_path: Path, party: str) -> None:
    """Party ids follow the policy identifier rule."""
    with pytest.raises(ValueError, match="party_id"):
        AuditLog.open(tmp_path / "x.jsonl", party_id=party, signing_key=fixed_key("a"))


def test_repr_shows_no_key_material(tmp_path: Path) -> None:
    """The log's repr names the party and shows no key bytes or key object."""
    from cryptography.hazmat.primitives import serialization

    key = fixed_key("a")
    raw = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    with AuditLog.open(tmp_path / "x.jsonl", party_id="org-a", signing_key=key) as log:
        text = repr(log)
    assert "org-a" in text and "Ed25519" not in text and raw.hex() not in text


@runtime_checkable
class AuditSink(Protocol):
    """The SDK trainer's sink protocol, as its brief defines it."""

    def append(self, event_type: str, payload: Mapping[str, object]) -> object: ...


def test_audit_log_satisfies_the_sdk_sink_protocol(tmp_path: Path) -> None:
    """`AuditLog` is an `AuditSink`: the trainer can emit events into it directly."""
    with AuditLog.open(tmp_path / "x.jsonl", party_id="org-a", signing_key=fixed_key("a")) as log:
        sink: AuditSink = log
        assert isinstance(sink, AuditSink)
        sink.append("round_joined", {"round": 0, "clusters": [1]})
