"""10,000 malformed entries into every stream the workers read, while a real session runs: the
inference and ASR workers dead-letter each one and carry on, and the real session gets one estimate
per window. Separate processes on a real redis-server."""

from __future__ import annotations

import random

import msgpack
import numpy as np
import pytest

pytest.register_assert_rewrite("pipeline_helpers")
from pipeline_helpers import (  # noqa: E402
    Processes,
    all_published,
    client,
    estimates,
    pending,
    pipeline_env,
    wait_for,
)

from stream.codec import ARRAY_EXT, MessageError, pack  # noqa: E402
from stream.keys import ASR_GROUP, DEAD, SESSIONS, WINDOWS, SessionKeys  # noqa: E402
from stream.messages import SessionEvent  # noqa: E402

pytest_plugins = ("pipeline_helpers",)  # fixtures: checkpoint, face_clip, processes

pytest.importorskip("av")
pytest.importorskip("opensmile")

GARBAGE = 10_000


def garbage(rng: random.Random, k: int) -> dict[bytes, bytes]:
    """One malformed entry, of the kinds an attacker or a bug would write."""
    kind = k % 10
    if kind == 0:
        return {b"\xf5\x80": b"x"}  # a field name that is not UTF-8
    if kind == 1:
        return {b"v": b"1", b"m": rng.randbytes(rng.randint(0, 40))}  # not msgpack
    if kind == 2:
        return {b"v": str(rng.choice([0, 2, 99])).encode(), b"m": pack({"type": "window"})}  # unknown schema
    body = {"type": rng.choice(["window", "session", "smell"]), "session": rng.choice(["ghost", "a b", "", 7]),
            "window": rng.choice([2**64 - 1, -1, 6, "six"]), "t_start": rng.choice([-1e9, 0.0, float("nan")]),
            "t_end": rng.choice([1e18, 3.0, None]), "notice_time": rng.choice([1.7e9, -5]),
            "event": rng.choice(["start", "end", "explode"]), "t_wall": rng.choice([1.7e9, "now"]),
            "info": rng.choice([{}, [], {"asr": 1}])}
    if kind == 3:
        body["pcm"] = msgpack.ExtType(ARRAY_EXT, rng.randbytes(12))  # an array header that lies
    if kind == 4:
        body["session"] = f"ghost{k}"  # a well-formed notice of a session that never started
        body.update(type="window", window=6, t_start=0.0, t_end=3.0, notice_time=1.7e9)
    try:
        m = pack(body)
    except Exception:  # noqa: BLE001 - a value pack refuses: send its text
        m = msgpack.packb(str(body))
    return {b"v": b"1", b"m": m}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ten_thousand_malformed_entries_are_dead_lettered_while_a_session_runs(
        restartable_redis, processes: Processes, checkpoint, face_clip) -> None:
    url = restartable_redis.url
    env = pipeline_env(checkpoint, url)
    infer = processes.start("infer", "infer", "--name", "w1", env=env)
    asr = processes.start("asr", "asr", "--asr", "none", "--name", "a1", env=env)
    r = client(url)
    wait_for(lambda: "serving dmd:sessions" in asr.err() and "inference worker" in infer.err(), 60,
             "the workers", processes)
    capture = processes.start("capture", "capture", "--source", face_clip, "--session", "real", "--asr", "none",
                              env=env)
    rng = random.Random(0)
    doomed = 0  # entries of the group streams that can never be served: each must be dead-lettered
    starts = 0  # well-formed start events among them: an ASR worker runs those sessions (idle, no audio)
    with r.pipeline(transaction=False) as pipe:
        for k in range(GARBAGE):
            target = (WINDOWS, SESSIONS, SessionKeys("real").events, SessionKeys("ghost").afeat)[k % 4]
            entry = garbage(rng, k)
            pipe.xadd(target, entry)
            if target == WINDOWS:
                doomed += 1  # a notice that decodes names a session without data it can read
            elif target == SESSIONS:
                try:  # random fields can make a well-formed event: an end is acked, a start is run
                    starts += SessionEvent.from_fields(entry).event == "start"
                except MessageError:
                    doomed += 1
            if k % 1000 == 999:
                pipe.execute()
    assert capture.wait(120) == 0, capture.tail()
    wait_for(lambda: all_published(r, "real"), 120, "the real session's estimates", processes, alive=[infer, asr])
    def all_dead() -> bool:
        return pending(r) == 0 and int(r.get(f"{DEAD}:count") or 0) >= doomed

    try:
        wait_for(all_dead, 120, "every malformed entry dead-lettered", processes, alive=[infer, asr])
    except AssertionError:
        print("COUNTS", pending(r), r.get(f"{DEAD}:count"), doomed, r.xinfo_groups(WINDOWS), r.xinfo_groups(SESSIONS))
        raise
    assert int(r.xpending(SESSIONS, ASR_GROUP)["pending"]) <= starts
    assert infer.poll() is None and asr.poll() is None, processes.tails()
    assert "Traceback" not in infer.err() and "Traceback" not in asr.err(), processes.tails()
    assert np.isfinite([e["sentiment"] for e in estimates(r, "real")]).all()
    r.close()
