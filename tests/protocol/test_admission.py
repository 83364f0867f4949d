"""Per-peer call quotas, idle-stream deadlines and the rate-limited refusal log.

The gRPC side (refusals on a live mutual-TLS server) is tested in
``tests/aggregator/test_flood.py``; these tests pin the pieces' own promises.
"""

from __future__ import annotations

import logging
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhft.protocol._admission import CallQuota, IdleWatch, RejectionLog
from fedhft.protocol.errors import PeerQuotaError


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _log(clock: _Clock, **limits: float) -> tuple[RejectionLog, list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(f"test-refusals-{id(records)}")
    logger.propagate = False
    logger.addHandler(Keep())
    logger.setLevel(logging.DEBUG)
    return RejectionLog(logger, clock=clock, **limits), records  # type: ignore[arg-type]


def _refuse(log: RejectionLog, identity: str = "bank-a", reason: str = "bad") -> None:
    log.record(
        status="INVALID_ARGUMENT",
        method="/fedhft.v1.Aggregator/Hello",
        identity=identity,
        reason=reason,
    )


def test_a_burst_of_refusals_logs_the_burst_then_reports_the_rest() -> None:
    """500 refusals at once write `burst` lines; the next line says how many were left out."""
    clock = _Clock()
    log, records = _log(clock, burst=20, per_second=1.0, report_every_s=10.0)
    for _ in range(500):
        _refuse(log)
    assert len(records) == 20
    clock.now = 1.0
    _refuse(log)
    assert len(records) == 21
    assert "480 earlier ones not logged" in records[-1].getMessage()


def test_suppressed_refusals_are_reported_while_a_flood_goes_on() -> None:
    """With no token left, a line of its own reports the count every `report_every_s`."""
    clock = _Clock()
    log, records = _log(clock, burst=1, per_second=0.01, report_every_s=5.0)
    for step in range(100):
        clock.now = step * 0.1
        _refuse(log)
    reports = [r.getMessage() for r in records if "not logged" in r.getMessage()]
    assert reports and all("failed calls from bank-a not logged" in r for r in reports)
    assert sum(int(r.split()[0]) for r in reports) + 1 <= 100


def test_each_identity_has_its_own_budget() -> None:
    """One organization's flood does not silence another's refusals."""
    clock = _Clock()
    log, records = _log(clock, burst=3)
    for _ in range(50):
        _refuse(log, "bank-a")
    _refuse(log, "clin-a")
    assert len(records) == 4
    assert " from clin-a ended with " in records[-1].getMessage()


def test_a_refusal_line_is_one_short_printable_line() -> None:
    """A reason with line breaks, control characters or great length stays one short line."""
    clock = _Clock()
    log, records = _log(clock)
    _refuse(log, "bank-a\nFAKE 2026 root: rm", "x\r\ny\x1b[31m" + "z" * 5000)
    (line,) = [r.getMessage() for r in records]
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert len(line) < 400


@settings(max_examples=50, deadline=None)
@given(
    gaps=st.lists(st.floats(min_value=0.0, max_value=3.0), min_size=1, max_size=400),
    burst=st.integers(min_value=1, max_value=30),
    per_second=st.floats(min_value=0.1, max_value=5.0),
    report_every_s=st.floats(min_value=0.5, max_value=20.0),
)
def test_lines_never_exceed_the_budget(
    gaps: list[float], burst: int, per_second: float, report_every_s: float
) -> None:
    """Over any run, one identity gets at most burst + rate * T + T / report + 1 lines."""
    clock = _Clock()
    log, records = _log(clock, burst=burst, per_second=per_second, report_every_s=report_every_s)
    for gap in gaps:
        clock.now += gap
        _refuse(log)
    elapsed = clock.now
    assert len(records) <= burst + per_second * elapsed + elapsed / report_every_s + 1


def test_a_quota_refuses_beyond_its_limit_and_frees_on_release() -> None:
    """An identity at its quota is refused; a released slot can be taken again."""
    quota = CallQuota(2)
    quota.acquire("bank-a")
    quota.acquire("bank-a")
    with pytest.raises(PeerQuotaError, match="max_calls_per_organization"):
        quota.acquire("bank-a")
    quota.acquire("clin-a")
    quota.release("bank-a")
    quota.acquire("bank-a")
    assert (quota.in_flight("bank-a"), quota.in_flight("clin-a")) == (2, 1)


@pytest.mark.parametrize("limit", [0, -1])
def test_a_quota_below_one_is_refused(limit: int) -> None:
    """A quota that would refuse every call is a configuration error."""
    with pytest.raises(ValueError, match="at least 1"):
        CallQuota(limit)


def test_an_untouched_stream_is_cancelled() -> None:
    """A watched stream that moves no message is cancelled and marked expired."""
    watch = IdleWatch(0.1)
    cancelled = threading.Event()
    stream = watch.watch(cancelled.set)
    assert cancelled.wait(30)
    assert stream.expired


def test_an_unwatched_stream_is_never_cancelled() -> None:
    """A stream that ended before its deadline is not cancelled afterwards."""
    watch = IdleWatch(0.1)
    cancelled = threading.Event()
    witness = threading.Event()
    watch.unwatch(watch.watch(cancelled.set))
    watch.watch(witness.set)  # Expires after the first would have.
    assert witness.wait(30)
    assert not cancelled.is_set()
