"""What one peer may hold on a server: call quotas, idle-stream deadlines, refusal logging.

A mutual-TLS peer is one identity: the organization its verified client certificate
names. Three pieces keep one identity from costing the others their service:

- `CallQuota` caps the calls one identity has in flight (long polls and streams
  included). A worker pool at least as large as every identity's quota plus a few spare
  threads then always has a worker for each identity: no group of identities, each at
  its quota, can take the last identity's share (see `fedhft.protocol.EnrollmentInterceptor`,
  which enforces the quota before the servicer runs).
- `IdleWatch` cancels a stream that has moved no message for a while, so that a peer
  that opened a stream and went silent does not hold its slot, or a worker, forever.
- `RejectionLog` writes one line per refused call, at most a burst and then a steady
  rate per identity (a token bucket), and says how many lines it left out.

Notes:
    A refusal line names the status, the method, the identity and the refusal's message.
    Refusal messages are those of the typed errors, which by the project's rule hold no
    secret; they are cut to one printable line of at most `MAX_REASON_CHARS` characters so
    that a peer can neither forge log lines nor make them long. Payloads are never logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .errors import PeerQuotaError

MAX_REASON_CHARS: Final = 200
"""The longest refusal message a log line carries."""

MAX_TRACKED_IDENTITIES: Final = 1024
"""Identities with their own log budget; any further ones share one (`OTHER_IDENTITIES`)."""

OTHER_IDENTITIES: Final = "<other identities>"

_LOG = logging.getLogger("fedhft.protocol.refusals")


def one_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """`text` as one printable line of at most `limit` characters (for a log line)."""
    printable = "".join(c if c.isprintable() else "?" for c in text)
    return printable if len(printable) <= limit else printable[: limit - 3] + "..."


# --------------------------------------------------------------------------- quota


class CallQuota:
    """Counts each identity's calls in flight and refuses those beyond `limit`.

    Args:
        limit: the most calls one identity may have in flight at once (at least 1).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a call quota must be at least 1, got {limit}")
        self.limit = limit
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}

    def acquire(self, identity: str) -> None:
        """Count one more call of `identity`; raises `PeerQuotaError` when it has `limit`."""
        with self._lock:
            held = self._in_flight.get(identity, 0)
            if held >= self.limit:
                raise PeerQuotaError(
                    f"{identity} already has {held} calls in flight, the most one "
                    "organization may hold (`max_calls_per_organization`); wait for one "
                    "to end before starting another"
                )
            self._in_flight[identity] = held + 1

    def release(self, identity: str) -> None:
        """One call of `identity` ended."""
        with self._lock:
            held = self._in_flight.get(identity, 0) - 1
            if held > 0:
                self._in_flight[identity] = held
            else:
                self._in_flight.pop(identity, None)

    def in_flight(self, identity: str) -> int:
        """How many calls `identity` has in flight now."""
        with self._lock:
            return self._in_flight.get(identity, 0)


# --------------------------------------------------------------------------- idle streams


class WatchedStream:
    """A stream under an `IdleWatch`: `touch()` on every message; `expired` once cancelled."""

    __slots__ = ("cancel", "expired", "last")

    def __init__(self, cancel: Callable[[], None], now: float) -> None:
        self.cancel = cancel
        self.last = now
        self.expired = False

    def touch(self) -> None:
        """A message went through: the idle time starts again."""
        self.last = time.monotonic()


class IdleWatch:
    """Cancels every watched stream that moved no message for `timeout_s` seconds.

    One daemon thread checks the watched streams a few times per timeout; it runs only
    while some stream is watched, so an idle server holds no extra thread.
    """

    def __init__(self, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"a stream idle timeout must be > 0 seconds, got {timeout_s}")
        self.timeout_s = timeout_s
        self._tick_s = min(max(timeout_s / 4, 0.05), 1.0)
        self._lock = threading.Lock()
        self._streams: set[WatchedStream] = set()
        self._thread: threading.Thread | None = None

    def watch(self, cancel: Callable[[], None]) -> WatchedStream:
        """Watch a stream from now on; `cancel()` ends it once it is idle too long."""
        stream = WatchedStream(cancel, time.monotonic())
        with self._lock:
            self._streams.add(stream)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="fedhft-idle-streams", daemon=True
                )
                self._thread.start()
        return stream

    def unwatch(self, stream: WatchedStream) -> None:
        """The stream ended."""
        with self._lock:
            self._streams.discard(stream)

    def _run(self) -> None:
        while True:
            time.sleep(self._tick_s)
            now = time.monotonic()
            with self._lock:
                if not self._streams:
                    self._thread = None
                    return
                idle = [s for s in self._streams if now - s.last > self.timeout_s]
                for stream in idle:
                    stream.expired = True
                    self._streams.discard(stream)
            for stream in idle:
                stream.cancel()


# --------------------------------------------------------------------------- refusal log


@dataclass
class _Budget:
    tokens: float
    refilled_at: float
    suppressed: int = 0
    reported_at: float = 0.0


class RejectionLog:
    """Logs refused calls one line each, rate-limited per identity (a token bucket).

    Each identity may log `burst` lines at once and then `per_second` lines a second.
    Lines beyond that are counted, not written; the count is reported on the identity's
    next line, and in a line of its own at least every `report_every_s` seconds while
    refusals go on, so a peer cannot fill the operator's disk and the operator still
    learns how much was refused. Over any `T` seconds one identity gets at most
    ``burst + per_second * T + T / report_every_s + 1`` lines.
    """

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        burst: int = 20,
        per_second: float = 1.0,
        report_every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or not per_second > 0 or not report_every_s > 0:
            raise ValueError(
                f"a refusal log needs burst >= 1, per_second > 0 and report_every_s > 0, got "
                f"{burst}, {per_second} and {report_every_s}"
            )
        self._logger = logger or _LOG
        self._burst = float(burst)
        self._per_second = per_second
        self._report_every_s = report_every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._budgets: dict[str, _Budget] = {}

    def record(self, *, status: str, method: str, identity: str, reason: str) -> None:
        """Log (or count) that a call of `identity` to `method` was refused with `status`."""
        identity = one_line(identity, 80)
        now = self._clock()
        with self._lock:
            budget = self._budget(identity, now)
            budget.tokens = min(
                self._burst, budget.tokens + (now - budget.refilled_at) * self._per_second
            )
            budget.refilled_at = now
            if budget.tokens >= 1:
                budget.tokens -= 1
                left_out, budget.suppressed = budget.suppressed, 0
                budget.reported_at = now
                line = True
            else:
                budget.suppressed += 1
                line = False
                left_out = 0
                if now - budget.reported_at >= self._report_every_s:
                    left_out, budget.suppressed = budget.suppressed, 0
                    budget.reported_at = now
        if line:
            self._logger.warning(
                "%s from %s ended with %s: %s%s",
                one_line(method, 80),
                identity,
                one_line(status, 40),
                one_line(reason),
                f" ({left_out} earlier ones not logged)" if left_out else "",
            )
        elif left_out:
            self._logger.warning(
                "%d failed calls from %s not logged (more than %g lines a second)",
                left_out,
                identity,
                self._per_second,
            )

    def _budget(self, identity: str, now: float) -> _Budget:
        budget = self._budgets.get(identity)
        if budget is None:
            if len(self._budgets) >= MAX_TRACKED_IDENTITIES:
                identity = OTHER_IDENTITIES
                budget = self._budgets.get(identity)
            if budget is None:
                budget = self._budgets[identity] = _Budget(tokens=self._burst, refilled_at=now)
        return budget
