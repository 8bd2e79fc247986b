"""A session's streams on real servers: ids in session time, reading a span back, watermarks,
retention, window notices."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from dmd_types import Frames, PcmChunk, Word
from stream.connection import connect
from stream.keys import WINDOWS
from stream.messages import ACOUSTIC, FACE, AsrWords, WindowNotice
from stream.session import Session, time_to_ms, words_between
from stream.window import WindowSpec


def pcm_chunk(i: int) -> PcmChunk:
    """Chunk i: 100 ms from 0.1 * i, every sample equal to i (so a span's samples are recognisable)."""
    return PcmChunk(t0=round(0.1 * i, 3), pcm=np.full(1600, i, np.int16))


def frames(t0: float, n: int, rate: int = 100) -> Frames:
    t = t0 + np.arange(n) / rate
    return Frames(t, np.repeat(t[:, None], 25, axis=1).astype(np.float32), np.ones(n, bool))


def test_entry_ids_are_the_session_time_in_ms_where_the_data_ends(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        s = Session(r, "alice")
        assert await s.add(pcm_chunk(0)) == "100-0"
        assert await s.add(pcm_chunk(1)) == "200-0"
        assert await s.add(frames(0.0, 1), ACOUSTIC) == "0-1"  # 0-0 is not a valid stream id
        assert await s.add(frames(0.0, 1), ACOUSTIC) == "0-2"  # same ms: next sequence number
        assert await s.add(frames(0.0105, 1), ACOUSTIC) == "10-0"
        # a second writer (a restarted capture worker) continues after what is there
        assert await Session(r, "alice").add(pcm_chunk(2)) == "300-0"
        await r.aclose()

    asyncio.run(main())


def test_time_to_ms_rounds_down_without_float_surprises() -> None:
    assert time_to_ms(0.29) == 290 and time_to_ms(2.999) == 2999 and time_to_ms(-0.5) == 0


def test_read_span_returns_the_entries_holding_data_in_the_span(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        s = Session(r, "alice")
        for i in range(60):  # 6 s of audio in 100 ms chunks
            await s.add(pcm_chunk(i))
        chunks = await s.read_span(PcmChunk, 2.05, 3.0)
        assert [c.t0 for c in chunks] == pytest.approx([2.0 + 0.1 * i for i in range(10)])
        chunks = await s.read_span(PcmChunk, 2.0, 3.05)  # the chunk reaching past the end is included
        assert chunks[0].t0 == pytest.approx(1.9) and chunks[-1].t0 == pytest.approx(3.0)
        assert await s.read_span(PcmChunk, 7.0, 8.0) == []

        for t0 in np.arange(0, 6, 0.5):  # frames in batches of 50 at 100 Hz
            await s.add(frames(float(t0), 50), ACOUSTIC)
        got = await s.read_frames(ACOUSTIC, 0.5, 3.5)
        assert len(got) == 300 and got.times[0] == pytest.approx(0.5) and got.times[-1] == pytest.approx(3.49)
        np.testing.assert_allclose(got.values[:, 0], got.times, atol=1e-6)
        await r.aclose()

    asyncio.run(main())


def test_long_asr_entries_are_found_without_a_lookback(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        s = Session(r, "alice")
        # one long segment committed at once (8 s of words), then silence, then a word
        segment = tuple(Word(f"w{i}", i * 1.0, i * 1.0 + 0.5, 0.9) for i in range(8))
        await s.add(AsrWords(segment, watermark=8.0))
        await s.add(AsrWords((), watermark=9.0))
        await s.add(AsrWords((Word("late", 9.2, 9.6),), watermark=10.0))
        window = WindowSpec().window(14)  # [4, 7]
        words = words_between(await s.read_span(AsrWords, window.t_start, window.t_end), window.t_start,
                              window.t_end)
        assert [w.text for w in words] == ["w4", "w5", "w6"]
        assert [w.text for w in words_between(await s.read_span(AsrWords, 8.5, 10), 8.5, 10)] == ["late"]
        assert await s.data_until(AsrWords) == 10.0  # the ASR watermark
        await r.aclose()

    asyncio.run(main())


def test_data_until_says_how_far_each_stream_has_data(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        s = Session(r, "alice")
        assert await s.data_until(FACE) is None
        await s.add(Frames([1.0, 1.0333], np.zeros((2, 62), np.float32), np.ones(2, bool)), FACE)
        assert await s.data_until(FACE) == pytest.approx(1.0333)
        await r.aclose()

    asyncio.run(main())


def test_waiting_for_the_asr_watermark_ends_when_it_passes_or_after_the_grace(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        s = Session(r, "alice")
        await s.add(AsrWords((), watermark=2.0))

        async def asr_later() -> None:
            await asyncio.sleep(0.05)
            await Session(r, "alice").add(AsrWords((Word("hi", 2.1, 2.4),), watermark=3.2))

        task = asyncio.create_task(asr_later())
        assert await s.wait_until(AsrWords, 3.0, timeout=2.0) == 3.2
        await task
        assert await s.wait_until(AsrWords, 5.0, timeout=0.05) == 3.2  # grace over: go on with what there is
        await r.aclose()

    asyncio.run(main())


def test_retention_keeps_session_streams_and_windows_bounded(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        s = Session(r, "alice", retention_s=10.0, windows_maxlen=100)
        for i in range(1000):  # 100 s of audio
            await s.add(pcm_chunk(i))
        # MINID ~ trims whole macro nodes (100 entries by default), so about 10 s stay, never all 100
        assert 100 <= await r.xlen(s.keys.audio) <= 300
        oldest = await r.xrange(s.keys.audio, count=1)
        assert 90_000 - 20_000 <= int(oldest[0][0].split(b"-")[0]) <= 90_000
        spec = WindowSpec()
        for k in range(6, 1000):
            await s.notify_window(spec.window(k))
        assert 100 <= await r.xlen(WINDOWS) <= 300
        await r.aclose()

    asyncio.run(main())


def test_window_notice_names_the_session_and_the_span(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        await Session(r, "alice").notify_window(WindowSpec().window(7))
        [(_, fields)] = await r.xrange(WINDOWS)
        notice = WindowNotice.from_fields(fields)
        assert (notice.session, notice.window, notice.t_start, notice.t_end) == ("alice", 7, 0.5, 3.5)
        assert notice.notice_time > 1.6e9
        await r.aclose()

    asyncio.run(main())


def test_session_keys_can_be_let_go_after_the_session(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        s = Session(r, "alice")
        await s.add(pcm_chunk(0))
        await s.expire(60)
        assert 0 < await r.ttl(s.keys.audio) <= 60
        await r.aclose()

    asyncio.run(main())
