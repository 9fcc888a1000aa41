"""One retry policy for everything makima tries again: exponential backoff with full jitter.

The wait after the n-th failed try is drawn uniformly from [0, min(maximum, initial * 2**(n-1))]
("full jitter": many clients failing at once spread their retries out instead of coming back
together), and it is never shorter than a wait the other side asked for (HTTP `Retry-After`).

Used by the task client (reports to the operator API), the task store (database connection
errors) and the daemon (reconnecting to the operator). These are tenacity wait strategies;
the callers own their loops, stops and sleeps, so nothing here waits or reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable

from tenacity import RetryCallState, Retrying, wait_random_exponential
from tenacity.wait import wait_base


def backoff(initial: float, maximum: float) -> wait_base:
    """The policy: the n-th wait uniform in [0, min(maximum, initial * 2**(n-1))]."""
    return wait_random_exponential(multiplier=initial, max=maximum)


class AtLeastAsked(wait_base):
    """`wait`, but never shorter than what the failed try's error asks for (`asked(error)`,
    seconds, None when it asks nothing: e.g. an HTTP answer's Retry-After)."""

    def __init__(self, wait: wait_base, asked: Callable[[BaseException], float | None]) -> None:
        self.wait = wait
        self.asked = asked

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = float(self.wait(retry_state))
        error = retry_state.outcome.exception() if retry_state.outcome is not None else None
        hint = self.asked(error) if error is not None else None
        return max(wait, hint) if hint is not None else wait


def nth_wait(wait: wait_base, failures: int) -> float:
    """What `wait` gives after `failures` failed tries, for a loop that is not one call retried
    (the daemon's reconnect loop, whose count starts over after each successful connection)."""
    state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = max(failures, 1)
    return float(wait(state))
