"""Redis key names of the pipeline, and session ids.

Every key of one session carries the session id as a Redis Cluster hash tag (`dmd:{sid}:...`), so a
session's streams, its EMA state and its publish markers live in one hash slot: a transaction over
them works on one embedded server and on a cluster alike.

The shared streams (`dmd:windows`, `dmd:sessions`, `dmd:dead`) come in P partitions (`Partitions`).
With P = 1, the default on one Redis, each is the one key of the table below. With P > 1 partition i
of `dmd:windows` is `dmd:{windows:i}` (likewise `dmd:{sessions:i}`, `dmd:{dead:i}` and its counter
`dmd:{dead:i}:count`): the hash tag puts each partition in a slot of its own, so on a Redis Cluster the
jobs spread over the masters instead of all sitting on one. A session's partition is a stable hash of
its id (CRC-32 modulo P), the same in every process: capture writes the session's window notices and
events there, and the consumer groups are made on and read every partition.

| key | type | written by | holds |
|---|---|---|---|
| `dmd:{sid}:audio` | stream | capture | 16 kHz mono int16 PCM chunks |
| `dmd:{sid}:afeat` | stream | capture | acoustic feature frames (n, 25) |
| `dmd:{sid}:vfeat` | stream | capture | face feature frames (n, 62: 55 tracker values, 7 face expert probabilities) |
| `dmd:{sid}:words` | stream | ASR | recognised words and the ASR watermark |
| `dmd:{sid}:events` | stream | capture | the session's lifecycle: its `start` and `end` events |
| `dmd:{sid}:estimates` | stream | inference | published estimates (history) |
| `dmd:{sid}:state` | hash | inference | the EMA: last window folded in and its value |
| `dmd:{sid}:published:{k}` | string | inference | marker: window k was published (expires) |
| `dmd:{sid}:sync` | string | capture, inference | written before a WAIT for a replica (stream.replication; expires) |
| `dmd:windows` | stream, group "infer" | capture | window notices: the jobs |
| `dmd:dead` | stream | any consumer | entries given up on, with their reason |
| `dmd:dead:count` | integer | any consumer | how many entries went to `dmd:dead` |
| `dmd:est:{sid}` | pub/sub channel | inference | each estimate as JSON, as it is published |
| `dmd:sessions` | stream, group "asr" | capture | every session's start and end events (ASR workers find sessions) |

Session lifecycle. A capture worker announces a session with a `SessionEvent` "start" and closes it
with an "end", each written to `dmd:sessions` (all sessions, for a fleet of ASR workers in the group
"asr" and for dashboards) and to the session's own `dmd:{sid}:events`. The end event is written only
after the last audio chunk has been added, so a reader that sees it has all the audio. An ASR worker
that takes a "start" from the group runs that session and watches `dmd:{sid}:events` (and the audio)
with one blocking read; the "end" entry in `dmd:sessions` may go to any worker, which just acks it.

Access. The workers touch only keys under `dmd:` and channels under `dmd:est:`, with the commands of
`ACL_COMMANDS`: `acl_rule()` is the rule of a Redis ACL user limited to that (docs/DEPLOY.md, tested
over TLS by tests/test_redis_security.py); `acl_rule(cluster=True)` the one for every node of a Redis
Cluster (`ACL_CLUSTER_COMMANDS`, tested by tests/test_cluster_failover.py).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

PREFIX = "dmd"
WINDOWS = "dmd:windows"  # window notices, read by the inference workers' consumer group
INFER_GROUP = "infer"
DEAD = "dmd:dead"  # dead letters: entries that failed too often or could not be decoded
DEAD_COUNT = "dmd:dead:count"
SESSIONS = "dmd:sessions"  # session start and end events, read by the ASR workers' consumer group
ASR_GROUP = "asr"

# The streams that carry a session's data, by the name the messages use for them.
SESSION_STREAMS: tuple[str, ...] = ("audio", "afeat", "vfeat", "words")

SESSION_ID_CHARS = "letters A-Z a-z, digits 0-9, '_', '-' and '.'"
SESSION_ID_MAX = 64
_SESSION_ID = re.compile(r"[A-Za-z0-9_.-]+")


def validate_session_id(sid: object) -> str:
    """Return `sid` if it can name a session, else raise ValueError saying why.

    Braces and colons are excluded because they would break the hash tag and the key layout;
    spaces and other characters because session ids end up in URLs and file names.
    """
    if not isinstance(sid, str):
        raise ValueError(f"session id {sid!r} is not a string ({type(sid).__name__}): use {SESSION_ID_CHARS}")
    if not sid:
        raise ValueError(f"session id is empty: use 1 to {SESSION_ID_MAX} of {SESSION_ID_CHARS}")
    if len(sid) > SESSION_ID_MAX:
        raise ValueError(f"session id {sid[:20]!r}... has {len(sid)} characters, at most {SESSION_ID_MAX} are allowed")
    if not _SESSION_ID.fullmatch(sid):
        bad = sorted({c for c in sid if not _SESSION_ID.fullmatch(c)})
        raise ValueError(f"session id {sid!r} contains {''.join(bad)!r}: use only {SESSION_ID_CHARS}")
    return sid


@dataclass(frozen=True)
class SessionKeys:
    """The key names of one session (the id is validated on construction)."""

    session: str

    def __post_init__(self) -> None:
        validate_session_id(self.session)

    def _key(self, name: str) -> str:
        return f"{PREFIX}:{{{self.session}}}:{name}"

    def stream(self, name: str) -> str:
        """The data stream called `name` (one of SESSION_STREAMS)."""
        if name not in SESSION_STREAMS:
            raise ValueError(f"unknown session stream {name!r}: use one of {', '.join(SESSION_STREAMS)}")
        return self._key(name)

    @property
    def audio(self) -> str:
        return self._key("audio")

    @property
    def afeat(self) -> str:
        return self._key("afeat")

    @property
    def vfeat(self) -> str:
        return self._key("vfeat")

    @property
    def words(self) -> str:
        return self._key("words")

    @property
    def events(self) -> str:
        """The session's lifecycle events (`SessionEvent`: start, end), oldest first."""
        return self._key("events")

    @property
    def estimates(self) -> str:
        return self._key("estimates")

    @property
    def state(self) -> str:
        return self._key("state")

    def published(self, window: int) -> str:
        """Marker key set once window `window` of this session has been published."""
        return self._key(f"published:{int(window)}")

    @property
    def sync(self) -> str:
        """Written just before a WAIT for a replica on a cluster with replicas (stream.replication): a
        replica that has it has every write made before it to the session's keys (expires)."""
        return self._key("sync")

    @property
    def channel(self) -> str:
        """Pub/sub channel of this session's estimates."""
        return estimate_channel(self.session)

    def all_keys(self) -> list[str]:
        """The session's long-lived keys (streams and state; publish markers expire by themselves)."""
        return [*(self._key(name) for name in SESSION_STREAMS), self.estimates, self.state, self.events]


def session_key_pattern(name: str) -> str:
    """The SCAN pattern that matches key `name` of every session: `dmd:{*}:estimates`."""
    return f"{PREFIX}:{{*}}:{name}"


def parse_session_key(key: bytes | str) -> tuple[str, str] | None:
    """(session id, name) of a session's key (`dmd:{alice}:estimates` -> ("alice", "estimates")), or
    None for a key that is not one (another prefix, no hash tag, an id that is not valid)."""
    text = key.decode(errors="replace") if isinstance(key, bytes) else key
    head = f"{PREFIX}:{{"
    if not text.startswith(head):
        return None
    sid, sep, name = text[len(head):].partition("}:")
    if not sep or not name:
        return None
    try:
        validate_session_id(sid)
    except ValueError:
        return None
    return sid, name


# -- partitions of the shared streams -------------------------------------------------------------------
SHARED_STREAMS: tuple[str, ...] = ("windows", "sessions", "dead")
CLUSTER_PARTITIONS = 8  # the default P on a Redis Cluster: a few partitions per master of a 3-node cluster
MAX_PARTITIONS = 1024


def session_partition(session: str, partitions: int) -> int:
    """The partition (0 .. partitions-1) of a session: CRC-32 of its id modulo `partitions`, stable
    across processes and Python versions (unlike `hash()`, which is salted per process)."""
    return zlib.crc32(validate_session_id(session).encode()) % partitions


@dataclass(frozen=True)
class Partitions:
    """The key names of the shared streams split in `count` partitions (P; 1 keeps today's names)."""

    count: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or not 1 <= self.count <= MAX_PARTITIONS:
            raise ValueError(f"partitions = {self.count!r}: use a whole number from 1 to {MAX_PARTITIONS} "
                             f"(1 on one Redis, {CLUSTER_PARTITIONS} or more on a Redis Cluster)")

    def key(self, name: str, partition: int) -> str:
        """Partition `partition` of shared stream `name` (one of SHARED_STREAMS)."""
        if name not in SHARED_STREAMS:
            raise ValueError(f"unknown shared stream {name!r}: use one of {', '.join(SHARED_STREAMS)}")
        if not 0 <= partition < self.count:
            raise ValueError(f"partition {partition} of {name!r}: there are {self.count} (0 to {self.count - 1})")
        if self.count == 1:
            return f"{PREFIX}:{name}"
        return f"{PREFIX}:{{{name}:{partition}}}"

    def keys(self, name: str) -> list[str]:
        """Every partition of shared stream `name`, partition 0 first."""
        return [self.key(name, i) for i in range(self.count)]

    def of(self, session: str) -> int:
        """The partition of `session`."""
        return session_partition(session, self.count)

    def for_session(self, name: str, session: str) -> str:
        """The partition of shared stream `name` that carries `session`'s entries."""
        return self.key(name, self.of(session))


def estimate_channel(session: str) -> str:
    """`dmd:est:{sid}`: where a session's estimates are published as JSON."""
    return f"{PREFIX}:est:{{{validate_session_id(session)}}}"


# -- access ------------------------------------------------------------------------------------------
# The keys, channels and commands the workers use, for a Redis ACL user limited to them. The channel
# pattern is "dmd:est:*", not "dmd:*": Redis checks PSUBSCRIBE's pattern (`dmd watch` of every session
# subscribes to "dmd:est:*") for equality with one of the user's channel patterns, not as a match.
# AUTH and HELLO need no permission. redis-py's CLIENT SETINFO at connect is left out: Redis 7.0 does
# not know it, and where a server refuses it redis-py goes on without it.
ACL_KEYS = f"{PREFIX}:*"
ACL_CHANNELS = f"{PREFIX}:est:*"
ACL_COMMANDS: tuple[str, ...] = (
    "ping", "select",  # the check at start; SELECT for a URL whose database is not 0
    "exists", "expire", "ttl", "set", "incrby", "hgetall", "hset",  # markers, the EMA, dmd:dead:count, retention
    "xadd", "xrange", "xrevrange", "xread",  # the streams
    "xreadgroup", "xgroup|create", "xack", "xautoclaim", "xpending", "xclaim", "xinfo|groups",  # consumer groups
    "watch", "unwatch", "multi", "exec",  # publishing an estimate once (stream.publish)
    "evalsha", "script|load",  # an ASR worker's hold on a session (stream.lifecycle: XPENDING and XCLAIM)
    "scan",  # finding sessions (dmd watch, the dashboard)
    "publish", "subscribe", "psubscribe",  # estimates as they are published
)


# On a Redis Cluster (every node gets the same user) the client also learns the cluster at connect
# and after a failover (CLUSTER SLOTS, and COMMAND for the commands' key positions), follows
# redirections during a resharding (ASKING), publishes and subscribes sharded (SPUBLISH, SSUBSCRIBE:
# their channels are checked against the same `&dmd:est:*`), and waits for replicas
# (stream.replication: ROLE, WAIT). SELECT, PUBLISH, SUBSCRIBE and PSUBSCRIBE are not used there.
ACL_CLUSTER_COMMANDS: tuple[str, ...] = (
    *(c for c in ACL_COMMANDS if c not in ("select", "publish", "subscribe", "psubscribe")),
    "spublish", "ssubscribe",  # estimates, sharded
    "cluster|slots", "command", "asking",  # the cluster's topology, key positions, redirections
    "role", "wait",  # writes that must outlive their master
)


def acl_rule(cluster: bool = False) -> list[str]:
    """The ACL rules of the workers' user, to follow `user NAME on >PASSWORD` in an ACL file, a
    `--user` option of redis-server or ACL SETUSER: its keys, its channels, its commands and no other.
    `cluster`: the rule for every node of a Redis Cluster (`ACL_CLUSTER_COMMANDS`)."""
    return ["resetkeys", f"~{ACL_KEYS}", "resetchannels", f"&{ACL_CHANNELS}", "-@all",
            *(f"+{command}" for command in (ACL_CLUSTER_COMMANDS if cluster else ACL_COMMANDS))]
