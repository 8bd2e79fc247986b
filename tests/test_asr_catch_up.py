"""An outage costs latency, not words: the inference worker's wait for the ASR watermark goes on while
the ASR is catching up (its watermark moving faster than the clock), and only then; a real Redis."""

from __future__ import annotations

import asyncio
import time

from stream.connection import connect
from stream.messages import AsrWords
from stream.session import Session


def wait_with(redis_url: str, rate: float, behind_s: float, writer: bool = True) -> tuple[float | None, float]:
    """The watermark reached for t = 10 s and how long the wait took, with a writer that starts
    `behind_s` short of t and moves `rate` seconds of watermark per second of wall clock."""

    async def main() -> tuple[float | None, float]:
        r = connect(redis_url)
        await r.delete("dmd:{c}:words")
        s = Session(r, "c")
        await s.add(AsrWords((), 10.0 - behind_s))

        async def write() -> None:
            mark = 10.0 - behind_s
            while mark < 10.5:
                await asyncio.sleep(0.1)
                mark += 0.1 * rate
                await s.add(AsrWords((), round(mark, 3)))

        task = asyncio.create_task(write()) if writer else None
        start = time.monotonic()
        reached = await s.wait_until(AsrWords, 10.0, timeout=0.25, catch_up_s=8.0)
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
    reached, took = wait_with(redis_url, rate=1.0, behind_s=2.0)
    assert reached is not None and reached < 10.0 and took < 0.6, (reached, took)


def test_a_silent_asr_is_not_waited_for_past_the_grace(redis_url: str) -> None:
    reached, took = wait_with(redis_url, rate=0.0, behind_s=2.0, writer=False)
    assert reached == 8.0 and took < 0.6, (reached, took)
