"""The session lifecycle on Redis: announcing a session's start and end, and holding a session.

A capture worker calls `start_session` when a session begins and `end_session` after its last
audio chunk has been added (`stream.session.Session.add` returned): each writes a `SessionEvent`
to the session's `dmd:{sid}:events` and to `dmd:sessions` (see `stream.keys`). The end event in
the session's own stream is the end marker the ASR worker waits for; it is written first, so that
once `dmd:sessions` shows the end, the marker is there too.

ASR workers share `dmd:sessions` in the consumer group "asr". A worker that reads a "start" runs the
session until its end, and the start entry stays pending (unacknowledged) under its name all that
time. `SessionLease.renew` keeps it so: it resets the entry's idle time (XCLAIM ... JUSTID, which
does not count as a delivery) while this worker still owns it, in one script, so a worker never takes
an entry back from another. A worker that dies stops renewing; once the entry has been idle for the
group's claim time another worker claims it (XAUTOCLAIM, in `stream.consumer.GroupConsumer`) and
resumes the session from its words watermark. A worker that was only stalled finds at its next
renewal that the entry is someone else's, and stops.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.asyncio as aioredis

from .codec import MessageError
from .connection import backoff_for, partitions_for, retry_outage
from .keys import ASR_GROUP, SESSIONS, Partitions, SessionKeys
from .messages import SessionEvent
from .replication import replication_for

log = logging.getLogger(__name__)

SESSIONS_MAXLEN = 100_000  # entries kept in dmd:sessions (approximately); a pending entry outlives its trim
EVENTS_MAXLEN = 1_000


async def announce(redis: aioredis.Redis, event: SessionEvent, *, max_outage_s: float = 30.0,
                   partitions: Partitions | None = None) -> str:
    """Write `event` to the session's events stream, then to `dmd:sessions` (the session's partition
    of it: `partitions`, by default `partitions_for(redis)`); returns the id there. Retried while
    Redis is away (up to `max_outage_s`). On a cluster whose masters have replicas each write is on a
    replica before this goes on (stream.replication)."""
    fields = event.to_fields()
    keys = SessionKeys(event.session)
    sessions = (partitions or partitions_for(redis)).for_session("sessions", event.session)
    backoff = backoff_for(redis)
    replication = replication_for(redis)

    async def xadd(key: str, maxlen: int) -> Any:
        if replication.enabled:
            [entry] = await replication.write(key, lambda pipe: pipe.xadd(key, fields, maxlen=maxlen,
                                                                          approximate=True))
            return entry
        return await redis.xadd(key, fields, maxlen=maxlen, approximate=True)

    async def own() -> Any:
        return await xadd(keys.events, EVENTS_MAXLEN)

    async def shared() -> Any:
        return await xadd(sessions, SESSIONS_MAXLEN)

    await retry_outage(own, backoff=backoff, max_outage_s=max_outage_s, what=f"session {event.session} events")
    entry = await retry_outage(shared, backoff=backoff, max_outage_s=max_outage_s, what=sessions)
    return entry.decode() if isinstance(entry, bytes) else entry


async def start_session(redis: aioredis.Redis, session: str, source: str = "", info: dict[str, Any] | None = None
                        ) -> SessionEvent:
    """Announce that `session` starts (before or with its first audio)."""
    event = SessionEvent(session, "start", time.time(), source, info or {})
    await announce(redis, event)
    return event


async def end_session(redis: aioredis.Redis, session: str, t_end: float | None = None, source: str = "",
                      info: dict[str, Any] | None = None) -> SessionEvent:
    """Announce that `session` has ended: call it after the last audio chunk was added. `t_end` is
    the session time up to which audio was sent, if known."""
    event = SessionEvent(session, "end", time.time(), source, info or {}, t_end=t_end)
    await announce(redis, event)
    return event


async def session_events(redis: aioredis.Redis, session: str) -> list[SessionEvent]:
    """The session's lifecycle events, oldest first; an entry that cannot be read is left out (and
    logged): it was not written by a capture worker."""
    events = []
    for entry_id, fields in await redis.xrange(SessionKeys(session).events):
        try:
            events.append(SessionEvent.from_fields(fields))
        except MessageError as exc:
            log.warning("session %s: events entry %r cannot be read (%s): left out", session, entry_id, exc)
    return events  # type: ignore[return-value]


# KEYS[1] stream; ARGV group, consumer, id. 1: renewed; 0: no longer pending; -1: another consumer's.
_RENEW = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 then return 0 end
if p[1][2] ~= ARGV[2] then return -1 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""


class LeaseLost(Exception):
    """The session's start entry is no longer this worker's (claimed by another, or acked)."""


class SessionLease:
    """This worker's hold on a session: its pending start entry `entry_id` in `stream`/`group`."""

    def __init__(self, redis: aioredis.Redis, entry_id: str, consumer: str, stream: str = SESSIONS,
                 group: str = ASR_GROUP) -> None:
        self.redis, self.entry_id, self.consumer, self.stream, self.group = redis, entry_id, consumer, stream, group
        self._script = redis.register_script(_RENEW)

    async def renew(self) -> None:
        """Reset the entry's idle time; LeaseLost if it is not ours any more."""
        result = int(await self._script(keys=[self.stream], args=[self.group, self.consumer, self.entry_id]))
        if result == 0:
            raise LeaseLost(f"{self.stream} {self.entry_id} is no longer pending (acked or trimmed)")
        if result < 0:
            raise LeaseLost(f"{self.stream} {self.entry_id} was claimed by another worker")
