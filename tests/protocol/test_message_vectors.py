"""Known-answer encodings of every hand-encoded protocol message (secagg and CKKS).

Each vector is fixed inputs → the SHA-256 and length of ``encode()``'s output, so any
change to the byte layout of any message type of either mode fails here. The vectors
were produced by the encoders of commit 123ee87 (before the two modes shared one byte
writer) and checked by hand against the layouts in `protocol/secagg/messages.py` and
`protocol/ckks/_messages.py`; the full bytes of the shortest message are spelled out
below as a reading aid. Every vector must also decode back to an equal message.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fedhft.protocol.ckks._messages import CKKSEncryptedSum, CKKSUpload, EncryptedSegmentSum
from fedhft.protocol.secagg.messages import (
    AdvertisedKeys,
    EncryptedShares,
    KeyAdvertisement,
    MaskedInput,
    RelayedShares,
    SharePayload,
    SurvivorAnnouncement,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)

SID = bytes(range(32))
ROUND, CLUSTER = 7, 2
ENCRYPTION_KEY = bytes(range(100, 132))
MASKING_KEY = bytes(range(200, 232))
SIGNATURE = bytes(range(64))
HEADER = (SID, ROUND, CLUSTER)


def _advertisement(organization: str) -> KeyAdvertisement:
    return KeyAdvertisement(
        *HEADER,
        organization=organization,
        encryption_key=ENCRYPTION_KEY,
        masking_key=MASKING_KEY,
        signature=SIGNATURE,
    )


def _secagg_messages() -> dict[str, object]:
    return {
        "key_advertisement": _advertisement("org-a"),
        "advertised_keys": AdvertisedKeys(
            *HEADER, advertisements=(_advertisement("org-a"), _advertisement("org_b"))
        ),
        "encrypted_shares": EncryptedShares(
            *HEADER, sender="org-a", shares=(("org-b", b"\x01" * 40), ("org-c", b""))
        ),
        "relayed_shares": RelayedShares(
            *HEADER, recipient="org-c", shares=(("org-a", b"\x02" * 17), ("org-b", b"\x03"))
        ),
        "masked_input_32": MaskedInput(
            *HEADER,
            sender="org-a",
            bits=32,
            blocks=(
                ("lora.A[0:4]", np.array([0, 1, 2**32 - 1], dtype=np.uint32)),
                ("lora.B#1", np.array([], dtype=np.uint32)),
            ),
        ),
        "masked_input_64": MaskedInput(
            *HEADER,
            sender="org-b",
            bits=64,
            blocks=(("w", np.array([2**64 - 1, 5], dtype=np.uint64)),),
        ),
        "survivor_announcement": SurvivorAnnouncement(*HEADER, survivors=("org-a", "org-b")),
        "survivor_signature": SurvivorSignature(*HEADER, sender="org-a", signature=SIGNATURE),
        "unmask_request": UnmaskRequest(
            *HEADER,
            survivors=("org-a", "org-b"),
            dropped=("org-c",),
            blocks=("lora.A[0:4]", "w"),
            signatures=(("org-a", SIGNATURE), ("org-b", SIGNATURE[::-1])),
        ),
        "unmask_response": UnmaskResponse(
            *HEADER,
            sender="org-a",
            self_mask_shares=(("org-a", 0, 12345), ("org-a", 3, 2**500), ("org-b", 1, 1)),
            key_shares=(("org-c", 987654321),),
        ),
    }


def _encodings() -> dict[str, bytes]:
    encodings = {name: message.encode() for name, message in _secagg_messages().items()}  # type: ignore[attr-defined]
    encodings["key_advertisement_signed_payload"] = _advertisement("org-a").signed_payload()
    encodings["survivor_announcement_signed_payload"] = SurvivorAnnouncement(
        *HEADER, survivors=("org-a", "org-b")
    ).signed_payload()
    encodings["share_payload"] = SharePayload(
        sender="org-a", recipient="org-b", key_share=42, self_mask_shares=((0, 7), (4, 2**520))
    ).encode()
    encodings["ckks_upload"] = CKKSUpload(
        sid=SID,
        organization="St Mary's Hospital",
        segments=((0, (b"ct-0", b"")), (3, (b"\xff" * 9,))),
    ).encode()
    encodings["ckks_encrypted_sum"] = CKKSEncryptedSum(
        sid=SID,
        released=(
            EncryptedSegmentSum(0, ("Orgé B", "org-a"), (b"sum-0",)),
            EncryptedSegmentSum(2, (), ()),
        ),
        withheld=(1, 5),
    ).encode()
    return encodings


# name: (length, SHA-256 of the encoding)
VECTORS: dict[str, tuple[int, str]] = {
    "advertised_keys": (322, "d9d71a62af38048bbee1bcc5cc0add1ca2559ba2d9a4490cbcc74a14eb747e9b"),
    "ckks_encrypted_sum": (106, "b8296896982f59c607da52b7ab8f0cb954edfcd695f653a777cb97a552fb3fd0"),
    "ckks_upload": (104, "ed504189bb78d3b8b91aad2654eee6ea4cd9ad6937074e6006b05972b34fc2c3"),
    "encrypted_shares": (120, "2a43a95a491e9ee660911b92d77f92167e8b640475506b625f0f60fcb7431791"),
    "key_advertisement": (184, "2976cf29014d4cd21565adc756e1194617e21809fa5cd7d42a02c2487176b0b7"),
    "key_advertisement_signed_payload": (
        120,
        "e2e9a1af73085fcaa1df37d7fa895a5d4bbff5eb913e739df49e9c7e6ad4fd99",
    ),
    "masked_input_32": (102, "85b659134f74400084908780cc584ec73faabb763c060b2c5c2c0b15bbf76823"),
    "masked_input_64": (83, "9524958a8b88fc9ab23bed1c27f30c2cb88410240f67d7d94a51c43c64f6a441"),
    "relayed_shares": (98, "b45d9b2ea6cd8c3e8e654d45e83411193b837b018cd5382dd02819bcf251ae5d"),
    "share_payload": (222, "8e3bc33b8889b2b69f6b8ddf9d432c50cdaaa2e56ea6259588821188d597253c"),
    "survivor_announcement": (
        66,
        "a6cdfc4ea1dcaaa44dc9e3d57d4a5c93abf79d250845d96c0a6eb36870fa79d9",
    ),
    "survivor_announcement_signed_payload": (
        66,
        "a6cdfc4ea1dcaaa44dc9e3d57d4a5c93abf79d250845d96c0a6eb36870fa79d9",
    ),
    "survivor_signature": (
        120,
        "921e16263ceb2bf5e249223358ee511de2c16ddcbcb4529192a84f14a83d0006",
    ),
    "unmask_request": (238, "db58c8b353474c982fbe23309010f603743dbd865ccaefff6414ad58670a0333"),
    "unmask_response": (364, "8960789d7e90d847c50e5b33eae5dd15217086d9e0d1896aad7ef2211dbd6c6f"),
}

SURVIVOR_SIGNATURE_HEX = (
    "46485341"  # "FHSA"
    "01"  # version
    "07" + SID.hex() + "0000000000000007"  # kind: SURVIVOR_SIGNATURE  # round, u64 big-endian
    "00000002"  # cluster, u32 big-endian
    "05"
    + b"org-a".hex()  # sender: u8 length, ASCII
    + SIGNATURE.hex()
)


def test_every_message_type_of_both_modes_has_a_vector() -> None:
    """The vectors cover every secagg message kind, the signed payloads, the sealed
    share payload and both CKKS messages."""
    assert set(_encodings()) == set(VECTORS)


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_encoding_is_byte_identical_to_the_known_answer(name: str) -> None:
    """``encode()`` of fixed inputs gives exactly the known bytes."""
    data = _encodings()[name]
    assert (len(data), hashlib.sha256(data).hexdigest()) == VECTORS[name]


def test_shortest_message_spelled_out() -> None:
    """A survivor signature is header ‖ u8-length ASCII sender ‖ 64-byte signature."""
    data = _secagg_messages()["survivor_signature"].encode()  # type: ignore[attr-defined]
    assert data.hex() == SURVIVOR_SIGNATURE_HEX


@pytest.mark.parametrize("name", sorted(_secagg_messages()))
def test_secagg_vectors_decode_to_equal_messages(name: str) -> None:
    """Every secagg vector decodes back to the message it encodes."""
    message = _secagg_messages()[name]
    decoded = type(message).decode(message.encode())  # type: ignore[attr-defined]
    assert decoded.encode() == message.encode()  # type: ignore[attr-defined]


def test_ckks_vectors_decode_to_equal_messages() -> None:
    """Both CKKS vectors decode back to equal messages."""
    encodings = _encodings()
    upload = CKKSUpload.decode(encodings["ckks_upload"], max_ciphertext_bytes=64)
    total = CKKSEncryptedSum.decode(encodings["ckks_encrypted_sum"], max_ciphertext_bytes=64)
    assert upload.organization == "St Mary's Hospital"
    assert upload.encode() == encodings["ckks_upload"]
    assert total.released[0].contributors == ("Orgé B", "org-a")
    assert total.encode() == encodings["ckks_encrypted_sum"]
