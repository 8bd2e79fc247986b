"""Per-session normalisation of the voice (issue 14, profile live-v4): the running statistic of a
session's voiced frames, the same code offline (`dmd extract`) and live (the inference worker)."""

from __future__ import annotations

import asyncio
import math
import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from dmd_model.features import (
    AUDIO_NAMES,
    LIVE_V1,
    LIVE_V2,
    LIVE_V4,
    FeatureError,
    SessionVoice,
    VoiceMoments,
    align_window,
    check_profile,
    normalise_sessions,
    voiced_mask,
    voiced_moments,
)
from dmd_model.features.alignment import voice_positions
from dmd_model.features.voice_norm import session_order
from dmd_types import Frames
from stream.connection import connect
from stream.estimate import validate_estimate
from stream.lifecycle import start_session
from stream.messages import ACOUSTIC, WindowNotice
from stream.session import Session
from stream.window import WindowSpec

pytest.register_assert_rewrite("test_infer_face", "pipeline_helpers")
from pipeline_helpers import run_worker_until_published  # noqa: E402
from test_infer_face import OneTokenPerWord, small_checkpoint, worker_for  # noqa: E402

F0 = AUDIO_NAMES.index("F0semitoneFrom27.5Hz_sma3nz")
LOUDNESS = AUDIO_NAMES.index("Loudness_sma3")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RAVDESS = SHARED / "emotion_speech" / "ravdess"


def speaker_frames(seconds: float, pitch: float, rng: np.random.Generator, t0: float = 0.0) -> Frames:
    """Acoustic frames at 100 Hz in openSMILE's units: voiced in 0.6 s bursts with 0.4 s pauses
    (F0 and loudness 0 there), a speaker's mean pitch `pitch` semitones above 27.5 Hz."""
    t = t0 + np.arange(0.005, seconds, 0.01)
    raw = np.asarray(LIVE_V2.audio_mean) + rng.normal(size=(len(t), len(AUDIO_NAMES))) * np.asarray(LIVE_V2.audio_std)
    speaking = ((t - t0) % 1.0) < 0.6
    raw[:, F0] = np.where(speaking, pitch + rng.normal(size=len(t)) * 2.0, 0.0)
    raw[:, LOUDNESS] = np.where(speaking, 0.8 + 0.1 * rng.normal(size=len(t)), 0.0)
    return Frames(t, raw.astype(np.float32), voiced_mask(raw))


# --- the statistic -----------------------------------------------------------------------------------

def positions_of(frames: Frames, t_start: float, t_end: float, profile=LIVE_V4) -> np.ndarray:
    return align_window([], frames, Frames.empty(55), t_start, t_end, OneTokenPerWord(), profile).audio


def test_without_voiced_frames_the_statistic_is_the_prior_and_changes_nothing() -> None:
    frames = speaker_frames(3.0, 20.0, np.random.default_rng(0))
    voice = SessionVoice(500)
    assert np.allclose(voice.positions(frames, 0.0, 3.0, LIVE_V4), positions_of(frames, 0.0, 3.0), atol=1e-5)
    voice.add(voiced_moments(frames.between(0.7, 0.99), LIVE_V4))
    assert voice.n == 0  # a pause: no voiced frame counted
    assert np.allclose(voice.positions(frames, 0.0, 3.0, LIVE_V4), positions_of(frames, 0.0, 3.0), atol=1e-5)


def test_the_alignments_voice_positions_are_align_windows() -> None:
    frames = speaker_frames(20.0, 20.0, np.random.default_rng(1))
    for t0, t1 in ((0.0, 3.0), (2.5, 5.5), (0.0, 17.3)):  # 17.3 s: more slots than positions, stretched
        assert np.array_equal(voice_positions(frames, t0, t1, LIVE_V4), positions_of(frames, t0, t1))
    with pytest.raises(FeatureError, match="places voice frames by words"):
        voice_positions(frames, 0.0, 3.0, LIVE_V1)


def test_a_long_session_is_normalised_by_its_own_voice_and_silence_and_padding_are_left_alone() -> None:
    rng = np.random.default_rng(2)
    frames = speaker_frames(120.0, 30.0, rng)
    voice = SessionVoice(500)
    voice.add(voiced_moments(frames, LIVE_V4))
    voiced = LIVE_V4.standardise_audio(frames.values[frames.present]).astype(np.float64)
    assert voice.n == len(voiced) == 7200
    mean, spread = voice.statistic()
    w = voice.n / (voice.n + 500)  # shrunk towards mean 0, second moment 1 by 500 frames' worth
    assert mean == pytest.approx(w * voiced.mean(0), rel=1e-9, abs=1e-12)
    second = (np.square(voiced).sum(0) + 500) / (voice.n + 500)
    assert spread == pytest.approx(np.sqrt(np.maximum(second - mean ** 2, 0.05 ** 2)), rel=1e-9)
    normalised = voice.normalise_frames(frames, LIVE_V4)
    z = LIVE_V4.standardise_audio(normalised.values).astype(np.float64)
    assert np.allclose(z[frames.present], (voiced - mean) / spread, atol=1e-3)
    assert np.array_equal(normalised.values[~frames.present], frames.values[~frames.present])
    # the speaker's habitual pitch is taken out: their mean F0 (1.1 in the profile's units, 30
    # semitones) comes to about 0, all but the prior's share
    assert voiced[:, F0].mean() > 1.0 and abs(z[frames.present, F0].mean()) < 0.2
    # a window's positions: the slots in a pause are as without normalisation, padding stays zero
    out, raw = voice.positions(frames, 0.0, 3.0, LIVE_V4), positions_of(frames, 0.0, 3.0)
    silent_f0 = (0 - LIVE_V4.audio_mean[F0]) / LIVE_V4.audio_std[F0]
    assert np.array_equal(out[3], raw[3]) and abs(raw[3, F0] - silent_f0) < 1e-5
    assert not np.allclose(out[0], raw[0], atol=1e-2) and not out[12:].any() and not raw[12:].any()


def test_moments_count_the_voiced_frames_after_a_time_and_before_another_once() -> None:
    frames = speaker_frames(10.0, 20.0, np.random.default_rng(3))
    whole = voiced_moments(frames, LIVE_V4)
    first = voiced_moments(frames, LIVE_V4, before=4.0)
    rest = voiced_moments(frames, LIVE_V4, after=first.until)
    assert first.until < 4.0 <= rest.until and rest.until == pytest.approx(frames.times[-1])
    assert first.n + rest.n == whole.n
    assert np.allclose(first.total + rest.total, whole.total) and np.allclose(first.squares + rest.squares,
                                                                              whole.squares)
    assert VoiceMoments.from_array(whole.as_array()).n == whole.n
    with pytest.raises(ValueError, match="51 numbers"):
        VoiceMoments.from_array(np.zeros(3))


def test_offline_sessions_replay_each_speakers_clips_in_a_seeded_order_whatever_the_rows_order() -> None:
    rng = np.random.default_rng(4)
    ids = [f"a{i}" for i in range(6)] + [f"b{i}" for i in range(4)]
    sessions = ["A"] * 6 + ["B"] * 4
    clips = [speaker_frames(3.0, 15.0 + 6 * (s == "B"), rng, t0=5.0) for s in sessions]
    spans = [(5.0, 8.0)] * 10
    out = normalise_sessions(clips, spans, sessions, ids, LIVE_V4)
    perm = rng.permutation(10)
    shuffled = normalise_sessions([clips[i] for i in perm], spans, [sessions[i] for i in perm],
                                  [ids[i] for i in perm], LIVE_V4)
    assert np.array_equal(shuffled, out[perm])
    # by hand: session A's clips in their order, each with the clips before it and itself
    order = session_order(ids[:6], "A")
    assert sorted(order) == list(range(6)) and order == session_order(ids[:6], "A") != list(range(6))
    voice = SessionVoice(500)
    for k in order:
        voice.add(voiced_moments(clips[k], LIVE_V4))
        assert np.array_equal(out[k], voice.positions(clips[k], 5.0, 8.0, LIVE_V4))


def test_live_v4_is_live_v2_with_the_session_statistic_and_is_checked_on_load() -> None:
    described = LIVE_V4.describe()
    assert described["audio"]["session"]["prior_frames"] == 500.0 and LIVE_V2.describe()["audio"]["session"] is None
    assert LIVE_V4.dims == LIVE_V2.dims and LIVE_V4.frames == "slots"
    assert check_profile(described) is LIVE_V4 and check_profile(LIVE_V2.describe()) is LIVE_V2
    other = {**described, "audio": {**described["audio"], "session": {"prior_frames": 100.0}}}
    with pytest.raises(FeatureError, match=r"prior of 100\.0 frames, this code's with 500\.0"):
        check_profile(other)


# --- live: the inference worker ------------------------------------------------------------------------

def windows_of(worker, session: str, frames: Frames, seconds: float):
    """Every 3 s window of `seconds` through the worker's alignment, in order, one batch each."""
    from workers.infer.worker import _Job

    spec = WindowSpec()
    jobs = []
    for k in range(spec.first, spec.last_ending_by(seconds) + 1):
        w = spec.window(k)
        job = _Job(None, WindowNotice(session, k, w.t_start, w.t_end, time.time()), [],
                   frames.between(w.t_start - 0.2, w.t_end), Frames.empty(55), time.monotonic())
        worker._align_batch([job])
        jobs.append(job)
    return jobs


def test_the_worker_counts_each_frame_once_and_normalises_as_offline(tmp_path: Path) -> None:
    """Overlapping windows (3 s at a 0.5 s hop): every voiced frame up to the last window's end is
    counted once; the first window of a session is normalised exactly as `dmd extract` normalises a
    one-clip session of the same span."""
    worker = worker_for(small_checkpoint(tmp_path / "v4.pt", LIVE_V4, emotion_classes=7))
    assert worker.profile is LIVE_V4
    frames = speaker_frames(20.0, 25.0, np.random.default_rng(5))
    jobs = windows_of(worker, "s", frames, 20.0)
    voice = worker._voices["s"]
    expected = voiced_moments(frames, LIVE_V4, before=jobs[-1].notice.t_end)
    assert voice.n == expected.n and np.allclose(voice.total, expected.total)
    first = jobs[0]
    span = (first.notice.t_start, first.notice.t_end)
    offline = normalise_sessions([first.audio], [span], ["s"], ["clip"], LIVE_V4)[0]
    assert np.array_equal(first.window.audio, offline)
    assert not np.allclose(first.window.audio, positions_of(first.audio, *span), atol=1e-3)  # it did move


def test_a_speakers_habitual_pitch_is_not_read_as_emotion_once_the_session_knows_it(tmp_path: Path) -> None:
    """Two sessions with the same voice, one pitched 8 semitones higher throughout: with live-v2 their
    last windows' inputs differ by the offset; with live-v4 they come close as each session learns
    its speaker, and the model's outputs with them."""
    rng = np.random.default_rng(6)
    low = speaker_frames(60.0, 18.0, rng)
    high_values = low.values.copy()
    high_values[low.present, F0] += 8.0
    high = Frames(low.times, high_values, low.present)
    gaps = {}
    for profile in (LIVE_V2, LIVE_V4):
        worker = worker_for(small_checkpoint(tmp_path / f"{profile.name}.pt", profile, emotion_classes=7))
        last = [windows_of(worker, name, f, 60.0)[-1].window for name, f in (("low", low), ("high", high))]
        inputs = np.abs(last[0].audio[:, F0] - last[1].audio[:, F0]).max()
        outputs = [worker.predictor.predict(w.text[None], w.audio[None], w.visual[None])[0] for w in last]
        gaps[profile.name] = (inputs, abs(outputs[0].sentiment - outputs[1].sentiment),
                              np.abs(np.subtract(outputs[0].emotions, outputs[1].emotions)).max())
    assert gaps["live-v2"][0] > 0.3  # 8 semitones: half a standardised unit at least
    assert gaps["live-v4"][0] < gaps["live-v2"][0] / 3  # cut to about a quarter (the prior keeps 8 % of it)
    assert gaps["live-v4"][2] < gaps["live-v2"][2]


@pytest.mark.timeout(120)
def test_a_live_v4_worker_serves_a_session_through_redis(redis_url: str, tmp_path: Path) -> None:
    """A real Redis: every window published, finite, and the last one's voice emotions those of the
    model on the window normalised by the whole session so far."""
    worker = worker_for(small_checkpoint(tmp_path / "v4.pt", LIVE_V4, emotion_classes=7, modalities=("text", "audio")),
                        redis_url)
    seconds = 8.0
    frames = speaker_frames(seconds, 28.0, np.random.default_rng(8))

    found = serve_voice(worker, redis_url, "v4", frames, seconds)
    for e in found:
        validate_estimate(e)
        assert e["modalities"]["audio"]["present"] and e["modalities"]["audio"]["used"]
    last = found[-1]
    voice = SessionVoice(LIVE_V4.voice_prior_frames)
    voice.add(voiced_moments(frames, LIVE_V4, before=last["t_end"]))
    window = align_window([], frames, Frames.empty(55), last["t_start"], last["t_end"], OneTokenPerWord(), LIVE_V4)
    audio = voice.positions(frames, last["t_start"], last["t_end"], LIVE_V4)
    (prediction,) = worker.predictor.predict(window.text[None], audio[None], window.visual[None])
    assert list(last["modalities"]["audio"]["emotions"].values()) == pytest.approx(
        prediction.modality_emotions["audio"], abs=1e-5)


def serve_voice(worker, redis_url: str, sid: str, frames: Frames, seconds: float) -> list[dict]:
    """A session of acoustic frames (no words, no face) and its window notices written to Redis,
    served by `worker` until every window is published: its estimates, in window order."""
    async def main() -> list[dict]:
        r = connect(redis_url)
        session = Session(r, sid)
        await start_session(r, sid, "test", {"asr": "none"})
        await session.add(frames, ACOUSTIC)
        spec = WindowSpec()
        windows = list(range(spec.first, spec.last_ending_by(seconds) + 1))
        for k in windows:
            await session.notify_window(spec.window(k))
        await run_worker_until_published(worker, len(windows))
        found = [e.to_dict() for e in await session.estimates(1000)]
        await r.aclose()
        assert [e["window"] for e in found] == windows
        return found

    return asyncio.run(main())


# --- offline: dmd extract ------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(not RAVDESS.is_dir(), reason="../shared/data/emotion_speech/ravdess is absent")
def test_extract_normalises_each_actors_clips_as_one_session(tmp_path: Path) -> None:
    """Four real RAVDESS clips, two actors: the live-v4 pickle holds each clip's voice positions
    normalised by its actor's session, replayed from the clips' own samples."""
    from dmd_model.datasets import extract
    from dmd_model.datasets.labels import read_labels
    from dmd_model.datasets.samples import Extractor
    from workers.cli import main as dmd

    names = ["03-01-05-02-01-01-19", "03-01-01-01-02-01-19", "03-01-03-01-01-02-20", "03-01-04-02-02-01-20"]
    source = tmp_path / "src"
    source.mkdir()
    for name in names:
        (source / f"{name}.flac").symlink_to(RAVDESS / f"Actor_{name[-2:]}" / f"{name}.flac")
    assert dmd(["convert", "ravdess", str(source), "--out", str(tmp_path / "ravdess")]) == 0
    extract(tmp_path / "ravdess", tmp_path / "v4.pkl", profile=LIVE_V4, cache_dir=tmp_path / "cache",
            progress=False, log=lambda _: None)
    with open(tmp_path / "v4.pkl", "rb") as f:
        data = pickle.load(f)
    assert data["meta"]["profile"]["name"] == "live-v4"
    test = data["test"]
    specs = {s.id: s for s in read_labels(tmp_path / "ravdess" / "label.csv", tmp_path / "ravdess" / "Raw")}
    assert {s.session for s in specs.values()} == {"19", "20"}
    extractor = Extractor(LIVE_V4, tmp_path / "cache")
    samples = [extractor.sample(specs[i]) for i in test["id"]]  # from the cache the run filled
    assert all(s.cached and s.afeat.present.sum() > 50 for s in samples)  # each clip has voiced frames
    expected = normalise_sessions([s.afeat for s in samples], [s.span for s in samples],
                                  [s.session for s in samples], list(test["id"]), LIVE_V4)
    assert np.allclose(test["audio"], expected, atol=1e-6)
    assert not np.allclose(test["audio"], np.stack([s.audio for s in samples]), atol=1e-3)
    assert math.isclose(float(np.abs(test["audio"][:, 60:]).sum()), 0.0)  # padding stays zero


def test_a_clip_cached_before_the_frames_were_kept_is_reused_except_by_live_v4(tmp_path: Path) -> None:
    """The clip cache keeps a clip's acoustic frames for live-v4, which needs them. An entry without
    them (the code before, or another profile) is read by the other profiles as it is (no
    re-extraction of a large data set), and extracted again by live-v4."""
    from pipeline_helpers import write_clip

    from dmd_model.datasets.labels import ClipSpec
    from dmd_model.datasets.samples import Extractor

    clip = write_clip(tmp_path / "c.mp4", 2.0, sound="tone", fps=10)
    spec = ClipSpec(id="v$_$c", text="", label=math.nan, split="test", video_id="v", clip_id="c", media=str(clip),
                    emotion=0, language="de", session="v")  # not English: no words needed
    for profile in (LIVE_V2, LIVE_V4):
        extractor = Extractor(profile, tmp_path / "cache", text_encoder=OneTokenPerWord())
        first = extractor.sample(spec)
        assert not first.cached and first.afeat is not None and len(first.afeat) > 100
        path = extractor._clip_path(spec)
        with np.load(path) as z:
            before = {k: z[k] for k in z.files if k not in ("afeat_times", "afeat_values", "afeat_present", "span")}
        np.savez(path, **before)  # as the code before live-v4 wrote it
        again = extractor.sample(spec)
        if profile is LIVE_V2:
            assert again.cached and again.afeat is None and np.array_equal(again.audio, first.audio)
        else:
            assert not again.cached and len(again.afeat) == len(first.afeat)
