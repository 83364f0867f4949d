"""The public parameters of one secure-aggregation session, and its session id.

One session sums the blocks of one cluster in one round. Every party derives the same
:class:`SessionParams` from the consortium configuration and the round's plan, and the
session id ``sid = SHA-256(domain ‖ canonical encoding of every field)`` binds them into
every signature, HKDF derivation and AEAD associated data (ARCHITECTURE.md §4.1), so a message
from another run, round, cluster or roster never verifies here.

Notes:
    Tier masks are public, so which organization holds which block is a parameter. Blocks
    with identical holder sets form a *support group*; each client draws one self-mask
    seed per group it belongs to. A group whose surviving contributors fall below the
    minimum cohort is then left masked without revealing anything about other groups.

    Each support group is masked on its own graph among exactly its holders
    (:func:`fedhft.protocol.secagg.graph.holder_graph`), connected and k-regular (complete when
    the group has at most ``k + 1`` holders), so every block's sum ties each holder to the
    others and the server learns nothing about a block but its total. A client's share
    holders are its neighbours in the roster-wide graph and in every group graph it is
    in, so whoever must remove its masks after a dropout can; each client's secrets are
    shared with a threshold that is at least ``t`` and a strict majority of its own
    share holders (:meth:`SessionParams.threshold_of`).
"""

from __future__ import annotations

import functools
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from types import MappingProxyType

from .._crypto import MAX_KEYSTREAM_BYTES, frame, sha256
from .._quantize import FixedPoint
from ..errors import CohortTooSmallError, SessionParamsError
from .graph import effective_degree, holder_graph, is_connected, neighbour_graph
from .messages import MAX_BLOCK_WORDS, MAX_BLOCKS, MAX_PARTIES, check_block_id
from .messages import ORGANIZATION_ID as _ORGANIZATION_ID

_SID_DOMAIN = b"fedhft/secagg/v1/session"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")

MIN_COHORT_FLOOR = 3
"""Never fewer contributors than this: with two, one could subtract its own update."""


@dataclass(frozen=True, eq=False)
class SessionParams:
    """Everything every party must agree on before a session starts.

    Attributes:
        run_id: The training run (letters, digits and ``_.:-``).
        round: Round number (≥ 0).
        cluster: Cluster index (≥ 0) whose adapter this session sums.
        roster: Organizations invited to the session; stored sorted.
        config_hash: SHA-256 of the consortium configuration (32 bytes).
        model_hash: SHA-256 of the model the updates apply to (32 bytes).
        threshold: Shamir threshold ``t``: the fewest parties the session continues
            with and the fewest shares that reconstruct any secret. A strict majority of
            the share holders the roster-wide graph gives a client (its neighbours and
            itself); a client with more share holders (one in several support groups)
            shares with :meth:`threshold_of`, a strict majority of its own.
        min_cohort: Fewest contributors a block or the session may have (≥ 3).
        block_lengths: Block id → vector length.
        block_supports: Block id → organizations holding it (public tier masks).
        clip: Bound on the absolute value of every input coordinate.
        scale: Fixed-point levels per unit; one quantization step is ``1/scale``.
        neighbours: SecAgg+ degree ``k``; ``None`` (or ``k ≥ n − 1``) for the complete
            graph. Raised to ``k + 1`` when ``n·k`` is odd.
    """

    run_id: str
    round: int
    cluster: int
    roster: Sequence[str]
    config_hash: bytes
    model_hash: bytes
    threshold: int
    min_cohort: int
    block_lengths: Mapping[str, int]
    block_supports: Mapping[str, AbstractSet[str]]
    clip: float
    scale: float
    neighbours: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.run_id, str) or _RUN_ID.fullmatch(self.run_id) is None:
            raise SessionParamsError(
                "`run_id` must be 1–128 letters, digits or _.:- starting with a letter or "
                f"digit, got {self.run_id!r:.80}"
            )
        if not 0 <= self.round < 2**63:
            raise SessionParamsError(f"`round` must be in [0, 2^63), got {self.round}")
        if not 0 <= self.cluster < 2**32:
            raise SessionParamsError(f"`cluster` must be in [0, 2^32), got {self.cluster}")
        for name in ("config_hash", "model_hash"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != 32:
                raise SessionParamsError(f"`{name}` must be a 32-byte SHA-256 digest")
        roster = tuple(sorted(self.roster))
        if len(set(roster)) != len(roster):
            raise SessionParamsError("`roster` names an organization twice")
        for organization in roster:
            if not isinstance(organization, str) or not _ORGANIZATION_ID.fullmatch(organization):
                raise SessionParamsError(
                    f"`roster` entry {organization!r:.80} is not an organization id"
                )
        if not MIN_COHORT_FLOOR <= len(roster) <= MAX_PARTIES:
            raise SessionParamsError(
                f"`roster` must have between {MIN_COHORT_FLOOR} and {MAX_PARTIES} "
                f"organizations, got {len(roster)}"
            )
        object.__setattr__(self, "roster", roster)
        if self.min_cohort < MIN_COHORT_FLOOR:
            raise SessionParamsError(
                f"`min_cohort` must be at least {MIN_COHORT_FLOOR} (with two contributors "
                f"one could subtract its own update), got {self.min_cohort}"
            )
        if self.min_cohort > len(roster):
            raise CohortTooSmallError(
                f"the roster has {len(roster)} organizations, fewer than `min_cohort` "
                f"{self.min_cohort}"
            )
        if self.neighbours is not None and self.neighbours < 2:
            raise SessionParamsError(f"`neighbours` must be at least 2, got {self.neighbours}")
        holders = effective_degree(len(roster), self.neighbours) + 1
        if not (2 * self.threshold > holders and self.threshold <= holders):
            raise SessionParamsError(
                f"`threshold` must be a strict majority of the {holders} share holders of "
                f"each client (more than {holders // 2}, at most {holders}), got "
                f"{self.threshold}"
            )
        self._normalise_blocks(roster)
        # Deriving the fixed-point encoding validates `clip` and `scale` and the modulus.
        FixedPoint.for_sum(clip=self.clip, scale=self.scale, max_contributors=len(roster))

    def _normalise_blocks(self, roster: tuple[str, ...]) -> None:
        lengths = dict(self.block_lengths)
        supports = {block: frozenset(orgs) for block, orgs in self.block_supports.items()}
        if not lengths or len(lengths) > MAX_BLOCKS:
            raise SessionParamsError(
                f"a session sums between 1 and {MAX_BLOCKS} blocks, got {len(lengths)}"
            )
        if set(lengths) != set(supports):
            raise SessionParamsError(
                "`block_lengths` and `block_supports` must name the same blocks"
            )
        for block, length in lengths.items():
            check_block_id(block)
            if not isinstance(length, int) or not 1 <= length <= MAX_BLOCK_WORDS:
                raise SessionParamsError(
                    f"block {block!r} length must be an integer in 1..{MAX_BLOCK_WORDS}"
                )
            if not supports[block] <= set(roster):
                raise SessionParamsError(
                    f"block {block!r} is held by organizations outside the roster"
                )
        small = tuple(sorted(b for b, orgs in supports.items() if len(orgs) < self.min_cohort))
        if small:
            raise CohortTooSmallError(
                f"{len(small)} blocks are held by fewer than `min_cohort` {self.min_cohort} "
                "organizations and cannot be summed securely; leave them out of the session "
                "(they stay personal this round)",
                blocks=small,
            )
        object.__setattr__(self, "block_lengths", MappingProxyType(dict(sorted(lengths.items()))))
        object.__setattr__(self, "block_supports", MappingProxyType(dict(sorted(supports.items()))))

    # ------------------------------------------------------------------ derived values

    @functools.cached_property
    def sid(self) -> bytes:
        """The 32-byte session id: SHA-256 of the domain tag and every parameter."""
        blocks = [
            frame(
                [
                    block.encode(),
                    struct.pack(">Q", length),
                    frame(org.encode() for org in sorted(self.block_supports[block])),
                ]
            )
            for block, length in self.block_lengths.items()
        ]
        fields = [
            _SID_DOMAIN,
            self.run_id.encode(),
            struct.pack(">QI", self.round, self.cluster),
            frame(org.encode() for org in self.roster),
            self.config_hash,
            self.model_hash,
            struct.pack(">II", self.threshold, self.min_cohort),
            frame(blocks),
            struct.pack(">dd", self.clip, self.scale),
            struct.pack(">I", self.neighbours or 0),
        ]
        return sha256(frame(fields))

    @functools.cached_property
    def fixed_point(self) -> FixedPoint:
        """The quantization: clip, scale and a 32- or 64-bit modulus fitting the roster."""
        return FixedPoint.for_sum(
            clip=self.clip, scale=self.scale, max_contributors=len(self.roster)
        )

    @functools.cached_property
    def group_graphs(self) -> tuple[Mapping[str, frozenset[str]], ...]:
        """Per support group, who masks its blocks with whom: a graph on its holders only.

        Complete when the group has at most ``k + 1`` holders (or without ``k``),
        otherwise k-regular from ``H(sid, holders)``; always connected.
        """
        return tuple(
            MappingProxyType(dict(holder_graph(self.sid, self.roster, orgs, self.neighbours)))
            for orgs in self.support_groups
        )

    def block_graph(self, block: str) -> Mapping[str, frozenset[str]]:
        """Who masks ``block`` with whom: the graph of its support group."""
        return self.group_graphs[self.group_of_block[block]]

    @functools.cached_property
    def graph(self) -> Mapping[str, frozenset[str]]:
        """Each organization's neighbours: the peers it exchanges keys and shares with.

        The union of the roster-wide graph (complete, or k-regular from ``H(sid)``) and
        of the graphs of the support groups it belongs to; symmetric.
        """
        union = {
            org: set(peers)
            for org, peers in neighbour_graph(self.sid, self.roster, self.neighbours).items()
        }
        for group in self.group_graphs:
            for org, peers in group.items():
                union[org] |= peers
        return MappingProxyType({org: frozenset(peers) for org, peers in union.items()})

    def share_holders(self, organization: str) -> frozenset[str]:
        """Who holds shares of ``organization``'s secrets: its neighbours and itself."""
        return self.graph[organization] | {organization}

    def threshold_of(self, organization: str) -> int:
        """Shares that reconstruct ``organization``'s secrets: ``t``, or more where needed
        to stay a strict majority of its share holders (a client in several support
        groups has more neighbours than the roster-wide graph gives it)."""
        return max(self.threshold, len(self.share_holders(organization)) // 2 + 1)

    def split_groups(self, survivors: AbstractSet[str]) -> frozenset[int]:
        """The support groups whose surviving holders are not one masking component.

        After the masks shared with dropped holders are removed, a group's sums reveal
        only their totals exactly when its survivors' masking graph is connected; each
        separate component's partial sum (a single holder's input, for an isolated one)
        would otherwise be readable, so the blocks of these groups are never unmasked.
        """
        return frozenset(
            index
            for index, (holders, graph) in enumerate(
                zip(self.support_groups, self.group_graphs, strict=True)
            )
            if not is_connected(graph, holders & survivors)
        )

    @functools.cached_property
    def holder_index(self) -> Mapping[str, int]:
        """Each organization's Shamir x-coordinate: its roster position plus one."""
        return MappingProxyType({org: i + 1 for i, org in enumerate(self.roster)})

    @functools.cached_property
    def support_groups(self) -> tuple[frozenset[str], ...]:
        """Distinct holder sets of the blocks, in a canonical order; indexed by group."""
        distinct = {frozenset(orgs) for orgs in self.block_supports.values()}
        return tuple(sorted(distinct, key=lambda orgs: sorted(orgs)))

    @functools.cached_property
    def group_of_block(self) -> Mapping[str, int]:
        """Block id → index of its support group."""
        index = {orgs: i for i, orgs in enumerate(self.support_groups)}
        return MappingProxyType(
            {block: index[frozenset(orgs)] for block, orgs in self.block_supports.items()}
        )

    @functools.cached_property
    def mask_offsets(self) -> Mapping[str, int]:
        """Block id → byte offset of the block in the mask layout: every block's words
        end to end in block order, the positions each mask key's keystream is read at."""
        word_bytes = self.fixed_point.bits // 8
        offsets: dict[str, int] = {}
        position = 0
        for block, length in self.block_lengths.items():
            offsets[block] = position
            position += length * word_bytes
        if position > MAX_KEYSTREAM_BYTES:
            raise SessionParamsError(
                f"the session's blocks total {position} bytes of masked words, more than the "
                f"{MAX_KEYSTREAM_BYTES} one mask keystream covers; split the blocks over "
                "several sessions"
            )
        return MappingProxyType(offsets)

    def groups_of(self, organization: str) -> tuple[int, ...]:
        """The support groups ``organization`` belongs to (one self-mask seed each)."""
        return tuple(i for i, orgs in enumerate(self.support_groups) if organization in orgs)

    def blocks_of(self, organization: str) -> tuple[str, ...]:
        """The blocks ``organization`` holds, in block order."""
        return tuple(b for b, orgs in self.block_supports.items() if organization in orgs)

    @property
    def step(self) -> float:
        """One quantization step ``1/scale``: the worst-case error of one coordinate."""
        return 1.0 / self.scale

    def __hash__(self) -> int:
        return hash(self.sid)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SessionParams) and self.sid == other.sid

    def __repr__(self) -> str:
        return (
            f"SessionParams(run_id={self.run_id!r}, round={self.round}, "
            f"cluster={self.cluster}, roster=<{len(self.roster)} orgs>, "
            f"blocks=<{len(self.block_lengths)}>, threshold={self.threshold}, "
            f"min_cohort={self.min_cohort}, neighbours={self.neighbours}, "
            f"sid={self.sid.hex()[:16]}…)"
        )


def default_threshold(roster_size: int, neighbours: int | None = None) -> int:
    """The smallest valid threshold: a strict majority of each client's share holders."""
    holders = effective_degree(roster_size, neighbours) + 1
    return holders // 2 + 1


def session_threshold(
    roster_size: int, *, neighbours: int | None, at_least: Callable[[int], int]
) -> int:
    """The Shamir threshold of a session over ``roster_size`` organizations.

    The one place the threshold is computed (the server builds its sessions with it and
    a client refuses a session below it): the larger of a strict majority of each
    client's share holders (`default_threshold`) and ``at_least(holders)``, the
    consortium's own threshold for that many share holders
    (``SecureAggregationSpec.threshold``: ``threshold_fraction`` and
    ``max_colluding_clients``). ``holders`` is a client's neighbours plus itself in the
    roster-wide masking graph of degree ``neighbours`` (None: complete graph).
    """
    holders = effective_degree(roster_size, neighbours) + 1
    return max(default_threshold(roster_size, neighbours), at_least(holders))
