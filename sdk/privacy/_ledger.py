"""The organization's persistent privacy ledger: every DP release, durably on disk.

The ledger is a JSON file holding the full mechanism parameters of every release the
organization made (:class:`MechanismRecord`), so ε can be recomputed at any time, by the
organization or an auditor, with any Opacus accountant. It implements ARCHITECTURE.md §3:
the spend of a round is committed *before* the update leaves the organization, with an
atomic, durable write (temporary file, ``fsync``, ``os.replace``, ``fsync`` of the
folder), so a crash at any point leaves either the old or the new ledger, never a torn
one, and never forgets spend that was released.

The file carries a format version and a SHA-256 digest of its content: a truncated,
corrupted or hand-edited file is refused with :class:`LedgerError`, never silently
replaced by an empty ledger. Commits from concurrent processes are serialized with an
advisory lock on a sidecar ``.lock`` file (POSIX).

`open_organization_ledger` is how a client opens its ledger: a missing file starts at
ε = 0 only for an organization with no sign of earlier participation (round files in its
state folder, rounds or spends in its audit log); otherwise it raises
:class:`LedgerMissingError` naming the evidence and the recovery, `PrivacyLedger.rebuild`
from the verified audit log's spend records (``fedhft ledger rebuild``). At `Hello` the
client also checks the server's view (`check_server_participation`): a round in which
the server accepted this organization's upload must have its DP-SGD spend in the
ledger, which stops an organization that lost ledger, state folder and audit log alike.

Notes:
    A ledger recreated at zero would let an organization that spent its budget train
    again, so the absence of the file is never taken as the absence of spend when
    anything else remembers a round. The audit log is read here without checking its
    signatures: it can only make the client refuse, never lower the spend.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedhft.accounting import MechanismRecord, compute_epsilon
from fedhft.files import atomic_write
from fedhft.policies import Accountant, OrganizationPolicy

from .._round_files import RoundFiles
from ..errors import BudgetExhaustedError, LedgerError, LedgerMissingError

FORMAT = "fedhft-privacy-ledger"
VERSION = 1
_FIELDS = ("accountant", "delta", "epsilon_budget", "format", "organization", "records")


def _canonical(content: dict[str, Any]) -> bytes:
    return json.dumps(
        content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def _digest(content: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(content)).hexdigest()


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an advisory exclusive lock on ``path.lock`` (a no-op where flock is missing)."""
    if sys.platform == "win32":  # pragma: no cover - fedhft targets POSIX hosts
        yield
        return
    import fcntl

    lock_path = path.with_name(path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class PrivacyLedger:
    """Persistent record of an organization's DP releases and the ε they spend.

    Open it with :meth:`open`; ask :meth:`check` before training a round and
    :meth:`commit` before its update is released.
    """

    def __init__(
        self,
        path: Path,
        *,
        organization: str,
        accountant: Accountant,
        delta: float,
        epsilon_budget: float,
        records: tuple[MechanismRecord, ...],
    ) -> None:
        self._path = path
        self._organization = organization
        self._accountant = accountant
        self._delta = delta
        self._epsilon_budget = epsilon_budget
        self._records = records
        self._spent: float | None = None

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        organization: str,
        accountant: Accountant,
        delta: float,
        epsilon_budget: float,
        create: bool = True,
    ) -> PrivacyLedger:
        """Open the ledger at ``path``, creating an empty one if missing and ``create``.

        The budget is the caller's (the current policy's); it is written to the file at
        the next commit. Pass ``create=False`` once a federation has started, so a lost
        ledger file is an error instead of a fresh zero spend.

        Raises:
            LedgerError: the file is missing (and ``create`` is false), unreadable,
                truncated, corrupted or edited, or was written for another
                organization, accountant or δ.
            ValueError: ``delta`` or ``epsilon_budget`` is out of range.
        """
        accountant = Accountant(accountant)
        if not 0.0 < delta < 1.0:
            raise ValueError(f"`delta` must be in (0, 1), got {delta!r}")
        if not (math.isfinite(epsilon_budget) and epsilon_budget > 0):
            raise ValueError(
                f"`epsilon_budget` must be a finite number > 0, got {epsilon_budget!r}"
            )
        if not accountant.enforces_budget:
            # A ledger enforces a budget; an accountant that can under-report ε (GDP's
            # central-limit approximation) would let a round past it.
            raise LedgerError(
                f"the {accountant.value} accountant can under-report ε and cannot enforce a "
                "budget; use `rdp` or `prv` for `privacy.accountant`"
            )
        ledger_path = Path(path)
        ledger = cls(
            ledger_path,
            organization=organization,
            accountant=accountant,
            delta=delta,
            epsilon_budget=epsilon_budget,
            records=(),
        )
        with _exclusive_lock(ledger_path):
            if ledger_path.exists():
                ledger._records = ledger._read()
            elif create:
                # Written now, so a later loss of the file is noticed (create=False).
                ledger._write((), 0.0)
            else:
                raise LedgerError(
                    f"privacy ledger {ledger_path} does not exist; restore it from backup — "
                    "starting from zero would forget privacy already spent"
                )
        return ledger

    def _read(self) -> tuple[MechanismRecord, ...]:
        """The records in the file, after checking format, digest and settings."""
        path = self._path
        try:
            raw = path.read_bytes()
        except OSError as error:
            raise LedgerError(f"cannot read privacy ledger {path}: {error.strerror}") from error
        if not raw.strip():
            raise LedgerError(f"privacy ledger {path} is empty (truncated?); restore it")
        try:
            document = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise LedgerError(
                f"privacy ledger {path} is not valid JSON (truncated or corrupted): {error}"
            ) from error
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise LedgerError(f"{path} is not a fedhft privacy ledger (no `format: {FORMAT}`)")
        if document.get("version") != VERSION:
            raise LedgerError(
                f"privacy ledger {path} has format version {document.get('version')!r}; "
                f"this fedhft reads version {VERSION}"
            )
        missing = [name for name in _FIELDS if name not in document]
        if missing or "sha256" not in document:
            raise LedgerError(f"privacy ledger {path} lacks {missing or ['sha256']}")
        content = {name: document[name] for name in (*_FIELDS, "version")}
        if _digest(content) != document["sha256"]:
            raise LedgerError(
                f"privacy ledger {path} fails its SHA-256 check: it was corrupted or edited"
            )
        expected = {
            "organization": self._organization,
            "accountant": self._accountant.value,
            "delta": self._delta,
        }
        for name, value in expected.items():
            if document[name] != value:
                raise LedgerError(
                    f"privacy ledger {path} belongs to {name}={document[name]!r}, not "
                    f"{value!r}; use that setting or another ledger_path"
                )
        if not isinstance(document["records"], list):
            raise LedgerError(f"privacy ledger {path}: `records` must be a list")
        try:
            return tuple(MechanismRecord.model_validate(item) for item in document["records"])
        except ValidationError as error:
            raise LedgerError(f"privacy ledger {path} holds an invalid record: {error}") from error

    @classmethod
    def rebuild(
        cls,
        path: str | Path,
        records: tuple[MechanismRecord, ...],
        *,
        organization: str,
        accountant: Accountant,
        delta: float,
        epsilon_budget: float,
        force: bool = False,
    ) -> PrivacyLedger:
        """Write a ledger holding exactly ``records`` (from a verified audit log).

        The spend may exceed the budget: it is what was released, and the ledger then
        refuses every further release.

        Raises:
            LedgerError: a ledger exists at ``path`` and ``force`` is false.
        """
        ledger_path = Path(path)
        ledger = cls(
            ledger_path,
            organization=organization,
            accountant=Accountant(accountant),
            delta=delta,
            epsilon_budget=epsilon_budget,
            records=records,
        )
        with _exclusive_lock(ledger_path):
            if ledger_path.exists() and not force:
                raise LedgerError(
                    f"privacy ledger {ledger_path} exists; refusing to overwrite it "
                    "(pass --force to replace it with the audit log's spend)"
                )
            ledger._write(records, ledger.spent())
        return ledger

    def discard_unused(self) -> bool:
        """Delete the ledger file if it still holds no release; returns whether it did.

        For a client that created this ledger at ε = 0 and then learned that it had
        taken part before (`check_server_participation`): an empty file left behind
        would pass for a new organization's ledger at the next start.
        """
        with _exclusive_lock(self._path):
            if not self._path.exists() or self._read():
                return False
            self._path.unlink()
            return True

    # ------------------------------------------------------------------ reading

    @property
    def path(self) -> Path:
        """The ledger file."""
        return self._path

    @property
    def organization(self) -> str:
        """The organization whose spend this is."""
        return self._organization

    @property
    def accountant(self) -> Accountant:
        """The accountant ε is computed with."""
        return self._accountant

    @property
    def delta(self) -> float:
        """δ of the (ε, δ) guarantee."""
        return self._delta

    @property
    def epsilon_budget(self) -> float:
        """The total ε budget."""
        return self._epsilon_budget

    @property
    def records(self) -> tuple[MechanismRecord, ...]:
        """Every committed release, oldest first."""
        return self._records

    def spent(self) -> float:
        """ε spent by all committed releases (0.0 when none)."""
        if self._spent is None:
            self._spent = self._epsilon_of(self._records)
        return self._spent

    def remaining(self) -> float:
        """Budget minus spend (never below 0)."""
        return max(0.0, self._epsilon_budget - self.spent())

    def epsilon_if(self, record: MechanismRecord) -> float:
        """ε the ledger would reach if ``record`` were committed."""
        return self._epsilon_of((*self._records, record))

    def check(self, record: MechanismRecord) -> float:
        """ε after ``record``, or :class:`BudgetExhaustedError` if that is over budget."""
        after = self.epsilon_if(record)
        if not after <= self._epsilon_budget:
            raise BudgetExhaustedError(
                spent=self.spent(), requested=after, budget=self._epsilon_budget
            )
        return after

    # ------------------------------------------------------------------ writing

    def commit(self, record: MechanismRecord) -> float:
        """Check ``record`` against the budget, append it and write the ledger durably.

        Returns ε after the record. Commits by another process since this one opened the
        ledger are read first (under a file lock), so none is lost.

        Raises:
            BudgetExhaustedError: the record would exceed the budget; nothing is written.
            LedgerError: the file changed in a way that does not extend this ledger.
        """
        with _exclusive_lock(self._path):
            if self._path.exists():
                on_disk = self._read()
                if on_disk[: len(self._records)] != self._records:
                    raise LedgerError(
                        f"privacy ledger {self._path} was rewritten by someone else and no "
                        "longer contains this process's records; reopen it"
                    )
                if len(on_disk) != len(self._records):
                    self._records = on_disk
                    self._spent = None
            after = self.check(record)
            records = (*self._records, record)
            self._write(records, after)
            self._records = records
            self._spent = after
        return after

    def _write(self, records: tuple[MechanismRecord, ...], spent: float) -> None:
        content: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "organization": self._organization,
            "accountant": self._accountant.value,
            "delta": self._delta,
            "epsilon_budget": self._epsilon_budget,
            "records": [record.model_dump(mode="json") for record in records],
        }
        document = {
            **content,
            # For people reading the file; the ledger always recomputes it from records.
            "epsilon_spent": spent,
            "sha256": _digest(content),
        }
        atomic_write(self._path, json.dumps(document, indent=2, allow_nan=False).encode() + b"\n")

    def _epsilon_of(self, records: tuple[MechanismRecord, ...]) -> float:
        return compute_epsilon(records, accountant=self._accountant, delta=self._delta)

    def __repr__(self) -> str:
        return (
            f"PrivacyLedger({str(self._path)!r}, organization={self._organization!r}, "
            f"accountant={self._accountant.value!r}, records={len(self._records)}, "
            f"spent={self.spent():.4g}, budget={self._epsilon_budget:.4g})"
        )


_PARTICIPATION_EVENTS = frozenset(
    {"privacy_spend", "round_joined", "update_committed", "aggregation_receipt"}
)


def participation_evidence(
    *, state_dir: str | Path | None, audit_log: str | Path | None
) -> tuple[str, ...]:
    """What shows that this organization already took part in rounds: round files in
    ``state_dir`` and participation records (rounds joined, spends, uploads) in
    ``audit_log``. Empty for a genuinely new organization."""
    evidence: list[str] = []
    if state_dir is not None:
        files = RoundFiles.files_in(Path(state_dir))
        if files:
            evidence.append(
                f"state folder {state_dir} holds {len(files)} round file(s) "
                f"({', '.join(files[:3])})"
            )
    if audit_log is not None:
        counts = _participation_records(Path(audit_log))
        if counts:
            listed = ", ".join(f"{count} {event}" for event, count in sorted(counts.items()))
            evidence.append(f"audit log {audit_log} records {listed}")
    return tuple(evidence)


def _participation_records(path: Path) -> dict[str, int]:
    """Participation events per type in the audit log at ``path`` (unverified: see the
    module's notes); unreadable lines are skipped, a missing file has none."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise LedgerError(
            f"cannot read audit log {path} to check for earlier rounds: {error.strerror}"
        ) from error
    counts: dict[str, int] = {}
    for line in raw.splitlines():
        try:
            event = json.loads(line).get("event")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            continue
        if event in _PARTICIPATION_EVENTS:
            counts[event] = counts.get(event, 0) + 1
    return counts


def open_organization_ledger(
    policy: OrganizationPolicy, *, state_dir: str | Path | None
) -> PrivacyLedger:
    """The policy's ledger for a client: created at zero only for a new organization.

    Raises:
        LedgerMissingError: the ledger file is missing but the state folder or the audit
            log shows earlier rounds; nothing is written.
        LedgerError: the ledger exists but cannot be used (see `PrivacyLedger.open`).
    """
    privacy = policy.privacy
    path = Path(privacy.ledger_path)

    def open_ledger(*, create: bool) -> PrivacyLedger:
        return PrivacyLedger.open(
            path,
            organization=policy.organization,
            accountant=privacy.accountant,
            delta=privacy.delta,
            epsilon_budget=privacy.epsilon,
            create=create,
        )

    if path.exists():
        return open_ledger(create=False)
    evidence = participation_evidence(state_dir=state_dir, audit_log=policy.audit.log_path)
    if evidence:
        raise LedgerMissingError(
            f"privacy ledger {path} (`privacy.ledger_path`) is missing, but "
            f"{policy.organization} already took part in rounds: {'; '.join(evidence)}. "
            "Starting from ε = 0 would forget the privacy already spent. Restore the file "
            "from backup, or rebuild it from the verified audit log: `fedhft ledger rebuild "
            f"--audit-log {policy.audit.log_path} --policy POLICY.yaml --certs CERTS_DIR`",
            evidence=evidence,
        )
    return open_ledger(create=True)


def check_server_participation(
    ledger: PrivacyLedger,
    rounds_uploaded: Iterable[int],
    *,
    server: str,
    audit_log: str | Path | None,
    state_dir: str | Path,
) -> None:
    """The ledger holds a DP-SGD spend for every round the server accepted an upload in.

    ``rounds_uploaded`` is the server's view (`HelloResponse.rounds_uploaded`). An
    upload leaves the organization only after its round's DP-SGD spend is committed
    (ARCHITECTURE.md §3), so a round the server saw without a spend in the ledger means the
    ledger lost that spend: the organization lost its ledger (and perhaps its state
    folder and audit log too) and would otherwise start again at a lower ε.

    Raises:
        LedgerMissingError: rounds the server saw have no DP-SGD spend in the ledger;
            the message names them, the ledger and the recovery.
    """
    spent = {record.round for record in ledger.records if record.mechanism == "dp-sgd"}
    unaccounted = sorted(set(rounds_uploaded) - spent)
    if not unaccounted:
        return
    seen = (
        f"the server at {server} accepted uploads of {ledger.organization} in rounds {unaccounted}"
    )
    log = audit_log if audit_log is not None else "AUDIT_LOG"
    raise LedgerMissingError(
        f"{seen}, but the privacy ledger {ledger.path} (`privacy.ledger_path`) holds no "
        "DP-SGD spend for them: the ledger was lost or replaced, and starting from it would "
        "forget privacy already spent. Nothing was trained. Restore the ledger from backup, "
        "or rebuild it from the audit log (restored from backup if it was lost): `fedhft "
        f"ledger rebuild --audit-log {log} --policy POLICY.yaml --certs CERTS_DIR --state "
        f"{state_dir} --force`. If no copy of the ledger or the audit log survives, this "
        "spend cannot be reconstructed locally: treat this organization's privacy budget as "
        "spent and take no further part in this run",
        evidence=(seen,),
    )
