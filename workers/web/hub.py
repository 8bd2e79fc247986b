"""The estimates hub of the web app: one Redis subscription fanned out to many listeners.

`EstimateHub` holds one subscription to every session's estimates (`dmd:est:*`) and one reader of the
session events (`dmd:sessions`), and hands both to its listeners (the peers' data channels, the
dashboards' event streams) through bounded queues: a slow listener loses its oldest undelivered items,
counted, never the server's memory. It reconnects when Redis goes away.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis

from stream.codec import MessageError
from stream.connection import partitions_for
from stream.estimate import Estimate
from stream.keys import SESSIONS, SessionKeys
from stream.messages import SessionEvent
from stream.publish import ESTIMATE_FIELD, watch_estimates
from stream.session import sessions_with

log = logging.getLogger("dmd.serve")


class Subscription:
    """One listener of the hub: a bounded queue of ("estimate", dict) / ("session", dict) items, or
    None when the hub closes. Full: the oldest item is dropped and counted."""

    def __init__(self, session: str | None, maxsize: int) -> None:
        self.session = session
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue(maxsize)
        self.dropped = 0

    def put(self, item: tuple[str, dict[str, Any]] | None) -> None:
        while True:
            try:
                self.queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()
                self.dropped += 1


class EstimateHub:
    """One subscription to every session's estimates (`dmd:est:*`) and one reader of the session
    events (`dmd:sessions`), fanned out to the app's listeners. Reconnects when Redis goes away."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.listeners: set[Subscription] = set()
        self.ready = asyncio.Event()
        self.received = 0
        self.dropped = 0  # items a slow listener lost (its queue was full), over listeners gone
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._estimates(), name="dmd-serve-estimates"),
                       asyncio.create_task(self._sessions(), name="dmd-serve-sessions")]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for listener in list(self.listeners):
            listener.put(None)

    def subscribe(self, session: str | None = None, maxsize: int = 512) -> Subscription:
        sub = Subscription(session, maxsize)
        self.listeners.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self.listeners:
            self.listeners.discard(sub)
            self.dropped += sub.dropped
            if sub.dropped:
                log.warning("a listener of %s lost %d update(s): it read too slowly", sub.session or "every session",
                            sub.dropped)

    def _fan_out(self, kind: str, session: str, body: dict[str, Any]) -> None:
        for sub in list(self.listeners):
            if sub.session is None or sub.session == session:
                sub.put((kind, body))

    async def _estimates(self) -> None:
        delay = 0.2
        while True:
            try:
                async for est in watch_estimates(self.redis, None, ready=self.ready):
                    delay = 0.2
                    self.received += 1
                    self._fan_out("estimate", est.session, est.to_dict())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: say so, then subscribe again
                log.warning("estimates subscription lost (%s): retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _sessions(self) -> None:
        # every partition of dmd:sessions: one blocking XREAD on one Redis; on a cluster one XREAD
        # cannot span the partitions' slots, so each is read in turn without blocking, then a pause
        streams = partitions_for(self.redis).keys("sessions")
        last: dict[str, str] = {}
        delay = 0.2
        while True:
            try:
                for stream in streams:
                    if stream not in last:
                        newest = await self.redis.xrevrange(stream, count=1)
                        last[stream] = _text(newest[0][0]) if newest else "0-0"
                got = 0
                for stream in streams:
                    block = 1000 if len(streams) == 1 else None
                    reply = await self.redis.xread({stream: last[stream]}, count=100, block=block)
                    for _, entries in reply or ():
                        for entry_id, fields in entries:
                            got += 1
                            last[stream] = _text(entry_id)
                            event = _session_event(fields)
                            if event is not None:
                                self._fan_out("session", event["session"], event)
                delay = 0.2
                if len(streams) > 1 and not got:
                    await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: say so, then read again
                log.warning("reading %s failed (%s): retrying in %.1f s", SESSIONS, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _session_event(fields: dict) -> dict[str, Any] | None:
    try:
        event = SessionEvent.from_fields(fields)
    except (MessageError, KeyError, ValueError):
        return None
    return event.body()


async def recent_sessions(redis: aioredis.Redis, count: int = 1000) -> dict[str, dict[str, Any]]:
    """The latest start/end event of each session among the last `count` entries of `dmd:sessions`,
    with the start's source and info: {session: {"state": "live" | "ended", ...}}."""
    sessions: dict[str, dict[str, Any]] = {}
    streams = partitions_for(redis).keys("sessions")
    entries = []
    for stream in streams:
        entries += await redis.xrevrange(stream, count=count)
    if len(streams) > 1:  # several partitions: the newest `count` of them all, newest first, by id (time)
        entries = sorted(entries, key=lambda e: tuple(int(x) for x in _text(e[0]).split("-")))[-count:][::-1]
    for _, fields in reversed(entries):
        event = _session_event(fields)
        if event is None:
            continue
        entry = sessions.setdefault(event["session"], {"session": event["session"]})
        if event["event"] == "start":
            entry.update(state="live", started=event["t_wall"], source=event["source"], info=event["info"])
            entry.pop("ended", None)
        else:
            entry.update(state="ended", ended=event["t_wall"])
    return sessions


async def dashboard_history(redis: aioredis.Redis, sessions: int, count: int) -> list[Estimate]:
    """The last `count` estimates of the `sessions` most recently active sessions (by their newest
    estimate), oldest first: what a dashboard opened late shows."""
    newest: list[tuple[int, str]] = []
    async for sid in sessions_with(redis, "estimates"):
        last = await redis.xrevrange(SessionKeys(sid).estimates, count=1)
        if last:
            newest.append((int(_text(last[0][0]).split("-")[0]), sid))
    found: list[Estimate] = []
    for _, sid in sorted(newest, reverse=True)[:sessions]:
        for _, fields in reversed(await redis.xrevrange(SessionKeys(sid).estimates, count=count)):
            raw = fields.get(ESTIMATE_FIELD.encode(), fields.get(ESTIMATE_FIELD))
            try:
                found.append(Estimate.from_json(raw))
            except (MessageError, ValueError, TypeError):
                continue
    return sorted(found, key=lambda e: (e.session, e.window))


