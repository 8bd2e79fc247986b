"""The acoustic frames: openSMILE eGeMAPSv02 LLDs, streamed chunk by chunk exactly as on a whole signal."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import numpy as np
import pytest

from dmd_model.features import AUDIO_NAMES, PROFILE, AudioFeatureStream, FeatureError, Frames, extract_audio, f0_hz
from dmd_model.features.audio import Resampler

opensmile = pytest.importorskip("opensmile")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RAVDESS = DATA / "clips" / "ravdess" / "audio_actor01"
SR = 16000


def harmonic_tone(f0: float, seconds: float, sr: int = SR, amplitude: float = 0.3) -> np.ndarray:
    """A voiced-like signal: f0 and 7 harmonics falling off as 1/k."""
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8))
    return (amplitude * x / np.abs(x).max()).astype(np.float32)


def synthetic_speech(seconds: float = 4.0, sr: int = SR) -> np.ndarray:
    """Voiced stretches with a gliding pitch and vibrato, separated by pauses with faint noise:
    enough for pitch, jitter, shimmer and formants to carry state across chunks."""
    rng = np.random.default_rng(7)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 60 * np.sin(2 * np.pi * 0.4 * t) + 4 * np.sin(2 * np.pi * 5.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 10))
    envelope = (np.sin(2 * np.pi * 0.7 * t) > -0.3).astype(float)
    x = 0.25 * voiced * envelope * (1 + 0.1 * rng.standard_normal(t.size)) + 0.003 * rng.standard_normal(t.size)
    return np.clip(x, -1, 1).astype(np.float32)


def reference_lld(x: np.ndarray) -> np.ndarray:
    """openSMILE's own whole-signal result, the stock eGeMAPSv02 configuration."""
    smile = opensmile.Smile(opensmile.FeatureSet.eGeMAPSv02, opensmile.FeatureLevel.LowLevelDescriptors)
    frame = smile.process_signal(x, SR)
    assert tuple(frame.columns) == AUDIO_NAMES
    return frame.to_numpy()


def stream_in_chunks(x: np.ndarray, chunk: int, sr: int = SR, channels: int = 1, t0: float = 0.0) -> Frames:
    stream = AudioFeatureStream(sample_rate=sr, channels=channels, t0=t0)
    parts = []
    for i in range(0, x.shape[0], chunk):
        stream.feed(x[i : i + chunk])
        parts.append(stream.take())
    parts.append(stream.finish())
    return Frames.concat(parts, dim=len(AUDIO_NAMES))


def test_harmonic_tone_of_200_hz_has_f0_near_200_hz_and_is_voiced():
    frames = extract_audio(harmonic_tone(200.0, 1.5))
    assert frames.dim == 25 and len(frames) == pytest.approx(150, abs=6)
    middle = frames.between(0.2, 1.3)
    assert middle.present.all()
    assert np.median(f0_hz(middle)) == pytest.approx(200.0, rel=0.03)
    assert np.isfinite(frames.values).all()


def test_frames_are_stamped_at_100_hz_from_the_stream_start():
    frames = extract_audio(harmonic_tone(150.0, 0.5), t0=10.0)
    assert frames.times[0] == pytest.approx(10.01)
    np.testing.assert_allclose(np.diff(frames.times), 0.01, atol=1e-9)


def test_chunked_stream_gives_the_frames_of_opensmile_on_the_whole_signal():
    x = synthetic_speech(4.0)
    reference = reference_lld(x)
    for chunk in (1600, 517):  # 100 ms chunks, and odd ones that split frames anywhere
        frames = stream_in_chunks(x, chunk)
        assert frames.values.shape == reference.shape
        assert np.abs(frames.values - reference).max() <= 1e-4


def test_two_streams_fed_in_turn_do_not_mix():
    """A capture worker may serve several sources in one process."""
    a, b = synthetic_speech(2.0), harmonic_tone(180.0, 2.0)
    sa, sb = AudioFeatureStream(), AudioFeatureStream()
    pa, pb = [], []
    for i in range(0, a.size, 1600):
        sa.feed(a[i : i + 1600])
        sb.feed(b[i : i + 1600])
        pa.append(sa.take())
        pb.append(sb.take())
    fa, fb = Frames.concat([*pa, sa.finish()], dim=25), Frames.concat([*pb, sb.finish()], dim=25)
    assert np.array_equal(fa.values, extract_audio(a).values)
    assert np.array_equal(fb.values, extract_audio(b).values)


def test_a_stream_started_before_its_first_chunk_gives_the_same_frames_from_the_t0_set_then():
    """Capture starts openSMILE before the session clock and learns t0 at the first chunk."""
    x = synthetic_speech(2.0)
    early = AudioFeatureStream()
    early.start()
    early.start()  # idempotent
    early.set_t0(3.5)
    parts = []
    for i in range(0, x.size, 1600):
        early.feed(x[i : i + 1600])
        parts.append(early.take())
    frames = Frames.concat([*parts, early.finish()], dim=25)
    reference = extract_audio(x, t0=3.5)
    assert np.array_equal(frames.values, reference.values)
    np.testing.assert_allclose(frames.times, reference.times)
    with pytest.raises(FeatureError, match="before the first feed"):
        early.set_t0(0.0)


def test_int16_and_float_input_give_the_same_frames():
    x = synthetic_speech(1.5)
    pcm = np.clip(x * 32768, -32768, 32767).astype(np.int16)
    assert np.array_equal(extract_audio(x).values, extract_audio(pcm).values)


def test_other_rates_and_stereo_are_resampled_the_same_in_chunks_as_whole():
    sr = 44100
    mono = harmonic_tone(200.0, 2.0, sr=sr)
    stereo = np.stack([mono, 0.5 * mono], axis=1)
    whole = extract_audio(stereo, sample_rate=sr)
    chunked = stream_in_chunks(stereo, 4410, sr=sr, channels=2)
    assert whole.values.shape == chunked.values.shape
    assert np.abs(whole.values - chunked.values).max() <= 1e-4
    assert len(whole) == pytest.approx(200, abs=6)
    assert np.median(f0_hz(whole.between(0.2, 1.8))) == pytest.approx(200.0, rel=0.03)


def test_resampler_chunks_join_into_the_whole_resampled_signal():
    x = (harmonic_tone(300.0, 1.0, sr=48000) * 32767).astype(np.int16)
    whole = Resampler(48000)
    a = np.concatenate([whole.feed(x), whole.finish()])
    pieces = Resampler(48000)
    b = np.concatenate([pieces.feed(x[i : i + 960]) for i in range(0, x.size, 960)] + [pieces.finish()])
    assert a.size == b.size == 16000
    assert np.array_equal(a, b)


def test_silence_and_noise_are_not_voiced():
    rng = np.random.default_rng(0)
    silence = extract_audio(np.zeros(SR, np.float32))
    noise = extract_audio((0.01 * rng.standard_normal(SR)).astype(np.float32))
    assert not silence.present.any()
    assert not noise.present.any()
    assert np.isfinite(noise.values).all()


def test_a_chunk_at_another_rate_than_the_stream_is_refused_with_the_fix():
    stream = AudioFeatureStream(sample_rate=16000)
    with pytest.raises(FeatureError, match=r"44100 Hz, expected 16000.*AudioFeatureStream\(sample_rate=44100\)"):
        stream.feed(np.zeros(4410, np.int16), sample_rate=44100)
    stream.close()


def test_unusable_rates_shapes_and_types_are_refused():
    with pytest.raises(FeatureError, match="sample rate 1000 Hz is not usable"):
        AudioFeatureStream(sample_rate=1000)
    stream = AudioFeatureStream()
    with pytest.raises(FeatureError, match=r"shape \(100, 2\), expected .* for 1 channel"):
        stream.feed(np.zeros((100, 2), np.int16))
    with pytest.raises(FeatureError, match="dtype int32: give int16 PCM or floats"):
        stream.feed(np.zeros(100, np.int32))
    stream.finish()
    with pytest.raises(FeatureError, match="has finished: start a new AudioFeatureStream"):
        stream.feed(np.zeros(100, np.int16))


def test_a_stream_that_was_never_fed_finishes_empty():
    stream = AudioFeatureStream()
    assert len(stream.take()) == 0
    assert len(stream.finish()) == 0


def test_an_abandoned_stream_stops_its_opensmile_thread():
    before = {t.ident for t in threading.enumerate() if t.name == "opensmile"}
    stream = AudioFeatureStream()
    stream.feed(synthetic_speech(0.5))
    del stream
    gc.collect()
    left = [t for t in threading.enumerate() if t.name == "opensmile" and t.ident not in before]
    for t in left:
        t.join(timeout=5)
    assert not any(t.is_alive() for t in left)


def test_profile_standardisation_brings_real_speech_to_unit_scale():
    x = synthetic_speech(4.0)
    z = PROFILE.standardise_audio(extract_audio(x).values)
    assert np.isfinite(z).all()
    assert np.abs(z).max() < 50  # raw formant values are in the thousands


@pytest.mark.skipif(not RAVDESS.is_dir(), reason="real clips not here (../shared/data/clips/ravdess): developer data")
def test_ravdess_voice_has_f0_in_a_human_range_and_chunking_changes_nothing():
    from dmd_model.features import read_audio

    pcm, _ = read_audio(RAVDESS / "01-01-03-01-01-01-01_audio.wav")  # happy, normal intensity
    frames = stream_in_chunks(pcm, 1600)
    assert np.isfinite(frames.values).all()
    voiced = f0_hz(frames)[frames.present]
    assert voiced.size > 30
    assert 75 < np.median(voiced) < 300  # an adult male voice
    reference = reference_lld(pcm.astype(np.float32) / 32768)
    assert np.abs(frames.values - reference).max() <= 1e-4
    z = PROFILE.standardise_audio(frames.values)
    assert np.all(np.abs(z.mean(0)) < 3) and np.all(z.std(0) < 5)
