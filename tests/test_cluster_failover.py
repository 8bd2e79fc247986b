"""A Redis Cluster's reliability and security, on a real cluster of Debian's redis-server 7: three masters
with a replica each (`--cluster-replicas 1`, `cluster-node-timeout` 1000 ms), the default user off,
an `admin` user for the tests' own checks and the workers' user `dmd` with `acl_rule(cluster=True)` on
every node, the rule docs/DEPLOY.md gives. Every test runs the workers as that user.

- `dmd run` and `dmd watch` as `dmd`: one estimate per window, nothing refused on any node (`ACL LOG`),
  and every command of the rule is one the workers issue;
- two `dmd infer` processes, one killed with SIGKILL holding windows: the other claims them, every
  window one estimate;
- replicas stopped (SIGSTOP): a window's data and notice are on a replica before capture goes on
  (stream.replication's WAIT), and a replica that does not answer in time is not waited for again;
- a master killed with SIGKILL in the middle of four live sessions: its replica takes over, capture,
  inference and the subscriber carry on, every window gets exactly one estimate (none lost, none twice),
  and the time to recover is printed (`pytest -s`).

One cluster for the module (tests/cluster_fixtures.py); the tests run in file order and the last one
kills a master.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_fixtures import RedisClusterNodes

from stream.connection import connect
from stream.keys import ACL_CLUSTER_COMMANDS, CLUSTER_PARTITIONS, INFER_GROUP, Partitions, SessionKeys, acl_rule

pytest.register_assert_rewrite("pipeline_helpers")
from pipeline_helpers import (  # noqa: E402
    Processes,
    check_estimates,
    dead_letters,
    estimates,
    kill_a_worker_holding_windows,
    notices,
    pending,
    pending_of,
    pipeline_env,
    wait_for,
    write_clip,
)

pytest_plugins = ("pipeline_helpers",)  # fixtures: checkpoint, bars_clip, processes

USER = "dmd"
PARTS = Partitions(CLUSTER_PARTITIONS)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    pytest.importorskip("redis")
    password = secrets.token_urlsafe(18)
    nodes = RedisClusterNodes(tmp_path_factory.mktemp("cluster-failover"), replicas=1, node_timeout_ms=1000,
                              users=[[USER, "on", f">{password}", *acl_rule(cluster=True)]])
    nodes.worker_password = password  # type: ignore[attr-defined]
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


def worker_url(cluster: RedisClusterNodes) -> str:
    """The workers' URL: as `dmd`, through a node that is running."""
    port = next(p for p in cluster.ports if p in cluster.pids)
    return cluster.url_for(USER, cluster.worker_password, port)  # type: ignore[attr-defined]


def use_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        if name.startswith("DMD_") or name == "REDIS_URL":
            monkeypatch.setenv(name, value)


# -- reading back, as admin ----------------------------------------------------------------------------------
def estimate_ids(r, session: str) -> list[int]:
    """The milliseconds of the ids of `session`'s estimates: when each was published (Redis's clock)."""
    return [int(i.split(b"-")[0]) for i, _ in r.xrange(SessionKeys(session).estimates)]


def all_published(r, session: str, windows: int) -> bool:
    sent = set(notices(r, session))
    return len(sent) >= windows and {e["window"] for e in estimates(r, session)} >= sent


def check_one_estimate_per_window(r, session: str, windows: int) -> list[dict]:
    """The session's `windows` windows (as capture counted them) each have a notice and exactly one
    estimate; a notice sent twice (retried across a failover) is one window."""
    sent = sorted(set(notices(r, session)))
    assert len(sent) == windows, f"{session}: notices for windows {sent}, capture sent {windows}"
    found = estimates(r, session)
    check_estimates(found, sent, session=session, in_order=False)
    return found


def refused(cluster: RedisClusterNodes) -> dict[int, list[dict]]:
    """`dmd`'s refusals in the ACL LOG of every running node (redis-py's CLIENT SETINFO left out, as in
    tests/test_redis_security.py)."""
    found = {port: [e for e in entries if e.get("object") != "client|setinfo"]
             for port, entries in cluster.acl_log(USER).items()}
    return {port: entries for port, entries in found.items() if entries}


# -- the ACL user ---------------------------------------------------------------------------------------------
async def exercise_the_rest(url: str, session: str) -> None:
    """What a short `dmd run` without a recogniser does not reach, on a cluster: an ASR worker's hold on
    a session (the lease script on the partition's node), a dead letter, a window published a second
    time (UNWATCH), one published by a worker not told the session ended (TTL), the group metrics
    (XINFO GROUPS), waiting for words (XREAD)."""
    from stream.consumer import GroupConsumer
    from stream.estimate import Estimate
    from stream.keys import ASR_GROUP
    from stream.lifecycle import SessionLease
    from stream.messages import AsrWords
    from stream.publish import EstimatePublisher
    from stream.session import Session
    from workers.metrics import Metrics, sample_group
    from workers.wiring import open_redis

    async with open_redis(url) as r:
        sessions = PARTS.for_session("sessions", session)
        asr = GroupConsumer(r, sessions, ASR_GROUP, "asr-1", block_ms=0, dead_stream=PARTS.for_session("dead", session))
        [start, *rest] = await asr.read()  # the session's start and end events
        await SessionLease(r, start.id, asr.name, stream=sessions).renew()
        again = GroupConsumer(r, sessions, ASR_GROUP, "asr-1", block_ms=0,
                              dead_stream=PARTS.for_session("dead", session))
        reread = await again.read()
        assert [d.id for d in reread] == [start.id, *(d.id for d in rest)]
        await again.dead_letter(reread[0], "a test of the ACL")
        [entry] = await r.xrevrange(SessionKeys(session).estimates, count=1)
        last = Estimate.from_json(entry[1][b"estimate"])
        publisher = EstimatePublisher(r)
        assert not (await publisher.publish(last)).published, "the window had its estimate already"
        later = dataclasses.replace(last, window=last.window + 1, t_start=last.t_start + 0.5,
                                    t_end=last.t_end + 0.5, smoothed=None)
        assert (await publisher.publish(later)).published
        await sample_group(r, Metrics("test"), PARTS.keys("windows"), INFER_GROUP)
        assert await Session(r, session).wait_until(AsrWords, 1.0, timeout=0.05) is None


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_dmd_run_as_the_cluster_acl_user_gets_one_estimate_per_window_and_no_node_refuses_anything(
        cluster: RedisClusterNodes, checkpoint: Path, bars_clip: Path, monkeypatch, capsys) -> None:
    pytest.importorskip("av")
    pytest.importorskip("opensmile")
    from workers.cli import main

    cluster.flush()
    cluster.reset_acl_log()
    for port in cluster.masters():
        admin = cluster.node_client(port)
        admin.config_resetstat()
        admin.script_flush()
        admin.close()
    url = worker_url(cluster)
    use_env(monkeypatch, pipeline_env(checkpoint, url))
    capsys.readouterr()
    code = main(["run", "--source", str(bars_clip), "--speed", "0", "--asr", "none", "--session", "acl", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    report = [json.loads(line) for line in err.splitlines() if line.startswith('{"session"')][-1]
    assert report["missing"] == [] and report["windows"] == report["estimates"] >= 7, report
    assert cluster.worker_password not in out + err  # type: ignore[attr-defined]

    # dmd watch of every session: the history (SCAN on every master), then SSUBSCRIBE
    code = main(["watch", "--json", "--history", "100", "--timeout", "0.5"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    shown = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    r = cluster.client()
    found = check_one_estimate_per_window(r, "acl", report["windows"])
    assert [(e["window"], e["sentiment"]) for e in shown] == [(e["window"], e["sentiment"]) for e in found]
    r.close()
    asyncio.run(exercise_the_rest(url, "acl"))

    assert refused(cluster) == {}, "a node refused the workers something"
    used: set[str] = set()
    for port in cluster.masters():
        admin = cluster.node_client(port)
        used |= {name.removeprefix("cmdstat_") for name in admin.info("commandstats")}
        admin.close()
    # ASKING is sent only on an ASK redirection, during a resharding, which this test does not do
    unused = set(ACL_CLUSTER_COMMANDS) - used - {"asking"}
    assert not unused, f"in the cluster rule but never used: {sorted(unused)}"


def test_docs_deploy_gives_the_cluster_rule_that_the_code_has() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "DEPLOY.md").read_text().split("### Redis Cluster")[1]
    rule = " ".join(acl_rule(cluster=True))
    given = [line for line in text.splitlines() if line.startswith(f"user {USER} on ")]
    assert given, "docs/DEPLOY.md gives no rule for the workers' user on a cluster"
    assert all(line.endswith(f" {rule}") for line in given), f"docs/DEPLOY.md gives {given}, the code has {rule}"


# -- an inference worker killed ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_windows_of_an_inference_worker_killed_on_a_cluster_are_claimed_by_the_other(
        cluster: RedisClusterNodes, processes: Processes, checkpoint: Path, bars_clip: Path) -> None:
    pytest.importorskip("av")
    pytest.importorskip("opensmile")
    cluster.flush()
    env = pipeline_env(checkpoint, worker_url(cluster), inference_claim_idle_ms=1500)
    r = cluster.client()
    w2, capture, held = kill_a_worker_holding_windows(processes, r, env, bars_clip, "bob")
    assert capture.wait(60) == 0, capture.tail()
    stats = capture.json_lines()[-1]
    wait_for(lambda: all_published(r, "bob", stats["windows"]), 60, "every window published after the kill",
             processes, alive=[w2])
    check_one_estimate_per_window(r, "bob", stats["windows"])
    wait_for(lambda: pending(r) == 0, 10, "no window left pending", processes)
    assert not pending_of(r, "w1"), f"w1's windows {held} were not all claimed"
    assert not dead_letters(r)
    w2.signal(signal.SIGTERM)
    assert w2.wait(30) == 0, w2.tail()
    assert refused(cluster) == {}
    r.close()


# -- waiting for the replica -----------------------------------------------------------------------------------
def replica_has(cluster: RedisClusterNodes, key: str, entry_id: str) -> bool:
    """Whether the replica of `key`'s master has stream entry `entry_id` of `key` (read with READONLY)."""
    replica = cluster.node_client(cluster.replica_of(cluster.master_of(key)))
    try:
        replica.execute_command("READONLY")
        return bool(replica.xrange(key, entry_id, entry_id))
    finally:
        replica.close()


@pytest.mark.timeout(60)
def test_a_window_notice_and_its_data_are_on_a_replica_before_capture_goes_on(cluster: RedisClusterNodes,
                                                                             caplog) -> None:
    """The replicas of the session's master and of its partition's master are stopped (SIGSTOP):
    `notify_window` returns only after they are continued (SIGCONT) and have the window's audio and its
    notice. A replica that does not answer within the timeout is logged, the write stands, and its
    master is not waited for again until it is checked."""
    import numpy as np

    from stream.messages import PcmChunk
    from stream.replication import Replication
    from stream.session import Session
    from stream.window import WindowSpec

    cluster.flush()
    sid = "replicated"
    windows = PARTS.for_session("windows", sid)
    audio = SessionKeys(sid).audio
    replicas = {cluster.replica_of(cluster.master_of(key)) for key in (windows, audio)}

    def stop_replicas(seconds: float) -> tuple[threading.Event, threading.Timer]:
        """Stop the replicas for `seconds`; the event is set just before they are continued."""
        resumed = threading.Event()

        def resume() -> None:
            resumed.set()
            for port in replicas:
                cluster.resume(port)

        for port in replicas:
            cluster.pause(port)
        timer = threading.Timer(seconds, resume)
        timer.start()
        return resumed, timer

    async def main() -> None:
        r = connect(worker_url(cluster))
        session = Session(r, sid)
        spec = WindowSpec()
        chunk = await session.add(PcmChunk(0.0, np.zeros(int(spec.length * 16000), np.int16)))
        resumed, timer = stop_replicas(0.5)
        notice = await session.notify_window(spec.window(spec.first))
        assert resumed.is_set(), "the notice was sent while the replicas were stopped: not waited for"
        timer.join()
        assert replica_has(cluster, audio, chunk) and replica_has(cluster, windows, notice)
        assert (session.replication.waited, session.replication.timed_out) == (2, 0)  # the sync, the notice

        # a replica that does not answer in time (200 ms, stopped for 0.9 s, within cluster-node-timeout)
        impatient = Replication(r, timeout_ms=200)
        resumed, timer = stop_replicas(0.9)
        try:
            [first] = await impatient.write(windows, lambda pipe: pipe.xadd(windows, {b"probe": b"1"}))
            [second] = await impatient.write(windows, lambda pipe: pipe.xadd(windows, {b"probe": b"2"}))
        finally:
            timer.join()
        assert (impatient.waited, impatient.timed_out) == (0, 1), "the second write waited as well"
        assert {first, second} <= {i for i, _ in await r.xrange(windows)}
        await r.aclose()

    with caplog.at_level(logging.WARNING, logger="stream.replication"):
        asyncio.run(main())
    assert any("no replica acknowledged a write" in rec.getMessage() for rec in caplog.records)
    assert refused(cluster) == {}


# -- a master killed ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ten_second_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 s of colour bars and a tone: four live sessions run on while a master fails over."""
    return write_clip(tmp_path_factory.mktemp("media") / "bars_tone_10s.mp4", 10.0, face=False, sound="tone")


def pick_sessions(cluster: RedisClusterNodes) -> tuple[int, list[str]]:
    """The master to kill, and four sessions in four partitions: one with its keys and its partition of
    dmd:windows on that master, one with its keys there only, one with its partition there only, one
    with neither (every path a write can take across the failover)."""
    where = {}
    for sid in (f"room-{i}" for i in range(400)):
        where[sid] = (cluster.master_of(SessionKeys(sid).events), cluster.master_of(PARTS.for_session("windows", sid)))
    victim = where["room-0"][0]
    wanted = [(True, True), (True, False), (False, True), (False, False)]
    chosen: list[str] = []
    for keys_there, partition_there in wanted:
        chosen.append(next(sid for sid, (k, p) in where.items()
                           if (k == victim, p == victim) == (keys_there, partition_there)
                           and PARTS.of(sid) not in {PARTS.of(s) for s in chosen}))
    return victim, chosen


class ClusterWatch:
    """Polls, in a thread, until every running node reports cluster_state:ok with every slot served by
    a running master; `ok_at` is when it first did (monotonic)."""

    def __init__(self, cluster: RedisClusterNodes) -> None:
        self.cluster, self.ok_at = cluster, None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.cluster.cluster_ok():
                self.ok_at = time.monotonic()
                return
            time.sleep(0.01)

    def join(self) -> None:
        self._thread.join(65)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_master_killed_during_four_live_sessions_loses_no_window_and_publishes_none_twice(
        cluster: RedisClusterNodes, checkpoint: Path, ten_second_clip: Path, caplog, record_property) -> None:
    """Four sessions replay a 10 s clip in real time into the cluster (capture's own code, in this
    process, beside an inference worker and a `dmd watch` of every session); once each has an
    estimate, the master of two sessions' keys and two partitions of dmd:windows is killed (SIGKILL).
    Its replica takes over; every worker rides the failover out (capture's writes, the reads of every
    partition, publishing, the subscription, and an ASR worker, the engine that writes no words: its
    session holds, audio reads and watermarks), and at the end every window has exactly one estimate,
    nothing is pending, nothing went to the dead letters, the subscriber showed each window once and
    every session's words stream reached the end of its audio."""
    pytest.importorskip("av")
    pytest.importorskip("opensmile")
    from dmd_model.artefacts.predict import Predictor
    from dmd_model.features import load_text_encoder
    from stream.messages import AsrWords
    from stream.replication import replication_for
    from stream.session import Session
    from workers.asr.factory import make_engine_factory
    from workers.asr.worker import AsrWorker
    from workers.capture import Capture, FileSource
    from workers.infer.worker import InferenceWorker
    from workers.settings import InferenceSettings, PipelineSettings
    from workers.view.watch import watch

    cluster.flush()
    cluster.reset_acl_log()
    victim, sids = pick_sessions(cluster)
    replica = cluster.replica_of(victim)
    settings = PipelineSettings()
    moments: dict[str, float] = {}

    async def main() -> dict:
        r = connect(worker_url(cluster))  # the workers' client, as dmd
        admin = connect(cluster.url)  # the test's own look at the streams
        # a window whose XACK was lost with the master is claimed again after 3 s
        worker = InferenceWorker(r, Predictor(checkpoint, device="cpu", threads=1),
                                 InferenceSettings(claim_idle_ms=3000, device="cpu"), asr_grace_s=0.0,
                                 name="infer", text_encoder=load_text_encoder())
        inference = asyncio.create_task(worker.run())
        asr = AsrWorker(r, make_engine_factory("none")[1], name="asr", max_sessions=len(sids), claim_idle_ms=3000)
        asr_stop = asyncio.Event()
        asr_task = asyncio.create_task(asr.run(asr_stop))
        shown = io.StringIO()
        subscribed = asyncio.Event()
        watcher = asyncio.create_task(watch(r, None, as_json=True, history=0, out=shown, ready=subscribed))
        await asyncio.wait_for(subscribed.wait(), 20)
        captures = {sid: Capture(r, sid, FileSource(ten_second_clip, speed=1), settings) for sid in sids}
        running = {sid: asyncio.create_task(c.run(asr="none")) for sid, c in captures.items()}
        workers = [inference, watcher, asr_task, *running.values()]

        await _until_estimates(admin, sids, workers, 60)
        assert replication_for(r).waited > 0, "no write waited for a replica before the kill"
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, cluster.kill, victim)
        moments["kill"], moments["kill_wall"] = time.monotonic(), time.time()
        ok = ClusterWatch(cluster)
        stats = {sid: await asyncio.wait_for(task, 90) for sid, task in running.items()}  # captures carried on
        await loop.run_in_executor(None, ok.join)
        moments["cluster_ok"] = ok.ok_at or float("nan")
        windows = sum(s.windows for s in stats.values())

        async def every_window_published() -> bool:
            published = [len({e.window for e in await Session(admin, sid).estimates(1000)}) for sid in sids]
            return sum(published) >= windows or inference.done()

        deadline = time.monotonic() + 60
        while not await every_window_published() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not inference.done() and not watcher.done(), "the inference worker or the subscriber stopped"
        # a window whose XACK was lost with the master is pending again: claimed (after 3 s idle) and acked
        deadline = time.monotonic() + 30
        while await _pending(admin) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        # the ASR worker finished every session: its words stream reaches the end of the audio
        words_end: dict[str, float | None] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not asr_task.done():
            words_end = {sid: await Session(admin, sid).data_until(AsrWords) for sid in sids}
            if not asr.running and all((words_end[sid] or 0.0) >= stats[sid].end_time - 1e-3 for sid in sids):
                break
            await asyncio.sleep(0.1)
        assert not asr_task.done(), "the ASR worker stopped"
        asr_stop.set()
        await asyncio.wait_for(asr_task, 30)
        worker.stop()
        await asyncio.wait_for(inference, 30)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await r.aclose()
        await admin.aclose()
        return {"stats": stats, "shown": shown.getvalue(), "published": worker.published,
                "duplicates": worker.duplicates, "words_end": words_end,
                "asr_finished": sorted(f.session for f in asr.finished)}

    with caplog.at_level(logging.WARNING):
        result = asyncio.run(main())

    assert replica in cluster.masters(), "the killed master's replica did not take over"
    r = cluster.client()
    found = {sid: check_one_estimate_per_window(r, sid, result["stats"][sid].windows) for sid in sids}
    assert pending(r) == 0, "windows left pending"
    assert not dead_letters(r)
    shown = [json.loads(line) for line in result["shown"].splitlines() if line.startswith("{")]
    shown_windows = [(e["session"], e["window"]) for e in shown]
    assert len(shown_windows) == len(set(shown_windows)), "the subscriber showed a window twice"
    assert set(shown_windows) == {(sid, e["window"]) for sid in sids for e in found[sid]}
    assert refused(cluster) == {}, "a node refused the workers something"
    for sid in sids:
        assert result["words_end"][sid] >= result["stats"][sid].end_time - 1e-3, (sid, result["words_end"])
    assert result["asr_finished"] == sorted(sids), result["asr_finished"]

    # the time to recover: from the kill to cluster_state:ok on every node, and to the first estimate
    # published in a session whose keys were on the killed master (so on its replica, now master)
    kill_ms = moments["kill_wall"] * 1000
    after = [i for sid in sids[:2] for i in estimate_ids(r, sid) if i > kill_ms]  # sids[:2]: pick_sessions
    r.close()
    recovery = {"cluster_state_ok_s": round(moments["cluster_ok"] - moments["kill"], 2),
                "first_estimate_s": round((min(after) - kill_ms) / 1000, 2),
                "windows": sum(len(f) for f in found.values())}
    for name, value in recovery.items():
        record_property(name, value)
    print(f"\nRedis Cluster failover: master killed, cluster_state:ok after {recovery['cluster_state_ok_s']} s, "
          f"first estimate on its replica after {recovery['first_estimate_s']} s; {recovery['windows']} windows "
          f"of 4 sessions, one estimate each ({result['published']} published, {result['duplicates']} found "
          f"published already)")


async def _pending(admin) -> int:
    total = 0
    for key in PARTS.keys("windows"):
        total += int((await admin.xpending(key, INFER_GROUP))["pending"])
    return total


async def _until_estimates(admin, sids: list[str], workers: list[asyncio.Task], timeout: float) -> None:
    """Until every session has an estimate; fails at once if a worker ended."""
    deadline = time.monotonic() + timeout
    while True:
        assert not any(t.done() for t in workers), "a worker ended before the kill"
        if all([await admin.xlen(SessionKeys(sid).estimates) for sid in sids]):
            return
        assert time.monotonic() < deadline, f"no estimate in every session within {timeout} s"
        await asyncio.sleep(0.05)
