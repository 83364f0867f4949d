"""The server half of masking-mode secure aggregation: relay, sum, and unmask the sum.

The server of SecAgg/SecAgg+ (Bonawitz et al. 2017; Bell et al. 2020) as a transport-
independent state machine: it collects each stage's messages (:meth:`SecAggServer.receive`),
closes the stage (``finish_*``) with the set of parties that answered, and finally
reconstructs the survivors' self-mask seeds and the dropped parties' masking keys from
``t`` shares each to remove every mask from the per-block sums.

Notes:
    Masked inputs are added into per-block running sums on receipt and then discarded,
    and masks are only ever removed from those sums, so the server never holds an
    individual unmasked vector. Before anything is revealed it checks the threshold
    (``t`` parties) and the minimum cohort: a block whose surviving contributors are
    fewer than ``min_cohort`` is reported as skipped and its self-mask seeds are never
    requested, so its sum stays masked. Every check that fails aborts the session with
    nothing reconstructed.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .._crypto import (
    MaskStream,
    agreement_public_bytes,
    apply_masks,
    load_agreement_key,
    sealed_length,
)
from .._crypto import verify_signature as _verify_signature
from ..errors import (
    CohortTooSmallError,
    DuplicateMessageError,
    ForgedMessageError,
    MalformedMessageError,
    ProtocolError,
    QuantizationOverflowError,
    ReconstructionError,
    SessionParamsError,
    StageError,
    SumOutOfBoundsError,
    ThresholdError,
    UnmaskRuleError,
)
from ._client import check_session
from ._masks import pairwise_mask, pairwise_seed, self_mask, subtracts_pairwise_mask
from ._params import SessionParams
from ._shamir import MERSENNE_521, Share, lagrange_at_zero
from .messages import (
    AdvertisedKeys,
    EncryptedShares,
    KeyAdvertisement,
    MaskedInput,
    Message,
    RelayedShares,
    SharePayload,
    Stage,
    SurvivorAnnouncement,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
    Words,
    decode_message,
)

_SEED_LIMIT = 2**256


@dataclass(frozen=True, eq=False)
class BlockSum:
    """The secure sum of one block over its surviving contributors."""

    block: str
    integer_sum: Words
    """The sum of the quantized inputs modulo ``2^bits`` (uint32 or uint64 words)."""
    sum: npt.NDArray[np.float64]
    """The dequantized sum: within ``count`` quantization steps of the exact sum."""
    contributors: tuple[str, ...]
    """The organizations whose input is in the sum (sorted)."""

    @property
    def count(self) -> int:
        """How many organizations contributed."""
        return len(self.contributors)

    def mean(self) -> npt.NDArray[np.float64]:
        """The average over contributors (within one quantization step of the exact mean)."""
        return self.sum / self.count


@dataclass(frozen=True, eq=False)
class AggregateResult:
    """What a session releases: per-block sums, and which blocks were not aggregated."""

    sid: bytes
    blocks: Mapping[str, BlockSum]
    """Aggregated blocks by id."""
    skipped: Mapping[str, int]
    """Blocks left masked because fewer than ``min_cohort`` holders survived → count."""
    survivors: tuple[str, ...]
    """Organizations whose masked input was received (U3)."""
    dropped: tuple[str, ...]
    """Organizations that shared keys but sent no masked input; their masks were removed."""


class SecAggServer:
    """The aggregation server's side of one masking-mode session.

    For each stage: pass every client message to :meth:`receive` (as bytes or decoded),
    then call the stage's ``finish_*`` method, which closes the stage with whoever has
    answered and returns what to send next. :attr:`participants` names who is still in
    the session and :attr:`pending` who has not answered the current stage. The object
    is thread-safe, so a transport may call :meth:`receive` from several threads.
    """

    def __init__(
        self, params: SessionParams, *, peer_identities: Mapping[str, Ed25519PublicKey]
    ) -> None:
        missing = [org for org in params.roster if org not in peer_identities]
        if missing:
            raise SessionParamsError(
                f"no identity key for {len(missing)} roster members (first: {missing[0]!r})"
            )
        self._params = params
        self._identities = {org: peer_identities[org] for org in params.roster}
        self._lock = threading.RLock()
        self._stage: Stage | None = Stage.ADVERTISE
        self._aborted: ProtocolError | None = None
        self._participants = frozenset(params.roster)
        self._advertisements: dict[str, KeyAdvertisement] = {}
        self._public_keys: set[bytes] = set()
        self._shares: dict[str, EncryptedShares] = {}
        self._sums: dict[str, Words] = {}
        self._masked: set[str] = set()
        self._shared: frozenset[str] = frozenset()
        self._announcement: SurvivorAnnouncement | None = None
        self._signatures: dict[str, bytes] = {}
        self._request: UnmaskRequest | None = None
        self._responses: dict[str, UnmaskResponse] = {}
        self._result: AggregateResult | None = None

    # ------------------------------------------------------------------ state

    @property
    def params(self) -> SessionParams:
        """The session's parameters."""
        return self._params

    @property
    def stage(self) -> Stage | None:
        """The stage now collecting messages; ``None`` once finished or aborted."""
        return None if self._aborted else self._stage

    @property
    def participants(self) -> frozenset[str]:
        """Who takes part in the current stage (receives its broadcast, may answer)."""
        return self._participants

    @property
    def pending(self) -> frozenset[str]:
        """Participants that have not yet answered the current stage."""
        with self._lock:
            answered: set[str] | dict[str, object]
            if self._stage is Stage.ADVERTISE:
                answered = set(self._advertisements)
            elif self._stage is Stage.SHARE_KEYS:
                answered = set(self._shares)
            elif self._stage is Stage.MASKED_INPUT:
                answered = self._masked
            elif self._stage is Stage.CONSISTENCY:
                answered = set(self._signatures)
            elif self._stage is Stage.UNMASK:
                answered = set(self._responses)
            else:
                return frozenset()
            return self._participants - answered

    def _expect(self, stage: Stage, sender: str) -> None:
        if self._aborted is not None:
            raise StageError("the session was aborted; start a new one") from self._aborted
        if self._stage != stage:
            current = self._stage.value if self._stage else "none (finished)"
            raise StageError(
                f"a {stage.value!r} message from {sender!r} arrived during stage {current!r}"
            )
        if sender not in self._participants:
            if sender in self._params.roster:
                raise StageError(f"{sender!r} dropped out at an earlier stage and cannot rejoin")
            raise ForgedMessageError(f"a message from {sender!r}, who is not in the roster")

    def _abort(self, error: ProtocolError) -> ProtocolError:
        self._aborted = error
        self._sums = {}
        self._responses = {}
        return error

    # ------------------------------------------------------------------ receive

    def receive(self, message: Message | bytes) -> None:
        """Accept one client message of the current stage.

        Raises:
            MalformedMessageError: the bytes do not decode or break the stage's rules.
            ReplayError: the message belongs to another session, round or cluster.
            DuplicateMessageError: the sender already sent this stage's message.
            ForgedMessageError: a signature does not verify or the sender is unknown.
            StageError: the message is for another stage, or the sender dropped out.
        """
        if isinstance(message, bytes | bytearray | memoryview):
            message = decode_message(bytes(message))
        with self._lock:
            check_session(self._params, message)
            if isinstance(message, KeyAdvertisement):
                self._receive_advertisement(message)
            elif isinstance(message, EncryptedShares):
                self._receive_shares(message)
            elif isinstance(message, MaskedInput):
                self._receive_masked_input(message)
            elif isinstance(message, SurvivorSignature):
                self._receive_signature(message)
            elif isinstance(message, UnmaskResponse):
                self._receive_unmask_response(message)
            else:
                raise MalformedMessageError(
                    f"{type(message).__name__} is sent by the server, not to it"
                )

    def _receive_advertisement(self, message: KeyAdvertisement) -> None:
        self._expect(Stage.ADVERTISE, message.organization)
        if message.organization in self._advertisements:
            raise DuplicateMessageError(f"{message.organization!r} already advertised keys")
        _verify_signature(
            self._identities[message.organization],
            message.signature,
            KeyAdvertisement.SIGNATURE_DOMAIN,
            message.signed_payload(),
            signer=message.organization,
        )
        keys = {message.encryption_key, message.masking_key}
        if len(keys) != 2 or keys & self._public_keys:
            raise DuplicateMessageError(
                f"{message.organization!r} advertised a public key that is already in use"
            )
        self._public_keys |= keys
        self._advertisements[message.organization] = message

    def _receive_shares(self, message: EncryptedShares) -> None:
        params = self._params
        self._expect(Stage.SHARE_KEYS, message.sender)
        if message.sender in self._shares:
            raise DuplicateMessageError(f"{message.sender!r} already sent its shares")
        expected = params.graph[message.sender] & self._participants
        recipients = {recipient for recipient, _ in message.shares}
        if recipients != expected or len(recipients) != len(message.shares):
            raise MalformedMessageError(
                f"{message.sender!r} must send one share bundle to each of its "
                f"{len(expected)} advertised neighbours, sent {len(message.shares)}"
            )
        groups = len(params.groups_of(message.sender))
        for recipient, sealed in message.shares:
            size = sealed_length(SharePayload.encoded_length(message.sender, recipient, groups))
            if len(sealed) != size:
                raise MalformedMessageError(
                    f"the share bundle from {message.sender!r} to {recipient!r} has "
                    f"{len(sealed)} bytes, expected {size}"
                )
        self._shares[message.sender] = message

    def _receive_masked_input(self, message: MaskedInput) -> None:
        params = self._params
        self._expect(Stage.MASKED_INPUT, message.sender)
        if message.sender in self._masked:
            raise DuplicateMessageError(f"{message.sender!r} already sent its masked input")
        if message.bits != params.fixed_point.bits:
            raise MalformedMessageError(
                f"masked input words are {message.bits}-bit; the session uses "
                f"{params.fixed_point.bits}-bit words"
            )
        held = params.blocks_of(message.sender)
        if tuple(block for block, _ in message.blocks) != held:
            raise MalformedMessageError(
                f"{message.sender!r} must send exactly the {len(held)} blocks it holds"
            )
        for block, words in message.blocks:
            if words.shape != (params.block_lengths[block],) or words.dtype != np.dtype(
                params.fixed_point.word_dtype
            ):
                raise MalformedMessageError(
                    f"block {block!r} from {message.sender!r} must be "
                    f"{params.block_lengths[block]} {params.fixed_point.bits}-bit words"
                )
        for block, words in message.blocks:
            total = self._sums.get(block)
            if total is None:
                self._sums[block] = words.copy()
            else:
                np.add(total, words, out=total)
        self._masked.add(message.sender)

    def _receive_signature(self, message: SurvivorSignature) -> None:
        self._expect(Stage.CONSISTENCY, message.sender)
        if message.sender in self._signatures:
            raise DuplicateMessageError(f"{message.sender!r} already signed the survivor set")
        assert self._announcement is not None
        _verify_signature(
            self._identities[message.sender],
            message.signature,
            SurvivorAnnouncement.SIGNATURE_DOMAIN,
            self._announcement.signed_payload(),
            signer=message.sender,
        )
        self._signatures[message.sender] = message.signature

    def _receive_unmask_response(self, message: UnmaskResponse) -> None:
        params = self._params
        self._expect(Stage.UNMASK, message.sender)
        if message.sender in self._responses:
            raise DuplicateMessageError(f"{message.sender!r} already answered the unmask request")
        assert self._request is not None
        survivors = set(self._request.survivors)
        dropped = set(self._request.dropped)
        groups = {params.group_of_block[b] for b in self._request.blocks}
        holds = params.share_holders(message.sender)
        for owner, group, _ in message.self_mask_shares:
            if owner not in survivors or owner not in holds or group not in groups:
                raise UnmaskRuleError(
                    f"{message.sender!r} revealed a self-mask share the request did not ask for"
                )
        for owner, _ in message.key_shares:
            if owner not in dropped or owner not in holds:
                raise UnmaskRuleError(
                    f"{message.sender!r} revealed a key share the request did not ask for"
                )
        self._responses[message.sender] = message

    # ------------------------------------------------------------------ finish stages

    def _close(self, stage: Stage, answered: frozenset[str], next_stage: Stage | None) -> None:
        if self._aborted is not None:
            raise StageError("the session was aborted; start a new one") from self._aborted
        if self._stage != stage:
            current = self._stage.value if self._stage else "none (finished)"
            raise StageError(f"cannot finish stage {stage.value!r} during {current!r}")
        if len(answered) < self._params.threshold:
            raise self._abort(
                ThresholdError(
                    f"only {len(answered)} organizations completed stage {stage.value!r}; "
                    f"t = {self._params.threshold} are needed, so the session aborts with "
                    "nothing unmasked"
                )
            )
        self._participants = answered
        self._stage = next_stage

    def finish_advertise(self) -> AdvertisedKeys:
        """Close stage 1; returns the advertisements to send to every participant."""
        params = self._params
        with self._lock:
            self._close(Stage.ADVERTISE, frozenset(self._advertisements), Stage.SHARE_KEYS)
            return AdvertisedKeys(
                params.sid,
                params.round,
                params.cluster,
                advertisements=tuple(ad for _, ad in sorted(self._advertisements.items())),
            )

    def finish_share_keys(self) -> dict[str, RelayedShares]:
        """Close stage 2; returns, per participant, the share bundles addressed to it."""
        params = self._params
        with self._lock:
            self._close(Stage.SHARE_KEYS, frozenset(self._shares), Stage.MASKED_INPUT)
            self._shared = self._participants
            inbox: dict[str, list[tuple[str, bytes]]] = {org: [] for org in self._shared}
            for sender, message in sorted(self._shares.items()):
                for recipient, sealed in message.shares:
                    if recipient in inbox:
                        inbox[recipient].append((sender, sealed))
            self._shares = {}
            return {
                recipient: RelayedShares(
                    params.sid,
                    params.round,
                    params.cluster,
                    recipient=recipient,
                    shares=tuple(bundles),
                )
                for recipient, bundles in inbox.items()
            }

    def finish_masked_input(self) -> SurvivorAnnouncement:
        """Close stage 3; returns the survivor set for every survivor to sign.

        Raises:
            ThresholdError: fewer than ``t`` masked inputs arrived (session aborted).
            CohortTooSmallError: fewer than ``min_cohort`` arrived (session aborted).
        """
        params = self._params
        with self._lock:
            self._close(Stage.MASKED_INPUT, frozenset(self._masked), Stage.CONSISTENCY)
            if len(self._participants) < params.min_cohort:
                raise self._abort(
                    CohortTooSmallError(
                        f"only {len(self._participants)} masked inputs arrived, fewer than "
                        f"the minimum cohort {params.min_cohort}; nothing is unmasked"
                    )
                )
            self._announcement = SurvivorAnnouncement(
                params.sid,
                params.round,
                params.cluster,
                survivors=tuple(sorted(self._participants)),
            )
            return self._announcement

    def finish_consistency(self) -> UnmaskRequest:
        """Close stage 4; returns the unmask request for every survivor that signed.

        Blocks with fewer surviving contributors than ``min_cohort`` are left out of the
        request (they stay masked and are reported in :attr:`AggregateResult.skipped`).
        """
        params = self._params
        with self._lock:
            assert self._announcement is not None
            survivors = frozenset(self._announcement.survivors)
            self._close(Stage.CONSISTENCY, frozenset(self._signatures), Stage.UNMASK)
            split_groups = params.split_groups(survivors)
            blocks = tuple(
                block
                for block, orgs in params.block_supports.items()
                if len(orgs & survivors) >= params.min_cohort
                and params.group_of_block[block] not in split_groups
            )
            dropped = self._needed_keys(blocks, survivors)
            self._request = UnmaskRequest(
                params.sid,
                params.round,
                params.cluster,
                survivors=self._announcement.survivors,
                dropped=tuple(sorted(dropped)),
                blocks=blocks,
                signatures=tuple(sorted(self._signatures.items())),
            )
            return self._request

    def _needed_keys(self, blocks: tuple[str, ...], survivors: frozenset[str]) -> set[str]:
        """Dropped parties whose pairwise masks remain in an aggregated block's sum."""
        params = self._params
        needed = set()
        for dropped in self._shared - survivors:
            for block in blocks:
                graph = params.block_graph(block)
                if dropped in graph and graph[dropped] & survivors:
                    needed.add(dropped)
                    break
        return needed

    def finish_unmask(self) -> AggregateResult:
        """Close stage 5: reconstruct the secrets, remove the masks, release the sums.

        Raises:
            ThresholdError: fewer than ``t`` responses, or some secret has fewer than
                ``t`` shares; the session aborts and nothing is reconstructed.
            ReconstructionError: revealed shares are inconsistent with an advertised key.
            SumOutOfBoundsError: a block's sum decodes beyond the levels its contributors
                can reach (a forged input, or masks that did not cancel), naming the block
                and the bound.
        """
        with self._lock:
            self._close(Stage.UNMASK, frozenset(self._responses), None)
            try:
                self._result = self._unmask()
            except ProtocolError as error:
                raise self._abort(error) from None
            self._sums = {}
            self._responses = {}
            return self._result

    def result(self) -> AggregateResult:
        """The released sums; finishes the unmask stage if it is still open."""
        with self._lock:
            if self._result is not None:
                return self._result
            return self.finish_unmask()

    # ------------------------------------------------------------------ unmasking

    def _unmask(self) -> AggregateResult:
        params = self._params
        assert self._request is not None
        request = self._request
        survivors = frozenset(request.survivors)
        seed_shares: dict[tuple[str, int], list[Share]] = {}
        key_shares: dict[str, list[Share]] = {}
        for responder, response in self._responses.items():
            x = params.holder_index[responder]
            for owner, group, value in response.self_mask_shares:
                seed_shares.setdefault((owner, group), []).append(Share(x, value))
            for owner, value in response.key_shares:
                key_shares.setdefault(owner, []).append(Share(x, value))

        groups = {params.group_of_block[b] for b in request.blocks}
        wanted_seeds = [
            (owner, group)
            for owner in survivors
            for group in params.groups_of(owner)
            if group in groups
        ]
        short = [
            (owner, group)
            for owner, group in wanted_seeds
            if len(seed_shares.get((owner, group), ())) < params.threshold_of(owner)
        ]
        short_keys = [
            owner
            for owner in request.dropped
            if len(key_shares.get(owner, ())) < params.threshold_of(owner)
        ]
        if short or short_keys:
            raise ThresholdError(
                f"{len(short)} self-mask seeds and {len(short_keys)} masking keys have fewer "
                f"shares than their owner's threshold (t = {params.threshold} or a majority of "
                "its share holders); the session aborts with nothing unmasked"
            )

        coefficients: dict[tuple[int, ...], list[int]] = {}
        seeds = {
            secret: self._reconstruct(
                seed_shares[secret], params.threshold_of(secret[0]), coefficients
            ).to_bytes(32, "big")
            for secret in wanted_seeds
        }
        dropped_keys = {}
        for owner in request.dropped:
            raw = self._reconstruct(
                key_shares[owner], params.threshold_of(owner), coefficients
            ).to_bytes(32, "big")
            private_key = load_agreement_key(raw)
            if agreement_public_bytes(private_key) != self._advertisements[owner].masking_key:
                raise ReconstructionError(
                    f"the masking key reconstructed for {owner!r} does not match its "
                    "advertised public key; some revealed shares are wrong"
                )
            dropped_keys[owner] = private_key

        removals = _MaskRemoval(params, survivors, seeds, dropped_keys, self._advertisements)
        for run in _runs(params, request.blocks):
            # Adjacent blocks of one group carry the same masks at adjacent offsets: one
            # buffer, masked in cache-sized chunks that cross block boundaries.
            totals = np.concatenate([self._sums[b] for b in run])
            masks = removals.masks(params.group_of_block[run[0]])
            start = params.mask_offsets[run[0]]
            step = totals.itemsize
            for first in range(0, totals.size, _MASK_CHUNK):
                chunk = totals[first : first + _MASK_CHUNK]
                apply_masks(chunk, masks, offset=start + first * step)
            split = np.split(totals, np.cumsum([self._sums[b].size for b in run])[:-1])
            for block, words in zip(run, split, strict=True):
                self._sums[block] = words
        blocks: dict[str, BlockSum] = {}
        for block in request.blocks:
            total = self._sums[block]
            contributors = tuple(sorted(params.block_supports[block] & survivors))
            blocks[block] = BlockSum(
                block=block,
                integer_sum=total,
                sum=_decode_sum(params, block, total, len(contributors)),
                contributors=contributors,
            )
        skipped = {
            block: len(orgs & survivors)
            for block, orgs in params.block_supports.items()
            if block not in blocks
        }
        return AggregateResult(
            sid=params.sid,
            blocks=MappingProxyType(blocks),
            skipped=MappingProxyType(skipped),
            survivors=request.survivors,
            dropped=tuple(sorted(self._shared - survivors)),
        )

    def _reconstruct(
        self, shares: list[Share], threshold: int, cache: dict[tuple[int, ...], list[int]]
    ) -> int:
        """Interpolate the secret from the first ``threshold`` shares (by holder), checking
        range."""
        chosen = sorted(shares, key=lambda share: share.x)[:threshold]
        xs = tuple(share.x for share in chosen)
        if xs not in cache:
            cache[xs] = lagrange_at_zero(xs)
        secret = sum(w * s.y for w, s in zip(cache[xs], chosen, strict=True)) % MERSENNE_521
        if secret >= _SEED_LIMIT:
            raise ReconstructionError(
                "a reconstructed secret lies outside the range of shared secrets; some "
                "revealed shares are wrong"
            )
        return secret


def _runs(params: SessionParams, blocks: Sequence[str]) -> list[list[str]]:
    """``blocks`` in layout order, cut into runs of adjacent blocks of one support group."""
    runs: list[list[str]] = []
    end = -1
    for block in sorted(blocks, key=params.mask_offsets.__getitem__):
        offset = params.mask_offsets[block]
        group = params.group_of_block[block]
        if runs and offset == end and params.group_of_block[runs[-1][0]] == group:
            runs[-1].append(block)
        else:
            runs.append([block])
        end = offset + params.block_lengths[block] * params.fixed_point.bits // 8
    return runs


_MASK_CHUNK = 16_384
"""Words masked per :func:`apply_masks` call when removing masks from a run of blocks."""


class _MaskRemoval:
    """The masks left in each aggregated block's sum, and the sign to remove them with.

    Exactly the masks in the sums: each surviving holder's self mask, and the pairwise
    mask of each dropped holder with each surviving neighbour in the block's graph (the
    neighbour added its half; the dropped party never sent its own). Each dropped pair's
    seed is agreed and its key derived once, on first use, and each key's keystream is
    read on across adjacent blocks, so the cost per block is one keystream per mask.
    """

    def __init__(
        self,
        params: SessionParams,
        survivors: frozenset[str],
        seeds: Mapping[tuple[str, int], bytes],
        dropped_keys: Mapping[str, X25519PrivateKey],
        advertisements: Mapping[str, KeyAdvertisement],
    ) -> None:
        self._params = params
        self._survivors = survivors
        self._dropped_keys = dict(sorted(dropped_keys.items()))
        self._advertisements = advertisements
        self._self_keys = {
            (owner, group): self_mask(seed, sid=params.sid, owner=owner)
            for (owner, group), seed in seeds.items()
        }
        self._pair_keys: dict[tuple[str, str], MaskStream] = {}

    def masks(self, group: int) -> list[tuple[MaskStream, bool]]:
        """``(stream, negate)`` of every mask to take out of the sums of ``group``'s
        blocks (one support and one graph, so the same masks for each)."""
        params = self._params
        support = params.support_groups[group]
        graph = params.group_graphs[group]
        masks = [
            (self._self_keys[owner, group], True) for owner in sorted(support & self._survivors)
        ]
        for gone in self._dropped_keys:
            if gone in support:
                for survivor in sorted(graph[gone] & self._survivors):
                    # The survivor added this mask with its own sign; remove it.
                    negate = not subtracts_pairwise_mask(survivor, gone)
                    masks.append((self._pair(gone, survivor), negate))
        return masks

    def _pair(self, gone: str, survivor: str) -> MaskStream:
        keys = self._pair_keys.get((gone, survivor))
        if keys is None:
            seed = pairwise_seed(
                self._dropped_keys[gone],
                self._advertisements[survivor].masking_key,
                sid=self._params.sid,
                owner=gone,
                peer=survivor,
            )
            keys = self._pair_keys[gone, survivor] = pairwise_mask(seed, sid=self._params.sid)
        return keys


def _decode_sum(
    params: SessionParams, block: str, total: Words, contributors: int
) -> npt.NDArray[np.float64]:
    """The float sum of one unmasked block, refused as out of bounds when it lies beyond
    the ring range ``contributors`` clipped values can reach.

    Raises:
        SumOutOfBoundsError: naming the block and the ring-range bound (never a value),
            the way `fedhft.protocol.blocks.check_packed_sum` names its bounds, so the
            server reports this refusal like any other.
    """
    try:
        return params.fixed_point.dequantize_sum(total, contributors=contributors)
    except QuantizationOverflowError:
        levels = contributors * params.fixed_point.max_level
        bound = f"ring range |sum| <= {contributors} * ceil(clip * scale) = {levels} levels"
        raise SumOutOfBoundsError(
            f"the sum of block {block!r} decodes beyond the {bound} that {contributors} "
            "clipped inputs can reach; some input was forged or the masks did not cancel",
            block=block,
            bound=bound,
        ) from None
