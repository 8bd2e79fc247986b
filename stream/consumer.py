"""Consumer groups: taking jobs from a stream, and giving every job an end.

Inference workers share `dmd:windows` through the consumer group "infer". `GroupConsumer.read`
hands out `Delivery`s; a job's end is one of three:

- ack: the result is published. Use the delivery as a context manager, which acks when the block
  ends normally, so the ack always comes after the publish inside it:

  ```
  async for delivery in consumer:
      async with delivery:
          notice = delivery.decode(WindowNotice)
          ...                                 # read the span, run the model
          await publisher.publish(estimate)   # then, on leaving the block: XACK
  ```

- dead letter: the entry can never succeed. A MessageError in the block (an entry that does not
  decode, a field out of range) sends it to `dmd:dead` with the error's reason, then acks it.
- retry: any other exception leaves the entry pending. It is delivered again after it has been idle
  `claim_idle_ms` (to this worker or another, by XAUTOCLAIM), and once it has been delivered more
  than `max_deliveries` times (XPENDING's delivery count) it goes to `dmd:dead` instead.

A crashed worker's entries are pending under its name; the others claim them once they are idle
for `claim_idle_ms`, which must exceed the longest a job can take (a slow job is otherwise done
twice; `EstimatePublisher` publishes a window once, so that is wasted work, not a wrong result).

When Redis goes away (or a Redis Cluster fails over: CLUSTERDOWN, TRYAGAIN), `read` retries with
exponential backoff and jitter (capped), and after it reconnects it first reads this consumer's own
pending entries again (XREADGROUP from id 0): an entry that Redis delivered while the reply was lost
is not lost. An entry is acked only by `ack` or a dead
letter, so nothing unacknowledged is ever dropped; Redis persistence decides what survives a restart.

A dead letter (`dmd:dead`, trimmed to `dead_maxlen`) holds the entry's stream, id, group, consumer,
delivery count, reason, wall-clock time and the original fields (msgpack); `dmd:dead:count` counts
them. The dead letter is written before the ack, so a crash in between gives a second dead letter,
never a lost entry.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .codec import MessageError, pack, unpack
from .connection import CONNECTION_ERRORS, Backoff, backoff_for, partitions_for, retry_outage
from .keys import DEAD, INFER_GROUP, WINDOWS, Partitions
from .messages import from_fields
from .replication import replication_for

log = logging.getLogger(__name__)
M = TypeVar("M")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def ensure_group(redis: aioredis.Redis, stream: str, group: str, start_id: str = "0") -> bool:
    """Create consumer group `group` on `stream` (and the stream, MKSTREAM) unless it exists.
    Returns True if it was created. `start_id` "0" serves entries already in the stream, "$" only
    new ones. On a cluster whose masters have replicas the group is on a replica before this returns
    (a group lost with its master would be made again from `start_id`: every entry delivered again)."""
    replication = replication_for(redis)
    try:
        if replication.enabled:
            await replication.write(stream, lambda pipe: pipe.xgroup_create(stream, group, id=start_id, mkstream=True))
        else:
            await redis.xgroup_create(stream, group, id=start_id, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" in str(exc):  # (in a pipeline's error, after "Command # 1 (...) caused error: ")
            return False
        raise
    return True


@dataclass(eq=False)
class Delivery:
    """One entry handed to this consumer: `fields` as stored, `deliveries` how many times it has
    been delivered (this time included). End it with `ack`, `dead` or the context manager."""

    stream: str
    id: str
    fields: dict[bytes, bytes]
    deliveries: int
    consumer: GroupConsumer = field(repr=False)
    outcome: str = ""  # how it ended: "acked", "dead" or "released" ("" while it runs)

    @property
    def done(self) -> bool:
        return bool(self.outcome)

    def decode(self, kind: type[M]) -> M:
        return from_fields(self.fields, kind)

    async def ack(self) -> None:
        """The result is published: acknowledge the entry."""
        await self.consumer.ack(self)

    async def dead(self, reason: str) -> None:
        """Give up on the entry: write it to the dead letters with `reason`, then acknowledge it."""
        await self.consumer.dead_letter(self, reason)

    def release(self) -> None:
        """Leave the entry pending, to be delivered again after `claim_idle_ms`."""
        self.consumer.release(self)

    async def __aenter__(self) -> Delivery:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        if self.done:
            return False
        if exc is None:
            await self.ack()
            return False
        if isinstance(exc, MessageError):
            await self.dead(exc.reason)
            return True  # handled: the entry is in the dead letters, the worker goes on
        self.release()
        return False


@dataclass(frozen=True)
class DeadLetter:
    """An entry in `dmd:dead`."""

    id: str  # of the dead letter itself
    stream: str
    entry_id: str
    group: str
    consumer: str
    deliveries: int
    reason: str
    time: float
    fields: dict[bytes, bytes]

    @classmethod
    def from_entry(cls, entry_id: bytes | str, f: Mapping[bytes, bytes]) -> DeadLetter:
        return cls(id=_text(entry_id), stream=_text(f[b"stream"]), entry_id=_text(f[b"id"]),
                   group=_text(f[b"group"]), consumer=_text(f[b"consumer"]), deliveries=int(f[b"deliveries"]),
                   reason=_text(f[b"reason"]), time=float(f[b"time"]), fields=unpack(f[b"entry"]))


async def read_dead_letters(redis: aioredis.Redis, count: int = 100, stream: str = DEAD) -> list[DeadLetter]:
    """The last `count` dead letters, oldest first."""
    entries = await redis.xrevrange(stream, "+", "-", count=count)
    return [DeadLetter.from_entry(i, f) for i, f in reversed(entries)]


class GroupConsumer:
    """A member of a consumer group (by default an inference worker on `dmd:windows`, group "infer").

    `count` entries at most per read; a read blocks up to `block_ms`. Entries idle for `claim_idle_ms`
    are claimed from any consumer, checked every `claim_interval_ms` (default half the idle time).
    An entry delivered more than `max_deliveries` times goes to `dead_stream`. While Redis is away
    reads retry for `max_outage_s` (None: for ever). `counts` counts what happened: delivered,
    claimed, reread, acked, dead, trimmed (pending entries whose data had been trimmed away), reconnects.

    One task reads from a consumer (its cursors are not shared); deliveries may be worked on and
    acked concurrently. Each process needs its own `name` (the default is host, pid and a random tag).
    """

    def __init__(self, redis: aioredis.Redis, stream: str = WINDOWS, group: str = INFER_GROUP,
                 name: str | None = None, *, count: int = 16, block_ms: int = 1000, claim_idle_ms: int = 30_000,
                 claim_interval_ms: int | None = None, max_deliveries: int = 5, dead_stream: str = DEAD,
                 dead_maxlen: int = 10_000, start_id: str = "0", backoff: Backoff | None = None,
                 max_outage_s: float | None = None) -> None:
        if max_deliveries < 1:
            raise ValueError(f"max_deliveries = {max_deliveries}: an entry must be delivered at least once")
        if claim_idle_ms < 1 or block_ms < 0 or count < 1:
            raise ValueError(f"claim_idle_ms = {claim_idle_ms}, block_ms = {block_ms}, count = {count}: "
                             f"expected claim_idle_ms >= 1, block_ms >= 0, count >= 1")
        self.redis = redis
        self.stream = stream
        self.group = group
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self.count = count
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.claim_interval_s = (claim_interval_ms if claim_interval_ms is not None else claim_idle_ms // 2) / 1000
        self.max_deliveries = max_deliveries
        self.dead_stream = dead_stream
        self.dead_maxlen = dead_maxlen
        self.start_id = start_id
        self.backoff = backoff or backoff_for(redis)
        self.max_outage_s = max_outage_s
        self.counts: Counter[str] = Counter()
        self._in_flight: set[str] = set()  # handed out, not yet acked, dead-lettered or released
        self._reread = True  # read our own pending entries first: at start and after a reconnect
        self._history_cursor = "0"
        self._claim_cursor = "0-0"
        self._last_claim = float("-inf")
        self._group_ready = False

    async def ensure_group(self) -> bool:
        """Make the group, riding out an outage as `read` does (a worker that starts as Redis goes
        away waits for it instead of dying)."""
        created = await retry_outage(ensure_group, self.redis, self.stream, self.group, self.start_id,
                                     backoff=self.backoff, max_outage_s=self.max_outage_s,
                                     what=f"creating group {self.group} on {self.stream}")
        self._group_ready = True
        return created

    # --- reading --------------------------------------------------------------------------------------

    async def read(self, count: int | None = None, block_ms: int | None = None) -> list[Delivery]:
        """The next deliveries: this consumer's own pending entries after a (re)start, then entries
        idle too long anywhere in the group, then new ones, waiting up to `block_ms` for them (0: not
        at all). An empty list when nothing came within that time."""
        count = count or self.count
        block_ms = self.block_ms if block_ms is None else block_ms
        deadline = None if self.max_outage_s is None else time.monotonic() + self.max_outage_s
        while True:
            try:
                if not self._group_ready:
                    await self.ensure_group()
                deliveries = await self._read_once(count, block_ms)
                self.backoff.reset()
                return deliveries
            except CONNECTION_ERRORS as exc:  # first: a cluster's CLUSTERDOWN is a ResponseError too
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                self.counts["reconnects"] += 1
                self._reread, self._history_cursor = True, "0"
                delay = self.backoff.next_delay()
                log.warning("reading %s: Redis unreachable (%s: %s); retrying in %.2f s", self.stream,
                            type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
            except ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    raise
                # the server lost the group (restarted without persistence): make it again
                log.warning("group %s on %s is gone (%s): creating it again", self.group, self.stream, exc)
                self._group_ready = False

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._forever()

    async def _forever(self) -> AsyncIterator[Delivery]:
        while True:
            for delivery in await self.read():
                yield delivery

    async def _read_once(self, count: int, block_ms: int) -> list[Delivery]:
        while self._reread:
            reply = await self.redis.xreadgroup(self.group, self.name, {self.stream: self._history_cursor},
                                                count=count)
            entries = reply[0][1] if reply else []
            if not entries:
                self._reread, self._history_cursor = False, "0"
                break
            self._history_cursor = _text(entries[-1][0])
            deliveries = await self._admit(entries, "reread")
            if deliveries:
                return deliveries

        if time.monotonic() - self._last_claim >= self.claim_interval_s:
            self._last_claim = time.monotonic()
            deliveries = await self._claim(count)
            if deliveries:
                return deliveries

        # the socket read gets a little longer than the server-side block, so a dead connection that
        # never answers (no FIN from a vanished host) still ends in an error we back off on
        # (block_ms 0 means "do not wait" here; to Redis, BLOCK 0 would mean for ever)
        reply = await asyncio.wait_for(
            self.redis.xreadgroup(self.group, self.name, {self.stream: ">"}, count=count, block=block_ms or None),
            timeout=block_ms / 1000 + 10)
        entries = reply[0][1] if reply else []
        return await self._admit(entries, "delivered", first_delivery=True)

    async def _claim(self, count: int) -> list[Delivery]:
        reply = await self.redis.xautoclaim(self.stream, self.group, self.name, self.claim_idle_ms,
                                            start_id=self._claim_cursor, count=count)
        self._claim_cursor = _text(reply[0])
        entries = reply[1]
        if len(reply) > 2 and reply[2]:
            # Redis 7 drops pending entries whose data was trimmed, and says which
            self.counts["trimmed"] += len(reply[2])
        if any(entry_id is None for entry_id, _ in entries):
            # Redis 6.2 returns trimmed entries as nil without their id: read our own pending
            # entries, where they appear with their id and no fields, and ack them there
            self._reread, self._history_cursor = True, "0"
        return await self._admit([e for e in entries if e[0] is not None], "claimed")

    async def _admit(self, entries: list, source: str, first_delivery: bool = False) -> list[Delivery]:
        """Turn raw entries into deliveries: skip those in flight here, ack those whose data is gone,
        dead-letter those delivered too often."""
        entries = [(_text(i), f) for i, f in entries if _text(i) not in self._in_flight]
        if not entries:
            return []
        if first_delivery:
            counts = [1] * len(entries)
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for entry_id, _ in entries:
                    pipe.xpending_range(self.stream, self.group, entry_id, entry_id, 1, consumername=self.name)
                pending = await pipe.execute()
            counts = [int(p[0]["times_delivered"]) if p else 0 for p in pending]
        deliveries = []
        for (entry_id, fields), n in zip(entries, counts):
            if n == 0:
                continue  # claimed by another consumer in the meantime: no longer ours
            if not fields:
                self.counts["trimmed"] += 1
                await self._ack_ids(entry_id)
                continue
            delivery = Delivery(self.stream, entry_id, dict(fields), n, self)
            if n > self.max_deliveries:
                await self.dead_letter(delivery, f"delivered {n} times (limit {self.max_deliveries}): "
                                                 f"processing kept failing or timing out")
                continue
            self.counts[source] += 1
            self._in_flight.add(entry_id)
            deliveries.append(delivery)
        return deliveries

    # --- ending a delivery -----------------------------------------------------------------------------

    async def ack(self, *deliveries: Delivery) -> None:
        """Acknowledge deliveries whose results are published (retried while Redis is away)."""
        ids = [d.id for d in deliveries if not d.done]
        if ids:
            await self._ack_ids(*ids)
        for d in deliveries:
            d.outcome = d.outcome or "acked"
            self._in_flight.discard(d.id)
        self.counts["acked"] += len(ids)

    def release(self, *deliveries: Delivery) -> None:
        """Leave deliveries pending: they are delivered again once idle for `claim_idle_ms`."""
        for d in deliveries:
            d.outcome = d.outcome or "released"
            self._in_flight.discard(d.id)

    async def _ack_ids(self, *ids: str) -> None:
        await retry_outage(self.redis.xack, self.stream, self.group, *ids, backoff=self.backoff,
                           max_outage_s=self.max_outage_s, what=f"XACK {self.stream}")

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Write `delivery` to the dead letters with `reason`, count it, then acknowledge it."""
        letter = {
            "stream": self.stream, "id": delivery.id, "group": self.group, "consumer": self.name,
            "deliveries": str(delivery.deliveries), "reason": reason, "time": repr(time.time()),
            "entry": pack(delivery.fields),
        }

        async def write() -> None:
            # one pipeline, in this order: the letter exists before the entry is acked
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self.dead_stream, letter, maxlen=self.dead_maxlen, approximate=True)
                pipe.incr(f"{self.dead_stream}:count")
                pipe.xack(self.stream, self.group, delivery.id)
                await pipe.execute()

        await retry_outage(write, backoff=self.backoff, max_outage_s=self.max_outage_s,
                           what=f"dead letter {self.stream} {delivery.id}")
        log.warning("%s %s went to %s: %s", self.stream, delivery.id, self.dead_stream, reason)
        delivery.outcome = "dead"
        self._in_flight.discard(delivery.id)
        self.counts["dead"] += 1

    # --- inspection ---------------------------------------------------------------------------------------

    async def pending(self) -> int:
        """How many entries of the group are delivered and not yet acked (all consumers)."""
        summary = await self.redis.xpending(self.stream, self.group)
        return int(summary["pending"])

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)


class PartitionedConsumer:
    """A member of a consumer group on every partition of a shared stream (`dmd:windows`, `dmd:sessions`;
    stream.keys.Partitions), with GroupConsumer's interface: `read`, `ensure_group`, `counts`, `pending`.

    One GroupConsumer per partition, all under one `name`; a partition's dead letters go to the same
    partition of `dmd:dead`. With one partition it is that GroupConsumer, read as it is. With several,
    one XREADGROUP cannot span them (on a cluster their keys are in different slots, often on
    different nodes), so each partition has its own blocking read in flight, and `read` returns what
    the first of them to answer brings (partitions that answer together are taken in turn, so
    none starves). A read still in flight when `read` returns is kept for the next call, never
    cancelled (a cancelled XREADGROUP could leave entries delivered to nobody until they are claimed):
    more than `count` deliveries may come in at once, and the extra wait in a buffer here, in flight.
    `close()` ends the reads in flight (their entries stay pending, reread at the next start).
    """

    def __init__(self, redis: aioredis.Redis, name: str = WINDOWS, group: str = INFER_GROUP,
                 consumer: str | None = None, *, partitions: Partitions | None = None, **options: object) -> None:
        """`name` is a shared stream's name as one key (`dmd:windows`) or as in stream.keys
        (`windows`); `options` are GroupConsumer's."""
        self.redis = redis
        self.partitions = partitions or partitions_for(redis)
        short = name.removeprefix("dmd:")
        dead = options.pop("dead_stream", None)
        first = GroupConsumer(redis, self.partitions.key(short, 0), group, consumer,
                              dead_stream=dead or self.partitions.key("dead", 0), **options)  # type: ignore[arg-type]
        self.consumers = [first, *(
            GroupConsumer(redis, self.partitions.key(short, i), group, first.name,
                          dead_stream=dead or self.partitions.key("dead", i), **options)  # type: ignore[arg-type]
            for i in range(1, self.partitions.count))]
        self.name = first.name
        self.group = group
        self.streams = [c.stream for c in self.consumers]
        self._reads: dict[int, asyncio.Future[list[Delivery]]] = {}
        self._buffer: list[Delivery] = []
        self._turn = 0

    @property
    def counts(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for c in self.consumers:
            total.update(c.counts)
        return total

    async def ensure_group(self) -> bool:
        """Make the group on every partition; True if it was made on any."""
        created = [await c.ensure_group() for c in self.consumers]
        return any(created)

    async def read(self, count: int | None = None, block_ms: int | None = None) -> list[Delivery]:
        """The next deliveries from any partition (at most `count`), waiting up to `block_ms`."""
        if len(self.consumers) == 1:
            return await self.consumers[0].read(count, block_ms)
        count = count or self.consumers[0].count
        if not self._buffer:
            for i, c in enumerate(self.consumers):
                if i not in self._reads:
                    self._reads[i] = asyncio.ensure_future(c.read(count, block_ms))
            await asyncio.wait(self._reads.values(), return_when=asyncio.FIRST_COMPLETED)
            order = [(self._turn + k) % len(self.consumers) for k in range(len(self.consumers))]
            self._turn = (self._turn + 1) % len(self.consumers)
            for i in order:
                if i in self._reads and self._reads[i].done():
                    self._buffer.extend(self._reads.pop(i).result())
        taken, self._buffer = self._buffer[:count], self._buffer[count:]
        return taken

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._forever()

    async def _forever(self) -> AsyncIterator[Delivery]:
        while True:
            for delivery in await self.read():
                yield delivery

    async def close(self) -> None:
        """End the reads in flight and leave buffered deliveries pending (delivered again later)."""
        reads = list(self._reads.values())
        self._reads.clear()
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
        for c in self.consumers:
            c._reread, c._history_cursor = True, "0"  # what a cancelled read took is ours: reread it
        self.release(*self._buffer)
        self._buffer = []

    def release(self, *deliveries: Delivery) -> None:
        for d in deliveries:
            d.consumer.release(d)

    async def pending(self) -> int:
        """Entries delivered and not yet acked, in every partition."""
        return sum([await c.pending() for c in self.consumers])

    @property
    def in_flight(self) -> int:
        return sum(c.in_flight for c in self.consumers)


async def dead_letter_count(redis: aioredis.Redis, stream: str = DEAD) -> int:
    """How many entries have gone to the dead letters `stream` (its counter, `dmd:dead:count`)."""
    value = await redis.get(f"{stream}:count")
    return int(value or 0)

