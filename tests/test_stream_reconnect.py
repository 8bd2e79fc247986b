"""Redis goes away and comes back (redis-server stopped and restarted on the same port): readers and
writers carry on, and nothing is lost."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import redis
from redis_fixtures import RedisServer, eventually

from dmd_types import PcmChunk
from stream.connection import Backoff, connect
from stream.consumer import GroupConsumer
from stream.keys import INFER_GROUP, WINDOWS
from stream.messages import WindowNotice
from stream.session import Session
from stream.window import WindowSpec

SPEC = WindowSpec()


async def restart_in_background(server: RedisServer, down_for: float, save: bool = True) -> None:
    """Stop the server (saving its data, as a persistent deployment would) and start it again."""
    await asyncio.to_thread(server.stop, save)
    await asyncio.sleep(down_for)
    await asyncio.to_thread(server.start)


def test_reader_carries_on_after_redis_restarts_and_nothing_acked_is_lost(restartable_redis: RedisServer) -> None:
    async def main() -> None:
        r = connect(restartable_redis.url)
        consumer = GroupConsumer(r, name="w1", block_ms=50, claim_idle_ms=60_000, max_outage_s=20,
                                 backoff=Backoff(base=0.02, cap=0.2))
        await consumer.ensure_group()
        producer = Session(connect(restartable_redis.url), "alice")
        for k in range(6, 16):
            await producer.notify_window(SPEC.window(k))

        done: list[int] = []
        held = None
        running, parked = asyncio.Event(), asyncio.Event()
        running.set()

        async def worker() -> None:
            nonlocal held
            while len(done) < 29:  # windows 6..35 but 10, which the test acks itself
                if not running.is_set():
                    parked.set()
                    await running.wait()
                for d in await consumer.read():
                    k = d.decode(WindowNotice).window
                    if k == 10 and held is None:
                        held = d  # still being worked on while Redis goes away: acked afterwards
                        continue
                    async with d:
                        done.append(k)

        task = asyncio.create_task(worker())
        async def nine_done() -> bool:
            await asyncio.sleep(0.01)
            return len(done) >= 9

        await eventually(nine_done, 10, "the first windows")
        running.clear()
        await asyncio.wait_for(parked.wait(), 5)
        # window 16 is delivered to w1 but the reply never arrives (the connection broke under it)
        await producer.notify_window(SPEC.window(16))
        raw = connect(restartable_redis.url)
        lost = await raw.xreadgroup(INFER_GROUP, "w1", {WINDOWS: ">"}, count=1)
        assert WindowNotice.from_fields(lost[0][1][0][1]).window == 16
        await raw.aclose()
        running.set()
        await asyncio.sleep(0.1)

        await restart_in_background(restartable_redis, down_for=0.3)  # the reader is blocked in XREADGROUP
        for k in range(17, 36):
            await producer.notify_window(SPEC.window(k))
        await held.ack()
        await asyncio.wait_for(task, 20)

        assert consumer.counts["reconnects"] >= 1
        assert sorted(done) == [k for k in range(6, 36) if k != 10]  # each once: acked ones never came back
        assert await consumer.pending() == 0
        await producer.redis.aclose()
        await r.aclose()

    asyncio.run(main())


def test_writer_rides_out_a_restart_without_gaps_or_duplicates(restartable_redis: RedisServer) -> None:
    async def main() -> None:
        r = connect(restartable_redis.url)
        session = Session(r, "alice", backoff=Backoff(base=0.02, cap=0.2), max_outage_s=20)

        async def capture() -> None:
            for i in range(40):
                await session.add(PcmChunk(t0=round(0.1 * i, 3), pcm=np.full(1600, i, np.int16)))
                await asyncio.sleep(0.01)

        task = asyncio.create_task(capture())
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await restart_in_background(restartable_redis, down_for=0.3)
        await asyncio.wait_for(task, 20)
        assert time.monotonic() - started >= 0.3
        chunks = await session.read_span(PcmChunk, 0.0, 4.0)
        assert [int(c.pcm[0]) for c in chunks] == list(range(40))
        await r.aclose()

    asyncio.run(main())


class LosesTheNextReply:
    """A real client whose next XADD reaches Redis but whose reply is lost, as when the connection
    drops between the two (fault injection around a real server, not a fake one)."""

    def __init__(self, client) -> None:
        self.client = client
        self.lose_next = True

    def __getattr__(self, name: str):
        return getattr(self.client, name)

    async def xadd(self, *args, **kwargs):
        result = await self.client.xadd(*args, **kwargs)
        if self.lose_next:
            self.lose_next = False
            raise redis.ConnectionError("Connection closed by server.")
        return result


def test_writer_retry_after_a_lost_reply_does_not_duplicate_the_entry(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        session = Session(LosesTheNextReply(r), "alice", backoff=Backoff(base=0.01, cap=0.01))
        assert await session.add(PcmChunk(t0=0.0, pcm=np.zeros(1600, np.int16))) == "100-0"
        assert await session.add(PcmChunk(t0=0.1, pcm=np.zeros(1600, np.int16))) == "200-0"
        assert await r.xlen(session.keys.audio) == 2
        await r.aclose()

    asyncio.run(main())


def test_reader_makes_the_group_again_when_redis_restarts_empty(restartable_redis: RedisServer) -> None:
    async def main() -> None:
        r = connect(restartable_redis.url)
        consumer = GroupConsumer(r, name="w1", block_ms=50, max_outage_s=20, backoff=Backoff(base=0.02, cap=0.2))
        await consumer.ensure_group()
        producer = Session(r, "alice")
        await producer.notify_window(SPEC.window(6))
        [d] = await consumer.read()
        await d.ack()
        reading = asyncio.create_task(consumer.read())
        await asyncio.sleep(0.1)
        await restart_in_background(restartable_redis, down_for=0.1, save=False)  # the group is gone
        assert await asyncio.wait_for(reading, 10) == []
        await producer.notify_window(SPEC.window(7))
        got = []

        async def delivered() -> bool:
            got.extend(await consumer.read())
            return bool(got)

        await eventually(delivered, 10, "the window after the restart")
        assert got[0].decode(WindowNotice).window == 7
        await r.aclose()

    asyncio.run(main())
