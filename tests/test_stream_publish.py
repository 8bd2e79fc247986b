"""Publishing estimates on real servers: stream and channel together, once per window, the EMA in
Redis in window order."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from redis_fixtures import eventually
from test_stream_estimate import HAPPY, SAD, make_estimate

from stream.codec import MessageError
from stream.connection import connect
from stream.estimate import EmaState
from stream.publish import EstimatePublisher, read_ema, watch_estimates
from stream.session import Session


def test_estimate_goes_to_the_history_stream_and_the_channel(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        received: dict[str, list] = {"alice": [], "all": []}

        async def dashboard(session: str | None, ready: asyncio.Event) -> None:
            async for est in watch_estimates(r, session, ready=ready):
                received[session or "all"].append(est)
                return

        readies = [asyncio.Event(), asyncio.Event()]
        tasks = [asyncio.create_task(dashboard(s, e)) for s, e in zip(["alice", None], readies)]
        for ready in readies:
            await asyncio.wait_for(ready.wait(), 5)
        pub = await EstimatePublisher(r).publish(make_estimate(window=12, sentiment=0.84))
        assert pub.published and not pub.late and pub.estimate.smoothed == 0.84
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        history = await Session(r, "alice").estimates()
        assert received["alice"] == received["all"] == history == [pub.estimate]
        raw = await r.xrange("dmd:{alice}:estimates")
        assert json.loads(raw[0][1][b"estimate"])["smoothed"] == 0.84
        await r.aclose()

    asyncio.run(main())


def test_each_window_is_published_once_even_when_two_workers_processed_it(redis_url: str) -> None:
    async def main() -> None:
        clients = [connect(redis_url) for _ in range(2)]
        workers = [EstimatePublisher(c) for c in clients]
        ready = asyncio.Event()
        received: list = []

        async def dashboard() -> None:
            async for est in watch_estimates(clients[0], "alice", ready=ready):
                received.append(est.window)

        task = asyncio.create_task(dashboard())
        await asyncio.wait_for(ready.wait(), 5)
        windows = range(6, 46)
        # both workers publish every window at the same moment
        results = await asyncio.gather(*(w.publish(make_estimate(window=k, sentiment=(k % 7) - 3))
                                         for k in windows for w in workers))
        assert sum(p.published for p in results) == len(windows)
        for k, pair in zip(windows, zip(results[::2], results[1::2])):
            assert sorted(p.published for p in pair) == [False, True], f"window {k}"
        assert sum(w.conflicts for w in workers) > 0  # they really did race
        history = await Session(clients[0], "alice").estimates(count=1000)
        assert sorted(e.window for e in history) == list(windows)
        async def all_received() -> bool:
            await asyncio.sleep(0.01)
            return len(received) >= len(windows)

        await eventually(all_received, what="every estimate at the subscriber")
        await asyncio.sleep(0.05)
        assert sorted(received) == list(windows)  # subscribers too saw each window once
        task.cancel()
        for c in clients:
            await c.aclose()

    asyncio.run(main())


def test_ema_follows_window_order_when_windows_finish_out_of_order(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        pub = EstimatePublisher(r, alpha=0.5)
        a = await pub.publish(make_estimate(window=6, sentiment=2.0))
        assert a.estimate.smoothed == 2.0
        c = await pub.publish(make_estimate(window=8, sentiment=-2.0))  # window 7 still in another worker
        # two hops after window 6: the old value keeps 0.25 of its weight
        assert c.estimate.smoothed == pytest.approx(0.25 * 2.0 + 0.75 * -2.0)
        b = await pub.publish(make_estimate(window=7, sentiment=3.0))  # late: does not rewrite window 8's EMA
        assert b.published and b.late and b.estimate.smoothed == pytest.approx(-1.0)
        assert await read_ema(r, "alice") == EmaState(8, pytest.approx(-1.0))
        d = await pub.publish(make_estimate(window=9, sentiment=1.0))
        assert d.estimate.smoothed == pytest.approx(0.5 * -1.0 + 0.5 * 1.0)
        await r.aclose()

    asyncio.run(main())


def test_any_worker_continues_a_sessions_ema(redis_url: str) -> None:
    async def main() -> None:
        clients = [connect(redis_url) for _ in range(3)]
        workers = [EstimatePublisher(c, alpha=0.3) for c in clients]
        expected, values = None, [1.0, -1.0, 2.5, 0.0, -3.0, 1.5, 0.5, 2.0, -0.5]
        for i, x in enumerate(values):
            pub = await workers[i % 3].publish(make_estimate(window=6 + i, sentiment=x))
            expected = x if expected is None else expected + 0.3 * (x - expected)
            assert pub.estimate.smoothed == pytest.approx(expected)
        for c in clients:
            await c.aclose()

    asyncio.run(main())


def test_concurrent_windows_of_one_session_are_all_folded_into_the_ema(redis_url: str) -> None:
    async def main() -> None:
        clients = [connect(redis_url) for _ in range(4)]
        workers = [EstimatePublisher(c, alpha=0.5) for c in clients]
        # four workers publish windows 6..25 concurrently; each window starts where the EMA stood
        results = await asyncio.gather(*(workers[k % 4].publish(make_estimate(window=k, sentiment=1.0))
                                         for k in range(6, 26)))
        assert all(p.published for p in results)
        state = await read_ema(clients[0], "alice")
        assert state.window == 25 and state.value == pytest.approx(1.0)
        for c in clients:
            await c.aclose()

    asyncio.run(main())


def test_emotions_are_smoothed_beside_the_sentiment_in_window_order_by_any_worker(redis_url: str) -> None:
    async def main() -> None:
        clients = [connect(redis_url) for _ in range(2)]
        workers = [EstimatePublisher(c, alpha=0.5) for c in clients]
        a = await workers[0].publish(make_estimate(window=6, emotions=HAPPY))
        assert a.estimate.emotions == pytest.approx(dict(zip(a.estimate.emotions, HAPPY)))
        assert a.estimate.emotion == "happy"
        c = await workers[1].publish(make_estimate(window=8, emotions=SAD))  # two hops: the old keeps 0.25
        want = [0.25 * h + 0.75 * s for h, s in zip(HAPPY, SAD)]
        assert list(c.estimate.emotions.values()) == pytest.approx(want) and c.estimate.emotion == "sad"
        b = await workers[0].publish(make_estimate(window=7, emotions=HAPPY))  # late: published as it stands
        assert b.late and list(b.estimate.emotions.values()) == pytest.approx(want)
        state = await read_ema(clients[0], "alice")
        assert state.window == 8 and state.emotions == pytest.approx(want)
        assert math.fsum(state.emotions) == pytest.approx(1.0, abs=1e-12)
        raw = json.loads((await clients[0].xrange("dmd:{alice}:estimates"))[-1][1][b"estimate"])
        assert raw["schema"] == 2 and raw["emotion"] == "sad"
        # a window without emotions (another checkpoint) publishes none and ends the emotions' EMA
        d = await workers[1].publish(make_estimate(window=9))
        assert d.estimate.emotions is None and (await read_ema(clients[0], "alice")).emotions is None
        e = await workers[0].publish(make_estimate(window=10, emotions=HAPPY))
        assert list(e.estimate.emotions.values()) == pytest.approx(HAPPY)
        for r in clients:
            await r.aclose()

    asyncio.run(main())


def test_emotions_that_are_not_probabilities_are_not_published_nor_folded_in(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        pub = EstimatePublisher(r)
        await pub.publish(make_estimate(window=6, emotions=HAPPY))
        with pytest.raises(MessageError, match=r"emotions\.sad: nan is not finite"):
            await pub.publish(make_estimate(window=7, emotions=(0.5, 0.5, math.nan, 0, 0, 0, 0)))
        state = await read_ema(r, "alice")
        assert state.window == 6 and state.emotions == pytest.approx(HAPPY)
        await r.aclose()

    asyncio.run(main())


def test_an_unreadable_emotions_state_is_refused_with_the_fix(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        await r.hset("dmd:{alice}:state", mapping={"window": 6, "smoothed": "0.5", "emotions": "[NaN, 1]"})
        with pytest.raises(MessageError, match=r"unreadable .* delete dmd:\{alice\}:state to start the EMA again"):
            await read_ema(r, "alice")
        await r.aclose()

    asyncio.run(main())


def test_invalid_estimate_is_not_published_and_does_not_block_the_window(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        pub = EstimatePublisher(r)
        with pytest.raises(MessageError, match="sentiment: nan is not finite"):
            await pub.publish(make_estimate(window=6, sentiment=math.nan))
        assert await r.exists("dmd:{alice}:estimates", "dmd:{alice}:published:6", "dmd:{alice}:state") == 0
        assert (await pub.publish(make_estimate(window=6, sentiment=1.0))).published
        await r.aclose()

    asyncio.run(main())


def test_publish_markers_expire(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        await EstimatePublisher(r, marker_ttl_s=120).publish(make_estimate(window=6))
        assert 0 < await r.ttl("dmd:{alice}:published:6") <= 120
        await r.aclose()

    asyncio.run(main())
