"""`dmd serve` (the web app: browser sessions over WebRTC, the live dashboard) and `dmd webrtc-client`
(what the session page does, from Python: checks a server from another machine without a browser).

    dmd serve                                  # http://127.0.0.1:8080/ : embedded Redis, ASR and inference here
    dmd serve --host 0.0.0.0 --token S3CRET --cert c.pem --key k.pem     # on a LAN (browsers need https)
    REDIS_URL=redis://host:6379 dmd serve --no-workers                   # the web app only; workers elsewhere
    dmd webrtc-client http://host:8080 --token T --source clip.mp4 --seconds 20

Routes, security and limits: `workers.web.app`.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import sys
import time
from typing import Any

from ..metrics import Metrics
from .common import ASR_ENGINES, add_pipeline_options, run_stoppable, settings_from

log = logging.getLogger("dmd.serve")


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--max-streams", type=int, default=1000,
                   help="dashboard event streams at once (default 1000); more get 503")
    p.add_argument("--no-workers", action="store_true",
                   help="serve only: ASR and inference workers run elsewhere on the same Redis")
    p.add_argument("--checkpoint", help="model checkpoint (default: the bundled one)")
    p.add_argument("--asr", choices=ASR_ENGINES,
                   help="speech recognition engine (with --no-workers: what the ASR workers elsewhere run; none: "
                        "estimates do not wait for words)")
    p.add_argument("--vosk-model", help="Vosk model folder")
    p.add_argument("--device", help="model device: auto, cpu, cuda")
    add_pipeline_options(p)


def options_from(args: argparse.Namespace) -> Any:
    """The `ServeOptions` the arguments give (ValueError for a setting that cannot be used)."""
    from ..web.app import ServeOptions

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
    if args.max_streams < 1:
        raise ValueError(f"--max-streams {args.max_streams}: must be at least 1")
    if args.key and not args.cert:
        raise ValueError("--key needs --cert")
    options = ServeOptions(host=args.host, port=args.port, token=token, ice_servers=servers,
                           max_sessions=args.max_sessions, max_body=args.max_body, max_streams=args.max_streams,
                           cert=args.cert or "", key=args.key or "")
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


async def _serve(args: argparse.Namespace, stop: asyncio.Event) -> int:
    from ..pipeline import serve

    settings = settings_from(args)
    options = options_from(args)
    options.asr = settings.asr.engine  # with workers here, the engine they load says it instead
    Metrics.serve(settings.metrics.port, settings.metrics.host)
    await serve(settings, options, workers=not args.no_workers, checkpoint=args.checkpoint, stop=stop)
    return 0


def quiet_webrtc_logs(verbose: bool = False) -> None:
    """aioice logs every ICE candidate pair at INFO: keep that for -v."""
    if not verbose:
        for name in ("aioice", "aiortc"):
            logging.getLogger(name).setLevel(logging.WARNING)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..wiring import RedisUnreachable

    quiet_webrtc_logs(getattr(args, "verbose", False))
    try:
        return run_stoppable(lambda stop: _serve(args, stop))
    except (ValueError, RedisUnreachable, OSError) as exc:  # settings, Redis, a port in use, a certificate
        print(f"dmd serve: {exc}", file=sys.stderr)
        return 2


# -- webrtc-client -------------------------------------------------------------------------------------
def add_client_arguments(p: argparse.ArgumentParser) -> None:
    from ..settings import DEMO_CLIP

    p.add_argument("url", help="the server, e.g. http://127.0.0.1:8080")
    p.add_argument("--token", default="", help="the server's token, if it asks for one")
    p.add_argument("--source", default=str(DEMO_CLIP), help="clip to loop as camera and microphone")
    p.add_argument("--seconds", type=float, default=20.0, help="how long to stay (default 20)")
    p.add_argument("--size", help="scale the picture, e.g. 640x480")
    p.add_argument("--session", help="session id to ask for")


async def _client(args: argparse.Namespace) -> int:
    from ..web.client import ServeClient, clip_tracks

    size = tuple(int(v) for v in args.size.split("x")) if args.size else None
    camera, microphone = clip_tracks(args.source, seconds=min(args.seconds, 10.0), size=size)  # type: ignore[arg-type]
    client = ServeClient(args.url, [camera, microphone], token=args.token, session=args.session)
    answer = await client.connect()
    print(f"session {answer['session']}", file=sys.stderr)
    shown = 0
    deadline = time.monotonic() + args.seconds
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            for e in client.estimates[shown:]:
                print(json.dumps(e, separators=(",", ":")), flush=True)
            shown = len(client.estimates)
    finally:
        await client.close()
    latencies = sorted(client.latencies_ms())
    if latencies:
        print(f"{len(latencies)} estimates; capture to arrival: median {latencies[len(latencies) // 2]:.0f} ms",
              file=sys.stderr)
    return 0 if client.estimates else 1


def cmd_client(args: argparse.Namespace) -> int:
    quiet_webrtc_logs(getattr(args, "verbose", False))
    return asyncio.run(_client(args))


def register(sub: argparse._SubParsersAction) -> None:
    """Add `dmd serve` and `dmd webrtc-client` to the `dmd` parser."""
    p = sub.add_parser("serve", help="web app: browser sessions over WebRTC and the live dashboard")
    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("webrtc-client", help="a WebRTC client of `dmd serve` (a clip as camera and microphone)")
    add_client_arguments(p)
    p.set_defaults(func=cmd_client)
