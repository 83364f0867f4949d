"""A dishonest server or peer is caught: every forged, replayed or inconsistent message
raises its typed error, and a client that detects one reveals nothing further.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from secagg_helpers import Harness, as_inputs, grid_levels, make_params, roster_of

from fedhft.protocol import (
    AdvertisedKeys,
    EncryptedShares,
    KeyAdvertisement,
    MaskedInput,
    RelayedShares,
    SessionParams,
    SurvivorAnnouncement,
    UnmaskRequest,
    UnmaskResponse,
)
from fedhft.protocol._crypto import sign
from fedhft.protocol.errors import (
    CohortTooSmallError,
    DecryptionError,
    DuplicateMessageError,
    EquivocationError,
    ForgedMessageError,
    InvalidInputError,
    MalformedMessageError,
    QuantizationOverflowError,
    ReconstructionError,
    ReplayError,
    StageError,
    ThresholdError,
    UnmaskRuleError,
)


def _inputs(params: SessionParams, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    return as_inputs(params, grid_levels(params, np.random.default_rng(seed)))


def _until_unmask(harness: Harness) -> UnmaskRequest:
    advertised = harness.advertise()
    relayed = harness.share(advertised)
    announcement = harness.mask(relayed, _inputs(harness.params))
    return harness.sign(announcement)


# --------------------------------------------------------------------------- advertisements


def test_server_rejects_advertisement_with_a_forged_signature() -> None:
    """A flipped bit in an advertisement's signature is a ForgedMessageError."""
    harness = Harness(make_params())
    ad = harness.clients["org-000"].advertise_keys()
    forged = dataclasses.replace(ad, signature=bytes([ad.signature[0] ^ 1]) + ad.signature[1:])
    with pytest.raises(ForgedMessageError, match="org-000"):
        harness.server.receive(forged.encode())


def test_server_rejects_advertisement_signed_by_another_organization() -> None:
    """org-001 cannot advertise keys in org-000's name: the signature is checked by name."""
    harness = Harness(make_params())
    ad = harness.clients["org-001"].advertise_keys()
    impostor = dataclasses.replace(ad, organization="org-000")
    impostor = dataclasses.replace(
        impostor,
        signature=sign(
            harness.identities["org-001"],
            KeyAdvertisement.SIGNATURE_DOMAIN,
            impostor.signed_payload(),
        ),
    )
    with pytest.raises(ForgedMessageError):
        harness.server.receive(impostor)


def test_server_rejects_advertisement_from_outside_the_roster() -> None:
    """An advertisement from an organization outside the roster is refused."""
    harness = Harness(make_params())
    ad = dataclasses.replace(harness.clients["org-000"].advertise_keys(), organization="mallory")
    with pytest.raises(ForgedMessageError, match="not in the roster"):
        harness.server.receive(ad)


def test_client_rejects_a_key_substituted_by_the_server() -> None:
    """The server swapping a peer's masking key (keeping its signature) is caught."""
    harness = Harness(make_params())
    advertised = harness.advertise()
    ads = list(advertised.advertisements)
    ads[1] = dataclasses.replace(ads[1], masking_key=ads[2].masking_key[::-1])
    with pytest.raises(ForgedMessageError, match="org-001"):
        harness.clients["org-000"].share_keys(
            dataclasses.replace(advertised, advertisements=tuple(ads))
        )


def test_client_rejects_a_list_that_omits_its_own_advertisement() -> None:
    """A list of advertisements without the client's own is refused."""
    harness = Harness(make_params())
    advertised = harness.advertise()
    others = tuple(ad for ad in advertised.advertisements if ad.organization != "org-000")
    with pytest.raises(ForgedMessageError, match="own"):
        harness.clients["org-000"].share_keys(
            dataclasses.replace(advertised, advertisements=others)
        )


def test_server_rejects_a_duplicated_advertisement() -> None:
    """The same organization advertising twice is a DuplicateMessageError."""
    harness = Harness(make_params())
    ad = harness.clients["org-000"].advertise_keys()
    harness.server.receive(ad.encode())
    with pytest.raises(DuplicateMessageError, match="already"):
        harness.server.receive(ad.encode())


def test_client_rejects_a_duplicated_advertisement_in_the_list() -> None:
    """A relayed list naming one organization twice is refused by the client too."""
    harness = Harness(make_params())
    advertised = harness.advertise()
    ads = advertised.advertisements
    doubled = dataclasses.replace(advertised, advertisements=(ads[0], *ads))
    with pytest.raises(DuplicateMessageError, match="twice"):
        harness.clients["org-002"].share_keys(doubled)
    with pytest.raises(MalformedMessageError, match="sorted and unique"):
        doubled.encode()


def test_copied_public_key_is_rejected_by_server_and_client() -> None:
    """A peer re-advertising another's public key (properly signed) is refused."""
    harness = Harness(make_params())
    honest = harness.clients["org-000"].advertise_keys()
    harness.server.receive(honest)
    copier = harness.clients["org-001"].advertise_keys()
    copied = dataclasses.replace(copier, masking_key=honest.masking_key)
    copied = dataclasses.replace(
        copied,
        signature=sign(
            harness.identities["org-001"],
            KeyAdvertisement.SIGNATURE_DOMAIN,
            copied.signed_payload(),
        ),
    )
    with pytest.raises(DuplicateMessageError, match="already in use"):
        harness.server.receive(copied)
    for org in ("org-002", "org-003", "org-004"):
        harness.server.receive(harness.clients[org].advertise_keys())
    advertised = harness.server.finish_advertise()
    colluding = dataclasses.replace(
        advertised,
        advertisements=tuple(
            sorted((*advertised.advertisements, copied), key=lambda a: a.organization)
        ),
    )
    with pytest.raises(DuplicateMessageError, match="already advertised"):
        harness.clients["org-002"].share_keys(colluding)


# --------------------------------------------------------------------------- replays


@pytest.mark.parametrize(
    ("change", "match"),
    [({"round": 2}, "round"), ({"cluster": 1}, "cluster"), ({"run_id": "run-2"}, "another")],
)
def test_messages_from_another_session_are_replays(change: dict[str, object], match: str) -> None:
    """A message from another round, cluster or run is a ReplayError on either side."""
    params = make_params()
    other = make_params(**change)  # type: ignore[arg-type]
    assert other.sid != params.sid
    here = Harness(params)
    there = Harness(other, here.identities)
    advertised_there = there.advertise()
    with pytest.raises(ReplayError, match=match):
        here.server.receive(advertised_there.advertisements[0].encode())
    here.advertise()
    with pytest.raises(ReplayError, match=match):
        here.clients["org-000"].share_keys(advertised_there)


def test_resent_masked_input_is_a_replay() -> None:
    """Sending a masked input twice is refused (DuplicateMessageError is a ReplayError)."""
    params = make_params()
    harness = Harness(params)
    relayed = harness.share(harness.advertise())
    inputs = _inputs(params)
    masked = harness.clients["org-000"].mask_input(relayed["org-000"], inputs["org-000"])
    harness.server.receive(masked.encode())
    with pytest.raises(ReplayError):
        harness.server.receive(masked.encode())


# --------------------------------------------------------------------------- encrypted shares


@pytest.mark.parametrize("bundle", [0, 1, 3])
@pytest.mark.parametrize("where", ["nonce", "ciphertext", "tag"])
def test_flipped_bit_in_an_encrypted_share_is_rejected(bundle: int, where: str) -> None:
    """Any flipped bit in any relayed share bundle is one opaque DecryptionError."""
    params = make_params()
    harness = Harness(params)
    relayed = harness.share(harness.advertise())["org-002"]
    sender, sealed = relayed.shares[bundle]
    position = {"nonce": 5, "ciphertext": len(sealed) // 2, "tag": len(sealed) - 1}[where]
    tampered = bytearray(sealed)
    tampered[position] ^= 0x10
    shares = list(relayed.shares)
    shares[bundle] = (sender, bytes(tampered))
    client = harness.clients["org-002"]
    with pytest.raises(DecryptionError) as caught:
        client.mask_input(
            dataclasses.replace(relayed, shares=tuple(shares)), _inputs(params)["org-002"]
        )
    assert str(caught.value) == "an encrypted share failed to decrypt"
    with pytest.raises(StageError, match="aborted"):
        client.sign_survivors(
            SurvivorAnnouncement(params.sid, 1, 0, survivors=tuple(params.roster))
        )


def test_share_bundle_relayed_to_the_wrong_recipient_is_rejected() -> None:
    """A bundle meant for org-001, relabelled and relayed to org-002, does not decrypt."""
    params = make_params()
    harness = Harness(params)
    relayed = harness.share(harness.advertise())
    meant_for_001 = dict(relayed["org-001"].shares)["org-000"]
    shares = dict(relayed["org-002"].shares)
    shares["org-000"] = meant_for_001
    misdirected = dataclasses.replace(relayed["org-002"], shares=tuple(sorted(shares.items())))
    with pytest.raises(DecryptionError):
        harness.clients["org-002"].mask_input(misdirected, _inputs(params)["org-002"])


def test_server_rejects_share_bundles_for_the_wrong_recipients() -> None:
    """A client sending bundles to a non-neighbour set, or of a wrong size, is refused."""
    params = make_params()
    harness = Harness(params)
    advertised = harness.advertise()
    shares = harness.clients["org-000"].share_keys(advertised)
    with pytest.raises(MalformedMessageError, match="one share bundle to each"):
        harness.server.receive(dataclasses.replace(shares, shares=shares.shares[1:]))
    padded = ((shares.shares[0][0], shares.shares[0][1] + b"\x00"), *shares.shares[1:])
    with pytest.raises(MalformedMessageError, match="bytes, expected"):
        harness.server.receive(dataclasses.replace(shares, shares=padded))


# --------------------------------------------------------------------------- consistency


def test_equivocated_survivor_sets_are_detected() -> None:
    """The server showing two clients different survivor sets cannot unmask anything.

    org-000 signs the full set, org-001 a set without org-004; when the server offers
    org-000 a request carrying org-001's signature, it does not verify over the set
    org-000 signed.
    """
    params = make_params(5, threshold=3)
    harness = Harness(params)
    relayed = harness.share(harness.advertise())
    full = harness.mask(relayed, _inputs(params))
    partial = dataclasses.replace(full, survivors=full.survivors[:-1])
    sig_full = harness.clients["org-000"].sign_survivors(full)
    sig_partial = harness.clients["org-001"].sign_survivors(partial)
    sig_other = harness.clients["org-002"].sign_survivors(full)
    request = UnmaskRequest(
        params.sid,
        params.round,
        params.cluster,
        survivors=full.survivors,
        dropped=(),
        blocks=tuple(params.block_lengths),
        signatures=tuple((s.sender, s.signature) for s in (sig_full, sig_partial, sig_other)),
    )
    with pytest.raises(EquivocationError, match="org-001"):
        harness.clients["org-000"].unmask(request)


def test_request_with_a_survivor_set_other_than_the_signed_one_is_refused() -> None:
    """An unmask request whose survivor set differs from the one signed is equivocation."""
    params = make_params(5, threshold=3)
    harness = Harness(params)
    request = _until_unmask(harness)
    altered = dataclasses.replace(request, survivors=request.survivors[:-1])
    with pytest.raises(EquivocationError, match="signed"):
        harness.clients["org-000"].unmask(altered)


def test_surviving_neighbour_that_never_shared_keys_is_equivocation() -> None:
    """A survivor set naming a neighbour whose shares were withheld from us is refused."""
    params = make_params(5, threshold=3)
    harness = Harness(params)
    relayed = harness.share(harness.advertise())
    withheld = dataclasses.replace(
        relayed["org-000"],
        shares=tuple(s for s in relayed["org-000"].shares if s[0] != "org-004"),
    )
    relayed = {**relayed, "org-000": withheld}
    announcement = harness.mask(relayed, _inputs(params))
    with pytest.raises(EquivocationError, match="never shared keys"):
        harness.clients["org-000"].sign_survivors(announcement)


def test_too_few_signatures_refuse_unmasking() -> None:
    """With fewer than t valid signatures on the survivor set nothing is revealed."""
    params = make_params(5, threshold=3)
    harness = Harness(params)
    request = _until_unmask(harness)
    short = dataclasses.replace(request, signatures=request.signatures[:2])
    with pytest.raises(ThresholdError, match="confirmed"):
        harness.clients["org-000"].unmask(short)


def test_forged_signature_in_the_request_is_refused() -> None:
    """A random 64-byte 'signature' in the request does not pass for a survivor's."""
    params = make_params(5, threshold=3)
    harness = Harness(params)
    request = _until_unmask(harness)
    signatures = list(request.signatures)
    signatures[1] = (signatures[1][0], bytes(64))
    with pytest.raises(EquivocationError):
        harness.clients["org-000"].unmask(
            dataclasses.replace(request, signatures=tuple(signatures))
        )


# --------------------------------------------------------------------------- unmask rule


def test_request_for_both_secrets_of_one_peer_is_refused() -> None:
    """Naming a survivor also as dropped (asking for both of its secrets) is refused."""
    params = make_params(5, threshold=3)
    harness = Harness(params)
    request = _until_unmask(harness)
    both = dataclasses.replace(request, dropped=("org-003",))
    with pytest.raises(UnmaskRuleError, match="both"):
        harness.clients["org-000"].unmask(both)


def test_request_for_the_clients_own_masking_key_is_refused() -> None:
    """A request naming the client itself as dropped is refused."""
    params = make_params(5, threshold=3)
    harness = Harness(params)
    request = _until_unmask(harness)
    with pytest.raises(UnmaskRuleError, match="own masking key"):
        harness.clients["org-000"].unmask(dataclasses.replace(request, dropped=("org-000",)))


def test_second_unmask_request_is_refused() -> None:
    """After answering once a client answers no second request (no secrets left)."""
    params = make_params(5, threshold=3)
    harness = Harness(params)
    request = _until_unmask(harness)
    harness.clients["org-000"].unmask(request)
    with pytest.raises(StageError):
        harness.clients["org-000"].unmask(request)


def test_server_rejects_a_response_revealing_unrequested_shares() -> None:
    """A response carrying a key share of a survivor (not asked for) is refused."""
    params = make_params(5, threshold=3)
    harness = Harness(params)
    request = _until_unmask(harness)
    response = harness.clients["org-000"].unmask(request)
    extra = dataclasses.replace(response, key_shares=(("org-001", 12345),))
    with pytest.raises(UnmaskRuleError, match="did not ask"):
        harness.server.receive(extra)


def test_inconsistent_key_shares_are_detected() -> None:
    """Wrong key shares for a dropped peer fail the check against its advertised key."""
    params = make_params(5, threshold=3)
    harness = Harness(params)
    relayed = harness.share(harness.advertise())
    announcement = harness.mask(relayed, _inputs(params), orgs=params.roster[1:])
    request = harness.sign(announcement)
    for org in request.survivors:
        response = harness.clients[org].unmask(request)
        lied = tuple((owner, (value + 1) % 2**256) for owner, value in response.key_shares)
        harness.server.receive(dataclasses.replace(response, key_shares=lied))
    with pytest.raises(ReconstructionError):
        harness.server.finish_unmask()


# --------------------------------------------------------------------------- minimum cohort


def test_session_refuses_a_block_held_by_fewer_than_min_cohort() -> None:
    """A block with two holders cannot enter a session; the error names it for the caller."""
    roster = roster_of(5)
    with pytest.raises(CohortTooSmallError) as caught:
        make_params(
            5,
            block_lengths={"shared": 3, "pair": 2},
            block_supports={"shared": roster, "pair": roster[:2]},
        )
    assert caught.value.blocks == ("pair",)


def test_request_to_unmask_a_block_below_min_cohort_is_refused() -> None:
    """A client refuses to reveal seeds for a block whose surviving holders are too few."""
    roster = roster_of(6)
    params = make_params(
        6,
        block_lengths={"full": 3, "small": 2},
        block_supports={"full": roster, "small": roster[:3]},
    )
    harness = Harness(params)
    relayed = harness.share(harness.advertise())
    announcement = harness.mask(relayed, _inputs(params), orgs=params.roster[1:])
    request = harness.sign(announcement)
    assert request.blocks == ("full",)
    greedy = dataclasses.replace(request, blocks=("full", "small"))
    with pytest.raises(CohortTooSmallError) as caught:
        harness.clients["org-001"].unmask(greedy)
    assert caught.value.blocks == ("small",)


def test_session_below_min_cohort_aborts_before_unmasking() -> None:
    """With t = 2 of 3, one dropout leaves 2 inputs: refused as a too-small cohort."""
    params = make_params(3, threshold=2)
    harness = Harness(params)
    relayed = harness.share(harness.advertise())
    with pytest.raises(CohortTooSmallError, match="minimum cohort"):
        harness.mask(relayed, _inputs(params), orgs=params.roster[:2])


# --------------------------------------------------------------------------- misuse


def test_stages_must_run_in_order() -> None:
    """Calling a later stage first is a StageError on client and server."""
    params = make_params()
    harness = Harness(params)
    with pytest.raises(StageError, match="out of order"):
        harness.clients["org-000"].sign_survivors(
            SurvivorAnnouncement(params.sid, 1, 0, survivors=tuple(params.roster))
        )
    with pytest.raises(StageError, match="cannot finish"):
        harness.server.finish_masked_input()


def test_late_message_from_a_dropped_client_is_refused() -> None:
    """A client that missed a stage cannot rejoin later."""
    params = make_params(5, threshold=3)
    harness = Harness(params)
    advertised = harness.advertise()
    late = harness.clients["org-004"].share_keys(advertised)
    harness.share(advertised, orgs=params.roster[:4])
    with pytest.raises(StageError):
        harness.server.receive(late)


def test_server_rejects_masked_input_with_wrong_blocks_or_width() -> None:
    """Masked inputs must carry exactly the sender's blocks, at the session's word width."""
    params = make_params()
    harness = Harness(params)
    relayed = harness.share(harness.advertise())
    masked = harness.clients["org-000"].mask_input(relayed["org-000"], _inputs(params)["org-000"])
    with pytest.raises(MalformedMessageError, match="exactly"):
        harness.server.receive(dataclasses.replace(masked, blocks=masked.blocks[:1]))
    wide = tuple((block, words.astype(np.uint64)) for block, words in masked.blocks)
    with pytest.raises(MalformedMessageError, match="64-bit"):
        harness.server.receive(
            MaskedInput(masked.sid, 1, 0, sender="org-000", bits=64, blocks=wide)
        )
    short = tuple((block, words[:-1]) for block, words in masked.blocks)
    with pytest.raises(MalformedMessageError, match="must be"):
        harness.server.receive(dataclasses.replace(masked, blocks=short))
    harness.server.receive(masked)


def test_client_input_errors_leave_the_session_usable() -> None:
    """A missing block, a wrong length or a value beyond clip is refused; a corrected
    input then goes through and the sum is still exact.
    """
    params = make_params(4, threshold=3)
    harness = Harness(params)
    relayed = harness.share(harness.advertise())
    levels = grid_levels(params, np.random.default_rng(4))
    inputs = as_inputs(params, levels)
    client = harness.clients["org-000"]
    own = inputs["org-000"]
    first, second = list(own)
    with pytest.raises(InvalidInputError, match="missing"):
        client.mask_input(relayed["org-000"], {first: own[first]})
    with pytest.raises(InvalidInputError, match="vector of"):
        client.mask_input(relayed["org-000"], {**own, first: own[first][:-1]})
    with pytest.raises(QuantizationOverflowError, match="clip"):
        client.mask_input(relayed["org-000"], {**own, second: own[second] * 3 + 2})
    result = harness.unmask(harness.sign(harness.mask(relayed, inputs)))
    for block in params.block_lengths:
        exact = sum(levels[org][block] for org in params.roster) / params.scale
        np.testing.assert_array_equal(result.blocks[block].sum, exact)


def test_relayed_shares_for_another_client_are_refused() -> None:
    """A client refuses a bundle set addressed to someone else."""
    params = make_params()
    harness = Harness(params)
    relayed = harness.share(harness.advertise())
    with pytest.raises(MalformedMessageError, match="delivered"):
        harness.clients["org-000"].mask_input(relayed["org-001"], _inputs(params)["org-000"])


def test_server_refuses_messages_it_sends_itself() -> None:
    """Server-to-client message kinds are not accepted as client input."""
    params = make_params()
    harness = Harness(params)
    with pytest.raises(MalformedMessageError, match="sent by the server"):
        harness.server.receive(AdvertisedKeys(params.sid, 1, 0, advertisements=()))
    with pytest.raises(MalformedMessageError, match="sent by the server"):
        harness.server.receive(RelayedShares(params.sid, 1, 0, recipient="org-000", shares=()))


def test_unmask_response_repr_hides_shares() -> None:
    """Share values never appear in a response's repr."""
    response = UnmaskResponse(
        b"\x00" * 32,
        1,
        0,
        sender="org-000",
        self_mask_shares=(("org-001", 0, 987654321),),
        key_shares=(("org-002", 123456789),),
    )
    assert "987654321" not in repr(response) and "123456789" not in repr(response)


def test_encrypted_shares_require_sorted_recipients() -> None:
    """Encoding refuses unsorted entries, so every message has one canonical encoding."""
    message = EncryptedShares(
        b"\x00" * 32, 1, 0, sender="org-000", shares=(("org-002", b"x"), ("org-001", b"y"))
    )
    with pytest.raises(MalformedMessageError, match="sorted"):
        message.encode()
