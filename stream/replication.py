"""Writes that outlive their master: on a Redis Cluster with replicas, WAIT for a replica.

Redis replicates asynchronously: a master answers a write before its replica has it. A master killed at
that instant (SIGKILL, a power cut) takes the write with it, and the replica promoted in its place
never saw it. So on a cluster whose masters have replicas, the writes that nothing would make again
are followed by `WAIT 1 <timeout>` on the same connection (a pipeline to the key's node: WAIT covers
what that connection wrote), and the worker goes on only once a replica has acknowledged them:

| write | by | lost, it would mean | here |
|---|---|---|---|
| a session's start and end | capture | windows of a session nobody knows; an ASR that never ends | `write` |
| a window's data (audio, features) | capture | a window estimated from part of its data | `sync`, then |
| its window notice | capture | a window that never gets an estimate | `write` |
| a consumer group (XGROUP CREATE) | every worker | the group made again from id 0 | `write` |
| an estimate (the publish transaction) | inference | a notice acked, its estimate lost | `sync` before XACK |

Not waited for, because a lost one is made good by what is already there: an XACK (the notice is
delivered again, and the publish marker, on a replica before the XACK was sent, makes it a duplicate
that is acked without a second estimate), a delivery (XREADGROUP's pending entry: the notice is
delivered again), a dead letter (written again), the ASR's words (a window estimated without them).

`sync(key)` makes everything written so far on a key's master durable: it writes `key` (a small
string that expires, one per session: `dmd:{sid}:sync`) and WAITs on that connection. A master's
replication offset only grows, so a replica that has the sync write has every write the master
answered before it, whichever connection made them.

A master without a replica (a cluster without replicas, or a new master whose old one has not come
back) is not waited for: `ROLE` says how many replicas a master has, asked again every `recheck_s`.
A WAIT that times out (the replica fell behind more than `timeout_ms`) is logged; the write stands,
and that master is taken for one without a replica until the next check.

On one Redis nothing here is sent: `enabled` is False, `write` runs its commands as one pipeline and
`sync` does nothing. (The one-Redis deployments of this project have no replicas to wait for.)
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from .connection import is_cluster

log = logging.getLogger(__name__)

REPLICA_WAIT_MS = 1000  # how long a write waits for its replica (a healthy one answers in about a round trip)
RECHECK_S = 10.0  # how often a master taken for one without a replica is asked (ROLE) again
SYNC_TTL_MS = 60_000  # a sync key lives this long after its last write


class MasterChanged(RedisConnectionError):
    """The key's slot moved to another master while its write was waited for: which master has the
    write, and whether its replica does, is unknown. Retried like a lost connection."""


class Replication:
    """WAIT for `replicas` replicas after the writes that must survive a failover (module docstring)."""

    def __init__(self, redis: aioredis.Redis, *, replicas: int = 1, timeout_ms: int = REPLICA_WAIT_MS,
                 recheck_s: float = RECHECK_S) -> None:
        if replicas < 1 or timeout_ms < 1:
            raise ValueError(f"replicas = {replicas}, timeout_ms = {timeout_ms}: both must be at least 1 "
                             f"(WAIT with timeout 0 would wait for ever)")
        self.redis = redis
        self.enabled = is_cluster(redis)
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self.recheck_s = recheck_s
        self.waited = 0  # writes a replica acknowledged
        self.timed_out = 0  # WAITs that ran out of time
        self._masters: dict[str, tuple[bool, float]] = {}  # node -> (has replicas, believed until)

    async def write(self, key: str, queue: Callable[[Any], object]) -> list[Any]:
        """Run the commands that `queue(pipeline)` puts on a pipeline (each on `key`'s slot) and, where
        that slot's master has a replica, WAIT for it; the commands' replies."""
        if not self.enabled:
            async with self.redis.pipeline(transaction=False) as pipe:
                queue(pipe)
                return await pipe.execute()
        node = await self._node(key)
        wait = await self._has_replicas(node)
        async with self.redis.pipeline(transaction=False) as pipe:
            queue(pipe)
            if wait:
                pipe.execute_command("WAIT", self.replicas, self.timeout_ms, target_nodes=node)
            replies = await pipe.execute()
        if wait:
            self._acked(key, node, replies.pop())
        return replies

    async def sync(self, key: str) -> None:
        """Until a replica has every write answered so far by `key`'s master (a session's sync key,
        `stream.keys.SessionKeys.sync`); nothing where that master has no replica, or on one Redis."""
        if not self.enabled:
            return
        node = await self._node(key)
        if not await self._has_replicas(node):
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(key, b"1", px=SYNC_TTL_MS)
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms, target_nodes=node)
            _, acked = await pipe.execute()
        self._acked(key, node, acked)

    async def _node(self, key: str) -> Any:
        await self.redis.initialize()  # type: ignore[attr-defined] # the topology, refreshed if an error asked for it
        return self.redis.get_node_from_key(key)  # type: ignore[attr-defined]

    async def _has_replicas(self, node: Any) -> bool:
        known = self._masters.get(node.name)
        if known is not None and (known[0] or time.monotonic() < known[1]):
            return known[0]
        role = await self.redis.execute_command("ROLE", target_nodes=node)
        replicas = len(role[2]) if role and role[0] in (b"master", "master") else 0
        has = replicas >= self.replicas
        self._masters[node.name] = (has, time.monotonic() + self.recheck_s)
        if known is not None and has != known[0]:
            log.info("Redis master %s has %d replica(s): its writes are %s", node.name, replicas,
                     "waited for" if has else "not waited for")
        return has

    def _acked(self, key: str, node: Any, acked: Any) -> None:
        if self.redis.get_node_from_key(key).name != node.name:  # type: ignore[attr-defined]
            raise MasterChanged(f"{key}: its slot moved from {node.name} while waiting for a replica")
        if int(acked) >= self.replicas:
            self.waited += 1
            return
        self.timed_out += 1
        self._masters[node.name] = (False, time.monotonic() + self.recheck_s)
        log.warning("Redis master %s: no replica acknowledged a write to %s within %d ms; its writes are not "
                    "waited for until it is checked again in %.0f s", node.name, key, self.timeout_ms, self.recheck_s)


def replication_for(redis: aioredis.Redis) -> Replication:
    """The client's `Replication` (one per client, so what it learnt of the masters is shared)."""
    found = getattr(redis, "dmd_replication", None)
    if found is None:
        found = Replication(redis)
        with contextlib.suppress(AttributeError):  # a client that takes no attributes: one per call
            redis.dmd_replication = found  # type: ignore[attr-defined]
    return found
