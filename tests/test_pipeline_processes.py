"""The live pipeline as separate OS processes (`dmd capture`, `dmd asr`, `dmd infer`, `dmd watch`)
against a real redis-server of the test's own: every window gets exactly one estimate, whatever
happens to a worker (SIGKILL, SIGTERM), to an entry (garbage) or to Redis (a restart)."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest
from redis_fixtures import RedisServer

from stream.codec import pack
from stream.keys import INFER_GROUP, WINDOWS, SessionKeys
from stream.messages import SessionEvent, WindowNotice

pytest.register_assert_rewrite("pipeline_helpers")
from pipeline_helpers import (  # noqa: E402
    Processes,
    all_published,
    check_estimates,
    client,
    consumers,
    dead_letters,
    estimates,
    kill_a_worker_holding_windows,
    notices,
    pending,
    pending_of,
    pipeline_env,
    wait_for,
)

pytest_plugins = ("pipeline_helpers",)  # fixtures: checkpoint, face_clip, bars_clip, processes

pytest.importorskip("av")
pytest.importorskip("opensmile")
pytest.importorskip("mediapipe")


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def capture_stats(proc) -> dict:
    lines = proc.json_lines()
    assert lines, f"dmd capture printed no statistics\n{proc.tail()}"
    return lines[-1]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_capture_asr_infer_and_watch_processes_give_every_window_one_estimate_in_order(
        restartable_redis: RedisServer, processes: Processes, checkpoint, face_clip) -> None:
    url = restartable_redis.url
    # inference waits up to 3 s for the ASR to pass a window (a busy test machine), not the default 0.25 s
    env = pipeline_env(checkpoint, url, asr_grace_s=3)
    infer = processes.start("infer", "infer", "--name", "w1", env=env)
    asr = processes.start("asr", "asr", "--asr", "whisper", "--max-sessions", "1", "--name", "a1", env=env)
    watch = processes.start("watch", "watch", "alice", "--json", "--history", "100", env=env)
    # real time, as a live source: the ASR keeps up, so the words reach the windows
    capture = processes.start("capture", "capture", "--source", face_clip, "--session", "alice", "--speed", "1",
                              "--asr", "whisper", env=env)
    assert capture.wait(90) == 0, capture.tail()
    stats = capture_stats(capture)
    r = client(url)
    wait_for(lambda: all_published(r, "alice", stats["windows"]), 90, "an estimate for every window", processes,
             alive=[infer, asr])

    sent = notices(r, "alice")
    assert len(sent) == stats["windows"] >= 7 and sent == sorted(sent)
    found = estimates(r, "alice")
    check_estimates(found, sent, session="alice")
    assert all(e["modalities"]["visual"]["present"] for e in found), "the demo face is in every frame"
    assert all(e["modalities"]["audio"]["present"] for e in found)
    words = [w["word"] for e in found for w in e["words"]]
    assert words and any(e["modalities"]["text"]["present"] for e in found), "the ASR's words reached no window"
    assert all("window_end_to_publish" in e["latency_ms"] for e in found), "a real-time session has it"
    assert pending(r) == 0
    assert not dead_letters(r)

    # `dmd watch --json` showed the same estimates, in the same order
    wait_for(lambda: len(watch.json_lines()) >= len(found), 15, "dmd watch shows every estimate", processes,
             alive=[watch])
    watch.signal(signal.SIGINT)
    watch.wait(15)
    assert [(e["window"], e["sentiment"]) for e in watch.json_lines()] == [(e["window"], e["sentiment"])
                                                                           for e in found]
    # and the ASR worker finished the session (its start entry acked, the watermark at the end)
    wait_for(lambda: r.xpending("dmd:sessions", "asr")["pending"] == 0, 30, "the ASR session finished", processes)
    for proc in (infer, asr):
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.tail()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_windows_of_a_worker_killed_with_sigkill_are_claimed_by_the_other_none_lost_none_twice(
        restartable_redis: RedisServer, processes: Processes, checkpoint, bars_clip) -> None:
    url = restartable_redis.url
    env = pipeline_env(checkpoint, url, inference_claim_idle_ms=1500)
    r = client(url)
    w2, capture, held = kill_a_worker_holding_windows(processes, r, env, bars_clip, "bob")
    assert capture.wait(60) == 0, capture.tail()
    stats = capture_stats(capture)
    wait_for(lambda: all_published(r, "bob", stats["windows"]), 60, "every window published after the kill",
             processes, alive=[w2])

    sent = notices(r, "bob")
    found = estimates(r, "bob")
    check_estimates(found, sent, session="bob", in_order=False)  # claimed windows come late
    wait_for(lambda: pending(r) == 0, 10, "no window left pending", processes)
    assert not pending_of(r, "w1"), f"w1's windows {held} were not all claimed"
    assert not dead_letters(r)
    w2.signal(signal.SIGTERM)
    assert w2.wait(30) == 0, w2.tail()
    assert "w2: " in w2.err() and " published" in w2.err()


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_malformed_entries_go_to_the_dead_letters_with_their_reason_and_the_worker_carries_on(
        restartable_redis: RedisServer, processes: Processes, checkpoint, bars_clip) -> None:
    url = restartable_redis.url
    r = client(url)
    # a notice that is no msgpack at all, and a notice of a session whose acoustic frames are malformed
    garbage = r.xadd(WINDOWS, {b"v": b"1", b"m": b"\xc1 this is not msgpack"}).decode()
    bad = {"type": "afeat", "t": np.array([1.0, 2.0]), "features": np.zeros((2, 3), np.float32)}  # 3, not 25
    r.xadd(SessionKeys("broken").afeat, {b"v": b"1", b"m": pack(bad)}, id="3000-0")
    r.xadd(SessionKeys("broken").events, SessionEvent("broken", "start", time.time(), "test").to_fields())
    ghost = r.xadd(WINDOWS, WindowNotice("ghost", 6, 0.0, 3.0, time.time()).to_fields()).decode()  # never started
    broken = r.xadd(WINDOWS, WindowNotice("broken", 6, 0.0, 3.0, time.time()).to_fields()).decode()
    env = pipeline_env(checkpoint, url)
    infer = processes.start("infer", "infer", "--name", "w1", env=env)
    capture = processes.start("capture", "capture", "--source", bars_clip, "--session", "carol", "--speed", "0",
                              "--asr", "none", env=env)
    assert capture.wait(90) == 0, capture.tail()
    stats = capture_stats(capture)
    wait_for(lambda: all_published(r, "carol", stats["windows"]), 90, "the good session's estimates", processes,
             alive=[infer])

    wait_for(lambda: len(dead_letters(r)) >= 3, 10, "three dead letters", processes, alive=[infer])
    letters = {d.entry_id: d for d in dead_letters(r)}
    assert set(letters) == {garbage, ghost, broken}, letters
    assert letters[ghost].reason.startswith("session data: window.session: session 'ghost' never started")
    assert letters[garbage].reason.startswith("window notice:") and "msgpack" in letters[garbage].reason
    assert letters[broken].reason.startswith("session data:") and "afeat.features" in letters[broken].reason
    for d in letters.values():
        assert d.stream == WINDOWS and d.group == INFER_GROUP and d.consumer == "w1" and d.deliveries == 1
    assert letters[broken].fields[b"v"] == b"1"  # the original entry travels with it
    assert int(r.get("dmd:dead:count")) == 3
    check_estimates(estimates(r, "carol"), notices(r, "carol"), session="carol")
    assert not estimates(r, "broken")
    assert pending(r) == 0
    assert infer.poll() is None, "the worker carried on"


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_sigterm_finishes_and_acknowledges_the_windows_in_flight(
        restartable_redis: RedisServer, processes: Processes, checkpoint, bars_clip) -> None:
    url = restartable_redis.url
    env = pipeline_env(checkpoint, url)
    # the worker holds a batch 4 s for more windows: SIGTERM comes while windows are in flight
    infer = processes.start("infer", "infer", "--name", "w1", "--max-wait-ms", "4000", "--max-batch", "64", env=env)
    r = client(url)
    wait_for(lambda: "w1" in consumers(r), 60, "the worker reading", processes, alive=[infer])
    capture = processes.start("capture", "capture", "--source", bars_clip, "--session", "dave", "--speed", "0",
                              "--asr", "none", env=env)
    held = wait_for(lambda: pending_of(r, "w1"), 60, "windows in flight", processes, alive=[infer])
    before = {e["window"] for e in estimates(r, "dave")}
    infer.signal(signal.SIGTERM)
    assert infer.wait(30) == 0, infer.tail()
    assert pending(r) == 0, "SIGTERM left windows unacknowledged"
    found = {e["window"] for e in estimates(r, "dave")}
    ids = {entry_id.decode(): WindowNotice.from_fields(f).window for entry_id, f in r.xrange(WINDOWS)}
    held_windows = {ids[h.decode()] for h in held}
    assert held_windows - before, "no window was in flight at SIGTERM"
    assert held_windows <= found, f"windows in flight at SIGTERM {held_windows}, published {found}"
    # everything it took was published once; what it had not taken waits in the stream for another
    last = {g["name"].decode(): g for g in r.xinfo_groups(WINDOWS)}[INFER_GROUP]["last-delivered-id"].decode()
    taken = {k for i, k in ids.items() if _id(i) <= _id(last)}
    check_estimates(estimates(r, "dave"), taken, session="dave")
    assert f"w1: {len(taken)} published, 0 duplicates" in infer.err()
    capture.wait(60)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_workers_reconnect_and_carry_on_when_redis_restarts_mid_run(
        restartable_redis: RedisServer, processes: Processes, checkpoint, face_clip) -> None:
    url = restartable_redis.url
    env = pipeline_env(checkpoint, url)
    infer = processes.start("infer", "infer", "--name", "w1", env=env)
    asr = processes.start("asr", "asr", "--asr", "none", "--name", "a1", env=env)
    watch = processes.start("watch", "watch", "erin", "--json", "--history", "100", env=env)
    r = client(url)
    wait_for(lambda: "w1" in consumers(r), 60, "the worker reading", processes, alive=[infer, asr])
    capture = processes.start("capture", "capture", "--source", face_clip, "--session", "erin", "--speed", "1",
                              "--asr", "none", env=env)
    wait_for(lambda: len(estimates(r, "erin")) >= 2, 60, "the first estimates", processes,
             alive=[infer, asr, capture])
    before = len(estimates(r, "erin"))
    # SHUTDOWN SAVE and start again on the same port: what was written survives (a persistent
    # deployment); without SAVE the streams and groups would be gone, which no worker can undo
    r.close()
    restartable_redis.stop(save=True)
    time.sleep(0.5)
    restartable_redis.start()
    r = client(url)
    assert capture.wait(90) == 0, capture.tail()
    stats = capture_stats(capture)
    wait_for(lambda: all_published(r, "erin", stats["windows"]), 90, "every window after the restart", processes,
             alive=[infer, asr])
    sent = notices(r, "erin")
    found = estimates(r, "erin")
    assert len(found) > before
    # a notice whose XADD landed just before the connection dropped may be sent again: still one estimate
    # (and a window whose read failed as Redis went down is retried after later ones: not in order)
    check_estimates(found, set(sent), session="erin", in_order=False)
    wait_for(lambda: pending(r) == 0, 15, "no window left pending", processes)
    assert not dead_letters(r)
    wait_for(lambda: r.xpending("dmd:sessions", "asr")["pending"] == 0, 30, "the ASR session finished", processes)
    assert "Redis unreachable" in infer.err() or "retrying" in infer.err()
    # the watcher reconnected too and shows every estimate once
    wait_for(lambda: {e["window"] for e in watch.json_lines()} >= {e["window"] for e in found}, 20,
             "dmd watch carries on after the restart", processes, alive=[watch])
    shown = [e["window"] for e in watch.json_lines()]
    assert len(shown) == len(set(shown))
    for proc in (infer, asr, watch):
        proc.signal(signal.SIGTERM if proc is not watch else signal.SIGINT)
        assert proc.wait(30) in (0, 130), proc.tail()


@pytest.mark.timeout(60)
def test_dmd_infer_exits_with_the_reason_when_its_worker_cannot_start(
        restartable_redis: RedisServer, checkpoint, caplog: pytest.LogCaptureFixture) -> None:
    from workers.cli import main

    r = client(restartable_redis.url)
    r.set(WINDOWS, b"not a stream")  # XGROUP CREATE fails with WRONGTYPE
    with caplog.at_level("ERROR", logger="dmd"):
        code = main(["infer", "--redis", restartable_redis.url, "--checkpoint", str(checkpoint), "--device", "cpu"])
    assert code == 1, "dmd infer must not wait for a signal with its worker gone"
    assert any("WRONGTYPE" in rec.getMessage() for rec in caplog.records)
