"""A real Redis Cluster for the tests: three masters of Debian's redis-server 7 on free loopback ports,
joined with `redis-cli --cluster create`, one folder per node, torn down after.

- `redis_cluster`: one cluster for the test module (`RedisClusterNodes`: `url`, `ports`, `client()`);
  `flush()` empties every master between tests.

Each node gets its client port and its cluster bus port (`--cluster-port`) from the free ports, so a
client port above 55535 (bus port = port + 10000 by default) cannot make a node fail to start. Without
redis-server or redis-cli on the PATH the tests that need a cluster skip, saying what to install.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_fixtures import MISSING, NO_RETRY, REDIS_SERVER, _alive, free_port

try:
    import redis
except ImportError:
    redis = None

REDIS_CLI = shutil.which("redis-cli")
MASTERS = 3


class RedisClusterNodes:
    """`masters` redis-server processes with cluster mode on, each in `directory`/node-<port>."""

    def __init__(self, directory: Path, masters: int = MASTERS) -> None:
        if REDIS_SERVER is None or REDIS_CLI is None:
            pytest.skip(MISSING + " (redis-cli too, for `redis-cli --cluster create`)")
        self.directory = Path(directory)
        self.ports = [free_port() for _ in range(masters)]
        self.pids: list[int] = []

    @property
    def url(self) -> str:
        """`redis+cluster://` to the first node: the client learns the others from it."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def node_client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=5, retry=NO_RETRY)

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.ports[0], socket_connect_timeout=1, socket_timeout=5)

    def start(self, timeout: float = 20.0) -> None:
        for port in self.ports:
            node = self.directory / f"node-{port}"
            node.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-port", str(free_port()), "--cluster-config-file", str(node / "nodes.conf"),
                 "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no", "--daemonize", "yes",
                 "--pidfile", str(node / "redis.pid"), "--dir", str(node), "--logfile", str(node / "redis.log")],
                check=True, capture_output=True, timeout=timeout)
        deadline = time.monotonic() + timeout
        for port in self.ports:
            self._wait(port, deadline, lambda c: c.ping(), "answer PING")
            self.pids.append(int((self.directory / f"node-{port}" / "redis.pid").read_text().strip()))
        created = subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-replicas", "0",
             "--cluster-yes"], capture_output=True, text=True, timeout=timeout)
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed ({created.returncode}):\n"
                               f"{created.stdout[-2000:]}\n{created.stderr[-2000:]}")
        for port in self.ports:
            self._wait(port, deadline, lambda c: b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO"),
                       "report cluster_state:ok")

    def _wait(self, port: int, deadline: float, check, what: str) -> None:
        client = self.node_client(port)
        try:
            while True:
                with contextlib.suppress(redis.ConnectionError, redis.ResponseError):
                    if check(client):
                        return
                if time.monotonic() > deadline:
                    log = (self.directory / f"node-{port}" / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"cluster node 127.0.0.1:{port} did not {what} in time:\n{log}")
                time.sleep(0.02)
        finally:
            client.close()

    def flush(self) -> None:
        for port in self.ports:
            client = self.node_client(port)
            client.flushall()
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        for port in self.ports:
            client = self.node_client(port)
            with contextlib.suppress(redis.ConnectionError):
                client.shutdown(nosave=True)
            client.close()
        deadline = time.monotonic() + timeout
        for pid in self.pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
        self.pids = []


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    if redis is None:
        pytest.skip("redis-py is not installed: pip install -e '.[dev]'")
    cluster = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
