"""How long the mapper waits before a fan-out (``mapper.batcher.batch_window``)."""

from __future__ import annotations

import pytest

from headscale_core.mapper.batcher import BUSY_SHARE, MAX_WINDOW, STORM_STREAK, batch_window

DELAY = 0.010


def test_a_change_after_a_quiet_spell_goes_out_at_once() -> None:
    assert batch_window(DELAY, since=5.0, last_apply=0.030) == 0.0


def test_a_change_soon_after_a_cheap_fan_out_waits_for_the_rest_of_the_window() -> None:
    assert batch_window(DELAY, since=0.004, last_apply=0.002) == pytest.approx(0.006)


def test_changes_a_fan_out_apart_are_no_storm() -> None:
    # an endpoint move every 100 ms, each fan-out 30 ms: nothing waits
    assert batch_window(DELAY, since=0.070, last_apply=0.030) == 0.0


def test_one_events_second_change_waits_one_fan_out() -> None:
    # a node reconnects: its endpoints go out, its coming online follows right after
    assert batch_window(DELAY, since=0.001, last_apply=0.030, streak=1) == pytest.approx(0.030)


def test_a_storm_waits_several_fan_outs_and_never_more_than_the_cap() -> None:
    storm = STORM_STREAK
    assert batch_window(DELAY, since=0.001, last_apply=0.030, streak=storm) == pytest.approx(BUSY_SHARE * 0.030)
    assert batch_window(DELAY, since=0.001, last_apply=0.002, streak=storm) == DELAY  # never under the delay
    assert batch_window(DELAY, since=0.0, last_apply=MAX_WINDOW, streak=storm) == MAX_WINDOW
