"""Tests of the persistent privacy ledger: ε, budget refusal, durability, corruption."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from fedhft.accounting import MechanismRecord, auto_noise_multiplier, compute_epsilon
from fedhft.policies import Accountant, NoiseSource, OrganizationPolicy
from fedhft.sdk import BudgetExhaustedError, LedgerError, PrivacyLedger

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning")

DELTA = 1e-5
ORG = "st-mary"


def dp_sgd(round_: int, sigma: float = 1.2, q: float = 0.02, steps: int = 30) -> MechanismRecord:
    return MechanismRecord(
        round=round_,
        mechanism="dp-sgd",
        noise_multiplier=sigma,
        sample_rate=q,
        steps=steps,
        max_grad_norm=1.0,
        noise_source=NoiseSource.SECURE,
    )


def open_ledger(path: Path, budget: float = 8.0, **kwargs: Any) -> PrivacyLedger:
    settings_: dict[str, Any] = {
        "organization": ORG,
        "accountant": Accountant.RDP,
        "delta": DELTA,
        "epsilon_budget": budget,
    }
    return PrivacyLedger.open(path, **{**settings_, **kwargs})


# --------------------------------------------------------------------------- spend


def test_new_ledger_is_written_empty(tmp_path: Path) -> None:
    """Opening a missing ledger creates a versioned file with no records and ε = 0."""
    path = tmp_path / "state" / "ledger.json"
    ledger = open_ledger(path)
    assert ledger.spent() == 0.0
    assert ledger.records == ()
    document = json.loads(path.read_text())
    assert (document["format"], document["version"], document["records"]) == (
        "fedhft-privacy-ledger",
        1,
        [],
    )


def test_spent_equals_opacus_accountant_on_the_file_contents(tmp_path: Path) -> None:
    """ε reported by the ledger equals an Opacus RDPAccountant fed from the JSON file."""
    path = tmp_path / "ledger.json"
    ledger = open_ledger(path)
    records = [dp_sgd(0), dp_sgd(1), dp_sgd(2, sigma=2.0, q=0.05, steps=10)]
    returned = [ledger.commit(record) for record in records]
    accountant = RDPAccountant()
    for item in json.loads(path.read_text())["records"]:
        for _ in range(item["steps"]):
            accountant.step(
                noise_multiplier=item["noise_multiplier"], sample_rate=item["sample_rate"]
            )
    assert ledger.spent() == returned[-1] == accountant.get_epsilon(delta=DELTA)
    assert ledger.records == tuple(records)


def test_epsilon_if_and_check_do_not_spend(tmp_path: Path) -> None:
    """epsilon_if/check give ε after the record without recording anything."""
    ledger = open_ledger(tmp_path / "ledger.json")
    ledger.commit(dp_sgd(0))
    before = (tmp_path / "ledger.json").read_bytes()
    expected = compute_epsilon((dp_sgd(0), dp_sgd(1)), accountant=Accountant.RDP, delta=DELTA)
    assert ledger.epsilon_if(dp_sgd(1)) == expected == ledger.check(dp_sgd(1))
    assert ledger.records == (dp_sgd(0),)
    assert (tmp_path / "ledger.json").read_bytes() == before


def policy(epsilon: float, rounds: int) -> OrganizationPolicy:
    return OrganizationPolicy.model_validate(
        {
            "organization": ORG,
            "consortium": "north",
            "privacy": {
                "epsilon": epsilon,
                "delta": DELTA,
                "max_grad_norm": 1.0,
                "planned_rounds": rounds,
            },
            "training": {"tier": "full", "batch_size": 16, "local_steps": 25},
        }
    )


def test_budget_fits_planned_rounds_and_refuses_one_more_before_training(tmp_path: Path) -> None:
    """With σ = auto, every planned round commits; the next one is refused by `check`
    (before any training) with spent, requested and budget, and nothing is written."""
    org = policy(epsilon=2.0, rounds=5)
    sigma = auto_noise_multiplier(org, sample_rate=0.04, steps_per_round=25)
    path = tmp_path / "ledger.json"
    ledger = open_ledger(path, budget=org.privacy.epsilon)
    for r in range(5):
        assert ledger.commit(dp_sgd(r, sigma=sigma, q=0.04, steps=25)) <= 2.0
    before = path.read_bytes()
    extra = dp_sgd(5, sigma=sigma, q=0.04, steps=25)
    with pytest.raises(BudgetExhaustedError) as caught:
        ledger.check(extra)
    error = caught.value
    assert error.spent == ledger.spent()
    assert error.requested == ledger.epsilon_if(extra) > 2.0
    assert error.budget == 2.0
    for number in (error.spent, error.requested, error.budget):
        assert f"{number:.4g}" in str(error)
    with pytest.raises(BudgetExhaustedError):
        ledger.commit(extra)
    assert path.read_bytes() == before
    assert len(ledger.records) == 5


def test_remaining_budget_never_negative(tmp_path: Path) -> None:
    """remaining() is budget − spent, clamped at zero when a lower budget is opened."""
    path = tmp_path / "ledger.json"
    ledger = open_ledger(path)
    spent = ledger.commit(dp_sgd(0, sigma=1.0, q=0.1, steps=20))
    assert ledger.remaining() == pytest.approx(8.0 - spent)
    assert open_ledger(path, budget=spent / 2).remaining() == 0.0


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    accountant=st.just(Accountant.RDP),
    releases=st.lists(
        st.tuples(
            st.floats(0.5, 20.0),
            st.floats(1e-4, 1.0),
            st.integers(1, 200),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_spend_never_decreases(
    tmp_path_factory: pytest.TempPathFactory,
    accountant: Accountant,
    releases: list[tuple[float, float, int]],
) -> None:
    """Law: every commit leaves ε at least where it was, and a refused one leaves it as is."""
    path = tmp_path_factory.mktemp("ledger") / "ledger.json"
    ledger = open_ledger(path, budget=1e9, accountant=accountant)
    previous = ledger.spent()
    for r, (sigma, q, steps) in enumerate(releases):
        try:
            now = ledger.commit(dp_sgd(r, sigma=sigma, q=q, steps=steps))
        except BudgetExhaustedError:
            # Even 1e9 can be exceeded: nothing may change.
            assert ledger.spent() == previous
            continue
        assert now >= previous
        assert ledger.spent() == now
        previous = now


# --------------------------------------------------------------------------- persistence


def test_reopened_ledger_restores_exact_epsilon(tmp_path: Path) -> None:
    """A ledger opened afresh from the file has the same records and bit-identical ε."""
    path = tmp_path / "ledger.json"
    ledger = open_ledger(path)
    for r in range(3):
        ledger.commit(dp_sgd(r, sigma=1.0 + r / 7))
    again = open_ledger(path)
    assert again.records == ledger.records
    assert again.spent() == ledger.spent()


@pytest.mark.slow
def test_ledger_survives_a_process_restart(tmp_path: Path) -> None:
    """A subprocess commits and exits; another process reads the exact same ε."""
    path = tmp_path / "ledger.json"
    common = f"""
        from fedhft.policies import Accountant, NoiseSource
        from fedhft.accounting import MechanismRecord
        from fedhft.sdk import PrivacyLedger
        ledger = PrivacyLedger.open({str(path)!r}, organization={ORG!r},
            accountant=Accountant.PRV, delta={DELTA!r}, epsilon_budget=50.0, create=CREATE)
    """
    writer = (
        common.replace("CREATE", "True")
        + """
        for r in range(3):
            ledger.commit(MechanismRecord(round=r, mechanism="dp-sgd", noise_multiplier=1.1,
                sample_rate=0.03, steps=40, max_grad_norm=1.0, noise_source=NoiseSource.SECURE))
        print(repr(ledger.spent()))
    """
    )
    reader = (
        common.replace("CREATE", "False")
        + """
        print(repr(ledger.spent()), len(ledger.records))
    """
    )
    written = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(writer)], capture_output=True, text=True, check=True
    )
    read = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(reader)], capture_output=True, text=True, check=True
    )
    assert read.stdout.split() == [written.stdout.strip(), "3"]
    here = PrivacyLedger.open(
        path, organization=ORG, accountant=Accountant.PRV, delta=DELTA, epsilon_budget=50.0
    )
    assert repr(here.spent()) == written.stdout.strip()


def test_commit_writes_atomically_and_durably(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new file is fsynced before os.replace, and the folder is fsynced after it."""
    path = tmp_path / "ledger.json"
    ledger = open_ledger(path)
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    ledger.commit(dp_sgd(0))
    if sys.platform.startswith("linux"):
        assert events == ["fsync-file", "replace", "fsync-dir"]
    else:  # pragma: no cover - /proc is Linux-only
        assert events.count("replace") == 1


def test_crash_during_write_leaves_the_old_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the replace fails, the old file stays valid, no temp file remains, and the
    in-memory ledger has not counted the record."""
    path = tmp_path / "ledger.json"
    ledger = open_ledger(path)
    ledger.commit(dp_sgd(0))
    before = path.read_bytes()

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        ledger.commit(dp_sgd(1))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json", "ledger.json.lock"]
    assert ledger.records == (dp_sgd(0),)


def test_commits_from_two_handles_are_both_kept(tmp_path: Path) -> None:
    """A second process's handle reads the first's commit before appending its own."""
    path = tmp_path / "ledger.json"
    first, second = open_ledger(path), open_ledger(path)
    first.commit(dp_sgd(0))
    second.commit(dp_sgd(1))
    assert second.records == (dp_sgd(0), dp_sgd(1))
    assert open_ledger(path).records == (dp_sgd(0), dp_sgd(1))


def test_rewritten_file_is_refused_at_commit(tmp_path: Path) -> None:
    """If the file no longer extends this handle's records, commit raises LedgerError."""
    path = tmp_path / "ledger.json"
    ledger = open_ledger(path)
    ledger.commit(dp_sgd(0))
    path.unlink()
    open_ledger(path).commit(dp_sgd(7))
    with pytest.raises(LedgerError, match="rewritten"):
        ledger.commit(dp_sgd(1))


def test_new_budget_is_used_and_written_at_next_commit(tmp_path: Path) -> None:
    """The budget of the current policy wins over the one in the file."""
    path = tmp_path / "ledger.json"
    open_ledger(path, budget=8.0).commit(dp_sgd(0))
    ledger = open_ledger(path, budget=3.0)
    assert ledger.epsilon_budget == 3.0
    ledger.commit(dp_sgd(1))
    assert json.loads(path.read_text())["epsilon_budget"] == 3.0


# --------------------------------------------------------------------------- refusals


def _committed(path: Path) -> dict[str, Any]:
    open_ledger(path).commit(dp_sgd(0))
    document: dict[str, Any] = json.loads(path.read_text())
    return document


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: raw[: len(raw) // 2], "not valid JSON"),
        (lambda raw: b"", "empty"),
        (lambda raw: b"\xff\xfe\x00garbage", "not valid JSON"),
        (lambda raw: b"[1, 2, 3]", "not a fedhft privacy ledger"),
    ],
)
def test_corrupted_file_is_refused_naming_the_path(
    tmp_path: Path, damage: Any, message: str
) -> None:
    """Truncated, empty or foreign files raise LedgerError naming the file, never ε = 0."""
    path = tmp_path / "ledger.json"
    _committed(path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(LedgerError, match=message) as caught:
        open_ledger(path)
    assert str(path) in str(caught.value)


def test_edited_record_fails_the_digest(tmp_path: Path) -> None:
    """Lowering a record's steps by hand is detected by the SHA-256 digest."""
    path = tmp_path / "ledger.json"
    document = _committed(path)
    document["records"][0]["steps"] = 1
    path.write_text(json.dumps(document))
    with pytest.raises(LedgerError, match="SHA-256"):
        open_ledger(path)


def test_removed_field_and_unknown_version_are_refused(tmp_path: Path) -> None:
    """A ledger without its records or of another format version raises LedgerError."""
    path = tmp_path / "ledger.json"
    document = _committed(path)
    path.write_text(json.dumps({**document, "version": 99}))
    with pytest.raises(LedgerError, match="version 99"):
        open_ledger(path)
    del document["records"]
    path.write_text(json.dumps(document))
    with pytest.raises(LedgerError, match="records"):
        open_ledger(path)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"organization": "glen-clinic"}, "organization"),
        ({"accountant": Accountant.PRV}, "accountant"),
        ({"delta": 1e-6}, "delta"),
    ],
)
def test_ledger_of_another_setting_is_refused(
    tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    """Opening with another organization, accountant or δ raises LedgerError."""
    path = tmp_path / "ledger.json"
    _committed(path)
    with pytest.raises(LedgerError, match=field):
        open_ledger(path, **change)


def test_missing_ledger_is_an_error_when_creation_is_off(tmp_path: Path) -> None:
    """create=False turns a lost ledger into LedgerError instead of a fresh zero."""
    with pytest.raises(LedgerError, match="does not exist"):
        open_ledger(tmp_path / "gone.json", create=False)
    assert not (tmp_path / "gone.json").exists()


@pytest.mark.parametrize(
    "change", [{"delta": 0.0}, {"delta": 1.0}, {"epsilon_budget": 0.0}, {"epsilon_budget": -1.0}]
)
def test_bad_settings_are_refused(tmp_path: Path, change: dict[str, Any]) -> None:
    """δ outside (0, 1) or a non-positive budget raise ValueError."""
    with pytest.raises(ValueError, match=next(iter(change))):
        open_ledger(tmp_path / "ledger.json", **change)


def test_gdp_cannot_enforce_a_ledgers_budget(tmp_path: Path) -> None:
    """GDP can under-report ε, so a ledger refuses it and writes nothing."""
    with pytest.raises(LedgerError, match="cannot enforce a budget"):
        open_ledger(tmp_path / "ledger.json", accountant=Accountant.GDP)
    assert not (tmp_path / "ledger.json").exists()


# --------------------------------------------------------------------------- server's view


def _gaussian(round_: int) -> MechanismRecord:
    return MechanismRecord(
        round=round_,
        mechanism="gaussian",
        noise_multiplier=2.0,
        sample_rate=1.0,
        steps=1,
        noise_source=NoiseSource.SECURE,
    )


@given(
    spent=st.sets(st.integers(1, 12)),
    released=st.sets(st.integers(1, 12)),
    uploaded=st.sets(st.integers(1, 12)),
)
def test_server_view_refuses_exactly_the_uploaded_rounds_without_a_dp_sgd_spend(
    spent: set[int], released: set[int], uploaded: set[int]
) -> None:
    """Any rounds the server saw uploads in and any ledger: refused iff some uploaded round
    has no DP-SGD record (a Gaussian release of that round does not count), naming
    exactly those rounds."""
    from fedhft.sdk.errors import LedgerMissingError
    from fedhft.sdk.privacy._ledger import check_server_participation

    records = (*(dp_sgd(r) for r in sorted(spent)), *(_gaussian(r) for r in sorted(released)))
    ledger = PrivacyLedger(
        Path("ledger.json"),
        organization=ORG,
        accountant=Accountant.RDP,
        delta=DELTA,
        epsilon_budget=8.0,
        records=records,
    )
    missing = sorted(uploaded - spent)

    def check() -> None:
        check_server_participation(
            ledger, sorted(uploaded), server="s:1", audit_log=None, state_dir="state"
        )

    if not missing:
        check()
        return
    with pytest.raises(LedgerMissingError) as refused:
        check()
    assert f"rounds {missing}" in str(refused.value)
    assert "treat this organization's privacy budget as spent" in str(refused.value)


def test_discard_unused_removes_only_an_empty_ledger(tmp_path: Path) -> None:
    """`discard_unused` deletes a ledger with no release and keeps one that has any."""
    empty = open_ledger(tmp_path / "empty.json")
    assert empty.discard_unused() is True and not empty.path.exists()
    assert empty.discard_unused() is False
    spent = open_ledger(tmp_path / "spent.json")
    spent.commit(dp_sgd(1))
    stale = open_ledger(tmp_path / "spent.json")
    assert open_ledger(tmp_path / "fresh.json").records == ()
    assert spent.discard_unused() is False and stale.discard_unused() is False
    assert spent.path.exists()
