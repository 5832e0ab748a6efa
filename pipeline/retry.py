"""When a song that failed for a reason that may pass is tried again (pure; no I/O, no Ray).

A song's try that fails with a transient kind (``missing``, ``io``, ``timeout``: a file not
there yet, a throttled store) leaves an error row with its ``attempt`` number. The song is
due again ``after_hours`` after its first failed try, then twice as long after each next one
(20 h, 40 h, 80 h, ... by default: every night at first, then every other night, ...), and
the try numbered ``attempts`` that fails too is recorded as kind ``gone``, which is final like
any other non-transient kind: a catalog whose files never arrive stops costing its nightly
run a pass over them. ``--retry-errors`` tries every error again, ``gone`` ones included.

The clock is the UTC time, or ``GENRES_NOW`` (an ISO 8601 time) where tests and benchmarks
play several nights in a row; run ids start with the same clock's time.
"""

from __future__ import annotations

import dataclasses
import datetime
import os

from pipeline.errors import TRANSIENT_KINDS, ParameterError

GONE = "gone"  # the kind of a transient error whose last allowed attempt failed too
NOW_ENV = "GENRES_NOW"


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Transient errors are tried again ``after_hours`` x ``factor`` ** (attempt - 1) after
    the failed try numbered ``attempt``, ``attempts`` tries in all."""

    after_hours: float = 20.0
    factor: float = 2.0
    attempts: int = 6

    def __post_init__(self):
        if self.after_hours < 0 or self.factor < 1 or self.attempts < 1:
            raise ParameterError(f"a retry schedule needs --retry-after >= 0 and "
                                 f"--max-attempts >= 1, got {self.after_hours:g} h and "
                                 f"{self.attempts}")

    def wait_hours(self, attempt: int) -> float:
        """Hours after the failed try numbered ``attempt`` (1, 2, ...) before the next."""
        return self.after_hours * self.factor ** (max(attempt, 1) - 1)

    def kind(self, kind: str, attempt: int) -> str:
        """The kind to record for try ``attempt`` that failed with ``kind``: ``gone`` for a
        transient kind on the last allowed try."""
        return GONE if kind in TRANSIENT_KINDS and attempt >= self.attempts else kind

    def describe(self) -> str:
        waits = ", ".join(f"{self.wait_hours(a):g}" for a in range(1, self.attempts))
        return (f"transient errors tried again after {waits or 'no'} h, "
                f"{self.attempts} tries in all, then kind {GONE}")


def utc_now() -> datetime.datetime:
    """The time a run takes as now: UTC, or ``GENRES_NOW`` when set."""
    given = os.environ.get(NOW_ENV)
    if not given:
        return datetime.datetime.now(datetime.timezone.utc)
    try:
        when = datetime.datetime.fromisoformat(given.replace("Z", "+00:00"))
    except ValueError:
        raise ParameterError(f"{NOW_ENV}={given!r} is not an ISO 8601 time") from None
    return when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)
