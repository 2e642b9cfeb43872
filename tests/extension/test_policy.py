"""The flush decisions, as a pure function of time, buffer and the gaps between invocations."""

from __future__ import annotations

import pytest

from posthog_lambda_extension._policy import BATCH, END, FLUSH_NOW, HOLD, WAIT_FOR_END, Policy

LIMIT = 10_000_000


def policy(mode: str, flush_at: int = 10, interval_s: float = 2.0) -> Policy:
    return Policy(mode, flush_at, interval_s, LIMIT)


def test_end_mode_always_waits_for_the_end_of_the_invocation() -> None:
    p = policy(END)
    assert [p.on_invoke(t, 0, 0, None) for t in (0.0, 0.1, 0.2)] == [WAIT_FOR_END] * 3


@pytest.mark.parametrize(
    ("count", "size", "oldest", "expected"),
    [
        (0, 0, None, HOLD),
        (3, 300, 99.0, HOLD),  # 1 s old, 3 events: not yet
        (10, 1000, 99.9, FLUSH_NOW),  # flush_at reached
        (1, 100, 97.5, FLUSH_NOW),  # older than the interval
        (1, 100, 98.0, FLUSH_NOW),  # exactly the interval
        (2, LIMIT // 2, 99.9, FLUSH_NOW),  # half the buffer used
    ],
)
def test_batch_mode_flushes_at_invoke_once_enough_has_accumulated(
    count: int, size: int, oldest: float | None, expected: str
) -> None:
    assert policy(BATCH).on_invoke(100.0, count, size, oldest) == expected


def test_adaptive_waits_for_the_end_while_invocations_are_rare() -> None:
    p = policy("adaptive")
    assert p.on_invoke(0.0, 0, 0, None) == WAIT_FOR_END  # nothing known yet: the safe choice
    assert p.on_invoke(30.0, 5, 500, 29.0) == WAIT_FOR_END
    assert p.style() == END
    assert p.gap() == 30.0


def test_adaptive_switches_to_batch_once_invocations_come_faster_than_the_interval() -> None:
    p = policy("adaptive")
    t = 0.0
    for _ in range(3):
        p.on_invoke(t, 0, 0, None)
        t += 10.0
    for _ in range(3):
        t += 0.5
        action = p.on_invoke(t, 3, 300, t - 1.0)
    assert p.style() == END  # the median of the last five gaps is still a long one
    t += 0.5
    action = p.on_invoke(t, 3, 300, t - 1.0)
    assert p.gap() == 0.5
    assert p.style() == BATCH
    assert action == HOLD  # batch: 3 events, 1 s old: hold them
    assert p.on_invoke(t + 0.5, 3, 300, t - 1.6) == FLUSH_NOW


def test_adaptive_goes_back_to_end_once_the_median_gap_grows() -> None:
    p = policy("adaptive")
    times = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    for t in times:
        p.on_invoke(t, 0, 0, None)
    assert p.style() == BATCH
    assert p.on_invoke(60.0, 0, 0, None) == HOLD  # one long gap is not a trend
    assert p.on_invoke(120.0, 0, 0, None) == HOLD
    assert p.on_invoke(180.0, 0, 0, None) == WAIT_FOR_END  # three of the last five
    assert p.style() == END


def test_an_untraced_function_is_not_waited_for_until_a_start_shows_up() -> None:
    p = policy(END)
    p.missed_start()
    assert p.on_invoke(0.0, 0, 0, None) == HOLD
    assert p.on_invoke(1.0, 12, 1200, 0.5) == FLUSH_NOW
    p.saw_start()
    assert p.on_invoke(2.0, 0, 0, None) == WAIT_FOR_END


# -- without INVOKE events (Lambda Managed Instances) -------------------------------------------


def test_without_invokes_end_mode_sends_once_an_invocation_has_ended() -> None:
    p = policy(END, interval_s=60.0)
    assert p.on_tick(100.0, 3, 300, 99.9, ended=True) == FLUSH_NOW
    assert p.on_tick(100.0, 3, 300, 99.9, ended=False) == HOLD
    assert p.on_tick(100.0, 0, 0, None, ended=True) == HOLD  # nothing to send


@pytest.mark.parametrize("mode", [BATCH, "adaptive"])
def test_without_invokes_batch_and_adaptive_send_by_count_or_age(mode: str) -> None:
    p = policy(mode, flush_at=100, interval_s=1.0)
    assert p.on_tick(100.0, 3, 300, 99.5, ended=True) == HOLD  # an ended invocation is no reason
    assert p.on_tick(100.0, 100, 300, 99.9, ended=False) == FLUSH_NOW
    assert p.on_tick(100.0, 1, 100, 99.0, ended=False) == FLUSH_NOW


def test_without_invokes_the_timer_is_set_for_the_oldest_event() -> None:
    p = policy(BATCH, interval_s=1.0)
    assert p.wait_s(100.0, None) is None
    assert p.wait_s(100.0, 99.75) == pytest.approx(0.75)
    assert p.wait_s(100.0, 90.0) == 0.0
