"""The web app of `dmd serve`: browser sessions over WebRTC, and the live dashboard.

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

Each WebRTC peer is one capture session (`workers.web.peer.Peer`): its tracks become a `PeerSource`
(`workers.web.source`: latest-frame video, 48 kHz audio resampled to 16 kHz, the session clock
from `pts * time_base`), read by a `workers.capture.Capture` into the session's Redis streams. The
page opens a data channel in its offer; the session's estimates go back over it, as
`{"type": "estimate", "estimate": {...}, "age_ms": ..., "media_end": {"video": ..., "audio": ...}}`
(`age_ms`: from the window's end on the session clock to the moment the server sent it;
`media_end`: the window's end on each track's own media clock, `pts * time_base` from the first frame
received, with which a sender finds the frame it captured there). When the peer leaves (its connection closes or
fails, the data channel closes, or the page says "bye"), the source ends, the capture flushes its
last windows and announces the session's end, and the connection is closed.

Estimates reach the app through one Redis subscription (`dmd:est:*`, `EstimateHub`), fanned out
to the peers' data channels and the dashboards' event streams through bounded queues (`workers.web.hub`) (a slow
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

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from stream.keys import validate_session_id

from ..metrics import Metrics
from ..settings import PipelineSettings
from .hub import EstimateHub, dashboard_history, recent_sessions
from .peer import Peer

log = logging.getLogger("dmd.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "media-src 'self' blob: mediastream:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'")


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
    max_streams: int = 1000  # dashboards' event streams at once; more get 503
    history_reads: int = 8  # event streams reading their history from Redis at once (the rest wait their turn)
    connect_timeout_s: float = 30.0  # a peer that has not connected by then is dropped
    asr: str = "auto"  # what captures announce to inference workers ("none": do not wait for words)
    cert: str = ""
    key: str = ""




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
        self.streams = 0  # dashboards' event streams open
        self._history_reads = asyncio.Semaphore(options.history_reads)
        self._streams: set[asyncio.Task] = set()
        app = web.Application(client_max_size=options.max_body, middlewares=[self._headers])
        app.router.add_get("/", self.page_session)
        app.router.add_get("/dashboard", self.page_dashboard)
        app.router.add_get("/dashboard/events", self.dashboard_events)
        app.router.add_get("/config", self.config)
        app.router.add_post("/offer", self.offer)
        app.router.add_get("/sessions", self.sessions)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_static("/static/", STATIC_DIR, show_index=False)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        self.app = app

    async def _startup(self, _: web.Application) -> None:
        self.hub.start()
        await asyncio.wait_for(self.hub.ready.wait(), 10)

    async def _shutdown(self, _: web.Application) -> None:
        await self.close_peers("the server is stopping")
        await self.hub.close()  # event streams get their end and return

    def _peer_ended(self, peer: Peer) -> None:
        self.peers.pop(peer.session, None)
        self.ended.append(peer.info())
        del self.ended[:-100]

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
            page = (STATIC_DIR / "denied.html").read_text()
            return web.Response(status=401, text=page, content_type="text/html")
        return web.json_response({"error": f"{request.path}: {what}: pass ?token=... or an 'Authorization: "
                                           "Bearer ...' header with the token `dmd serve` was started with"},
                                 status=401)

    # -- pages -------------------------------------------------------------------------------------------
    async def page_session(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def page_dashboard(self, request: web.Request) -> web.StreamResponse:
        if not self.authorised(request):
            return self.refuse(request, html=True)
        return web.FileResponse(STATIC_DIR / "dashboard.html")

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
        peer = Peer(session, pc, redis=self.redis, hub=self.hub, metrics=self.metrics, asr=self.options.asr,
                    connect_timeout_s=self.options.connect_timeout_s, on_ended=self._peer_ended)
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
                loading = asyncio.get_running_loop().run_in_executor(None, _face_tracker, self.settings)
            await asyncio.wait_for(pc.setLocalDescription(await pc.createAnswer()), 20)
            tracker = await loading if loading is not None else None
        except Exception as exc:  # noqa: BLE001 - a bad offer is the client's error, said back to it
            self.peers.pop(session, None)
            await peer.refuse()
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
        if self.streams >= self.options.max_streams:
            return web.json_response({"error": f"{self.streams} dashboard event streams are open, the most this server "
                                               f"serves (--max-streams {self.options.max_streams}): try again later"},
                                     status=503, headers={"Retry-After": "5"})
        self.streams += 1
        try:
            return await self._event_stream(request)
        finally:
            self.streams -= 1

    async def _event_stream(self, request: web.Request) -> web.StreamResponse:
        """One dashboard's events: the sessions and their recent history, then every estimate live.
        All streams share the hub's one Redis subscription; their history reads take turns
        (`history_reads` at once), so many dashboards opening together do not exhaust Redis's pool."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        sub = self.hub.subscribe(None, maxsize=2048)  # before the history: nothing falls in between

        async def send(event: str, data: Any) -> None:
            await response.write(f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())

        try:
            async with self._history_reads:
                sessions = await recent_sessions(self.redis)
                history = await dashboard_history(self.redis, self.options.history_sessions, self.options.history)
            for sid, peer in self.peers.items():
                sessions.setdefault(sid, {"session": sid, "state": "live"})["webrtc"] = peer.info()
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


def _face_tracker(settings: PipelineSettings) -> Any:
    """The face tracker and face expert of a peer's video (`capture.face_features`)."""
    from ..capture.worker import face_features

    return face_features(settings)


@contextlib.asynccontextmanager
async def start_site(redis: aioredis.Redis, settings: PipelineSettings, options: ServeOptions,
                     metrics: Metrics | None = None) -> AsyncIterator[str]:
    """The app listening on `options.host`/`options.port` (https with `options.cert`), for the
    duration of the block; yields its base URL. Leaving ends the peers (their captures flush) and the
    dashboards' event streams."""
    live = LiveApp(redis, settings, options, metrics)
    runner = web.AppRunner(live.app, access_log=None, shutdown_timeout=5)
    await runner.setup()
    try:
        context = None
        if options.cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(options.cert, options.key or None)
        site = web.TCPSite(runner, options.host, options.port, ssl_context=context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1] if site._server and site._server.sockets else options.port
        host = options.host if options.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        yield f"{'https' if context else 'http'}://{host}:{port}"
    finally:
        await runner.cleanup()
