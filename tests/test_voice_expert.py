"""The voice expert (issue 14): a linear model on the session-normalised voice, pooled with DMD's
emotions as the face expert's are."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from dmd_model.features import LIVE_V2, LIVE_V4, FeatureError, SessionVoice, voiced_moments
from dmd_model.features.voice_expert import DIM, MIN_VOICED, VoiceExpert, load_voice_expert, voice_vector
from dmd_types import EMOTIONS, Frames
from stream.estimate import validate_estimate
from workers.infer.fusion import FusionWeights, pool_all, window_emotions

pytest.register_assert_rewrite("test_infer_face", "test_voice_norm")
from test_infer_face import small_checkpoint, worker_for  # noqa: E402
from test_voice_norm import F0, serve_voice, speaker_frames  # noqa: E402

RAVDESS = Path(__file__).resolve().parents[2] / "shared" / "data" / "emotion_speech" / "ravdess"
SAD = (0.1, 0.05, 0.7, 0.05, 0.04, 0.03, 0.03)
ANGRY = (0.05, 0.02, 0.03, 0.8, 0.04, 0.04, 0.02)
FACE = (0.02, 0.9, 0.02, 0.02, 0.01, 0.01, 0.02)
WEIGHTS = FusionWeights(model=0.5, voice=0.6)


# --- the carried model -------------------------------------------------------------------------------

def test_the_carried_expert_loads_with_its_test_figures_and_gives_distributions() -> None:
    expert = load_voice_expert()
    assert expert.coef.shape == (len(EMOTIONS), DIM)
    test = expert.meta["test"]
    assert 0.5 < expert.accuracy == test["accuracy"] < 1 and set(expert.meta["trained_on"]) == {"ravdess", "emodb"}
    assert "non-commercial" in expert.meta["licence"]
    p = expert.probabilities(np.random.default_rng(0).normal(size=DIM))
    assert len(p) == 7 and math.isclose(math.fsum(p), 1.0, abs_tol=1e-12) and min(p) >= 0


def test_damaged_weights_are_refused_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(FeatureError, match=r"bad\.npz cannot be read .*bench/voice_expert\.py"):
        VoiceExpert.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "small.npz", mean=np.zeros(3), scale=np.ones(3), coef=np.zeros((7, 3)), intercept=np.zeros(7),
             meta=np.asarray("{}"))
    with pytest.raises(FeatureError, match="shape"):
        VoiceExpert.load(tmp_path / "small.npz")


# --- its input ---------------------------------------------------------------------------------------

def test_the_input_needs_enough_voiced_frames_and_takes_out_the_speakers_habitual_pitch() -> None:
    frames = speaker_frames(40.0, 20.0, np.random.default_rng(1))
    voice = SessionVoice(500)
    assert voice_vector(frames, 0.7, 0.99, voice, LIVE_V4) is None  # a pause
    few = frames.between(0.0, (MIN_VOICED - 1) / 100)
    assert int(few.present.sum()) < MIN_VOICED and voice_vector(few, 0.0, 3.0, voice, LIVE_V4) is None
    higher = Frames(frames.times, frames.values.copy(), frames.present)
    higher.values[frames.present, F0] += 8.0
    vectors = []
    for f in (frames, higher):
        v = SessionVoice(500)
        v.add(voiced_moments(f, LIVE_V4))
        vectors.append(voice_vector(f, 37.0, 40.0, v, LIVE_V4))
    assert vectors[0].shape == (DIM,)
    # the F0 statistics (mean, then p10, p50, p90 at 25-value strides) differ by less than half of the
    # 8 semitones (0.51 in the profile's units) once the session knows its speaker (the prior keeps some)
    f0 = [F0, 50 + F0, 75 + F0, 100 + F0]
    raw_gap = 8.0 / LIVE_V4.audio_std[F0]
    assert raw_gap > 0.5 and np.abs(vectors[0][f0] - vectors[1][f0]).max() < raw_gap / 2


@pytest.mark.skipif(not RAVDESS.is_dir(), reason="../shared/data/emotion_speech/ravdess is absent")
def test_real_angry_voices_are_read_as_angry_and_neutral_ones_are_not() -> None:
    """Four RAVDESS test-actor clips (never trained on), each its own session."""
    from dmd_model.features import extract_media

    expert = load_voice_expert()
    angry_p = {}
    for name in ("03-01-05-02-01-01-19", "03-01-05-01-02-02-20", "03-01-01-01-02-01-20", "03-01-01-01-01-01-19"):
        audio = extract_media(RAVDESS / f"Actor_{name[-2:]}" / f"{name}.flac", video=False, audio=True).audio
        voice = SessionVoice(500)
        voice.add(voiced_moments(audio, LIVE_V4))
        p = expert.probabilities(voice_vector(audio, 0.0, float(audio.times[-1]) + 0.01, voice, LIVE_V4))
        angry_p[name] = p[EMOTIONS.index("angry")]
        if name[6:8] == "05":
            assert EMOTIONS[int(np.argmax(p))] == "angry", (name, p)
    assert max(angry_p[n] for n in angry_p if n[6:8] == "01") < 0.5 * min(angry_p[n] for n in angry_p if n[6:8] == "05")


# --- the pool ----------------------------------------------------------------------------------------

def test_the_voice_is_pooled_with_the_model_and_the_face_by_their_weights() -> None:
    own = {m: SAD for m in ("text", "audio", "visual")}
    out = window_emotions(SAD, own, None, face_present=False, visual_used=False, weights=WEIGHTS, voice=ANGRY)
    expected = [(0.5 * s + 0.6 * a) / 1.1 for s, a in zip(SAD, ANGRY)]
    assert out.fused == pytest.approx(expected, abs=1e-12) and out.voice_pooled and not out.face_pooled
    assert out.modalities["audio"] == SAD  # the model's audio heads stay the audio entry
    both = window_emotions(SAD, own, FACE, face_present=True, visual_used=False, weights=WEIGHTS, voice=ANGRY)
    assert both.fused == pytest.approx(pool_all([(SAD, 0.5), (FACE, WEIGHTS.face), (ANGRY, 0.6)]), abs=1e-12)
    assert both.face_pooled and both.voice_pooled and both.modalities["visual"] == FACE
    assert math.isclose(math.fsum(both.fused), 1.0, abs_tol=1e-12)
    unheard = window_emotions(SAD, own, None, face_present=False, visual_used=False, weights=WEIGHTS, voice=None)
    assert unheard.fused == SAD and not unheard.voice_pooled
    alone = window_emotions(None, None, None, face_present=False, visual_used=False, weights=WEIGHTS, voice=ANGRY)
    assert alone.fused == ANGRY and alone.modalities["audio"] == ANGRY  # no emotion head: the voice's own
    with pytest.raises(ValueError, match="voice emotions have 3 probabilities"):
        window_emotions(SAD, own, None, face_present=False, visual_used=False, weights=WEIGHTS, voice=(1, 0, 0))
    with pytest.raises(ValueError, match="fusion weight voice"):
        FusionWeights(model=0.5, voice=0.0)


# --- live, through Redis ----------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_a_worker_pools_the_voice_experts_reading_of_each_window(redis_url: str, tmp_path: Path) -> None:
    path = small_checkpoint(tmp_path / "e7.pt", LIVE_V2, emotion_classes=7, modalities=("text", "audio"))
    worker = worker_for(path, redis_url, voice_expert=True)
    assert worker.fusion.voice == load_voice_expert().accuracy
    seconds = 8.0
    frames = speaker_frames(seconds, 24.0, np.random.default_rng(9))
    found = serve_voice(worker, redis_url, "voiced", frames, seconds)
    last = found[-1]
    validate_estimate(last)
    # by hand: the model on the window (live-v2: its voice as aligned), the expert on the session's
    # statistic up to the window's end, pooled by the weights; the EMA's first window is its own
    from test_infer_face import OneTokenPerWord

    from dmd_model.features import align_window

    first = found[0]
    window = align_window([], frames, Frames.empty(55), first["t_start"], first["t_end"], OneTokenPerWord(), LIVE_V2)
    (prediction,) = worker.predictor.predict(window.text[None], window.audio[None], window.visual[None])
    voice = SessionVoice(500)
    voice.add(voiced_moments(frames, LIVE_V4, before=first["t_end"]))
    heard = load_voice_expert().probabilities(voice_vector(frames, first["t_start"], first["t_end"], voice, LIVE_V4))
    expected = pool_all([(prediction.emotions, worker.fusion.model), (heard, worker.fusion.voice)])
    assert list(first["emotions"].values()) == pytest.approx(expected, abs=1e-5)
    assert list(first["modalities"]["audio"]["emotions"].values()) == pytest.approx(
        prediction.modality_emotions["audio"], abs=1e-5)
    # switched off, the same window is the model's alone
    off = worker_for(path, redis_url, voice_expert=False)
    assert off.voice_expert is None
    again = serve_voice(off, redis_url, "unheard", frames, seconds)[0]
    assert list(again["emotions"].values()) == pytest.approx(prediction.emotions, abs=1e-5)


def test_the_voice_expert_is_off_by_default_and_a_setting_turns_it_on() -> None:
    from workers.settings import load_settings

    assert load_settings(environ={}).inference.voice_expert is False
    assert load_settings(environ={"DMD_INFERENCE_VOICE_EXPERT": "true"}).inference.voice_expert is True
