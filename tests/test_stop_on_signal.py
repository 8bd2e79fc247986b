"""Every command ends within 5 s of SIGTERM or SIGINT, in every state: `dmd capture`, `asr`, `infer`,
`watch`, `serve` (with its workers) and `run` as separate processes on a real redis-server, signalled
while the pipeline runs, and while Redis is down (each of them then busy retrying: a write, a
blocking read, a subscription, a wait for the ASR)."""

from __future__ import annotations

import signal
import time
import urllib.request

import pytest
from redis_fixtures import RedisServer, free_port

pytest.register_assert_rewrite("pipeline_helpers")
from pipeline_helpers import Processes, client, estimates, pipeline_env, wait_for  # noqa: E402

pytest_plugins = ("pipeline_helpers",)  # fixtures: checkpoint, face_clip, processes

pytest.importorskip("av")
pytest.importorskip("opensmile")
pytest.importorskip("mediapipe")

LIMIT_S = 5.0  # the promise: every command ends within 5 s of the signal


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as reply:
            return reply.status == 200
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(("redis_state", "sig"), [("down", signal.SIGTERM), ("down", signal.SIGINT),
                                                  ("up", signal.SIGTERM)])
def test_every_command_ends_within_5_s_of_a_signal(redis_state: str, sig: int, restartable_redis: RedisServer,
                                                   processes: Processes, checkpoint, face_clip) -> None:
    url = restartable_redis.url
    env = pipeline_env(checkpoint, url)
    port = free_port()
    slow = ("--speed", "0.2")  # the 6 s clip lasts 30 s: the sessions are still running at the signal
    procs = [
        processes.start("infer", "infer", "--name", "w1", env=env),
        processes.start("asr", "asr", "--asr", "none", "--name", "a1", env=env),
        processes.start("watch", "watch", "--json", env=env),
        processes.start("serve", "serve", "--port", port, "--asr", "none", env=env),
        processes.start("capture", "capture", "--source", face_clip, "--session", "cap", *slow, "--asr", "none",
                        env=env),
        processes.start("run", "run", "--source", face_clip, "--session", "run", *slow, "--asr", "none", "--quiet",
                        env=env),
    ]
    r = client(url)
    wait_for(lambda: estimates(r, "cap") and estimates(r, "run") and _answers(port), 120,
             "both sessions under way and the server answering", processes, alive=procs)
    r.close()
    if redis_state == "down":
        restartable_redis.stop()
        time.sleep(1.5)  # every command notices, and is in its retry loop
    for proc in procs:
        assert proc.poll() is None, f"{proc.name} ended before the signal\n{proc.tail()}"
    sent = time.monotonic()
    for proc in procs:
        proc.signal(sig)
    took: dict[str, float] = {}
    while len(took) < len(procs) and time.monotonic() - sent < LIMIT_S + 5:
        for proc in procs:
            if proc.name not in took and proc.poll() is not None:
                took[proc.name] = time.monotonic() - sent
        time.sleep(0.02)
    late = {p.name: round(took.get(p.name, float("inf")), 2) for p in procs if took.get(p.name, 99.0) > LIMIT_S}
    assert not late, (f"not ended within {LIMIT_S} s of {signal.Signals(sig).name} with Redis {redis_state}: "
                      f"{late}; all: {took}\n{processes.tails()}")
    for proc in procs:
        assert "Traceback" not in proc.err(), proc.tail()
    print(f"ended after {signal.Signals(sig).name} with Redis {redis_state}:",
          {name: round(t, 2) for name, t in took.items()})  # shown with pytest -s
