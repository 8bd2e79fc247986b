"""The inference worker: window notices in, estimates out.

A worker is one member of the consumer group "infer" on `dmd:windows`; add workers (on any machine)
to serve more sessions. For each window notice it

1. waits for the session's ASR watermark to pass the window's end, at most `asr.grace_s` (or, while
   the ASR is catching up after an outage, at most `asr.catch_up_s`);
2. reads the window's span back from the session's streams (acoustic frames, face frames, words);
3. aligns them into the model's input (`dmd_model.features.align_window`, the same function that
   made the training data, with the checkpoint's own feature profile: a live-v2 checkpoint gets
   voice and face on fixed time slots, as it was trained; a live-v4 one its voice normalised by the
   session's running statistic, `dmd_model.features.voice_norm`), off the event loop;
4. runs DMD on a micro-batch of windows from any sessions (up to `max_batch`, waiting at most
   `max_wait_ms` for a batch to fill), in `torch.inference_mode`, on CUDA with bf16 when present,
   in a thread of its own;
5. takes the window's emotions: the emotion head's, pooled with the face's (the face expert's
   probabilities over the window's frames with a face) when the model does not read the face, or the
   face's alone for a checkpoint without an emotion head, and with the voice expert's (a linear model
   on the session-normalised voice) where it read the window (`fusion.window_emotions`); each modality
   says whether it was observed (`present`) and whether the model used it (`used`);
6. publishes the estimate (stream + pub/sub, once per window, with the session's EMA of sentiment
   and of emotions) and only then acknowledges the notice.

A notice or session entry that cannot be decoded goes to `dmd:dead` with its reason; Redis away (a
restart, a cluster's failover) is waited out with the window in hand, up to 30 s for its read and
for its publish; any other failure leaves the notice pending, to be claimed again (by this or another
worker) and dead-lettered after `max_deliveries`. `stop()` (SIGTERM) stops taking notices and finishes those in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from dmd_model.artefacts.predict import Predictor, sentiment_label
from dmd_model.features import SessionVoice, align_window, check_profile, voiced_moments
from dmd_model.features.alignment import AlignedWindow, select_words, stack_windows
from dmd_model.features.text import PrecomputedTokens
from dmd_model.features.voice_expert import load_voice_expert, voice_vector
from dmd_types import EMOTIONS, Frames, Word
from dmd_types.words import confident_words
from stream.codec import MessageError
from stream.connection import backoff_for, retry_outage
from stream.consumer import Delivery, PartitionedConsumer
from stream.estimate import Estimate, ModalityResult
from stream.keys import INFER_GROUP, WINDOWS, SessionKeys
from stream.lifecycle import session_events
from stream.messages import ACOUSTIC, FACE, AsrWords, WindowNotice
from stream.publish import EstimatePublisher
from stream.session import Session, WriterLag, words_between

from ..metrics import Metrics
from ..settings import AsrSettings, InferenceSettings
from .fusion import FusionWeights, window_emotions

log = logging.getLogger("dmd.infer")

# Windows reading their span from Redis at once. Each holds up to three pooled connections while it
# reads (afeat, vfeat and words together) and redis-py's asyncio pool refuses a 101st connection
# with MaxConnectionsError, which a burst of notices (a file replayed flat out) would reach without this bound.
READS_AT_ONCE = 24
# How long a window's read waits for Redis to come back (a cluster's failover takes a few seconds)
# before the window is left pending, to be claimed again later.
READ_OUTAGE_S = 30.0
# Sessions whose voice statistic (live-v4) a worker keeps; 51 numbers each.
MAX_SESSION_VOICES = 10_000


@dataclass
class _Job:
    delivery: Delivery
    notice: WindowNotice
    words: list[Word]
    audio: Frames
    visual: Frames
    received: float  # monotonic, when the notice was read
    latency: dict[str, float] = field(default_factory=dict)
    voice_emotions: tuple[float, ...] | None = None  # the voice expert's, where it read the window
    window: AlignedWindow | None = None
    published: asyncio.Future | None = None  # set once the estimate is published, or the error that ended it


@contextlib.contextmanager
def _blamed(what: str) -> Iterator[None]:
    """A MessageError inside says which part of the window was malformed (its dead letter's reason)."""
    try:
        yield
    except MessageError as exc:
        raise MessageError(f"{what}: {exc.reason}") from None


def _named(probabilities: Sequence[float] | None) -> dict[str, float] | None:
    """A prediction's emotion vector (`EMOTIONS` order) as the estimate's name -> probability."""
    return None if probabilities is None else dict(zip(EMOTIONS, probabilities, strict=True))


def _settle(job: _Job, error: BaseException | None) -> None:
    if job.published is not None and not job.published.done():
        if error is None:
            job.published.set_result(None)
        else:
            job.published.set_exception(error)


class InferenceWorker:
    """One inference worker (see the module docstring). `run()` until `stop()`."""

    def __init__(self, redis: aioredis.Redis, predictor: Predictor, settings: InferenceSettings | None = None, *,
                 asr_grace_s: float = AsrSettings.grace_s, name: str | None = None, metrics: Metrics | None = None,
                 text_encoder: Any = None, ended_ttl_s: float = 3600.0,
                 asr_catch_up_s: float = AsrSettings.catch_up_s,
                 min_confidence: float = AsrSettings.min_confidence) -> None:
        self.redis = redis
        self.predictor = predictor
        # windows are aligned as the checkpoint's training data was (refused here if it cannot be)
        self.profile = check_profile(predictor.checkpoint.profile)
        # how DMD's emotions and the face's are pooled: by their measured accuracies (fusion.py)
        self.fusion = FusionWeights.from_metrics(getattr(predictor.checkpoint, "metrics", None))
        self.settings = settings or InferenceSettings()
        # the voice's emotions from the voice expert, pooled with the model's (fusion.py)
        self.voice_expert = load_voice_expert() if self.settings.voice_expert else None
        if self.voice_expert is not None:
            self.fusion = self.fusion.with_voice(
                self.voice_expert.accuracy, "the voice expert's test accuracy on the RAVDESS and EmoDB test speakers")
        self.asr_grace_s = asr_grace_s
        self.asr_catch_up_s = asr_catch_up_s
        self.min_confidence = min_confidence
        self.ended_ttl_s = ended_ttl_s  # the estimates of an ended session expire this long after they are published
        self.metrics = metrics or Metrics()
        s = self.settings
        # every partition of dmd:windows (one on one Redis, several on a cluster: stream.keys.Partitions)
        self.consumer = PartitionedConsumer(redis, WINDOWS, INFER_GROUP, name, count=s.max_batch, block_ms=200,
                                            claim_idle_ms=s.claim_idle_ms, max_deliveries=s.max_deliveries)
        self.publisher = EstimatePublisher(redis, alpha=s.ema_alpha, estimates_maxlen=s.estimates_history)
        self.name = self.consumer.name
        self._text_encoder = text_encoder
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="dmd-model")
        self._prep_threads = ThreadPoolExecutor(2, thread_name_prefix="dmd-align")
        self._ready: asyncio.Queue[_Job] = asyncio.Queue(maxsize=4 * s.max_batch)
        self._handling: set[asyncio.Task] = set()  # one task per notice, from its read to its end
        self._chains: dict[str, asyncio.Future] = {}
        self._info: dict[str, tuple[float, dict[str, Any]]] = {}  # session -> the last of its windows being prepared
        self._asr_lags: dict[str, WriterLag] = {}  # session -> how far its ASR usually is behind a window's end
        self._voices: dict[str, SessionVoice] = {}  # session -> its voice statistic (live-v4), least recent first
        self._stopping = asyncio.Event()
        self._slots = asyncio.Semaphore(4 * s.max_batch)  # notices being prepared or waiting for the model
        self._reads = asyncio.Semaphore(READS_AT_ONCE)
        self.published = 0
        self.duplicates = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop taking notices; `run` returns once the ones in flight are published."""
        self._stopping.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self._text_encoder is None:
            from dmd_model.features import load_text_encoder

            self._text_encoder = await loop.run_in_executor(
                self._prep_threads, load_text_encoder, self.profile.text_model)
        await self.consumer.ensure_group()
        if getattr(self.predictor, "emotion_classes", 0):
            log.info("the face's emotion is pooled with the model's by weights %s", self.fusion.describe())
        else:
            log.info("the checkpoint has no emotion head: a window's emotions are the face's (the face expert's), "
                     "where a face is seen")
        batcher = asyncio.create_task(self._batch_loop(), name="dmd-infer-batcher")
        try:
            await self._read_loop()
            if self._handling:
                await asyncio.gather(*self._handling, return_exceptions=True)
        finally:
            batcher.cancel()
            await asyncio.gather(batcher, return_exceptions=True)
            await self.consumer.close()
            self._model_thread.shutdown(wait=False)
            self._prep_threads.shutdown(wait=False)

    async def _read_loop(self) -> None:
        while not self._stopping.is_set():
            free = self._slots._value  # type: ignore[attr-defined]
            if free == 0:
                await self._slots.acquire()
                self._slots.release()
                continue
            deliveries = await self.consumer.read(count=min(free, self.settings.max_batch), block_ms=200)
            self.metrics.pending.set(len(self._handling))
            loop = asyncio.get_running_loop()
            for delivery in deliveries:
                await self._slots.acquire()
                # windows of one session reach the model in notice order: each waits for the one
                # before it (if this worker has it) to be queued first
                try:
                    session = delivery.decode(WindowNotice).session
                except MessageError:
                    session = None
                previous = self._chains.get(session) if session else None
                mine = loop.create_future()
                if session:
                    self._chains[session] = mine
                task = asyncio.create_task(self._handle(delivery, time.monotonic(), previous, mine))
                self._handling.add(task)
                task.add_done_callback(self._handling.discard)

    # -- one window, from its notice to its end ----------------------------------------------------
    async def _handle(self, delivery: Delivery, received: float, previous: asyncio.Future | None,
                      mine: asyncio.Future) -> None:
        """A notice's whole life: read and queue its window, wait for the batch loop to publish its
        estimate. The delivery's context manager ends it: acked once the estimate is published,
        dead-lettered on a MessageError (a notice, session entry or estimate that can never be used),
        left pending for a retry on any other error."""
        try:
            async with delivery:
                with _blamed("window notice"):
                    notice = delivery.decode(WindowNotice)
                async with self._reads:
                    with _blamed("session data"):
                        # a failover or an outage is ridden out here, the window kept in hand: a window
                        # released at each failed try would be delivered again and counted each time
                        job = await retry_outage(self._read_window, delivery, notice, received,
                                                 backoff=backoff_for(self.redis), max_outage_s=READ_OUTAGE_S,
                                                 what=f"reading window {delivery.id}")
                if previous is not None:
                    await asyncio.shield(previous)
                job.published = asyncio.get_running_loop().create_future()
                await self._ready.put(job)
                self._queued(mine)
                await job.published
        except Exception as exc:  # noqa: BLE001 - a worker must outlive any one window
            log.warning("window entry %s failed (%s: %s); it stays pending for a retry", delivery.id,
                        type(exc).__name__, exc)
            self.metrics.failures.inc()
        finally:
            if delivery.outcome == "dead":
                self.metrics.dead_letters.inc()
            self._queued(mine)
            self._slots.release()

    def _queued(self, mine: asyncio.Future) -> None:
        """This window is queued for the model (or will never be): the next of its session may follow."""
        if not mine.done():
            mine.set_result(None)
        for session, future in list(self._chains.items()):
            if future is mine:
                del self._chains[session]

    async def _read_window(self, delivery: Delivery, notice: WindowNotice, received: float) -> _Job:
        session = Session(self.redis, notice.session)
        t0, t1 = notice.t_start, notice.t_end
        latency: dict[str, float] = {}
        start = time.monotonic()
        info = await self._session_info(notice.session)
        if info is None:
            raise MessageError(f"session {notice.session!r} never started (no start event in its events stream, or "
                               "its keys expired): a notice for an unknown session", "window.session")
        ended = info.get("_ended_at")
        if isinstance(ended, (int, float)) and t0 >= ended:
            raise MessageError(f"window {notice.window} starts at {t0:g} s, after session {notice.session!r} ended "
                               f"at {ended:g} s", "window.t_start")
        if self.asr_grace_s > 0 and info.get("asr", "") != "none" and info.get("has_audio", True):
            await session.wait_until(AsrWords, t1, timeout=self.asr_grace_s, catch_up_s=self.asr_catch_up_s,
                                     lag=self._asr_lag(notice.session))
        latency["asr_wait"] = (time.monotonic() - start) * 1000
        start = time.monotonic()
        audio, visual, words = await asyncio.gather(
            session.read_frames(ACOUSTIC, t0, t1), session.read_frames(FACE, t0, t1),
            session.read_span(AsrWords, t0, t1))
        latency["read"] = (time.monotonic() - start) * 1000
        said = confident_words(words_between(words, t0, t1), self.min_confidence)
        return _Job(delivery, notice, said, audio, visual, received, latency)

    def _asr_lag(self, session: str) -> WriterLag:
        """The session's ASR lag history (`Session.wait_until`); forgotten, like `_info`, past 10,000 sessions."""
        lag = self._asr_lags.get(session)
        if lag is None:
            if len(self._asr_lags) > 10_000:
                self._asr_lags.clear()
            lag = self._asr_lags[session] = WriterLag()
        return lag

    async def _session_info(self, session: str) -> dict[str, Any] | None:
        """The session's start announcement (`info`: asr engine, media, clock origin; `_ended_at`:
        where its audio ended, once it has), cached for 30 s; None for a session that never started."""
        cached = self._info.get(session)
        if cached is not None and time.monotonic() - cached[0] < 30:
            return cached[1]
        info: dict[str, Any] | None = None
        try:
            for event in await session_events(self.redis, session):
                if event.event == "start":
                    info = dict(event.info)
                elif event.event == "end" and info is not None and event.t_end is not None:
                    info["_ended_at"] = event.t_end
        except MessageError as exc:
            log.warning("session %s has an unreadable lifecycle event: %s", session, exc)
        if info is None:
            # no start event: a session nobody announced, or one whose events a Redis restart without
            # persistence took away while its capture went on writing: that one has data streams
            keys = SessionKeys(session)
            if not await self.redis.exists(keys.audio, keys.afeat, keys.vfeat):
                return None  # not cached: a start that comes later counts
            info = {}
        if len(self._info) > 10_000:
            self._info.clear()
        self._info[session] = (time.monotonic(), info)
        return info

    def _align_batch(self, jobs: list[_Job]) -> None:
        """Align a micro-batch of windows: their words go through the text encoder in one pass
        (`encode_batch`), then each window through the same `align_window`, with the same profile, as
        the checkpoint's training data."""
        encoder = self._text_encoder
        chosen = [[w.text for w in select_words(job.words, job.notice.t_start, job.notice.t_end)] for job in jobs]
        if hasattr(encoder, "encode_batch") and len(jobs) > 1:
            tokens = encoder.encode_batch(chosen)
            encoders = [PrecomputedTokens(encoder.dim, words, t) for words, t in zip(chosen, tokens)]
        else:
            encoders = [encoder] * len(jobs)
        for job, enc in zip(jobs, encoders):
            t_start, t_end = job.notice.t_start, job.notice.t_end
            audio = job.audio
            if self.profile.voice_session or self.voice_expert is not None:
                voice = self._session_voice(job)
                if self.profile.voice_session:  # live-v4: the window aligned from the normalised frames
                    audio = voice.normalise_frames(job.audio, self.profile)
                if self.voice_expert is not None:
                    vector = voice_vector(job.audio, t_start, t_end, voice, self.profile)
                    job.voice_emotions = None if vector is None else self.voice_expert.probabilities(vector)
            job.window = align_window(job.words, audio, job.visual, t_start, t_end, text_encoder=enc,
                                      profile=self.profile)

    def _session_voice(self, job: _Job) -> SessionVoice:
        """The session's running statistic of its voice (live-v4's normalisation, the voice expert's
        input), after adding the voiced frames up to the window's end that no earlier window of the
        session added. Batches are aligned one at a time and a session's windows in notice order, so
        the statistic grows as the session goes on; a worker that joins a session late starts from
        the prior (its first windows are barely normalised), as a new session does."""
        session = job.notice.session
        voice = self._voices.pop(session, None) or SessionVoice(self.profile.voice_prior_frames)
        self._voices[session] = voice  # the most recently used last: the oldest are dropped first
        while len(self._voices) > MAX_SESSION_VOICES:
            del self._voices[next(iter(self._voices))]
        voice.add(voiced_moments(job.audio, self.profile, after=voice.until, before=job.notice.t_end))
        return voice

    # -- batching, the model, publishing ---------------------------------------------------------------
    async def _batch_loop(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._ready.get()]
            deadline = time.monotonic() + s.max_wait_ms / 1000
            while len(batch) < s.max_batch:
                # stopping (SIGTERM): run what is here now rather than wait for the batch to fill
                remaining = 0.0 if self._stopping.is_set() else deadline - time.monotonic()
                if remaining <= 0 and self._ready.empty():
                    break
                try:
                    batch.append(self._ready.get_nowait() if remaining <= 0 else
                                 await asyncio.wait_for(self._ready.get(), min(remaining, 0.1)))
                except asyncio.QueueEmpty:
                    break
                except asyncio.TimeoutError:
                    continue  # look at the deadline and at stopping again
            await self._run_batch(batch, loop)

    async def _run_batch(self, batch: list[_Job], loop: asyncio.AbstractEventLoop) -> None:
        """Align, predict and publish a batch, in window order; each job's `published` future gets
        its outcome (None, or the error that ends its delivery)."""
        try:
            start = time.monotonic()
            await loop.run_in_executor(self._prep_threads, self._align_batch, batch)
            align_ms = (time.monotonic() - start) * 1000
            arrays = stack_windows([job.window for job in batch])
            start = time.monotonic()
            predictions = await loop.run_in_executor(
                self._model_thread, self.predictor.predict, arrays["text"], arrays["audio"], arrays["visual"])
            model_ms = (time.monotonic() - start) * 1000
        except Exception as exc:  # noqa: BLE001 - every window of the batch ends with this error
            log.error("a batch of %d windows failed before publishing (%s: %s)", len(batch), type(exc).__name__, exc)
            for job in batch:
                _settle(job, exc)
            return
        self.metrics.batch_size.observe(len(batch))
        for job, prediction in zip(batch, predictions):
            job.latency["align"] = align_ms
            try:
                with _blamed("estimate"):
                    await self._publish(job, prediction, model_ms)
            except Exception as exc:  # noqa: BLE001 - ends this window's delivery (dead letter or retry)
                _settle(job, exc)
            else:
                _settle(job, None)

    async def _publish(self, job: _Job, prediction: Any, model_ms: float) -> None:
        notice, window = job.notice, job.window
        assert window is not None
        trained = self.predictor.modalities
        used = {m: bool(window.present[m]) and m in trained for m in ("text", "audio", "visual")}
        emotions = window_emotions(prediction.emotions, prediction.modality_emotions, window.face_emotions,
                                   face_present=bool(window.present["visual"]), visual_used=used["visual"],
                                   weights=self.fusion, voice=job.voice_emotions)
        modalities = {
            m: ModalityResult(present=bool(window.present[m]), used=used[m],
                              homo=float(prediction.homo[m]), hetero=float(prediction.hetero[m]),
                              emotions=_named(emotions.modalities[m]))
            for m in ("text", "audio", "visual")
        }
        latency = dict(job.latency)
        latency["model"] = model_ms
        latency["notice_to_publish"] = (time.monotonic() - job.received) * 1000
        latency["notice_sent_to_publish"] = max(0.0, (time.time() - notice.notice_time) * 1000)
        info = self._info.get(notice.session, (0, {}))[1]
        origin = info.get("origin_wall")
        if info.get("real_time") and isinstance(origin, (int, float)) and origin > 0:
            latency["window_end_to_publish"] = max(0.0, (time.time() - (origin + notice.t_end)) * 1000)
        estimate = Estimate(
            session=notice.session, window=notice.window, t_start=notice.t_start, t_end=notice.t_end,
            sentiment=float(prediction.sentiment), label=sentiment_label(prediction.sentiment,
                                                                          self.settings.neutral_band),
            modalities=modalities, edges_homo=prediction.edges_homo, edges_hetero=prediction.edges_hetero,
            words=tuple(window.words), latency_ms={k: round(v, 3) for k, v in latency.items()},
            model=self.predictor.name, checkpoint=self.predictor.sha256[:16],
            window_emotions=_named(emotions.fused),
        )
        ended = isinstance(info.get("_ended_at"), (int, float))
        publication = await self.publisher.publish(estimate, expire_s=int(self.ended_ttl_s) if ended else None)
        if publication.published:
            self.published += 1
            self.metrics.windows.inc()
            self.metrics.latency.observe(latency["notice_to_publish"] / 1000)
        else:
            self.duplicates += 1
            self.metrics.duplicates.inc()
