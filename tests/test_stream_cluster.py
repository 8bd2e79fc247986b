"""Redis Cluster: cluster URLs, the partitions of the shared streams, and the stream code on a real
three-master cluster (tests/cluster_fixtures.py starts it)."""

from __future__ import annotations

import asyncio

import pytest
from cluster_fixtures import redis_cluster, redis_cluster_tls  # noqa: F401
from redis.crc import key_slot

from stream.connection import RedisURLError, connect, is_cluster, parse_redis_url, partitions_for
from stream.keys import CLUSTER_PARTITIONS, SHARED_STREAMS, Partitions, SessionKeys, session_partition

pytest_plugins = ("pipeline_helpers",)  # fixtures: checkpoint, bars_clip


def test_cluster_urls_name_any_node_and_carry_tls() -> None:
    url = parse_redis_url("redis+cluster://dmd:s%40cret@node1.example:7000")
    assert (url.scheme, url.cluster, url.host, url.port, url.db) == ("redis+cluster", True, "node1.example", 7000, 0)
    assert url.redacted == "redis+cluster://dmd:***@node1.example:7000"
    kwargs = url.client_kwargs()
    assert "db" not in kwargs and "ssl" not in kwargs and kwargs["password"] == "s@cret"
    tls = parse_redis_url("rediss+cluster://node1.example?ssl_ca_certs=/ca.pem&ssl_check_hostname=false")
    assert tls.cluster and tls.port == 6379
    assert tls.client_kwargs().items() >= {"ssl": True, "ssl_ca_certs": "/ca.pem", "ssl_check_hostname": False}.items()
    assert not parse_redis_url("redis://localhost").cluster


@pytest.mark.parametrize(("url", "words_in_error"), [
    ("redis+cluster://node1/2", "database 2 on a cluster: a Redis Cluster has database 0 only"),
    ("redis+cluster://node1?db=1", "database 1 on a cluster"),
    ("redis+cluster://node1?ssl_ca_certs=/ca.pem", "unknown option 'ssl_ca_certs'"),
    ("redis+cluster://", "no host"),
    ("cluster://node1", "expected one of redis://, rediss://, unix://, redis+cluster://, rediss+cluster://"),
])
def test_bad_cluster_urls_say_what_is_wrong(url: str, words_in_error: str) -> None:
    with pytest.raises(RedisURLError) as caught:
        parse_redis_url(url)
    assert words_in_error in str(caught.value)


def test_connect_gives_a_cluster_client_for_a_cluster_url() -> None:
    assert is_cluster(connect("redis+cluster://127.0.0.1:7000"))
    assert not is_cluster(connect("redis://127.0.0.1:7000"))


def test_the_url_sets_the_partitions_every_process_uses() -> None:
    assert partitions_for(connect("redis://127.0.0.1:7000")) == Partitions(1)
    assert partitions_for(connect("redis+cluster://127.0.0.1:7000")) == Partitions(CLUSTER_PARTITIONS)
    assert partitions_for(connect("redis+cluster://127.0.0.1:7000?partitions=16")) == Partitions(16)
    assert partitions_for(connect("unix:///run/redis.sock?partitions=2")) == Partitions(2)
    with pytest.raises(RedisURLError, match="partitions='0' is not a whole number from 1 to 1024"):
        parse_redis_url("redis://localhost?partitions=0")


def test_one_partition_keeps_todays_key_names() -> None:
    one = Partitions()
    assert [one.key(name, 0) for name in SHARED_STREAMS] == ["dmd:windows", "dmd:sessions", "dmd:dead"]
    assert one.for_session("windows", "alice") == "dmd:windows"


def test_partitions_of_a_shared_stream_land_in_different_slots() -> None:
    parts = Partitions(CLUSTER_PARTITIONS)
    for name in SHARED_STREAMS:
        keys = parts.keys(name)
        assert keys[0] == f"dmd:{{{name}:0}}"
        assert len({key_slot(k.encode()) for k in keys}) == CLUSTER_PARTITIONS, keys
    # the dead letters' counter is in its partition's slot (one pipeline writes both)
    assert key_slot(b"dmd:{dead:3}:count") == key_slot(parts.key("dead", 3).encode())


def test_a_sessions_partition_is_stable_and_sessions_spread() -> None:
    assert session_partition("alice", 8) == session_partition("alice", 8) == Partitions(8).of("alice")
    spread = {session_partition(f"caller-{i}", 8) for i in range(200)}
    assert spread == set(range(8))
    assert Partitions(1).of("alice") == 0
    with pytest.raises(ValueError, match="partitions = 0"):
        Partitions(0)
    with pytest.raises(ValueError, match="partition 8 of 'windows': there are 8"):
        Partitions(8).key("windows", 8)


def test_a_sessions_own_keys_share_one_slot() -> None:
    keys = SessionKeys("alice")
    slots = {key_slot(k.encode()) for k in [*keys.all_keys(), keys.published(3)]}
    assert len(slots) == 1


@pytest.mark.slow
def test_partitions_spread_over_the_masters_of_a_real_cluster(redis_cluster) -> None:  # noqa: F811
    async def run() -> set[str]:
        redis = connect(redis_cluster.url)
        try:
            parts = Partitions(CLUSTER_PARTITIONS)
            nodes = set()
            for key in parts.keys("windows"):
                await redis.xadd(key, {b"k": b"v"})
                nodes.add(redis.get_node_from_key(key).name)
            assert sum([await redis.xlen(k) for k in parts.keys("windows")]) == CLUSTER_PARTITIONS
            return nodes
        finally:
            await redis.aclose()

    redis_cluster.flush()
    assert len(asyncio.run(run())) == 3


@pytest.mark.slow
def test_an_estimate_is_published_once_with_spublish_and_reaches_sharded_subscribers(redis_cluster) -> None:  # noqa: F811
    from test_stream_estimate import make_estimate

    from stream.lifecycle import start_session
    from stream.publish import EstimatePublisher, watch_estimates
    from stream.session import Session

    async def main() -> None:
        r = connect(redis_cluster.url)
        received: dict[str, list] = {"alice": [], "all": []}

        async def dashboard(session: str | None, ready: asyncio.Event) -> None:
            async for est in watch_estimates(r, session, ready=ready):
                received[session or "all"].append(est)
                return

        await start_session(r, "alice", "test")  # on dmd:{sessions:i}: how a watcher of all sessions finds it
        readies = [asyncio.Event(), asyncio.Event()]
        tasks = [asyncio.create_task(dashboard(s, e)) for s, e in zip(["alice", None], readies)]
        for ready in readies:
            await asyncio.wait_for(ready.wait(), 5)
        publisher = EstimatePublisher(r)
        first = await publisher.publish(make_estimate(window=12, sentiment=0.84))
        again = await publisher.publish(make_estimate(window=12, sentiment=0.1))
        assert first.published and not again.published
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert received["alice"] == received["all"] == await Session(r, "alice").estimates() == [first.estimate]
        await r.aclose()

    redis_cluster.flush()
    asyncio.run(main())


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["cluster", "one redis-server, partitions=3"])
def test_sessions_on_a_cluster_get_one_estimate_per_window_and_a_subscriber_sees_them(
        where: str, request: pytest.FixtureRequest, tmp_path, caplog) -> None:
    """Three sessions written by capture's code to their partitions of dmd:windows and dmd:sessions on
    a three-master cluster (and on one Redis with `?partitions=3` in its URL); an inference worker
    reads every partition: each window gets exactly one estimate, and a subscriber of all sessions
    (SSUBSCRIBE on the cluster, found through dmd:sessions) gets each."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import logging

    import numpy as np
    from redis_fixtures import eventually
    from test_pipeline_worker import write_session

    from dmd_model.artefacts.predict import Predictor
    from dmd_model.features import load_text_encoder
    from stream.publish import watch_estimates
    from stream.session import Session
    from workers.infer.worker import InferenceWorker
    from workers.settings import InferenceSettings

    pytest.register_assert_rewrite("pipeline_helpers")
    from pipeline_helpers import check_estimates, write_checkpoint

    checkpoint = write_checkpoint(tmp_path / "live_test.pt")
    if where == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        url, parts = cluster.url, Partitions(CLUSTER_PARTITIONS)
    else:
        server = request.getfixturevalue("redis_server")
        client = server.client()
        client.flushall()
        client.close()
        url, parts = server.url + "?partitions=3", Partitions(3)
    # three sessions in three partitions, so more than one is written and read
    sids: list[str] = []
    for name in (f"room-{i}" for i in range(50)):
        if parts.of(name) not in {parts.of(s) for s in sids}:
            sids.append(name)
    sids = sids[:3]
    assert len({parts.of(s) for s in sids}) == 3

    async def main() -> None:
        r = connect(url)
        assert partitions_for(r) == parts
        seen: list = []
        subscribed = asyncio.Event()

        async def subscriber() -> None:
            async for estimate in watch_estimates(r, None, ready=subscribed):
                seen.append(estimate)

        rng = np.random.default_rng(2)
        # the first session's start is on dmd:sessions before the subscriber looks; the others after
        sessions = {sids[0]: await write_session(r, sids[0], 6.0, rng)}
        watcher = asyncio.create_task(subscriber())
        await asyncio.wait_for(subscribed.wait(), 10)
        await asyncio.sleep(0.2)  # the subscriber follows dmd:sessions every second
        sessions.update({sid: await write_session(r, sid, 6.0, rng) for sid in sids[1:]})
        await asyncio.sleep(1.5)  # the subscriber follows dmd:sessions every second: it finds them now
        total = sum(len(w) for w in sessions.values())
        for sid in sids:
            assert await r.xlen(parts.for_session("windows", sid)) >= len(sessions[sid])
            assert await r.xlen(parts.for_session("sessions", sid)) >= 1

        settings = InferenceSettings(claim_idle_ms=600_000, device="cpu")
        worker = InferenceWorker(r, Predictor(checkpoint, device="cpu", threads=1), settings, asr_grace_s=0.0,
                                 name="cluster", text_encoder=load_text_encoder())
        task = asyncio.create_task(worker.run())

        async def all_seen() -> bool:
            await asyncio.sleep(0.05)
            return (worker.published >= total and len(seen) >= total) or task.done()

        await eventually(all_seen, 60, "every window published and seen by the subscriber")
        worker.stop()
        await asyncio.wait_for(task, 20)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        failed = [rec.getMessage() for rec in caplog.records if rec.name == "dmd.infer"]
        assert not failed, failed[:3]
        assert worker.published == total and worker.duplicates == 0
        assert sorted((e.session, e.window) for e in seen) == sorted(
            (sid, k) for sid, windows in sessions.items() for k in windows)
        for sid, windows in sessions.items():
            found = [e.to_dict() for e in await Session(r, sid).estimates(1000)]
            check_estimates(found, windows, session=sid, latency=True)
        assert await worker.consumer.pending() == 0
        await r.aclose()

    with caplog.at_level(logging.WARNING, logger="dmd.infer"):
        asyncio.run(main())


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("nodes", ["redis_cluster", "redis_cluster_tls"])
def test_dmd_run_and_dmd_watch_on_a_cluster(nodes, request, checkpoint, bars_clip, monkeypatch, capsys) -> None:
    """`dmd run` with REDIS_URL=redis+cluster:// (and rediss+cluster:// to nodes on TLS ports only):
    capture, inference and its subscriber on the cluster, every window one estimate; `dmd watch` of
    every session shows them."""
    pytest.importorskip("av")
    pytest.importorskip("opensmile")
    import json

    from pipeline_helpers import check_estimates, estimates, pipeline_env

    from stream.codec import MessageError
    from stream.messages import WindowNotice
    from workers.cli import main

    cluster = request.getfixturevalue(nodes)
    if cluster.tls:
        assert cluster.url.startswith("rediss+cluster://")
    cluster.flush()
    for name, value in pipeline_env(checkpoint, cluster.url).items():
        if name.startswith("DMD_") or name == "REDIS_URL":
            monkeypatch.setenv(name, value)
    capsys.readouterr()
    code = main(["run", "--source", str(bars_clip), "--speed", "0", "--asr", "none", "--session", "onclus", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    report = [json.loads(line) for line in err.splitlines() if line.startswith('{"session"')][-1]
    assert report["missing"] == [] and report["windows"] == report["estimates"] >= 7, report

    r = cluster.client()
    sent = []
    for _, fields in r.xrange(Partitions(CLUSTER_PARTITIONS).for_session("windows", "onclus")):
        try:
            sent.append(WindowNotice.from_fields(fields).window)
        except MessageError:
            continue
    assert len(sent) == report["windows"]
    found = estimates(r, "onclus")
    check_estimates(found, sent, session="onclus")
    r.close()

    code = main(["watch", "--json", "--history", "100", "--timeout", "0.5"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    shown = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(e["window"], e["sentiment"]) for e in shown] == [(e["window"], e["sentiment"]) for e in found]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_an_asr_worker_serves_sessions_from_every_partition_of_a_cluster(redis_cluster, caplog) -> None:  # noqa: F811
    """Three sessions announced on three partitions of dmd:sessions: one ASR worker takes each start
    from its partition, holds it (the lease script runs on the partition's node) and ends it."""
    import logging

    import numpy as np

    from stream.lifecycle import end_session, start_session
    from stream.messages import AsrWords, PcmChunk
    from stream.session import Session
    from workers.asr.engine import NoEngine
    from workers.asr.worker import AsrWorker

    redis_cluster.flush()
    parts = Partitions(CLUSTER_PARTITIONS)
    sids: list[str] = []
    for name in (f"room-{i}" for i in range(50)):
        if parts.of(name) not in {parts.of(s) for s in sids}:
            sids.append(name)
    sids = sids[:3]

    async def main() -> None:
        r = connect(redis_cluster.url)
        for sid in sids:
            await start_session(r, sid, "test")
            session = Session(r, sid)
            for i in range(0, 32000, 1600):
                await session.add(PcmChunk(i / 16000, np.zeros(1600, np.int16)))
        worker = AsrWorker(r, NoEngine, name="asr-cluster", max_sessions=3, claim_idle_ms=600)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        await asyncio.sleep(1.0)  # the sessions run; their holds are renewed every 0.2 s
        assert sorted(worker.running) == sorted(sids)
        for sid in sids:
            await end_session(r, sid, t_end=2.0)

        async def all_done() -> bool:
            await asyncio.sleep(0.05)
            return len(worker.finished) >= 3 or task.done()

        from redis_fixtures import eventually

        await eventually(all_done, 20, "every session's ASR finished")
        stop.set()
        await asyncio.wait_for(task, 10)
        assert sorted(result.reason for result in worker.finished) == ["end"] * 3
        for sid in sids:
            last = AsrWords.from_fields((await r.xrevrange(SessionKeys(sid).words, count=1))[0][1])
            assert last.watermark == pytest.approx(2.0)
        assert await worker.consumer.pending() == 0  # every start and end acked, on every partition
        assert not [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING]
        await r.aclose()

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())


@pytest.mark.slow
def test_group_metrics_sum_every_partition(redis_cluster) -> None:  # noqa: F811
    prometheus = pytest.importorskip("prometheus_client")
    from stream.consumer import ensure_group
    from stream.keys import INFER_GROUP
    from workers.metrics import Metrics, sample_group

    redis_cluster.flush()
    registry = prometheus.CollectorRegistry()
    metrics = Metrics("cluster-test", registry=registry)
    windows = Partitions(CLUSTER_PARTITIONS).keys("windows")

    async def main() -> None:
        r = connect(redis_cluster.url)
        for key in windows:
            await ensure_group(r, key, INFER_GROUP)
        for key in windows[:3]:
            await r.xadd(key, {b"k": b"v"})
        await r.xreadgroup(INFER_GROUP, "reader", {windows[0]: ">"})
        await sample_group(r, metrics, windows, INFER_GROUP)
        await r.aclose()

    asyncio.run(main())
    labels = {"worker": "cluster-test"}
    assert registry.get_sample_value("dmd_group_pending", labels) == 1
    assert registry.get_sample_value("dmd_group_lag", labels) == 2
