"""The session clock: window arithmetic, the window planner (feed / take_ready / finish), watermarks."""

from __future__ import annotations

import pytest

from stream.window import Window, WindowPlanner, WindowSpec, watermark


def test_window_k_spans_k_hop_minus_length_to_k_hop() -> None:
    spec = WindowSpec()
    assert (spec.length, spec.hop) == (3.0, 0.5)
    assert spec.window(6) == Window(6, 0.0, 3.0)
    assert spec.window(7) == Window(7, 0.5, 3.5)
    assert spec.window(1) == Window(1, -2.5, 0.5)
    assert spec.window(6).length == 3.0


def test_hop_arithmetic_survives_float_rounding() -> None:
    spec = WindowSpec(length=3.0, hop=0.1)
    assert spec.first == 30  # 3.0 / 0.1 is 29.999999999999996 in floats
    assert spec.window(31) == Window(31, 0.1, 3.1)
    assert spec.last_ending_by(0.3) == 3  # 0.3 / 0.1 is 2.9999999999999996
    assert spec.first_ending_after(0.3) == 3


def test_first_complete_window_comes_once_every_stream_has_reached_its_end() -> None:
    planner = WindowPlanner(["afeat", "vfeat"])
    planner.feed("afeat", 3.4)
    assert planner.take_ready() == []  # vfeat has no data yet
    planner.feed("vfeat", 2.99)
    assert planner.take_ready() == []
    planner.feed("vfeat", 3.0)
    assert planner.take_ready() == [Window(6, 0.0, 3.0)]
    assert planner.take_ready() == []  # handed out once


def test_one_window_per_hop_and_several_after_a_jump() -> None:
    planner = WindowPlanner(["afeat"])
    planner.feed("afeat", 3.2)
    assert [w.index for w in planner.take_ready()] == [6]
    planner.feed("afeat", 3.5)
    assert planner.take_ready() == [Window(7, 0.5, 3.5)]
    planner.feed("afeat", 5.1)
    assert [w.index for w in planner.take_ready()] == [8, 9, 10]
    assert planner.next_window == 11


def test_out_of_order_feeds_never_move_a_stream_back() -> None:
    planner = WindowPlanner(["afeat", "vfeat", "words"])
    planner.feed("words", 4.0)
    planner.feed("vfeat", 3.6)
    planner.feed("afeat", 4.2)
    planner.feed("vfeat", 1.0)  # late report of an earlier time: ignored
    assert planner.watermark == 3.6
    assert [w.index for w in planner.take_ready()] == [6, 7]
    planner.feed("afeat", 2.0)
    assert planner.take_ready() == []


def test_finish_flushes_the_windows_that_still_hold_data() -> None:
    planner = WindowPlanner(["afeat", "vfeat"])
    planner.feed("afeat", 4.3)
    planner.feed("vfeat", 3.7)
    assert [w.index for w in planner.take_ready()] == [6, 7]
    # at the end, the lagging stream is complete too: up to the window covering the last data (4.3)
    assert planner.finish() == [Window(8, 1.0, 4.0), Window(9, 1.5, 4.5)]
    with pytest.raises(RuntimeError, match="after finish"):
        planner.feed("afeat", 5.0)


def test_a_session_shorter_than_a_window_still_gets_one_window() -> None:
    planner = WindowPlanner(["afeat"])
    planner.feed("afeat", 1.2)
    assert planner.take_ready() == []
    assert planner.finish() == [Window(6, 0.0, 3.0)]
    assert WindowPlanner(["afeat"]).finish() == []  # no data, no window


def test_an_ended_stream_no_longer_holds_windows_back() -> None:
    planner = WindowPlanner(["afeat", "vfeat"])
    planner.feed("afeat", 4.0)
    planner.feed("vfeat", 1.0)
    planner.end_stream("vfeat")
    assert [w.index for w in planner.take_ready()] == [6, 7, 8]


def test_planner_can_start_at_a_given_window() -> None:
    planner = WindowPlanner(["afeat"], WindowSpec(2.0, 1.0), first_window=10)
    planner.feed("afeat", 12.0)
    assert planner.take_ready() == [Window(10, 8.0, 10.0), Window(11, 9.0, 11.0), Window(12, 10.0, 12.0)]


def test_watermark_is_the_least_time_of_the_streams_a_window_needs() -> None:
    times = {"afeat": 4.0, "vfeat": 3.5, "words": None}
    assert watermark(times, ["afeat", "vfeat"]) == 3.5
    assert watermark(times) is None  # words has nothing yet
    assert watermark({"afeat": 2.0}) == 2.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"length": 0}, "length = 0"), ({"hop": -0.5}, "hop = -0.5"), ({"hop": float("nan")}, "hop = nan"),
])
def test_window_spec_refuses_nonsense(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        WindowSpec(**kwargs)


def test_planner_refuses_unknown_streams_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown stream 'video': this planner waits for afeat, vfeat"):
        WindowPlanner(["afeat", "vfeat"]).feed("video", 1.0)
