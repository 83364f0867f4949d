"""The client half of masking-mode secure aggregation: one state machine per session.

Implements the client of SecAgg (Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017) with the sparse neighbour graph of
SecAgg+ (Bell et al., CCS 2020) and per-block supports (ARCHITECTURE.md §4.1): advertise fresh
keys, Shamir-share secrets to neighbours, send the masked input, sign the survivor set,
then reveal exactly one secret per peer.

Notes:
    The client trusts nothing the server relays. Advertisements must carry valid
    signatures by the peers' identity keys (so the server cannot substitute keys); every
    message must carry this session's id; the survivor set must be the one the client
    signed and be confirmed by at least ``t`` valid signatures; and the unmask request
    may never name one peer both as survivor (self-mask share) and as dropped (masking
    key share): with both, the server would unmask that peer's individual input. Any
    failed check aborts this client's session for good and drops its secrets.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .._crypto import (
    agreement_private_bytes,
    agreement_public_bytes,
    apply_masks,
    generate_agreement_key,
    open_sealed,
    seal,
    sign,
    verify_signature,
)
from ..errors import (
    CohortTooSmallError,
    DuplicateMessageError,
    EquivocationError,
    ForgedMessageError,
    InvalidInputError,
    MalformedMessageError,
    ProtocolError,
    QuantizationOverflowError,
    ReplayError,
    SessionParamsError,
    StageError,
    ThresholdError,
    UnmaskRuleError,
)
from ._masks import (
    pairwise_mask,
    pairwise_seed,
    self_mask,
    share_associated_data,
    share_encryption_key,
    subtracts_pairwise_mask,
)
from ._params import SessionParams
from ._shamir import split_secret
from .messages import (
    AdvertisedKeys,
    EncryptedShares,
    KeyAdvertisement,
    MaskedInput,
    RelayedShares,
    SharePayload,
    Stage,
    SurvivorAnnouncement,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
    Words,
    _Message,
)

_P = ParamSpec("_P")
_R = TypeVar("_R")


def check_session(params: SessionParams, message: _Message) -> None:
    """Raise :class:`ReplayError` unless ``message`` carries this session's header."""
    if message.round != params.round:
        raise ReplayError(
            f"{type(message).__name__} is for round {message.round}; this session is round "
            f"{params.round}"
        )
    if message.cluster != params.cluster:
        raise ReplayError(
            f"{type(message).__name__} is for cluster {message.cluster}; this session sums "
            f"cluster {params.cluster}"
        )
    if message.sid != params.sid:
        raise ReplayError(
            f"{type(message).__name__} belongs to another session (its session id differs: "
            "another run, roster, configuration or model)"
        )


def _stage(stage: Stage, then: Stage | None) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Run a client stage only in order; on any protocol error abort the session."""

    def decorate(method: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(method)
        def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            client = args[0]
            assert isinstance(client, SecAggClient)
            client._enter(stage)
            try:
                result = method(*args, **kwargs)
            except (InvalidInputError, QuantizationOverflowError):
                # The caller's own input was refused before any state changed: it may
                # correct the input and call the stage again.
                raise
            except ProtocolError:
                client._abort()
                raise
            client._next = then
            return result

        return run

    return decorate


class SecAggClient:
    """One organization's side of one masking-mode session.

    Call the stage methods in order, each with the server's message of the previous
    stage: :meth:`advertise_keys`, :meth:`share_keys`, :meth:`mask_input`,
    :meth:`sign_survivors`, :meth:`unmask`.
    """

    def __init__(
        self,
        params: SessionParams,
        *,
        organization: str,
        identity_key: Ed25519PrivateKey,
        peer_identities: Mapping[str, Ed25519PublicKey],
    ) -> None:
        if organization not in params.roster:
            raise SessionParamsError(f"organization {organization!r} is not in the roster")
        missing = [org for org in params.roster if org not in peer_identities]
        if missing:
            raise SessionParamsError(
                f"no identity key for {len(missing)} roster members (first: {missing[0]!r})"
            )
        own_public = identity_key.public_key().public_bytes_raw()
        if peer_identities[organization].public_bytes_raw() != own_public:
            raise SessionParamsError(
                f"`identity_key` does not match the identity registered for {organization!r}"
            )
        self._params = params
        self._organization = organization
        self._identity_key = identity_key
        self._peer_identities = {org: peer_identities[org] for org in params.roster}
        self._next: Stage | None = Stage.ADVERTISE
        self._aborted = False
        self._encryption_key: X25519PrivateKey | None = None
        self._masking_key: X25519PrivateKey | None = None
        self._advertisement: KeyAdvertisement | None = None
        self._advertised: dict[str, KeyAdvertisement] = {}
        self._self_mask_seeds: dict[int, bytes] = {}
        self._payloads: dict[str, SharePayload] = {}
        self._announcement: SurvivorAnnouncement | None = None

    @property
    def organization(self) -> str:
        """The organization this client acts for."""
        return self._organization

    @property
    def params(self) -> SessionParams:
        """The session's parameters."""
        return self._params

    @property
    def next_stage(self) -> Stage | None:
        """The stage the client expects next; ``None`` once done or aborted."""
        return None if self._aborted else self._next

    def _enter(self, stage: Stage) -> None:
        if self._aborted:
            raise StageError(f"{self._organization}: the session was aborted; start a new one")
        if self._next != stage:
            expected = self._next.value if self._next else "nothing (session finished)"
            raise StageError(
                f"{self._organization}: stage {stage.value!r} called out of order; "
                f"expected {expected}"
            )

    def _abort(self) -> None:
        self._aborted = True
        self._forget_secrets()

    def _forget_secrets(self) -> None:
        self._encryption_key = None
        self._masking_key = None
        self._self_mask_seeds = {}
        self._payloads = {}

    # ------------------------------------------------------------------ stage 1

    @_stage(Stage.ADVERTISE, then=Stage.SHARE_KEYS)
    def advertise_keys(self) -> KeyAdvertisement:
        """Draw fresh X25519 keys and sign their advertisement with the identity key."""
        self._encryption_key = generate_agreement_key()
        self._masking_key = generate_agreement_key()
        unsigned = KeyAdvertisement(
            self._params.sid,
            self._params.round,
            self._params.cluster,
            organization=self._organization,
            encryption_key=agreement_public_bytes(self._encryption_key),
            masking_key=agreement_public_bytes(self._masking_key),
            signature=bytes(64),
        )
        signature = sign(
            self._identity_key, KeyAdvertisement.SIGNATURE_DOMAIN, unsigned.signed_payload()
        )
        self._advertisement = KeyAdvertisement(
            unsigned.sid,
            unsigned.round,
            unsigned.cluster,
            organization=unsigned.organization,
            encryption_key=unsigned.encryption_key,
            masking_key=unsigned.masking_key,
            signature=signature,
        )
        return self._advertisement

    # ------------------------------------------------------------------ stage 2

    @_stage(Stage.SHARE_KEYS, then=Stage.MASKED_INPUT)
    def share_keys(self, advertised: AdvertisedKeys) -> EncryptedShares:
        """Verify every advertisement, then Shamir-share our secrets to our neighbours.

        Raises:
            ReplayError: the message belongs to another session, round or cluster.
            ForgedMessageError: an advertisement's signature does not verify, names an
                organization outside the roster, or ours was altered or left out.
            DuplicateMessageError: an organization advertised twice, or two
                advertisements share a public key.
            ThresholdError: fewer than ``t`` of our share holders advertised.
        """
        params = self._params
        check_session(params, advertised)
        advertisements: dict[str, KeyAdvertisement] = {}
        public_keys: set[bytes] = set()
        for ad in advertised.advertisements:
            check_session(params, ad)
            if ad.organization not in params.roster:
                raise ForgedMessageError(
                    f"advertisement from {ad.organization!r}, who is not in the roster"
                )
            if ad.organization in advertisements:
                raise DuplicateMessageError(f"{ad.organization!r} advertised keys twice")
            verify_signature(
                self._peer_identities[ad.organization],
                ad.signature,
                KeyAdvertisement.SIGNATURE_DOMAIN,
                ad.signed_payload(),
                signer=ad.organization,
            )
            for key in (ad.encryption_key, ad.masking_key):
                if key in public_keys:
                    raise DuplicateMessageError(
                        f"{ad.organization!r} advertised a public key already advertised"
                    )
                public_keys.add(key)
            advertisements[ad.organization] = ad
        if advertisements.get(self._organization) != self._advertisement:
            raise ForgedMessageError(
                "the server's list of advertisements alters or omits this client's own"
            )
        holders = sorted(params.share_holders(self._organization) & advertisements.keys())
        self._require_threshold(len(advertisements), "organizations advertised keys")
        own_threshold = params.threshold_of(self._organization)
        self._require_threshold(
            len(holders), "of this client's share holders advertised keys", own_threshold
        )
        self._advertised = advertisements

        assert self._masking_key is not None and self._encryption_key is not None
        xs = [params.holder_index[org] for org in holders]
        key_secret = int.from_bytes(agreement_private_bytes(self._masking_key), "big")
        key_shares = split_secret(key_secret, threshold=own_threshold, holders=xs)
        self._self_mask_seeds = {g: os.urandom(32) for g in params.groups_of(self._organization)}
        seed_shares = {
            g: split_secret(int.from_bytes(seed, "big"), threshold=own_threshold, holders=xs)
            for g, seed in self._self_mask_seeds.items()
        }
        sealed: list[tuple[str, bytes]] = []
        for position, holder in enumerate(holders):
            payload = SharePayload(
                sender=self._organization,
                recipient=holder,
                key_share=key_shares[position].y,
                self_mask_shares=tuple(
                    (g, shares[position].y) for g, shares in sorted(seed_shares.items())
                ),
            )
            if holder == self._organization:
                self._payloads[holder] = payload
                continue
            key = share_encryption_key(
                self._encryption_key,
                advertisements[holder].encryption_key,
                sid=params.sid,
                sender=self._organization,
                recipient=holder,
            )
            associated_data = share_associated_data(
                sid=params.sid,
                round=params.round,
                cluster=params.cluster,
                sender=self._organization,
                recipient=holder,
            )
            sealed.append((holder, seal(key, payload.encode(), associated_data)))
        return EncryptedShares(
            params.sid,
            params.round,
            params.cluster,
            sender=self._organization,
            shares=tuple(sealed),
        )

    # ------------------------------------------------------------------ stage 3

    @_stage(Stage.MASKED_INPUT, then=Stage.CONSISTENCY)
    def mask_input(
        self, relayed: RelayedShares, inputs: Mapping[str, npt.ArrayLike]
    ) -> MaskedInput:
        """Decrypt the shares relayed to us, then quantize and mask each of our blocks.

        ``inputs`` maps each block this organization holds (and only those) to a vector
        of the block's length with every value within ``±params.clip``.

        Raises:
            ReplayError: the message belongs to another session, round or cluster.
            DecryptionError: a sealed share fails to decrypt (tampered or misdirected).
            ForgedMessageError: a decrypted bundle names another sender or recipient.
            MalformedMessageError: a share comes from a non-neighbour or is malformed.
            ThresholdError: fewer than ``t`` of our share holders shared keys.
            InvalidInputError: ``inputs`` misses a block, adds one, or has a wrong length.
            QuantizationOverflowError: an input value lies outside ``±params.clip``.
        """
        params = self._params
        blocks = params.blocks_of(self._organization)
        self._check_inputs(inputs, blocks)
        # Quantize first: a refused input leaves the state untouched, so it can be retried.
        levels = dict(
            zip(blocks, params.fixed_point.quantize_all([inputs[b] for b in blocks]), strict=True)
        )
        check_session(params, relayed)
        if relayed.recipient != self._organization:
            raise MalformedMessageError(
                f"shares addressed to {relayed.recipient!r} were delivered to "
                f"{self._organization!r}"
            )
        assert self._encryption_key is not None and self._masking_key is not None
        neighbours = params.graph[self._organization] & self._advertised.keys()
        for sender, sealed in relayed.shares:
            if sender in self._payloads:
                raise DuplicateMessageError(f"two share bundles from {sender!r}")
            if sender not in neighbours:
                raise MalformedMessageError(
                    f"a share bundle from {sender!r}, who is not an advertised neighbour"
                )
            key = share_encryption_key(
                self._encryption_key,
                self._advertised[sender].encryption_key,
                sid=params.sid,
                sender=sender,
                recipient=self._organization,
            )
            associated_data = share_associated_data(
                sid=params.sid,
                round=params.round,
                cluster=params.cluster,
                sender=sender,
                recipient=self._organization,
            )
            payload = SharePayload.decode(open_sealed(key, sealed, associated_data))
            if payload.sender != sender or payload.recipient != self._organization:
                raise ForgedMessageError(
                    f"the share bundle relayed from {sender!r} names another sender or "
                    "recipient inside its encryption"
                )
            if tuple(g for g, _ in payload.self_mask_shares) != params.groups_of(sender):
                raise MalformedMessageError(
                    f"the share bundle from {sender!r} does not cover its support groups"
                )
            self._payloads[sender] = payload
        shared = self._payloads.keys()
        self._require_threshold(
            len(params.share_holders(self._organization) & shared),
            "of this client's share holders shared keys",
            params.threshold_of(self._organization),
        )

        pair_seeds = {
            peer: pairwise_seed(
                self._masking_key,
                self._advertised[peer].masking_key,
                sid=params.sid,
                owner=self._organization,
                peer=peer,
            )
            for peer in sorted(shared - {self._organization})
        }
        self_keys = {
            group: self_mask(seed, sid=params.sid, owner=self._organization)
            for group, seed in self._self_mask_seeds.items()
        }
        pair_keys = {peer: pairwise_mask(seed, sid=params.sid) for peer, seed in pair_seeds.items()}
        masked: list[tuple[str, Words]] = []
        for block in blocks:
            words = levels.pop(block)
            masks = [(self_keys[params.group_of_block[block]], False)]
            # Only the block's own graph: masking with every neighbour that holds the
            # block could leave a holder without one (see `graph.holder_graph`).
            for peer in sorted(params.block_graph(block)[self._organization] & pair_keys.keys()):
                negate = subtracts_pairwise_mask(self._organization, peer)
                masks.append((pair_keys[peer], negate))
            apply_masks(words, masks, offset=params.mask_offsets[block])
            masked.append((block, words))
        # The masking key and seeds now live only as shares; drop our copies.
        self._encryption_key = None
        self._masking_key = None
        self._self_mask_seeds = {}
        return MaskedInput(
            params.sid,
            params.round,
            params.cluster,
            sender=self._organization,
            bits=params.fixed_point.bits,
            blocks=tuple(masked),
        )

    def _check_inputs(self, inputs: Mapping[str, npt.ArrayLike], blocks: tuple[str, ...]) -> None:
        missing = sorted(set(blocks) - inputs.keys())
        extra = sorted(inputs.keys() - set(blocks))
        if missing or extra:
            raise InvalidInputError(
                f"{self._organization} must provide exactly its {len(blocks)} blocks; "
                f"missing {missing[:3]}, not held {extra[:3]}"
            )
        for block in blocks:
            shape = np.shape(inputs[block])
            length = self._params.block_lengths[block]
            if shape != (length,):
                raise InvalidInputError(
                    f"block {block!r} must be a vector of {length} values, got shape {shape}"
                )

    # ------------------------------------------------------------------ stage 4

    @_stage(Stage.CONSISTENCY, then=Stage.UNMASK)
    def sign_survivors(self, announcement: SurvivorAnnouncement) -> SurvivorSignature:
        """Check and sign the server's survivor set.

        Raises:
            ReplayError: the message belongs to another session, round or cluster.
            MalformedMessageError: the set names outsiders or leaves this client out.
            ThresholdError: fewer than ``t`` survivors.
            CohortTooSmallError: fewer survivors than the minimum cohort.
            EquivocationError: a surviving neighbour never shared keys with this client,
                so the server showed different clients different share-key sets.
        """
        params = self._params
        check_session(params, announcement)
        survivors = set(announcement.survivors)
        if len(survivors) != len(announcement.survivors) or not survivors <= set(params.roster):
            raise MalformedMessageError("the survivor set repeats or names non-members")
        if self._organization not in survivors:
            raise MalformedMessageError("the survivor set leaves out this client")
        self._require_threshold(len(survivors), "survivors")
        if len(survivors) < params.min_cohort:
            raise CohortTooSmallError(
                f"{len(survivors)} survivors, fewer than the minimum cohort {params.min_cohort}"
            )
        unknown = (survivors & params.graph[self._organization]) - self._payloads.keys()
        if unknown:
            raise EquivocationError(
                f"{len(unknown)} surviving neighbours never shared keys with this client"
            )
        self._announcement = announcement
        return SurvivorSignature(
            params.sid,
            params.round,
            params.cluster,
            sender=self._organization,
            signature=sign(
                self._identity_key,
                SurvivorAnnouncement.SIGNATURE_DOMAIN,
                announcement.signed_payload(),
            ),
        )

    # ------------------------------------------------------------------ stage 5

    @_stage(Stage.UNMASK, then=None)
    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Reveal, per peer, the self-mask share of a survivor or the key share of a dropout.

        Raises:
            ReplayError: the message belongs to another session, round or cluster.
            EquivocationError: the survivor set differs from the one this client signed,
                or a signature covers another set.
            ThresholdError: fewer than ``t`` valid signatures on the survivor set.
            UnmaskRuleError: a peer is named both survivor and dropped, this client is
                named dropped, or a dropped peer never shared keys with this client.
            CohortTooSmallError: a requested block has fewer surviving contributors than
                the minimum cohort.
        """
        params = self._params
        check_session(params, request)
        assert self._announcement is not None
        survivors = set(request.survivors)
        dropped = set(request.dropped)
        if request.survivors != self._announcement.survivors:
            raise EquivocationError(
                "the unmask request's survivor set differs from the one this client signed"
            )
        if self._organization in dropped:
            raise UnmaskRuleError("the unmask request asks for this client's own masking key")
        both = survivors & dropped
        if both:
            raise UnmaskRuleError(
                f"the unmask request names {len(both)} peers both survivor and dropped; "
                "revealing both secrets of a peer would expose its input"
            )
        self._verify_survivor_signatures(request, survivors)
        unknown = dropped - set(params.roster)
        if unknown:
            raise MalformedMessageError("the dropped set names non-members")
        unshared = (dropped & params.graph[self._organization]) - self._payloads.keys()
        if unshared:
            raise UnmaskRuleError(
                f"the unmask request asks for keys of {len(unshared)} neighbours that never "
                "shared them with this client"
            )
        groups = self._requested_groups(request.blocks, survivors)

        self_mask_shares = [
            (owner, group, value)
            for owner in sorted(survivors & self._payloads.keys())
            for group, value in self._payloads[owner].self_mask_shares
            if group in groups
        ]
        key_shares = [
            (owner, self._payloads[owner].key_share)
            for owner in sorted(dropped & self._payloads.keys())
        ]
        self._forget_secrets()
        return UnmaskResponse(
            params.sid,
            params.round,
            params.cluster,
            sender=self._organization,
            self_mask_shares=tuple(self_mask_shares),
            key_shares=tuple(key_shares),
        )

    def _verify_survivor_signatures(self, request: UnmaskRequest, survivors: set[str]) -> None:
        assert self._announcement is not None
        payload = self._announcement.signed_payload()
        for signer, signature in request.signatures:
            if signer not in survivors:
                raise MalformedMessageError(f"a survivor-set signature by non-survivor {signer!r}")
            try:
                verify_signature(
                    self._peer_identities[signer],
                    signature,
                    SurvivorAnnouncement.SIGNATURE_DOMAIN,
                    payload,
                    signer=signer,
                )
            except ForgedMessageError:
                raise EquivocationError(
                    f"{signer!r}'s signature does not cover the survivor set this client "
                    "signed: the server announced different sets"
                ) from None
        if len({signer for signer, _ in request.signatures}) < self._params.threshold:
            raise ThresholdError(
                f"only {len(request.signatures)} survivors confirmed the survivor set; at "
                f"least t = {self._params.threshold} must before anything is unmasked"
            )

    def _requested_groups(self, blocks: tuple[str, ...], survivors: set[str]) -> set[int]:
        params = self._params
        unknown = [b for b in blocks if b not in params.block_lengths]
        if unknown:
            raise MalformedMessageError(f"the unmask request names {len(unknown)} unknown blocks")
        small = tuple(
            b for b in blocks if len(params.block_supports[b] & survivors) < params.min_cohort
        )
        if small:
            raise CohortTooSmallError(
                f"the unmask request includes {len(small)} blocks with fewer surviving "
                f"contributors than the minimum cohort {params.min_cohort}",
                blocks=small,
            )
        split_groups = params.split_groups(survivors)
        split = [b for b in blocks if params.group_of_block[b] in split_groups]
        if split:
            raise UnmaskRuleError(
                f"the unmask request includes {len(split)} blocks whose surviving holders "
                "are masked in separate groups after the dropouts; unmasking them would "
                "reveal each group's partial sum"
            )
        return {params.group_of_block[b] for b in blocks}

    def _require_threshold(self, count: int, what: str, threshold: int | None = None) -> None:
        needed = self._params.threshold if threshold is None else threshold
        if count < needed:
            raise ThresholdError(
                f"{self._organization}: only {count} {what}; the session needs t = "
                f"{needed} and aborts without unmasking anything"
            )
