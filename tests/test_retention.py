"""Nothing piles up in Redis: sessions run back to back leave no keys once their time to live after
the end has passed (`capture.ended_ttl_s`), with `dmd run` on a real redis-server. The publish-once
markers (`dmd:{sid}:published:{k}`) keep their own 15 minutes, shorter than the default time to live
(an hour), so with the defaults nothing of a session outlives its time to live."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis as sync_redis

pytest.register_assert_rewrite("pipeline_helpers")
from pipeline_helpers import pipeline_env  # noqa: E402

pytest_plugins = ("pipeline_helpers",)  # fixtures: checkpoint, bars_clip

pytest.importorskip("av")
pytest.importorskip("opensmile")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_keys_of_ended_sessions_expire_and_nothing_else_is_left(redis_server, checkpoint: Path, bars_clip: Path,
                                                                   monkeypatch, capsys) -> None:
    from workers.cli import main

    r = sync_redis.Redis.from_url(redis_server.url)
    r.flushall()
    for name, value in pipeline_env(checkpoint, redis_server.url, capture_ended_ttl_s=3).items():
        if name.startswith("DMD_") or name == "REDIS_URL":
            monkeypatch.setenv(name, value)
    for k in range(3):  # back to back, as a fleet of short sessions would
        assert main(["run", "--source", str(bars_clip), "--speed", "0", "--asr", "none", "--session", f"s{k}",
                     "--quiet"]) == 0, capsys.readouterr().err[-2000:]
        keys = [key.decode() for key in r.scan_iter(f"dmd:{{s{k}}}:*")]
        assert keys, "the session wrote nothing"
        ttls = {key: r.ttl(key) for key in keys}
        assert all(0 < t <= 3 for key, t in ttls.items() if ":published:" not in key), ttls
        assert all(0 < t <= 900 for key, t in ttls.items() if ":published:" in key), ttls
    time.sleep(3.5)
    left = sorted(key.decode() for key in r.scan_iter("dmd:{*}:*") if b":published:" not in key)
    assert left == [], left
    shared = {key.decode() for key in r.scan_iter("*") if b":published:" not in key}
    assert shared <= {"dmd:windows", "dmd:sessions", "dmd:dead", "dmd:dead:count"}, shared
    r.close()
