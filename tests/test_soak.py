"""Retention under a stream of sessions (issue 13), the short version of bench/soak.py: sessions back
to back through `dmd capture`, `dmd asr` and `dmd infer` as separate processes on a real
redis-server, with a short `capture.ended_ttl_s`. Every window gets one estimate; each session's
keys are gone TTL after its end, whatever order the workers finished it in; Redis and the workers
do not grow from one session to the next. The 30-minute soak is `python bench/soak.py`.

How much may they grow? Five 6-second sessions show what each session leaves behind, not a slow
drift (that is the soak's to find). Measured at the same point of every session (its estimates all
published, the keys of the one before it expired), from the 2nd session to the 5th:

- Redis keys: exact. After every session only its own keys are left (nothing of those before it),
  and each session has the same keys.
- Redis memory: used_memory less the client buffers (`mem_clients_normal`: query and reply buffers,
  which swing by hundreds of KB from one sample to the next with what the clients happen to be
  reading) may grow by less than a quarter of one session's footprint (what expiring its keys
  gives back, about 350 KB: 6 s of audio and the features). What legitimately accumulates is the
  8 notices in dmd:windows, the 2 events in dmd:sessions and the 8 publish markers (15-minute TTL)
  of each session, about 3 KB a session (measured); leaving any key of a session behind costs far
  more.
- The workers: the same number of threads (fixed pools: a thread or executor per session would
  show), and an RSS that grows by at most `RSS_SLACK`. The allocator's jitter over such a run is up
  to 3 MiB for `dmd infer` (torch), so this catches a gross per-session leak (a model, an encoder
  or a connection pool made per session: tens of MB), not one of a session's data (its windows'
  aligned arrays come to about 1 MB here): that is the 30-minute soak's to show. The redis-py
  pool may open connections as bursts of notices need them, so connections are reported on
  failure, not held equal.
"""

from __future__ import annotations

import asyncio
import signal

import psutil
import pytest
from redis_fixtures import RedisServer
from test_stream_estimate import make_estimate

from stream.connection import connect
from stream.keys import ASR_GROUP, INFER_GROUP, SESSIONS, WINDOWS, parse_session_key
from stream.publish import EstimatePublisher

pytest.register_assert_rewrite("pipeline_helpers")
from pipeline_helpers import (  # noqa: E402
    Processes,
    all_published,
    check_estimates,
    client,
    dead_letters,
    estimates,
    notices,
    pending,
    pipeline_env,
    wait_for,
)

pytest_plugins = ("pipeline_helpers",)  # fixtures: checkpoint, bars_clip, processes

TTL_S = 3
SESSIONS_RUN = 5
SHARED_KEYS = {"dmd:windows", "dmd:sessions", "dmd:dead", "dmd:dead:count"}
RSS_SLACK = 8 * 2**20


def session_keys(r) -> tuple[dict[str, set[str]], dict[str, set[str]], set[str]]:
    """(session -> its keys' names but the publish markers, session -> its markers, the other keys)."""
    own: dict[str, set[str]] = {}
    markers: dict[str, set[str]] = {}
    other: set[str] = set()
    for raw in r.scan_iter(count=1000):
        key = raw.decode()
        parsed = parse_session_key(key)
        if parsed is None:
            other.add(key)
        else:
            (markers if parsed[1].startswith("published:") else own).setdefault(parsed[0], set()).add(parsed[1])
    return own, markers, other


def consumers(r, stream: str, group: str) -> set[str]:
    try:
        return {c["name"].decode() for c in r.xinfo_consumers(stream, group)}
    except Exception:  # noqa: BLE001 - the group does not exist yet
        return set()


def redis_memory(r) -> int:
    """used_memory less the client buffers."""
    info = r.info("memory")
    return int(info["used_memory"]) - int(info["mem_clients_normal"])


def sample(r, sid: str, workers: dict) -> dict:
    own, markers, _ = session_keys(r)
    row = {"session": sid, "keys": own.get(sid, set()), "markers": sum(map(len, markers.values())),
           "redis": redis_memory(r), "clients": int(r.info("clients")["connected_clients"])}
    for name, proc in workers.items():
        p = psutil.Process(proc.pid)
        row[name] = {"rss": p.memory_info().rss, "threads": p.num_threads(),
                     "fds": p.num_fds()}
    return row


def describe(samples: list[dict]) -> str:
    return "\n".join(f"{s['session']}: Redis {s['redis']} B ({s['clients']} clients, {s['markers']} markers); "
                     + "; ".join(f"{n} RSS {s[n]['rss'] / 2**20:.1f} MiB, {s[n]['threads']} threads, "
                                 f"{s[n]['fds']} fds" for n in ("infer", "asr"))
                     for s in samples)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_sessions_back_to_back_leave_nothing_behind_and_nothing_grows(
        restartable_redis: RedisServer, processes: Processes, checkpoint, bars_clip) -> None:
    pytest.importorskip("av")
    pytest.importorskip("opensmile")
    url = restartable_redis.url
    env = pipeline_env(checkpoint, url, capture_ended_ttl_s=TTL_S)
    infer = processes.start("infer", "infer", "--name", "w1", env=env)
    # `dmd asr` takes the words stream's TTL as an option, not from the pipeline settings
    asr = processes.start("asr", "asr", "--asr", "none", "--name", "a1", "--ended-ttl", str(TTL_S), env=env)
    workers = {"infer": infer, "asr": asr}
    r = client(url)
    wait_for(lambda: "w1" in consumers(r, WINDOWS, INFER_GROUP) and "a1" in consumers(r, SESSIONS, ASR_GROUP), 60,
             "both workers reading", processes, alive=[infer, asr])

    samples = []
    for k in range(SESSIONS_RUN):
        sid = f"soak-{k}"
        capture = processes.start(f"capture-{k}", "capture", "--source", bars_clip, "--session", sid, "--speed", "0",
                                  "--asr", "none", env=env)
        assert capture.wait(60) == 0, capture.tail()
        windows = capture.json_lines()[-1]["windows"]
        wait_for(lambda sid=sid, windows=windows: all_published(r, sid, windows), 30,
                 f"every window of {sid} published", processes, alive=[infer, asr])
        check_estimates(estimates(r, sid), notices(r, sid), session=sid)
        # the session before this one ended more than TTL ago (a session takes longer): its keys are
        # gone, or go within moments (Redis expires keys in a background cycle as well as on access)
        wait_for(lambda sid=sid: set(session_keys(r)[0]) == {sid}, TTL_S + 5,
                 f"only the keys of {sid} left, not of the sessions before it", processes, alive=[infer, asr])
        samples.append(sample(r, sid, workers))

    # the last session's keys expire too; what is left are the publish markers (15 minutes of their
    # own, each with its TTL) and the shared streams
    wait_for(lambda: not session_keys(r)[0], TTL_S + 5, "the last session's keys expired", processes)
    _, markers, other = session_keys(r)
    assert set(markers) == {f"soak-{k}" for k in range(SESSIONS_RUN)}
    ttls = [r.ttl(f"dmd:{{{sid}}}:{name}") for sid, names in markers.items() for name in names]
    assert all(0 < t <= 900 for t in ttls), ttls
    assert other <= SHARED_KEYS, other
    drained = redis_memory(r)
    assert pending(r) == 0 and not dead_letters(r)
    assert infer.poll() is None and asr.poll() is None, processes.tails()

    report = describe(samples)
    assert all(s["keys"] == samples[0]["keys"] for s in samples), [sorted(s["keys"]) for s in samples]
    footprint = samples[-1]["redis"] - drained  # one session's keys
    assert footprint > 100_000, f"a session's keys hold {footprint} B?\n{report}"
    grown = samples[-1]["redis"] - samples[1]["redis"]
    assert grown < footprint / 4, (f"Redis grew {grown} B from the 2nd session to the last (one session's keys: "
                                   f"{footprint} B)\n{report}")
    for name in workers:
        first, last = samples[1][name], samples[-1][name]
        assert last["threads"] == first["threads"], f"dmd {name} has more threads\n{report}"
        assert last["rss"] - first["rss"] <= RSS_SLACK, (f"dmd {name}'s RSS grew "
                                                         f"{(last['rss'] - first['rss']) / 2**20:.2f} MiB\n{report}")
    for proc in (infer, asr):
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.tail()
    r.close()


def test_estimates_a_worker_publishes_after_the_end_without_knowing_it_expire_with_the_session(
        redis_url: str) -> None:
    """The race the soak found: the capture worker sets the session's keys to expire at its end,
    before the inference worker (behind it, with the session's start cached) made the estimates
    stream and the EMA state. They must expire with the rest, not stay for ever."""

    async def main() -> None:
        r = connect(redis_url)
        events, estimates_key, state = "dmd:{alice}:events", "dmd:{alice}:estimates", "dmd:{alice}:state"
        publisher = EstimatePublisher(r)
        await r.xadd(events, {b"v": b"1"})
        assert (await publisher.publish(make_estimate(window=6))).published
        assert await r.ttl(estimates_key) == -1 and await r.ttl(state) == -1, "a running session's are kept"
        await r.expire(events, 60)  # the session ended: Session.expire
        await r.delete(estimates_key, state)  # ... before this worker had made them
        pub = await publisher.publish(make_estimate(window=7))  # not told it ended
        assert pub.published and pub.entry_id == (await r.xrevrange(estimates_key, count=1))[0][0].decode()
        assert 0 < await r.ttl(estimates_key) <= 60 and 0 < await r.ttl(state) <= 60
        await r.aclose()

    asyncio.run(main())
