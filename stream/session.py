"""A session's streams in Redis: writing messages, reading a time span back, window notices.

Entry ids are session time. A session stream entry's id is `<ms>-<seq>`, where `ms` is the message's
`t_end` (the session time up to which it carries data) in whole milliseconds, rounded down, and
`seq` numbers entries within one millisecond. Ids must grow, so an entry whose `ms` is not after the
previous entry's takes the previous `ms` and the next `seq` (its id is then a little later than its
data, never earlier). Because of this:

- `XRANGE key <ms(t0)> +` returns every entry that holds data at or after t0, with no guessed
  look-back, whatever an entry's length (a 100 ms PCM chunk, a batch of frames, an ASR segment).
- Each producer's entries follow one another without overlap (a chunk starts where the last ended,
  an ASR entry's words start at or after the previous watermark), so reading stops at the first
  entry that reaches t1: `read_span` is one round trip of two XRANGEs.
- The last entry's id says how far a stream has data (`data_until` decodes it for the exact time),
  and retention is by session time: `XADD ... MINID ~ <ms(t_end) - retention>` keeps the last
  `retention_s` seconds (approximately: Redis trims whole macro nodes).
- A retried XADD is idempotent: if the first attempt landed before the connection dropped, the
  retry with the same id is refused as "equal or smaller than the target stream top item", which
  `add` takes as success.

One producer writes each stream (the capture worker audio, afeat and vfeat; the ASR worker words).

Window notices go to `dmd:windows` with Redis-assigned ids (several capture workers write there),
trimmed by `MAXLEN ~`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from dmd_types import Frames, Word

from .connection import CONNECTION_ERRORS, Backoff, backoff_for, partitions_for, retry_outage
from .estimate import Estimate
from .keys import Partitions, SessionKeys, parse_session_key, session_key_pattern
from .messages import AsrWords, FrameKind, Kind, WindowNotice, codec, from_fields, to_fields
from .publish import ESTIMATE_FIELD
from .replication import replication_for
from .window import Window

log = logging.getLogger(__name__)

# notices kept in each partition of dmd:windows: XADD's MAXLEN trims unread ones as well, so this is the
# backlog a partition can hold (50 s at 1,000 sessions: bench/load.py lost notices at the old 10,000)
WINDOWS_MAXLEN = 100_000
CATCH_UP_GAP_S = 3.0  # how long a catching-up writer may take to its next entry and still be waited for
# a writer this far behind a window's end is catching up: its steady lag is about 1 s, and a 3 s window
# read 2 s behind would carry the words of its first third at most (3 s let a loaded CI machine publish
# 10 of 53 windows of the outage test without words: lags of 2-3 s were not waited for) ...
CATCH_UP_LAG_S = 2.0
# ... and, for a writer whose usual lag is longer (Whisper serving several sessions on a loaded machine
# commits words 1.5-3 s late), this much beyond its usual lag: a steady lag is not a backlog, and waiting
# for it made every window as late as the ASR (BENCHMARKS.md, "Sessions per core")
CATCH_UP_MARGIN_S = 1.0


class WriterLag:
    """How far a writer (a session's ASR) usually is behind the times it is waited for: the median of
    its last `n` lags. `wait_until` takes it as catching up only when it is more than
    `CATCH_UP_LAG_S`, and more than `CATCH_UP_MARGIN_S` beyond that median, behind."""

    def __init__(self, n: int = 20, min_samples: int = 5) -> None:
        self._lags: deque[float] = deque(maxlen=n)
        self.min_samples = min_samples

    def add(self, lag: float) -> None:
        self._lags.append(lag)

    def usual(self) -> float | None:
        """The median of the recent lags (None before `min_samples` of them)."""
        return statistics.median(self._lags) if len(self._lags) >= self.min_samples else None

    def behind_beyond(self) -> float:
        """The lag beyond which the writer is catching up."""
        usual = self.usual()
        return CATCH_UP_LAG_S if usual is None else max(CATCH_UP_LAG_S, usual + CATCH_UP_MARGIN_S)


T = TypeVar("T")


def time_to_ms(t: float) -> int:
    """Session seconds to the millisecond part of a stream id (rounded down, never negative)."""
    return max(0, math.floor(t * 1000 + 1e-6))


class Session:
    """One session's streams: `add` messages, `read_span` them back, send window notices.

    `retention_s` is how much session time the data streams keep; `windows_maxlen` bounds
    `dmd:windows` (each partition of it). Window notices go to the session's partition of
    `dmd:windows` (`partitions`, by default `partitions_for(redis)`: `dmd:windows` itself on one
    Redis). A `Session` is cheap: make one per session and task.
    """

    def __init__(self, redis: aioredis.Redis, session: str, *, retention_s: float = 120.0,
                 windows_maxlen: int = WINDOWS_MAXLEN, backoff: Backoff | None = None, max_outage_s: float = 30.0,
                 partitions: Partitions | None = None) -> None:
        self.redis = redis
        self.keys = SessionKeys(session)
        self.id = session
        self.windows = (partitions or partitions_for(redis)).for_session("windows", session)
        if not retention_s > 0:
            raise ValueError(f"retention_s = {retention_s!r}: expected a positive number of seconds")
        self.retention_s = retention_s
        self.windows_maxlen = windows_maxlen
        self.backoff = backoff or backoff_for(redis)
        self.max_outage_s = max_outage_s
        self.replication = replication_for(redis)
        self._last: dict[str, tuple[int, int]] = {}  # stream -> last id written, as (ms, seq)
        self._locks: dict[str, asyncio.Lock] = {}

    # --- writing ------------------------------------------------------------------------------------

    async def add(self, message: Any, kind: Kind | None = None) -> str:
        """Append `message` (a `PcmChunk`, `AsrWords`, or `Frames` of `kind` ACOUSTIC or FACE) to its
        stream (audio, words, afeat or vfeat); returns the entry id.

        Survives a Redis outage of up to `max_outage_s` seconds by retrying with backoff; adds to one
        stream are serialised so their ids stay in order."""
        stream = codec(type(message) if kind is None else kind).type
        key = self.keys.stream(stream)
        fields = to_fields(message, kind)
        lock = self._locks.setdefault(stream, asyncio.Lock())
        async with lock:
            if stream not in self._last:
                self._last[stream] = await self._retrying(self._read_last_id, key)
            ms = time_to_ms(message.t_end)
            entry_id = self._next_id(stream, ms)
            minid = ms - int(self.retention_s * 1000)
            retried = False
            resynced = False
            deadline = time.monotonic() + self.max_outage_s
            while True:
                try:
                    await self.redis.xadd(key, fields, id=entry_id, minid=minid if minid > 0 else None,
                                          approximate=True)
                    break
                except CONNECTION_ERRORS as exc:  # first: a cluster's CLUSTERDOWN is a ResponseError too
                    if time.monotonic() > deadline:
                        raise
                    retried = True
                    delay = self.backoff.next_delay()
                    log.warning("XADD %s failed (%s); retrying in %.2f s", key, exc, delay)
                    await asyncio.sleep(delay)
                except ResponseError as exc:
                    if "equal or smaller" not in str(exc):
                        raise
                    if retried:
                        break  # the attempt before the connection dropped had landed
                    if resynced:
                        raise
                    # another writer moved the stream on: continue after its last entry
                    log.warning("%s has entries after %s (a second producer?): continuing after them", key, entry_id)
                    self._last[stream] = await self._read_last_id(key)
                    entry_id = self._next_id(stream, ms)
                    resynced = True
            self.backoff.reset()
            self._last[stream] = _split_id(entry_id)
            return entry_id

    def _next_id(self, kind: str, ms: int) -> str:
        last_ms, last_seq = self._last.get(kind, (0, 0))
        if ms > last_ms:
            return f"{ms}-0"
        return f"{last_ms}-{last_seq + 1}"

    async def _read_last_id(self, key: str) -> tuple[int, int]:
        last = await self.redis.xrevrange(key, "+", "-", count=1)
        return _split_id(last[0][0]) if last else (0, 0)

    async def _retrying(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await retry_outage(fn, *args, backoff=self.backoff, max_outage_s=self.max_outage_s,
                                  what=f"session {self.id}")

    async def notify_window(self, window: Window) -> str:
        """Send the notice that `window` is complete to `dmd:windows`; returns the entry id.

        On a cluster whose masters have replicas (stream.replication) the window's data is on a
        replica of the session's master first, and the notice on a replica of its own before this
        returns: a master that dies now loses neither."""
        notice = WindowNotice(session=self.id, window=window.index, t_start=window.t_start, t_end=window.t_end,
                              notice_time=time.time())
        if self.replication.enabled:
            await self._retrying(self.replication.sync, self.keys.sync)
        entry_id = await self._retrying(self._xadd_notice, notice)
        return entry_id.decode() if isinstance(entry_id, bytes) else entry_id

    async def _xadd_notice(self, notice: WindowNotice) -> bytes:
        if self.replication.enabled:
            [entry_id] = await self.replication.write(self.windows, lambda pipe: pipe.xadd(
                self.windows, notice.to_fields(), maxlen=self.windows_maxlen, approximate=True))
            return entry_id
        return await self.redis.xadd(self.windows, notice.to_fields(), maxlen=self.windows_maxlen, approximate=True)

    # --- reading ------------------------------------------------------------------------------------

    async def read_span(self, kind: Kind, t_start: float, t_end: float) -> list[Any]:
        """The messages of stream `kind` (PcmChunk, AsrWords, ACOUSTIC or FACE frames) that hold
        data in [t_start, t_end], oldest first. Messages at the edges also hold data outside the span:
        cut with `concat_audio` or `words_between` (`read_frames` cuts frames). A malformed entry
        raises MessageError naming its field."""
        if t_end < t_start:
            raise ValueError(f"span [{t_start}, {t_end}] ends before it starts")
        key = self.keys.stream(codec(kind).type)
        lo, hi = time_to_ms(t_start), time_to_ms(t_end)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrange(key, str(lo), str(hi))  # ms-only ids: from lo-0 to hi-<max seq>
            pipe.xrange(key, str(hi + 1), "+", count=1)  # the first entry reaching past t_end
            inside, after = await pipe.execute()
        messages = [from_fields(fields, kind) for _, fields in inside]
        if after and (not messages or messages[-1].t_end < t_end):
            messages.append(from_fields(after[0][1], kind))
        return messages  # type: ignore[return-value]

    async def read_frames(self, kind: FrameKind, t_start: float, t_end: float) -> Frames:
        """The frames of `kind` (ACOUSTIC or FACE) with `t_start <= time < t_end`, as one run."""
        parts = await self.read_span(kind, t_start, t_end)
        return Frames.concat(parts, dim=kind.width).between(t_start, t_end)

    async def data_until(self, kind: Kind) -> float | None:
        """Session time up to which stream `kind` has data (for words: the ASR watermark); None if empty."""
        last = await self.redis.xrevrange(self.keys.stream(codec(kind).type), "+", "-", count=1)
        return from_fields(last[0][1], kind).t_end if last else None

    async def wait_until(self, kind: Kind, t: float, timeout: float, catch_up_s: float = 0.0,
                         lag: WriterLag | None = None) -> float | None:
        """Wait up to `timeout` seconds for stream `kind` to have data up to `t` (the inference worker
        waiting for the ASR watermark, at most `asr.grace_s`). Returns the time reached, which is below
        `t` after a timeout, or None if the stream is still empty.

        With `catch_up_s`, a writer that is catching up is waited for longer, up to `catch_up_s` in
        all, as long as it keeps writing: each new entry gives it another `CATCH_UP_GAP_S` (a
        recogniser writes about once a second; its first pass over a backlog takes longer). A writer is
        catching up when its data moves on faster than the wall clock (more than 1.2 s of session time
        per second, between two entries that arrive during the wait), or when it is more than
        `CATCH_UP_LAG_S` behind `t` (an ASR that was cut off by an outage: it is that far behind only
        when it has audio to work off, since its steady lag is about a second) and, given the writer's
        `lag` history, more than `CATCH_UP_MARGIN_S` beyond its usual lag (which this call adds to).
        Then even its first entry is waited for, up to `CATCH_UP_GAP_S`. A writer that keeps pace a
        little behind is not waited for past `timeout`, nor one that has stopped writing past
        `CATCH_UP_GAP_S`."""
        key = self.keys.stream(codec(kind).type)
        start = time.monotonic()
        limit = start + max(timeout, catch_up_s)
        last = await self.redis.xrevrange(key, "+", "-", count=1)
        reached = from_fields(last[0][1], kind).t_end if last else None
        last_id = last[0][0] if last else b"0-0"
        behind = catch_up_s > 0 and t - (reached or 0.0) > (lag.behind_beyond() if lag else CATCH_UP_LAG_S)
        if lag is not None and reached is not None:
            lag.add(t - reached)
        deadline = start + (max(timeout, CATCH_UP_GAP_S) if behind else timeout)
        # the rate is taken between entries that arrive during this wait, never from the one before it:
        # Whisper commits a pass's words at once, so a single entry moves the watermark a second or
        # more in an instant while the writer only keeps pace (taking that for catching up made the
        # wait last to its next pass: BENCHMARKS.md, "Sessions per core")
        seen_at: float | None = None
        seen: float | None = None
        while reached is None or reached < t:
            remaining = min(deadline, limit) - time.monotonic()
            if remaining <= 0:
                break
            new = await self.redis.xread({key: last_id}, block=max(1, int(remaining * 1000)))
            for _, entries in new or ():
                for entry_id, fields in entries:
                    reached = from_fields(fields, kind).t_end
                    last_id = entry_id
            if not new:
                continue
            now = time.monotonic()
            fast = (seen is not None and seen_at is not None and now > seen_at
                    and (reached - seen) / (now - seen_at) > 1.2)
            if catch_up_s and (behind or fast):
                deadline = now + max(timeout, CATCH_UP_GAP_S)  # catching up: wait for its next entry
            seen_at, seen = now, reached
        return reached

    async def estimates(self, count: int = 100) -> list[Estimate]:
        """The session's last `count` published estimates, in the order they were published."""
        entries = await self.redis.xrevrange(self.keys.estimates, "+", "-", count=count)
        return [Estimate.from_json(fields[ESTIMATE_FIELD.encode()]) for _, fields in reversed(entries)]

    async def expire(self, seconds: int) -> None:
        """Let the session's keys go `seconds` after it ended (its streams, estimates and EMA state);
        retried while Redis is away (up to `max_outage_s`)."""
        async def expire() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in self.keys.all_keys():
                    pipe.expire(key, int(seconds))
                await pipe.execute()

        await self._retrying(expire)


async def sessions_with(redis: aioredis.Redis, name: str) -> AsyncIterator[str]:
    """The ids of the sessions that have a key `name` (for example "estimates"), by SCAN: each once
    per call, in no particular order; keys that merely look alike are skipped."""
    seen: set[str] = set()
    async for key in redis.scan_iter(match=session_key_pattern(name), count=500):
        parsed = parse_session_key(key)
        if parsed is not None and parsed[1] == name and parsed[0] not in seen:
            seen.add(parsed[0])
            yield parsed[0]


def _split_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def words_between(messages: Sequence[AsrWords], t_start: float, t_end: float) -> list[Word]:
    """The words of `messages` that overlap [t_start, t_end), in time order."""
    return [w for m in messages for w in m.words if w.end > t_start and w.start < t_end]
