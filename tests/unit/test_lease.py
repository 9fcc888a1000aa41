"""The leader-election rule (makima.core.lease): who creates, renews, takes or waits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from makima.core.lease import LeaseTimings, LeaseView, Move, lease_spec, may_act, next_move, released_spec

T = LeaseTimings.for_duration(15)


def held_by(holder: str | None, version: str = "7", duration: int = 15, transitions: int = 2) -> LeaseView:
    return LeaseView(
        holder=holder,
        duration=duration,
        version=version,
        transitions=transitions,
        acquired="2026-01-01T00:00:00.000000Z",
    )


def test_default_timings_and_the_takeover_bound() -> None:
    assert (T.duration, T.renew_deadline, T.retry_period) == (15, 10, 2)
    assert T.takeover_bound == 19  # the last renewal seen up to a period late, then looked at every period


@pytest.mark.parametrize(("retry", "deadline", "duration"), [(2, 10, 10), (10, 10, 15), (0, 5, 15), (3, 12, 11)])
def test_timings_keep_the_holder_stopping_before_anyone_takes_over(
    retry: float, deadline: float, duration: int
) -> None:
    with pytest.raises(ValueError, match="retry_period < renew_deadline < duration"):
        LeaseTimings(duration=duration, renew_deadline=deadline, retry_period=retry)


def test_no_lease_is_created_by_whoever_looks_first() -> None:
    assert next_move(None, "a", 0.0) is Move.CREATE


def test_the_holder_renews_and_the_others_wait_while_it_does() -> None:
    lease = held_by("a")
    assert next_move(lease, "a", 0.0) is Move.RENEW
    assert next_move(lease, "a", 1000.0) is Move.RENEW  # its own: always renewed, never "taken"
    assert next_move(lease, "b", 0.0) is Move.WAIT
    assert next_move(lease, "b", 14.9) is Move.WAIT


def test_a_lease_unchanged_for_its_duration_is_taken() -> None:
    assert next_move(held_by("a"), "b", 15.0) is Move.TAKE
    assert next_move(held_by("a", duration=40), "b", 39.0) is Move.WAIT  # the Lease's own duration counts


def test_a_released_lease_is_taken_at_once() -> None:
    assert next_move(held_by(None), "b", 0.0) is Move.TAKE


def test_the_holder_stops_acting_before_its_lease_can_be_taken() -> None:
    assert may_act(9.9, T)
    assert not may_act(10.0, T)
    # anyone else may take it only `duration` after it last saw a renewal: 5 s after the holder stopped
    assert T.duration - T.renew_deadline == 5


def test_written_specs() -> None:
    now = "2026-01-01T00:00:10.000000Z"
    created = lease_spec(Move.CREATE, "a", None, 15, now)
    assert created == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "acquireTime": now,
        "renewTime": now,
        "leaseTransitions": 0,
    }
    renewed = lease_spec(Move.RENEW, "a", held_by("a"), 15, now)
    assert renewed["acquireTime"] == "2026-01-01T00:00:00.000000Z" and renewed["renewTime"] == now
    assert renewed["leaseTransitions"] == 2
    taken = lease_spec(Move.TAKE, "b", held_by("a"), 15, now)
    assert (taken["holderIdentity"], taken["acquireTime"], taken["leaseTransitions"]) == ("b", now, 3)
    released = released_spec(held_by("a"), now)
    assert "holderIdentity" not in released and released["leaseDurationSeconds"] == 1


def test_a_lease_read_back_from_the_client_keeps_micro_time_format() -> None:
    # The client turns MicroTime into a datetime; written back it must be RFC 3339 with 6 digits.
    at = datetime(2026, 1, 1, 1, 2, 3, tzinfo=timezone(timedelta(hours=2)))
    raw = {
        "metadata": {"resourceVersion": "42"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "acquireTime": at.isoformat()},
    }
    view = LeaseView.of(raw)
    assert view == LeaseView(
        holder="a", duration=15, version="42", transitions=0, acquired="2025-12-31T23:02:03.000000Z"
    )
    assert LeaseView.of({"metadata": {}, "spec": {"acquireTime": datetime(2026, 1, 1, tzinfo=UTC)}}).acquired == (
        "2026-01-01T00:00:00.000000Z"
    )
    assert LeaseView.of({"spec": {"holderIdentity": ""}}).holder is None
