"""An outage costs latency, not words: the inference worker's wait for the ASR watermark goes on while
the ASR is catching up (its watermark moving faster than the clock, or far behind after an outage
and still writing), bounded, and only then; a real Redis. The whole of it, with a real Redis restart
under `dmd run`, is tests/test_outage_words.py."""

from __future__ import annotations

import asyncio
import time

from stream.connection import connect
from stream.messages import AsrWords
from stream.session import CATCH_UP_GAP_S, CATCH_UP_LAG_S, CATCH_UP_MARGIN_S, Session, WriterLag


def wait_with(redis_url: str, rate: float, behind_s: float, writer: bool = True,
              first_after_s: float = 0.0, lag: WriterLag | None = None) -> tuple[float | None, float]:
    """The watermark reached for t = 10 s and how long the wait took, with a writer that starts
    `behind_s` short of t and moves `rate` seconds of watermark per second of wall clock (`lag`: the
    writer's lag history, as the inference worker keeps it per session)."""

    async def main() -> tuple[float | None, float]:
        r = connect(redis_url)
        await r.delete("dmd:{c}:words")
        s = Session(r, "c")
        await s.add(AsrWords((), 10.0 - behind_s))

        async def write() -> None:
            mark = 10.0 - behind_s
            await asyncio.sleep(first_after_s)  # an ASR's first pass over a backlog takes a while
            while mark < 10.5:
                await asyncio.sleep(0.1)
                mark += 0.1 * rate
                await s.add(AsrWords((), round(mark, 3)))

        task = asyncio.create_task(write()) if writer else None
        start = time.monotonic()
        reached = await s.wait_until(AsrWords, 10.0, timeout=0.25, catch_up_s=8.0, lag=lag)
        took = time.monotonic() - start
        if task:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await r.aclose()
        return reached, took

    return asyncio.run(main())


def test_an_asr_catching_up_is_waited_for(redis_url: str) -> None:
    reached, took = wait_with(redis_url, rate=4.0, behind_s=3.0)  # 3 s of backlog worked off at 4x
    assert reached is not None and reached >= 10.0 and 0.5 < took < 3.0, (reached, took)


def test_an_asr_keeping_pace_behind_is_not_waited_for_past_the_grace(redis_url: str) -> None:
    reached, took = wait_with(redis_url, rate=1.0, behind_s=1.5)
    assert reached is not None and reached < 10.0 and took < 0.6, (reached, took)


def test_a_silent_asr_is_not_waited_for_past_the_grace(redis_url: str) -> None:
    reached, took = wait_with(redis_url, rate=0.0, behind_s=1.5, writer=False)
    assert reached == 8.5 and took < 0.6, (reached, took)


def test_an_asr_far_behind_after_an_outage_is_waited_for_while_it_writes(redis_url: str) -> None:
    # 5 s behind (its steady lag is about 1 s), working the backlog off at only 1.5x, its first entry
    # 1.5 s after the notice: waited for to the end
    reached, took = wait_with(redis_url, rate=1.5, behind_s=5.0, first_after_s=1.5)
    assert reached is not None and reached >= 10.0 and 3.0 < took < 7.0, (reached, took)


def test_an_asr_far_behind_that_writes_nothing_is_given_up_after_the_gap(redis_url: str) -> None:
    reached, took = wait_with(redis_url, rate=0.0, behind_s=6.0, writer=False)
    assert reached == 4.0 and CATCH_UP_GAP_S - 0.1 < took < CATCH_UP_GAP_S + 0.6, (reached, took)


def test_the_wait_for_an_asr_far_behind_is_bounded_by_catch_up_s(redis_url: str) -> None:
    reached, took = wait_with(redis_url, rate=1.0, behind_s=10.0)  # would take 10 s
    assert reached is not None and reached < 10.0 and 7.9 < took < 8.6, (reached, took)


def history(lags: list[float]) -> WriterLag:
    lag = WriterLag()
    for value in lags:
        lag.add(value)
    return lag


def test_a_writers_usual_lag_is_the_median_of_its_recent_ones_and_sets_when_it_counts_as_behind() -> None:
    assert WriterLag().usual() is None and WriterLag().behind_beyond() == CATCH_UP_LAG_S  # no history yet
    assert history([1.0, 1.2, 9.0, 0.8, 1.1]).usual() == 1.1  # one outage's lag does not move it
    assert history([1.0] * 20).behind_beyond() == CATCH_UP_LAG_S  # a prompt ASR: the fixed floor
    assert history([2.5] * 20).behind_beyond() == 2.5 + CATCH_UP_MARGIN_S
    assert history([9.0] * 5 + [2.5] * 20).usual() == 2.5  # the last 20 only


def test_an_asr_steadily_late_is_not_waited_for_past_the_grace(redis_url: str) -> None:
    # Whisper for several sessions on a loaded machine: usually 2.5 s behind, as now: not a backlog
    reached, took = wait_with(redis_url, rate=1.0, behind_s=2.6, lag=history([2.5] * 20))
    assert reached is not None and reached < 10.0 and took < 0.6, (reached, took)


def test_the_same_asr_far_beyond_its_usual_lag_is_waited_for(redis_url: str) -> None:
    lag = history([1.0] * 20)  # usually 1 s behind, now 3 s: an outage's backlog, worked off at 4x
    reached, took = wait_with(redis_url, rate=4.0, behind_s=3.0, first_after_s=0.5, lag=lag)
    assert reached is not None and reached >= 10.0 and took > 0.5, (reached, took)
    assert lag.usual() == 1.0  # the wait added its lag to the history


def test_an_asr_committing_a_pass_at_once_is_not_waited_for_past_the_grace(redis_url: str) -> None:
    # Whisper keeping pace: one entry a second, each moving the watermark a second at once. One such
    # entry arriving during the grace is not a writer catching up (it was taken for one, and the wait
    # then lasted to its next pass)
    async def main() -> tuple[float | None, float]:
        r = connect(redis_url)
        await r.delete("dmd:{c}:words")
        s = Session(r, "c")
        await s.add(AsrWords((), 8.5))

        async def passes() -> None:
            mark = 8.5
            await asyncio.sleep(0.1)
            while True:
                mark += 1.0
                await s.add(AsrWords((), mark))
                await asyncio.sleep(1.0)

        task = asyncio.create_task(passes())
        start = time.monotonic()
        reached = await s.wait_until(AsrWords, 10.0, timeout=0.25, catch_up_s=8.0, lag=history([1.5] * 20))
        took = time.monotonic() - start
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await r.aclose()
        return reached, took

    reached, took = asyncio.run(main())
    assert reached == 9.5 and took < 0.6, (reached, took)
