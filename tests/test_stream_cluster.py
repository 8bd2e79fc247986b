"""Redis Cluster: cluster URLs, the partitions of the shared streams, and the stream code on a real
three-master cluster (tests/cluster_fixtures.py starts it)."""

from __future__ import annotations

import asyncio

import pytest
from cluster_fixtures import redis_cluster  # noqa: F401
from redis.crc import key_slot

from stream.connection import RedisURLError, connect, is_cluster, parse_redis_url
from stream.keys import CLUSTER_PARTITIONS, SHARED_STREAMS, Partitions, SessionKeys, session_partition


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
