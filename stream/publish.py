"""Publishing estimates: once per window, in one transaction, with the session's EMA.

An inference worker hands a finished `Estimate` to `EstimatePublisher.publish`. In one optimistic
transaction over the session's keys (all in the session's hash slot):

```
WATCH dmd:{sid}:published:{k} dmd:{sid}:state
EXISTS dmd:{sid}:published:{k}           -> 1: another worker published window k; stop
HGETALL dmd:{sid}:state                   -> the EMA: last window folded in, its smoothed value
                                             and smoothed emotions
    (the worker computes the smoothed values and the JSON, and validates it)
MULTI
  SET dmd:{sid}:published:{k} 1 EX ttl
  HSET dmd:{sid}:state window k smoothed s emotions [p1, ..., p7]   (not for a late window;
                                             emotions null for a window without them)
  XADD dmd:{sid}:estimates MAXLEN ~ N * estimate <json>
  PUBLISH dmd:est:{sid} <json>
  EXPIRE dmd:{sid}:estimates ttl, EXPIRE dmd:{sid}:state ttl   (the caller knows the session ended)
  TTL dmd:{sid}:events                                          (otherwise)
EXEC                                      -> nil if a watched key changed: read again and retry
```

Why this shape:

- Publish once. Two workers can hold the same window (a slow worker's window is claimed by
  another after the idle time). Whichever EXEC runs first sets the marker; the other's EXEC fails
  because the marker it watched changed, and on retry it sees the marker and reports a duplicate.
  The marker is a key of its own with a TTL (default 15 minutes), longer than a window can stay in
  flight (`max_deliveries` x `claim_idle`), so markers do not pile up.
- The EMA is a read-modify-write on `dmd:{sid}:state`, done inside the same transaction: any worker
  can continue any session, and two windows of one session published at the same time are folded in
  one after the other (the loser retries with the winner's state). The emotions' EMA lives beside
  the sentiment's, in the same hash (a JSON list in `EMOTIONS` order), folded by the same rule
  (`ema_update_emotions`); a state written before emotions existed simply has none.
- WATCH rather than a Lua script, so the JSON (with its `smoothed`) is built and validated in Python
  by the same code that a subscriber's reader uses; a script would have to edit JSON in Lua.
- XADD and PUBLISH in one MULTI: a subscriber and a history reader see the same estimates.
- On a Redis Cluster PUBLISH becomes SPUBLISH (sharded pub/sub): the channel `dmd:est:{sid}` carries
  the session's hash tag, so it lives on the node of the session's keys (SPUBLISH inside the MULTI
  is allowed there), and a message goes to that node's subscribers only instead of every node.
  Subscribers use SSUBSCRIBE (`watch_estimates`).
- Ack after a replica has it. On a cluster whose masters have replicas `publish` returns only once a
  replica has the transaction (stream.replication: a write to `dmd:{sid}:sync`, then WAIT), so the
  notice's XACK never outlives an estimate lost with its master. A publish is retried while Redis is
  away (a failover); one whose EXEC had landed finds its marker and sends nothing.
- Nothing outlives its session. When a capture worker ends a session it sets its keys to expire
  (`capture.ended_ttl_s`, `Session.expire`), but the estimates stream and the EMA state may not
  exist yet (inference behind a capture that ran faster than real time), and a worker may publish
  not knowing the session ended (it caches a session's start and end for a while). A publish that
  was not told the session ended reads the TTL of the session's events stream, which has one only
  once the session ended; if it has, the estimates and the state get the same time to live in a
  second round trip, so they go together with the session's other keys instead of never.

The EMA follows window order even when windows finish out of order: see `ema_update`. The ack of the
window notice is the caller's next step, after `publish` returns (`stream.consumer.Delivery`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from dmd_types import EMOTIONS

from .codec import MessageError
from .connection import backoff_for, is_cluster, partitions_for, retry_outage
from .estimate import EmaState, Estimate, check_probabilities, ema_update, ema_update_emotions
from .keys import PREFIX, SessionKeys, estimate_channel
from .messages import SessionEvent
from .replication import replication_for

ESTIMATE_FIELD = "estimate"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Publication:
    """What `publish` did. `published` False: the window had been published already (by another worker
    or an earlier delivery) and nothing was sent. `late`: a later window was already in the EMA, so
    this one was published without moving it. `estimate` is the estimate as sent, with `smoothed`."""

    published: bool
    estimate: Estimate | None = None
    late: bool = False
    entry_id: str | None = None


class EstimatePublisher:
    """Publishes estimates to `dmd:{sid}:estimates` and `dmd:est:{sid}`, once per window, with the EMA."""

    def __init__(self, redis: aioredis.Redis, *, alpha: float = 0.3, marker_ttl_s: int = 900,
                 estimates_maxlen: int = 7200, max_attempts: int = 100, max_outage_s: float | None = 30.0) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"EMA alpha = {alpha!r}: expected 0 < alpha <= 1")
        self.redis = redis
        self.alpha = alpha
        self.marker_ttl_s = int(marker_ttl_s)
        self.estimates_maxlen = int(estimates_maxlen)  # 7200 windows: one hour at a 0.5 s hop
        self.max_attempts = max_attempts
        self.max_outage_s = max_outage_s
        self.conflicts = 0  # transactions retried because another publish of the session came first
        self._sharded = is_cluster(redis)  # SPUBLISH on a cluster
        self._replication = replication_for(redis)

    async def publish(self, estimate: Estimate, expire_s: int | None = None) -> Publication:
        """Publish `estimate` once (module docstring). `expire_s`: the session has ended, so its
        estimates and EMA state go that many seconds from now (set in the same transaction).

        Retried while Redis is away, up to `max_outage_s` (a cluster failing over: a few seconds): a
        transaction that landed before its connection dropped leaves its marker, so the retry reports
        `published` False and sends nothing. On a cluster whose masters have replicas the publish is
        on a replica before this returns (stream.replication), so the window's notice is acked only
        once its estimate survives the loss of the session's master."""
        return await retry_outage(self._publish, estimate, expire_s, backoff=backoff_for(self.redis),
                                  max_outage_s=self.max_outage_s,
                                  what=f"publishing window {estimate.window} of session {estimate.session}")

    async def _publish(self, estimate: Estimate, expire_s: int | None) -> Publication:
        keys = SessionKeys(estimate.session)
        marker = keys.published(estimate.window)
        for _ in range(self.max_attempts):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(marker, keys.state)
                    # EXISTS as a raw command: a cluster pipeline's exists() splits its keys by slot and
                    # returns the pipeline, not the answer, while it watches
                    if await pipe.execute_command("EXISTS", marker):
                        return Publication(published=False)
                    state = _state_from_hash(await pipe.hgetall(keys.state), keys.state)
                    new_state, smoothed = ema_update(state, estimate.window, estimate.sentiment, self.alpha)
                    own = estimate.window_emotions
                    emotions = ema_update_emotions(state, estimate.window,
                                                   None if own is None else [own[e] for e in EMOTIONS], self.alpha)
                    final = estimate.with_smoothed(smoothed, emotions)
                    text = final.to_json()  # validates: a malformed estimate raises MessageError here
                    pipe.multi()
                    pipe.set(marker, b"1", ex=self.marker_ttl_s)
                    if new_state is not None:
                        pipe.hset(keys.state, mapping=_state_to_hash(new_state, emotions))
                    pipe.xadd(keys.estimates, {ESTIMATE_FIELD: text}, maxlen=self.estimates_maxlen, approximate=True)
                    if self._sharded:
                        pipe.spublish(keys.channel, text)
                    else:
                        pipe.publish(keys.channel, text)
                    if expire_s:
                        pipe.expire(keys.estimates, int(expire_s))
                        pipe.expire(keys.state, int(expire_s))
                    else:
                        pipe.ttl(keys.events)  # > 0: the session has ended and its keys expire
                    results = await pipe.execute()
                except WatchError:
                    self.conflicts += 1
                    await asyncio.sleep(random.uniform(0, 0.002))
                    continue
            entry_id = results[-4 if expire_s else -3]
            if not expire_s and int(results[-1]) > 0:
                # ended while this worker did not know: the keys this publish made or touched go with the rest
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.expire(keys.estimates, int(results[-1]))
                    pipe.expire(keys.state, int(results[-1]))
                    await pipe.execute()
            if self._replication.enabled:
                await self._replication.sync(keys.sync)
            return Publication(published=True, estimate=final, late=new_state is None,
                               entry_id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id)
        raise RuntimeError(f"could not publish window {estimate.window} of session {estimate.session!r}: "
                           f"{self.max_attempts} transactions in a row lost to other publishers of this session")


def _state_to_hash(state: EmaState, emotions: tuple[float, ...] | None) -> dict[str, str | int]:
    # "null" rather than HDEL for none: the workers' ACL rule (stream.keys.acl_rule) has no HDEL
    return {"window": state.window, "smoothed": repr(state.value),
            "emotions": json.dumps(None if emotions is None else list(emotions), allow_nan=False)}


def _state_from_hash(raw: dict, key: str) -> EmaState | None:
    if not raw:
        return None
    try:
        emotions = json.loads(raw.get(b"emotions", b"null"))  # absent: a state from before schema 2
        if emotions is not None:
            emotions = check_probabilities(emotions, "emotions")
        value = float(raw[b"smoothed"])
        if not math.isfinite(value):
            raise ValueError(f"smoothed = {value}")
        return EmaState(window=int(raw[b"window"]), value=value, emotions=emotions)
    except (KeyError, ValueError, TypeError, MessageError) as exc:
        raise MessageError(f"EMA state {raw!r} is unreadable ({exc}): delete {key} to start the EMA again") from None


async def read_ema(redis: aioredis.Redis, session: str) -> EmaState | None:
    """The session's EMA state, or None before its first estimate."""
    key = SessionKeys(session).state
    return _state_from_hash(await redis.hgetall(key), key)


async def watch_estimates(redis: aioredis.Redis, session: str | None = None,
                          ready: asyncio.Event | None = None) -> AsyncIterator[Estimate]:
    """Yield estimates as they are published: of one session, or of all sessions when `session` is None.
    `ready` is set once the subscription is in place (a publish before that is not seen).

    On a Redis Cluster the channels are sharded (SSUBSCRIBE), and sharded pub/sub has no pattern: all
    sessions are followed by reading every partition of `dmd:sessions` (from its last
    `_FOLLOW_RECENT` entries on) and subscribing to each session that starts there."""
    if is_cluster(redis):
        async for estimate in _watch_sharded(redis, session, ready):
            yield estimate
        return
    pubsub = redis.pubsub()
    try:
        if session is None:
            await pubsub.psubscribe(f"{PREFIX}:est:*")
        else:
            await pubsub.subscribe(estimate_channel(session))
        if ready is not None:
            ready.set()
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            try:
                yield Estimate.from_json(message["data"])
            except (MessageError, json.JSONDecodeError) as exc:
                # publish() validates, so this is a foreign publisher on our channel: skip, say so
                log.warning("skipped a malformed estimate on %s: %s", message.get("channel"), exc)
    finally:
        await pubsub.aclose()


_FOLLOW_RECENT = 1000  # entries of each dmd:sessions partition looked at when following all sessions


async def _watch_sharded(redis: aioredis.Redis, session: str | None, ready: asyncio.Event | None
                         ) -> AsyncIterator[Estimate]:
    """`watch_estimates` on a cluster: SSUBSCRIBE to the session's channel, or to each session found
    on `dmd:sessions` (polled every second between messages)."""
    pubsub = redis.pubsub()
    subscribed: set[str] = set()
    cursors: dict[str, bytes | str] = {}
    streams = partitions_for(redis).keys("sessions")

    async def follow() -> None:
        for stream in streams:
            if stream in cursors:
                reply = await redis.xread({stream: cursors[stream]}, count=_FOLLOW_RECENT)
                entries = reply[0][1] if reply else []
            else:
                entries = list(reversed(await redis.xrevrange(stream, count=_FOLLOW_RECENT)))
                cursors[stream] = entries[-1][0] if entries else b"0-0"
            for entry_id, fields in entries:
                cursors[stream] = entry_id
                try:
                    sid = SessionEvent.from_fields(fields).session
                except MessageError:
                    continue  # not a capture worker's entry: the consumers dead-letter it
                if sid not in subscribed:
                    await pubsub.ssubscribe(estimate_channel(sid))
                    subscribed.add(sid)

    try:
        if session is not None:
            await pubsub.ssubscribe(estimate_channel(session))
        else:
            await follow()
        if ready is not None:
            ready.set()
        loop = asyncio.get_running_loop()
        last_follow = loop.time()
        while True:
            message = None
            if subscribed or session is not None:
                message = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=0.05)
            else:
                await asyncio.sleep(0.05)
            if session is None and loop.time() - last_follow >= 1.0:
                await follow()
                last_follow = loop.time()
            if message is None:
                continue
            try:
                yield Estimate.from_json(message["data"])
            except (MessageError, json.JSONDecodeError) as exc:
                log.warning("skipped a malformed estimate on %s: %s", message.get("channel"), exc)
    finally:
        await pubsub.aclose()
