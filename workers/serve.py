"""`dmd serve`: the web app. Browser sessions over WebRTC, and the live dashboard.

    dmd serve                                  # http://127.0.0.1:8080/ : embedded Redis, ASR and inference here
    dmd serve --host 0.0.0.0 --token S3CRET --cert c.pem --key k.pem     # on a LAN (browsers need https)
    REDIS_URL=redis://host:6379 dmd serve --no-workers                   # the web app only; workers elsewhere

Routes:

| route | what |
|---|---|
| `GET /` | the session page: camera and microphone over WebRTC, the live estimate over the video |
| `POST /offer` | SDP offer in (JSON `{"sdp", "type": "offer", "session"?}`), answer out; token |
| `GET /config` | what the page needs: ICE servers (with TURN credentials, if configured); token |
| `GET /dashboard` | every live session: timelines, modalities, the HomoGD / HeteroGD edges, words, latency; token |
| `GET /dashboard/events` | Server-Sent Events for the dashboard: recent history first, then live; token |
| `GET /sessions` | the WebRTC sessions of this server, with their capture numbers (JSON); token |
| `GET /healthz` | "ok" |

Each WebRTC peer is one capture session (`Peer`): its tracks become a `PeerSource`
(`workers.webrtc_source`: latest-frame video, 48 kHz audio resampled to 16 kHz, the session clock
from `pts * time_base`), read by a `workers.capture.Capture` into the session's Redis streams. The
page opens a data channel in its offer; the session's estimates go back over it, as
`{"type": "estimate", "estimate": {...}, "age_ms": ..., "media_end": {"video": ..., "audio": ...}}`
(`age_ms`: from the window's end on the session clock to the moment the server sent it;
`media_end`: the window's end on each track's own media clock, `pts * time_base` from the first frame
received, with which a sender finds the frame it captured there). When the peer leaves (its connection closes or
fails, the data channel closes, or the page says "bye"), the source ends, the capture flushes its
last windows and announces the session's end, and the connection is closed.

Estimates reach the app through one Redis subscription (`dmd:est:*`, `EstimateHub`), fanned out
to the peers' data channels and the dashboards' event streams through bounded queues (a slow
dashboard loses its oldest undelivered estimates, counted, never the server's memory). A dashboard
first gets the recent history of the most recently active sessions from their estimates streams,
then the live estimates, without duplicates (it subscribes before reading the history).

Security and limits: with a token (`--token` or $DMD_SERVE_TOKEN) `/offer`, `/config`, `/sessions`,
the dashboard and its events need it (`Authorization: Bearer ...` or `?token=...`); request bodies
are limited (`--max-body`, 64 KiB: an offer is a few KiB); at most `--max-sessions` peers at once;
no STUN or TURN server unless configured (`--ice-server`, `--turn-username`, `--turn-credential`):
by default only host candidates, which serve a LAN or this machine; pages are sent with a strict
Content-Security-Policy and no referrer (the token may be in the URL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hmac
import ipaddress
import json
import logging
import os
import secrets
import signal
import ssl
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from stream.codec import MessageError
from stream.estimate import Estimate
from stream.keys import SESSIONS, SessionKeys, validate_session_id
from stream.messages import SessionEvent
from stream.publish import ESTIMATE_FIELD, watch_estimates

from .capture import Capture
from .metrics import Metrics
from .settings import PipelineSettings
from .webrtc_source import PeerSource

log = logging.getLogger("dmd.serve")

WEB_DIR = Path(__file__).resolve().parent / "web"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "media-src 'self' blob: mediastream:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'")


class RedisUnreachable(RuntimeError):
    """The configured Redis does not answer; the message says which and what to do."""


@dataclass
class ServeOptions:
    """What `dmd serve` is told besides the pipeline settings."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: str = ""  # empty: no token asked
    ice_servers: list[dict[str, Any]] = field(default_factory=list)  # [{"urls": [...], "username", "credential"}]
    max_sessions: int = 8
    max_body: int = 64 * 1024
    history: int = 120  # estimates per session a dashboard gets on connect
    history_sessions: int = 12  # the most recently active sessions whose history it gets
    connect_timeout_s: float = 30.0  # a peer that has not connected by then is dropped
    asr: str = "auto"  # what captures announce to inference workers ("none": do not wait for words)
    cert: str = ""
    key: str = ""


# -- the estimates hub ---------------------------------------------------------------------------------
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
        last = None
        delay = 0.2
        while True:
            try:
                if last is None:
                    newest = await self.redis.xrevrange(SESSIONS, count=1)
                    last = _text(newest[0][0]) if newest else "0-0"
                reply = await self.redis.xread({SESSIONS: last}, count=100, block=1000)
                delay = 0.2
                for _, entries in reply or ():
                    for entry_id, fields in entries:
                        last = _text(entry_id)
                        event = _session_event(fields)
                        if event is not None:
                            self._fan_out("session", event["session"], event)
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
    for _, fields in reversed(await redis.xrevrange(SESSIONS, count=count)):
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
    async for key in redis.scan_iter(match="dmd:{*}:estimates", count=500):
        name = _text(key)
        sid = name[len("dmd:{"):-len("}:estimates")]
        try:
            validate_session_id(sid)
        except ValueError:
            continue
        last = await redis.xrevrange(name, count=1)
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


# -- one WebRTC peer ---------------------------------------------------------------------------------
class Peer:
    """One browser (or any WebRTC client): its connection, its capture session, its data channel."""

    def __init__(self, app: LiveApp, session: str, pc: Any) -> None:
        self.app = app
        self.session = session
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
        self._sub = app.hub.subscribe(session)

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
        self.capture = Capture(self.app.redis, self.session, self.source, live, metrics=self.app.metrics,
                               tracker=tracker)
        self.source.start()  # drain the tracks from now on, while the capture loads its face tracker
        self.state = "live"
        self._tasks = [asyncio.create_task(self._run(), name=f"dmd-peer-{self.session}"),
                       asyncio.create_task(self._relay(), name=f"dmd-relay-{self.session}"),
                       asyncio.create_task(self._watchdog(), name=f"dmd-watchdog-{self.session}")]

    async def _run(self) -> None:
        assert self.capture is not None
        try:
            stats = await self.capture.run(asr=self.app.options.asr)
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
        await asyncio.sleep(self.app.options.connect_timeout_s)
        if self.pc.connectionState != "connected" and self.state == "live":
            self.end(f"not connected after {self.app.options.connect_timeout_s:.0f} s "
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
        self.app.hub.unsubscribe(self._sub)
        with contextlib.suppress(Exception):
            await self.pc.close()
        self.state = "ended"
        self.app.peers.pop(self.session, None)
        self.app.ended.append(self.info())
        del self.app.ended[:-100]


# -- the web app ------------------------------------------------------------------------------------------
class LiveApp:
    """The aiohttp application of `dmd serve` (routes in the module docstring)."""

    def __init__(self, redis: aioredis.Redis, settings: PipelineSettings, options: ServeOptions,
                 metrics: Metrics | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.options = options
        self.metrics = metrics or Metrics("serve")
        self.hub = EstimateHub(redis)
        self.peers: dict[str, Peer] = {}
        self.ended: list[dict[str, Any]] = []
        self._streams: set[asyncio.Task] = set()
        app = web.Application(client_max_size=options.max_body, middlewares=[self._headers])
        app.router.add_get("/", self.page_session)
        app.router.add_get("/dashboard", self.page_dashboard)
        app.router.add_get("/dashboard/events", self.dashboard_events)
        app.router.add_get("/config", self.config)
        app.router.add_post("/offer", self.offer)
        app.router.add_get("/sessions", self.sessions)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_static("/static/", WEB_DIR, show_index=False)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        self.app = app

    async def _startup(self, _: web.Application) -> None:
        self.hub.start()
        await asyncio.wait_for(self.hub.ready.wait(), 10)

    async def _shutdown(self, _: web.Application) -> None:
        await self.close_peers("the server is stopping")
        await self.hub.close()  # event streams get their end and return

    async def close_peers(self, reason: str) -> None:
        await asyncio.gather(*(peer.end(reason) for peer in list(self.peers.values())), return_exceptions=True)

    @web.middleware
    async def _headers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.path.startswith("/static/") or request.path in ("/", "/dashboard"):
            response.headers.setdefault("Cache-Control", "no-cache")
        return response

    # -- access ------------------------------------------------------------------------------------------
    def authorised(self, request: web.Request) -> bool:
        if not self.options.token:
            return True
        given = request.query.get("token", "")
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        return hmac.compare_digest(given.encode(), self.options.token.encode())

    def refuse(self, request: web.Request, html: bool = False) -> web.Response:
        what = "a missing or wrong token"
        if html:
            page = (WEB_DIR / "denied.html").read_text()
            return web.Response(status=401, text=page, content_type="text/html")
        return web.json_response({"error": f"{request.path}: {what}: pass ?token=... or an 'Authorization: "
                                           "Bearer ...' header with the token `dmd serve` was started with"},
                                 status=401)

    # -- pages -------------------------------------------------------------------------------------------
    async def page_session(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(WEB_DIR / "index.html")

    async def page_dashboard(self, request: web.Request) -> web.StreamResponse:
        if not self.authorised(request):
            return self.refuse(request, html=True)
        return web.FileResponse(WEB_DIR / "dashboard.html")

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def config(self, request: web.Request) -> web.Response:
        if not self.authorised(request):
            return self.refuse(request)
        return web.json_response({"iceServers": self.options.ice_servers, "maxSessions": self.options.max_sessions,
                                  "window": {"length": self.settings.windows.length,
                                             "hop": self.settings.windows.hop}})

    async def sessions(self, request: web.Request) -> web.Response:
        if not self.authorised(request):
            return self.refuse(request)
        dropped = self.hub.dropped + sum(sub.dropped for sub in self.hub.listeners)
        return web.json_response({"live": [p.info() for p in self.peers.values()], "ended": self.ended[-20:],
                                  "estimates_received": self.hub.received, "listeners": len(self.hub.listeners),
                                  "updates_dropped_for_slow_listeners": dropped})

    # -- WebRTC ------------------------------------------------------------------------------------------
    async def offer(self, request: web.Request) -> web.Response:
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

        if not self.authorised(request):
            return self.refuse(request)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return web.json_response({"error": "the offer must be JSON: {\"sdp\": ..., \"type\": \"offer\"}"},
                                     status=400)
        if not isinstance(body, dict) or body.get("type") != "offer" or not isinstance(body.get("sdp"), str):
            return web.json_response({"error": "expected {\"sdp\": \"v=0...\", \"type\": \"offer\"}, as "
                                               "RTCPeerConnection.localDescription gives it"}, status=400)
        session = body.get("session") or f"webrtc-{secrets.token_hex(4)}"
        try:
            validate_session_id(session)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if session in self.peers:
            return web.json_response({"error": f"session {session!r} is live already: choose another name"},
                                     status=409)
        if len(self.peers) >= self.options.max_sessions:
            return web.json_response({"error": f"{len(self.peers)} sessions are live, the most this server takes "
                                               f"(--max-sessions {self.options.max_sessions}): try again later"},
                                     status=503)
        servers = [RTCIceServer(**server) for server in self.options.ice_servers]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))  # [] : no STUN, not even aiortc's default
        peer = Peer(self, session, pc)
        self.peers[session] = peer

        @pc.on("track")
        def _track(track: Any) -> None:
            if track.kind in ("video", "audio") and track.kind not in peer.tracks:
                peer.tracks[track.kind] = track

        @pc.on("datachannel")
        def _channel(channel: Any) -> None:
            peer.attach(channel)

        @pc.on("connectionstatechange")
        def _state() -> None:
            peer.connection_changed()

        loading = None
        try:
            await asyncio.wait_for(pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="offer")), 10)
            if not peer.tracks:
                raise ValueError("the offer has no audio or video track: add the camera and microphone tracks "
                                 "(or transceivers) before createOffer()")
            if "video" in peer.tracks:  # the face tracker loads while the answer is made: ready for the first frame
                loading = asyncio.get_running_loop().run_in_executor(None, _face_tracker)
            await asyncio.wait_for(pc.setLocalDescription(await pc.createAnswer()), 20)
            tracker = await loading if loading is not None else None
        except Exception as exc:  # noqa: BLE001 - a bad offer is the client's error, said back to it
            peer.state = "refused"
            self.peers.pop(session, None)
            self.hub.unsubscribe(peer._sub)
            with contextlib.suppress(Exception):
                await pc.close()
            if loading is not None:
                (loaded,) = await asyncio.gather(loading, return_exceptions=True)
                if loaded is exc:  # the server's failure, not the offer's
                    log.error("session %s: the face tracker could not be loaded: %s", session, exc)
                    return web.json_response({"error": f"the server cannot track faces: {exc}"}, status=500)
                if not isinstance(loaded, BaseException):
                    loaded.close()
            log.warning("offer for session %s refused: %s", session, exc)
            return web.json_response({"error": f"the offer could not be used: {exc}"}, status=400)
        peer.start(self.settings, tracker)
        log.info("session %s: WebRTC peer %s with %s", session, request.remote, " and ".join(sorted(peer.tracks)))
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type,
                                  "session": session})

    # -- the dashboard's events ------------------------------------------------------------------------
    async def dashboard_events(self, request: web.Request) -> web.StreamResponse:
        if not self.authorised(request):
            return self.refuse(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        sub = self.hub.subscribe(None, maxsize=2048)  # before the history: nothing falls in between

        async def send(event: str, data: Any) -> None:
            await response.write(f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())

        try:
            sessions = await recent_sessions(self.redis)
            for sid, peer in self.peers.items():
                sessions.setdefault(sid, {"session": sid, "state": "live"})["webrtc"] = peer.info()
            history = await dashboard_history(self.redis, self.options.history_sessions, self.options.history)
            await send("sessions", list(sessions.values()))
            seen: set[tuple[str, int]] = set()
            for est in history:
                seen.add((est.session, est.window))
                await send("estimate", est.to_dict())
            await send("ready", {"history": len(history), "server_time": time.time()})
            while True:
                try:
                    item = await asyncio.wait_for(sub.queue.get(), 15)
                except asyncio.TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if item is None:
                    break
                kind, body = item
                if kind == "estimate":
                    key = (body["session"], body["window"])
                    if key in seen:
                        continue
                    seen.add(key)
                    if len(seen) > 100_000:
                        seen.clear()
                await send(kind, body)
        except ConnectionResetError:  # the dashboard went away
            pass
        finally:
            self.hub.unsubscribe(sub)
        return response


def _face_tracker() -> Any:
    from dmd_model.features import FaceTracker

    return FaceTracker()


# -- running it -------------------------------------------------------------------------------------------
async def serve(settings: PipelineSettings, options: ServeOptions, *, workers: bool = True,
                checkpoint: str | Path | None = None, stop: asyncio.Event | None = None,
                on_ready: Any = None) -> None:
    """Run the web app (and, with `workers`, an inference worker and an ASR worker) until `stop`.
    Redis is `settings.redis.url`, else an embedded one. `on_ready(url)` is called once it listens."""
    from stream.connection import CONNECTION_ERRORS, connect

    from .embedded import EmbeddedRedis

    stop = stop or asyncio.Event()
    embedded = None
    url = settings.redis.url
    if not url:
        if not workers:
            raise ValueError("--no-workers needs the workers' Redis: set --redis or REDIS_URL")
        embedded = EmbeddedRedis()
        url = embedded.url
    redis = connect(url)
    try:
        await asyncio.wait_for(redis.ping(), 10)
    except CONNECTION_ERRORS as exc:
        await redis.aclose()
        if embedded is not None:
            embedded.close()
        raise RedisUnreachable(f"Redis {url.split('@')[-1]} does not answer ({exc or type(exc).__name__}): start it, "
                               "or fix --redis / REDIS_URL") from None
    metrics = Metrics("serve")
    background: list[asyncio.Task] = []
    stoppers: list[Any] = []
    runner = None
    try:
        if workers:
            stoppers, background, options.asr = await _start_workers(redis, settings, options, checkpoint, metrics)
        live = LiveApp(redis, settings, options, metrics)
        runner = web.AppRunner(live.app, access_log=None, shutdown_timeout=5)
        await runner.setup()
        context = None
        if options.cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(options.cert, options.key or None)
        site = web.TCPSite(runner, options.host, options.port, ssl_context=context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1] if site._server and site._server.sockets else options.port
        scheme = "https" if context else "http"
        host = options.host if options.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        base = f"{scheme}://{host}:{port}"
        if on_ready is not None:
            on_ready(base)
        query = "?token=..." if options.token else ""
        print(f"dmd serve: {base}/{query}  (dashboard: {base}/dashboard{query}); Redis "
              f"{'embedded' if embedded else url.split('@')[-1]}; workers {'here' if workers else 'elsewhere'}",
              file=sys.stderr, flush=True)
        await stop.wait()
    finally:
        if runner is not None:
            await runner.cleanup()  # ends the peers (their captures flush) and the event streams
        for fn in stoppers:
            fn()
        if background:
            _, pending = await asyncio.wait(background, timeout=10)
            for task in pending:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        await redis.aclose()
        if embedded is not None:
            embedded.close()


async def _start_workers(redis: aioredis.Redis, settings: PipelineSettings, options: ServeOptions,
                         checkpoint: str | Path | None, metrics: Metrics) -> tuple[list[Any], list[asyncio.Task], str]:
    """The inference worker and (unless asr is none) an ASR worker, in this process, as `dmd run` has them."""
    from dmd_model.features import check_profile
    from dmd_model.predict import Predictor

    from .asr import AsrWorker, make_engine_factory
    from .infer import InferenceWorker
    from .pipeline import default_checkpoint

    loop = asyncio.get_running_loop()
    inf = settings.inference
    path = Path(checkpoint or inf.checkpoint or default_checkpoint())
    predictor = await loop.run_in_executor(None, lambda: Predictor(path, device=inf.device,
                                                                   threads=inf.threads or None))
    check_profile(predictor.checkpoint.profile)
    asr_name, factory = "none", None
    if settings.asr.engine != "none":
        asr_name, factory = await loop.run_in_executor(None, lambda: make_engine_factory(
            settings.asr.engine, settings.asr.vosk_model or None, None, 0.5, options.max_sessions))
    worker = InferenceWorker(redis, predictor, inf, asr_grace_s=settings.asr.grace_s if factory else 0.0,
                             metrics=metrics)
    tasks = [asyncio.create_task(worker.run(), name="dmd-serve-infer")]
    stoppers: list[Any] = [worker.stop]
    if factory is not None:
        asr_stop = asyncio.Event()
        asr_worker = AsrWorker(redis, factory, max_sessions=options.max_sessions)
        tasks.append(asyncio.create_task(asr_worker.run(asr_stop), name="dmd-serve-asr"))
        stoppers.append(asr_stop.set)
    log.info("workers: inference %s on %s; ASR %s", predictor.name, predictor.device, asr_name)
    return stoppers, tasks, asr_name


# -- the command line ----------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port)")
    p.add_argument("--token", default=None,
                   help="ask this token for /offer, /config, /sessions and the dashboard (default $DMD_SERVE_TOKEN; "
                        "none: open to anyone who reaches the port)")
    p.add_argument("--ice-server", action="append", default=[], metavar="URL",
                   help="STUN or TURN server for both ends, e.g. turn:turn.example.org:3478 (repeatable; default "
                        "none: host candidates only, for a LAN or this machine)")
    p.add_argument("--turn-username", help="username for the turn: servers")
    p.add_argument("--turn-credential", help="credential for the turn: servers (default $DMD_TURN_CREDENTIAL)")
    p.add_argument("--cert", help="TLS certificate (PEM): serve https, which browsers need for the camera "
                                  "anywhere but localhost")
    p.add_argument("--key", help="TLS private key (PEM), if not in --cert")
    p.add_argument("--max-sessions", type=int, default=8, help="WebRTC sessions at once (default 8)")
    p.add_argument("--max-body", type=int, default=64 * 1024, help="largest request body in bytes (default 65536)")
    p.add_argument("--no-workers", action="store_true",
                   help="serve only: ASR and inference workers run elsewhere on the same Redis")
    p.add_argument("--checkpoint", help="model checkpoint (default: the bundled one)")
    p.add_argument("--asr", choices=["auto", "vosk", "whisper", "none"],
                   help="speech recognition engine (with --no-workers: what the ASR workers elsewhere run; none: "
                        "estimates do not wait for words)")
    p.add_argument("--vosk-model", help="Vosk model folder")
    p.add_argument("--device", help="model device: auto, cpu, cuda")
    p.add_argument("--settings", help="pipeline settings YAML (default configs/pipeline/default.yaml)")
    p.add_argument("--redis", help="Redis URL (default $REDIS_URL; none: an embedded Redis)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")


def options_from(args: argparse.Namespace) -> ServeOptions:
    token = args.token if args.token is not None else os.environ.get("DMD_SERVE_TOKEN", "")
    credential = args.turn_credential or os.environ.get("DMD_TURN_CREDENTIAL")
    servers = []
    for url in args.ice_server:
        if not url.startswith(("stun:", "stuns:", "turn:", "turns:")):
            raise ValueError(f"--ice-server {url!r}: expected a stun:, stuns:, turn: or turns: URL")
        server: dict[str, Any] = {"urls": [url]}
        if url.startswith(("turn:", "turns:")):
            if not (args.turn_username and credential):
                raise ValueError(f"--ice-server {url!r} is a TURN server: give --turn-username and "
                                 "--turn-credential (or $DMD_TURN_CREDENTIAL)")
            server.update(username=args.turn_username, credential=credential)
        servers.append(server)
    if args.max_sessions < 1:
        raise ValueError(f"--max-sessions {args.max_sessions}: must be at least 1")
    if args.key and not args.cert:
        raise ValueError("--key needs --cert")
    options = ServeOptions(host=args.host, port=args.port, token=token, ice_servers=servers,
                           max_sessions=args.max_sessions, max_body=args.max_body, cert=args.cert or "",
                           key=args.key or "")
    if not token and not _loopback(args.host):
        log.warning("dmd serve listens on %s without a token: anyone who reaches it can stream and watch "
                    "(set --token or $DMD_SERVE_TOKEN)", args.host)
    return options


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _main(args: argparse.Namespace) -> int:
    from .live_cli import _settings

    settings = _settings(args)
    options = options_from(args)
    options.asr = settings.asr.engine  # with workers here, the engine they load says it instead
    Metrics.serve(settings.metrics.port, settings.metrics.host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await serve(settings, options, workers=not args.no_workers, checkpoint=args.checkpoint, stop=stop)
    return 0


def quiet_webrtc_logs(verbose: bool = False) -> None:
    """aioice logs every ICE candidate pair at INFO: keep that for -v."""
    if not verbose:
        for name in ("aioice", "aiortc"):
            logging.getLogger(name).setLevel(logging.WARNING)


def cmd_serve(args: argparse.Namespace) -> int:
    quiet_webrtc_logs(getattr(args, "verbose", False))
    try:
        return asyncio.run(_main(args))
    except (ValueError, RedisUnreachable, OSError) as exc:  # settings, Redis, a port in use, a certificate
        print(f"dmd serve: {exc}", file=sys.stderr)
        return 2


def register_serve(sub: argparse._SubParsersAction) -> None:
    """Add `dmd serve` to the `dmd` parser."""
    p = sub.add_parser("serve", help="web app: browser sessions over WebRTC and the live dashboard")
    add_arguments(p)
    p.set_defaults(func=cmd_serve)


if __name__ == "__main__":  # python -m workers.serve ... (what `dmd serve` runs)
    parser = argparse.ArgumentParser(prog="dmd serve", description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true")
    _args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if _args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    quiet_webrtc_logs(_args.verbose)
    sys.exit(cmd_serve(_args))
