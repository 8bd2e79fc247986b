"""One WebRTC peer of the web app: its connection, its capture session and its data channel.

A peer's tracks become a `PeerSource` (`workers.web.source`), read by a `workers.capture.Capture`
into the session's Redis streams; the session's estimates go back over the data channel the page
opened. When the peer leaves (its connection closes or fails, the data channel closes, or the page
says "bye"), the source ends, the capture flushes its last windows and announces the session's end,
the connection is closed, and `on_ended` tells the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from ..capture import Capture
from ..metrics import Metrics
from ..settings import PipelineSettings
from .hub import EstimateHub
from .source import PeerSource

log = logging.getLogger("dmd.serve")


class Peer:
    """One browser (or any WebRTC client): its connection, its capture session, its data channel.

    `asr` is what its capture announces to the inference workers ("none": do not wait for words);
    a peer not connected after `connect_timeout_s` is ended; `on_ended(peer)` is called once it has
    ended."""

    def __init__(self, session: str, pc: Any, *, redis: aioredis.Redis, hub: EstimateHub, metrics: Metrics,
                 asr: str, connect_timeout_s: float, on_ended: Callable[[Peer], None]) -> None:
        self.session = session
        self.redis, self.hub, self.metrics = redis, hub, metrics
        self.asr, self.connect_timeout_s, self.on_ended = asr, connect_timeout_s, on_ended
        self.pc = pc
        self.tracks: dict[str, Any] = {}
        self.channel: Any = None
        self.source: PeerSource | None = None
        self.capture: Capture | None = None
        self.state = "new"  # new -> live -> ending -> ended
        self.reason = ""
        self.created = time.time()
        self.sent = 0
        self._pending: deque[str] = deque(maxlen=64)  # estimates before the channel opened
        self._tasks: list[asyncio.Task] = []
        self._closing: asyncio.Task | None = None
        self._sub = hub.subscribe(session)

    def info(self) -> dict[str, Any]:
        body: dict[str, Any] = {"session": self.session, "state": self.state, "reason": self.reason,
                                "connection": self.pc.connectionState, "tracks": sorted(self.tracks),
                                "estimates_sent": self.sent, "seconds": round(time.time() - self.created, 1)}
        if self.source is not None:
            body["source"] = dataclasses.asdict(self.source.stats)
        if self.capture is not None:
            stats = self.capture.stats
            body["capture"] = {k: v for k, v in vars(stats).items() if k != "extra"} | stats.extra
        return body

    # the data channel
    def attach(self, channel: Any) -> None:
        if self.channel is not None:
            return
        self.channel = channel

        @channel.on("open")
        def _open() -> None:
            self._hello()

        @channel.on("message")
        def _message(message: Any) -> None:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                if json.loads(message).get("type") == "bye":
                    self.end("the page said bye")

        @channel.on("close")
        def _close() -> None:
            self.end("the data channel closed")

        if channel.readyState == "open":
            self._hello()

    def _hello(self) -> None:
        self._send(json.dumps({"type": "session", "session": self.session,
                               "tracks": {k: k in self.tracks for k in ("video", "audio")}}))
        while self._pending:
            self._send(self._pending.popleft())

    def _send(self, text: str) -> bool:
        if self.channel is None or self.channel.readyState != "open":
            return False
        try:
            self.channel.send(text)
        except Exception as exc:  # noqa: BLE001 - a channel closing under us: the close handler ends the peer
            log.debug("session %s: data channel send failed: %s", self.session, exc)
            return False
        return True

    # the session
    def start(self, settings: PipelineSettings, tracker: Any = None) -> None:
        """Start the capture (with `tracker`, the face tracker loaded while the offer was answered)."""
        cap = settings.capture
        self.source = PeerSource(self.tracks.get("video"), self.tracks.get("audio"), name=self.session,
                                 video_fps=cap.video_fps, chunk_ms=cap.chunk_ms, audio_queue=cap.audio_queue)
        # latest-frame policy all the way: one frame waits for the face tracker, never a backlog
        live = dataclasses.replace(settings, capture=dataclasses.replace(cap, video_queue=1))
        self.capture = Capture(self.redis, self.session, self.source, live, metrics=self.metrics,
                               tracker=tracker)
        self.source.start()  # drain the tracks from now on, while the capture loads its face tracker
        self.state = "live"
        self._tasks = [asyncio.create_task(self._run(), name=f"dmd-peer-{self.session}"),
                       asyncio.create_task(self._relay(), name=f"dmd-relay-{self.session}"),
                       asyncio.create_task(self._watchdog(), name=f"dmd-watchdog-{self.session}")]

    async def _run(self) -> None:
        assert self.capture is not None
        try:
            stats = await self.capture.run(asr=self.asr)
            log.info("session %s ended (%s): %d windows, %d video frames tracked, %.1f s of audio", self.session,
                     self.reason or "its tracks ended", stats.windows, stats.video_tracked, stats.audio_seconds)
        except Exception:  # one peer's failure must not touch the others
            log.exception("session %s: capture failed", self.session)
        finally:
            self.end(self.reason or "its tracks ended")

    async def _relay(self) -> None:
        while True:
            item = await self._sub.queue.get()
            if item is None:
                return
            kind, body = item
            if kind != "estimate":
                continue
            # the source's own clock: the capture's origin_wall is read when it takes its first item,
            # which is late by however long the event loop was busy then
            origin = self.source.origin_wall if self.source is not None else None
            age = round((time.time() - (origin + body["t_end"])) * 1000, 1) if origin else None
            media = {}
            if self.source is not None:
                for track in self.tracks:
                    at = self.source.clock.media_time(track, body["t_end"])
                    if at is not None:
                        media[track] = round(at, 4)
            text = json.dumps({"type": "estimate", "estimate": body, "age_ms": age, "media_end": media},
                              separators=(",", ":"))
            if self._send(text):
                self.sent += 1
            else:
                self._pending.append(text)

    async def _watchdog(self) -> None:
        await asyncio.sleep(self.connect_timeout_s)
        if self.pc.connectionState != "connected" and self.state == "live":
            self.end(f"not connected after {self.connect_timeout_s:.0f} s "
                     f"(connection {self.pc.connectionState}): check ICE servers and firewalls")

    def connection_changed(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self.end(f"the connection {self.pc.connectionState}")

    def end(self, reason: str) -> asyncio.Future:
        """End the session (idempotent): the source stops, the capture flushes and announces the end,
        then the connection closes. Returns the task doing it. A peer whose offer was refused (never
        started) has nothing to end."""
        if self._closing is None:
            if self.state != "live":
                done: asyncio.Future = asyncio.get_running_loop().create_future()
                done.set_result(None)
                return done
            self.reason = self.reason or reason
            self._closing = asyncio.ensure_future(self._end())
        return self._closing

    async def _end(self) -> None:
        self.state = "ending"
        log.info("session %s: ending (%s)", self.session, self.reason)
        run = self._tasks[0] if self._tasks else None
        if self.source is not None:
            await self.source.close()
        if run is not None and run is not asyncio.current_task():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(run), 30)
        self._send(json.dumps({"type": "ended", "session": self.session, "reason": self.reason}))
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*self._tasks[1:], return_exceptions=True)
        self.hub.unsubscribe(self._sub)
        with contextlib.suppress(Exception):
            await self.pc.close()
        self.state = "ended"
        self.on_ended(self)

    async def refuse(self) -> None:
        """Its offer could not be used: stop listening and close the connection (it never started)."""
        self.state = "refused"
        self.hub.unsubscribe(self._sub)
        with contextlib.suppress(Exception):
            await self.pc.close()


