"""Connecting to Redis: URLs, clients, and backing off while Redis is away.

URLs (`REDIS_URL`):

- `redis://[user:password@]host[:port][/db]` (port 6379, db 0 by default; IPv6 as `[::1]`)
- `rediss://...` the same over TLS, with `?ssl_ca_certs=/ca.pem&ssl_certfile=...&ssl_keyfile=...`,
  `ssl_cert_reqs=required|optional|none` and `ssl_check_hostname=true|false`
- `unix://[user:password@]/path/to/redis.sock[?db=N]` (the embedded server listens on one)
- `redis+cluster://[user:password@]host[:port]` a Redis Cluster, reached through any one of its nodes
  (the client learns the others from it); `rediss+cluster://...` the same over TLS, with the TLS
  options of `rediss://`. A cluster has database 0 only, so no `/db` and no `db=`.

Common options in the query: `db`, `socket_timeout`, `socket_connect_timeout` (seconds), and
`partitions`: P, how many partitions the shared streams have (stream.keys.Partitions; default 1 on one
Redis, 8 on a cluster). It is in the URL because every process of a deployment must use the same P,
and they all share REDIS_URL. User and
password are percent-decoded (`p%40ss` is `p@ss`) and never shown in messages (`redacted`).

Clients are `redis.asyncio.Redis` (`redis.asyncio.cluster.RedisCluster` for a cluster) with
`decode_responses=False` (entries carry binary arrays) and one immediate retry inside redis-py (a
pooled connection that died with a restarted server is replaced at once); outages longer than that
are for the caller's `Backoff`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis.asyncio as aioredis
from redis import exceptions as redis_exceptions
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .keys import CLUSTER_PARTITIONS, MAX_PARTITIONS, Partitions

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
TLS_SCHEMES = ("rediss", "rediss+cluster")
DEFAULT_PORT = 6379
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
_COMMON_OPTIONS = ("db", "socket_timeout", "socket_connect_timeout", "partitions")
_CERT_REQS = ("required", "optional", "none")

# What a Redis Cluster answers while a master fails over: its slots are served by nobody (CLUSTERDOWN,
# a slot not covered, TRYAGAIN, no node reachable, redirections that did not settle). ClusterDownError
# and TryAgainError are ResponseErrors: catch CONNECTION_ERRORS before ResponseError.
# (RedisClusterUnreachableError is redis-py 6 and later.)
CLUSTER_FAILOVER_ERRORS: tuple[type[BaseException], ...] = tuple(
    getattr(redis_exceptions, name) for name in ("ClusterDownError", "TryAgainError", "SlotNotCoveredError",
                                                 "RedisClusterUnreachableError", "ClusterError")
    if hasattr(redis_exceptions, name))
# What a lost or unreachable server raises, and a cluster during a failover: the errors a reconnecting
# loop backs off on. (The cluster's errors never come from one Redis.)
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, ConnectionError,
                                                      TimeoutError, asyncio.TimeoutError, OSError,
                                                      *CLUSTER_FAILOVER_ERRORS)


class RedisURLError(ValueError):
    """A Redis URL cannot be used; the message shows it (password hidden) and the expected form."""


@dataclass(frozen=True)
class RedisURL:
    """A parsed Redis URL (`parse_redis_url`)."""

    scheme: str
    host: str | None = None
    port: int | None = None
    path: str | None = None  # unix socket
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: dict[str, Any] = field(default_factory=dict)
    socket_timeout: float | None = None
    socket_connect_timeout: float | None = 5.0
    partitions: int = 0  # P of the shared streams; 0: the default (1 on one Redis, 8 on a cluster)

    @property
    def cluster(self) -> bool:
        """A Redis Cluster (`redis+cluster://`, `rediss+cluster://`): one client for all its nodes."""
        return self.scheme in CLUSTER_SCHEMES

    @property
    def redacted(self) -> str:
        """The URL with the password hidden, for logs and messages."""
        auth = ""
        if self.username or self.password:
            auth = quote(self.username or "", safe="") + (":***" if self.password else "") + "@"
        if self.scheme == "unix":
            return f"unix://{auth}{self.path}" + (f"?db={self.db}" if self.db else "")
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        if self.cluster:
            return f"{self.scheme}://{auth}{host}:{self.port}"
        return f"{self.scheme}://{auth}{host}:{self.port}/{self.db}"

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `redis.asyncio.Redis` (for `RedisCluster` where `cluster`)."""
        kwargs: dict[str, Any] = {
            "username": self.username, "password": self.password,
            "socket_timeout": self.socket_timeout, "socket_connect_timeout": self.socket_connect_timeout,
        }
        if not self.cluster:
            kwargs["db"] = self.db
        if self.scheme == "unix":
            kwargs["unix_socket_path"] = self.path
        else:
            kwargs.update(host=self.host, port=self.port)
        if self.scheme in TLS_SCHEMES:
            kwargs["ssl"] = True
            kwargs.update(self.tls)
        return kwargs


def _fail(url: str, why: str) -> RedisURLError:
    shown = _hide_password(url)
    return RedisURLError(f"Redis URL {shown!r}: {why}. Expected redis://[user:password@]host[:port][/db], "
                         f"rediss://... (TLS), unix:///path/to/redis.sock or redis+cluster://host[:port] "
                         f"(rediss+cluster:// with TLS)")


def _hide_password(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _seconds(url: str, name: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise _fail(url, f"{name}={value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise _fail(url, f"{name}={value!r} must be positive")
    return seconds


def _flag(url: str, name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise _fail(url, f"{name}={value!r} is not true or false")


def parse_redis_url(url: str) -> RedisURL:
    """Parse and check a Redis URL; RedisURLError says what is wrong and what is expected."""
    if not isinstance(url, str) or not url.strip():
        raise RedisURLError(f"Redis URL {url!r} is empty: set REDIS_URL to redis://host:port/db, "
                            f"rediss://... or unix:///path/to/redis.sock")
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _fail(url, str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        got = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise _fail(url, f"{got}, expected one of {', '.join(s + '://' for s in SCHEMES)}")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None

    query: dict[str, str] = {}
    for name, values in parse_qs(parts.query, keep_blank_values=True).items():
        allowed = _COMMON_OPTIONS + (_TLS_OPTIONS if scheme in TLS_SCHEMES else ())
        if name not in allowed:
            raise _fail(url, f"unknown option {name!r} (allowed here: {', '.join(allowed)})")
        query[name] = values[-1]

    db = 0
    if scheme == "unix":
        path = unquote(parts.path)
        if parts.hostname:
            raise _fail(url, f"{parts.hostname!r} stands where the socket path should start (a relative path?): "
                             f"give an absolute path, unix:///path/to/redis.sock")
        if not path or path == "/":
            raise _fail(url, "no socket path")
        host = None
    else:
        path = None
        host = parts.hostname
        if not host:
            raise _fail(url, "no host")
        db_part = parts.path.lstrip("/")
        if db_part:
            if not db_part.isdigit():
                raise _fail(url, f"database {db_part!r} in the path is not a number")
            db = int(db_part)
        port = port or DEFAULT_PORT
        if not 0 < port < 65536:
            raise _fail(url, f"port {port} is out of range")
    if "db" in query:
        if not query["db"].isdigit():
            raise _fail(url, f"db={query['db']!r} is not a number")
        db = int(query["db"])

    tls: dict[str, Any] = {}
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if name in query:
            tls[name] = query[name]
    if "ssl_cert_reqs" in query:
        reqs = query["ssl_cert_reqs"].lower()
        if reqs not in _CERT_REQS:
            raise _fail(url, f"ssl_cert_reqs={query['ssl_cert_reqs']!r}, expected one of {', '.join(_CERT_REQS)}")
        tls["ssl_cert_reqs"] = reqs
    if "ssl_check_hostname" in query:
        tls["ssl_check_hostname"] = _flag(url, "ssl_check_hostname", query["ssl_check_hostname"])

    if scheme in CLUSTER_SCHEMES and db != 0:
        raise _fail(url, f"database {db} on a cluster: a Redis Cluster has database 0 only, drop the /db")

    partitions = 0
    if "partitions" in query:
        value = query["partitions"]
        if not value.isdigit() or not 1 <= int(value) <= MAX_PARTITIONS:
            raise _fail(url, f"partitions={value!r} is not a whole number from 1 to {MAX_PARTITIONS}")
        partitions = int(value)

    timeouts = {name: _seconds(url, name, query[name]) for name in ("socket_timeout", "socket_connect_timeout")
                if name in query}
    return RedisURL(scheme=scheme, host=host, port=None if scheme == "unix" else port, path=path, db=db,
                    username=username, password=password, tls=tls, partitions=partitions, **timeouts)


def connect(url: str | RedisURL, **overrides: Any) -> aioredis.Redis:
    """An asyncio Redis client for `url` (nothing is sent until the first command): a
    `redis.asyncio.Redis`, or for a cluster URL a `redis.asyncio.cluster.RedisCluster`, which routes
    each command to the node of its key's slot (it has the same command methods; the caller's keys
    must keep one command, transaction or script within one slot, as stream.keys does).
    `overrides` go to the client's constructor as they are."""
    parsed = url if isinstance(url, RedisURL) else parse_redis_url(url)
    kwargs = parsed.client_kwargs()
    kwargs.update(decode_responses=False, retry=Retry(NoBackoff(), 1))
    kwargs.update(overrides)
    client = RedisCluster(**kwargs) if parsed.cluster else aioredis.Redis(**kwargs)
    client.dmd_partitions = parsed.partitions  # type: ignore[union-attr] # read by partitions_for
    return client  # type: ignore[return-value]


def is_cluster(redis: object) -> bool:
    """Whether `redis` is a Redis Cluster client (its shared streams are partitioned, its estimates
    published with SPUBLISH)."""
    return isinstance(redis, RedisCluster)


def partitions_for(redis: object, count: int = 0) -> Partitions:
    """The partitions of the shared streams for a client: `count` if given, else the URL's
    `partitions` (every process of a deployment must use the same), else 1 on one Redis (today's key
    names) and CLUSTER_PARTITIONS on a cluster."""
    count = count or getattr(redis, "dmd_partitions", 0)
    if count:
        return Partitions(count)
    return Partitions(CLUSTER_PARTITIONS if is_cluster(redis) else 1)


@dataclass
class Backoff:
    """Exponential backoff with jitter, capped: delays base, base*factor, ... up to `cap` seconds, each
    shortened by a random fraction up to `jitter` so that many workers do not reconnect in step."""

    base: float = 0.05
    cap: float = 5.0
    factor: float = 2.0
    jitter: float = 0.5
    attempts: int = 0

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.cap >= self.base and self.factor >= 1 and 0 <= self.jitter <= 1):
            raise ValueError(f"backoff base={self.base}, cap={self.cap}, factor={self.factor}, jitter={self.jitter}:"
                             f" need 0 < base <= cap, factor >= 1 and jitter in [0, 1]")

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        return delay * (1.0 - self.jitter * random.random())

    def reset(self) -> None:
        self.attempts = 0


# The longest backoff step on a Redis Cluster: a failover ends when a replica is promoted, which it
# announces to nobody; a worker retrying at most this long apart is back within this of it (a 5 s step
# made the first estimate after a 2.7 s failover come at 4.9 s). One Redis keeps Backoff's 5 s.
CLUSTER_BACKOFF_CAP_S = 1.0


def backoff_for(redis: object) -> Backoff:
    """A fresh `Backoff` for a loop that retries `redis`'s commands: capped at CLUSTER_BACKOFF_CAP_S on a
    cluster, Backoff's defaults on one Redis."""
    return Backoff(cap=CLUSTER_BACKOFF_CAP_S) if is_cluster(redis) else Backoff()


async def wait_until_up(client: aioredis.Redis, timeout: float = 10.0, backoff: Backoff | None = None) -> None:
    """PING until the server answers; raises TimeoutError naming the last error after `timeout` s."""
    backoff = backoff or Backoff(base=0.02, cap=0.5)
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.ping()
            return
        except CONNECTION_ERRORS as exc:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"Redis did not answer within {timeout} s: {type(exc).__name__}: {exc}") from exc
            await asyncio.sleep(min(backoff.next_delay(), max(0.0, deadline - time.monotonic())))


async def retry_outage(fn: Callable[..., Awaitable[T]], *args: Any, backoff: Backoff,
                       max_outage_s: float | None, what: str) -> T:
    """`await fn(*args)`, retried with `backoff` while Redis is unreachable, for at most `max_outage_s`
    seconds (None: for ever); the last connection error is raised after that."""
    deadline = None if max_outage_s is None else time.monotonic() + max_outage_s
    while True:
        try:
            result = await fn(*args)
        except CONNECTION_ERRORS as exc:
            if deadline is not None and time.monotonic() >= deadline:
                raise
            delay = backoff.next_delay()
            log.warning("%s: Redis unreachable (%s: %s); retrying in %.2f s", what, type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            continue
        backoff.reset()
        return result
