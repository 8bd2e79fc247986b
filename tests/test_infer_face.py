"""The face counts (issue 15): the face expert's probabilities in the face frames (profile live-v3),
one code path for capture and extraction, presence vs use in the estimate, and the rule that pools
the face's emotion with the model's."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from dmd_model.features import (
    FACE_FRAME_NAMES,
    LIVE_V1,
    LIVE_V2,
    LIVE_V3,
    FeatureError,
    align_window,
    check_profile,
    voiced_mask,
)
from dmd_model.features.text import TokenEmbeddings
from dmd_types import EMOTIONS, Frames, Word
from stream.connection import connect
from stream.estimate import validate_estimate
from stream.lifecycle import start_session
from stream.messages import ACOUSTIC, FACE, WindowNotice
from stream.session import Session
from stream.window import WindowSpec
from workers.infer.fusion import FACE_EXPERT_ACCURACY, FusionWeights, pool, window_emotions

pytest.register_assert_rewrite("pipeline_helpers")
from pipeline_helpers import face_frames, run_worker_until_published, write_clip  # noqa: E402

torch = pytest.importorskip("torch")

HAPPY_FACE = (0.02, 0.9, 0.02, 0.02, 0.01, 0.01, 0.02)  # EMOTIONS order: neutral, happy, sad, ...
SAD_MODEL = (0.2, 0.05, 0.6, 0.05, 0.04, 0.03, 0.03)
WEIGHTS = FusionWeights(model=0.5)


class OneTokenPerWord:
    """A text encoder without a model: one 384-wide vector per word."""

    dim = 384

    def encode(self, words: Sequence[str]) -> TokenEmbeddings:
        vectors = np.stack([np.full(self.dim, len(w), np.float32) for w in words]) if words else \
            np.zeros((0, self.dim), np.float32)
        return TokenEmbeddings(vectors, np.arange(len(words)), tuple(words))


# --- the rule --------------------------------------------------------------------------------------

def test_a_confident_face_moves_the_fused_emotion_by_the_opinion_pool() -> None:
    out = window_emotions(SAD_MODEL, {m: SAD_MODEL for m in ("text", "audio", "visual")}, HAPPY_FACE,
                          face_present=True, visual_used=False, weights=WEIGHTS)
    expected = [(0.5 * m + FACE_EXPERT_ACCURACY * f) / (0.5 + FACE_EXPERT_ACCURACY)
                for m, f in zip(SAD_MODEL, HAPPY_FACE)]
    assert out.fused == pytest.approx(expected, abs=1e-12) and math.fsum(out.fused) == pytest.approx(1.0, abs=1e-12)
    assert EMOTIONS[int(np.argmax(out.fused))] == "happy"  # the model said sad; the smile wins at these weights
    assert out.modalities["visual"] == HAPPY_FACE and out.modalities["text"] == SAD_MODEL and out.face_pooled


def test_an_absent_face_changes_nothing() -> None:
    own = {m: SAD_MODEL for m in ("text", "audio", "visual")}
    for face, present in ((HAPPY_FACE, False), (None, True), (None, False)):
        out = window_emotions(SAD_MODEL, own, face, face_present=present, visual_used=False, weights=WEIGHTS)
        assert out.fused == SAD_MODEL and out.modalities == own and not out.face_pooled
    nothing = window_emotions(None, None, HAPPY_FACE, face_present=False, visual_used=False, weights=WEIGHTS)
    assert nothing.fused is None and set(nothing.modalities.values()) == {None}


def test_without_an_emotion_head_the_fused_emotions_are_the_faces_alone() -> None:
    out = window_emotions(None, None, HAPPY_FACE, face_present=True, visual_used=False, weights=WEIGHTS)
    assert out.fused == HAPPY_FACE
    assert out.modalities == {"text": None, "audio": None, "visual": HAPPY_FACE}


def test_a_model_that_reads_the_face_is_not_given_it_twice() -> None:
    own = {"text": SAD_MODEL, "audio": SAD_MODEL, "visual": (1.0, 0, 0, 0, 0, 0, 0)}
    out = window_emotions(SAD_MODEL, own, HAPPY_FACE, face_present=True, visual_used=True, weights=WEIGHTS)
    assert out.fused == SAD_MODEL and out.modalities == own


@pytest.mark.parametrize(("metrics", "model", "source"), [
    ({"test": {"emotion": {"accuracy": 0.55, "uar": 0.5}}}, 0.55, "emotion test accuracy"),
    ({"test": {"emotion": {"uar": 0.48}}}, 0.48, "emotion test uar"),
    ({"test": {"MAE": 0.8}, "test_ravdess": {"emotion": {"accuracy": 0.6}},
      "test_meld": {"emotion": {"accuracy": 0.4}}}, 0.5, "accuracies on meld, ravdess"),
    ({"test": {"Non0_acc_2": 0.81}}, FACE_EXPERT_ACCURACY, "plain average"),
    ({}, FACE_EXPERT_ACCURACY, "plain average"),
    (None, FACE_EXPERT_ACCURACY, "plain average"),
])
def test_the_models_weight_is_its_recorded_emotion_test_accuracy(metrics, model, source) -> None:
    weights = FusionWeights.from_metrics(metrics)
    assert weights.model == pytest.approx(model) and weights.face == FACE_EXPERT_ACCURACY == 0.66
    assert source in weights.model_source and "FER2013" in weights.face_source


def test_pool_weights_must_be_positive_and_the_result_is_a_distribution() -> None:
    with pytest.raises(ValueError, match="positive number"):
        FusionWeights(model=0.0)
    assert pool((1, 0, 0, 0, 0, 0, 0), (0, 1, 0, 0, 0, 0, 0), FusionWeights(model=0.66)) == \
        pytest.approx((0.5, 0.5, 0, 0, 0, 0, 0))


# --- the profile version switch --------------------------------------------------------------------

def expert_frames(seconds: float, rng: np.random.Generator, step: float = 1 / 15) -> Frames:
    """62-wide face frames, a face in each but the expert run on every other one only."""
    frames = face_frames(np.arange(0, seconds, step), rng)
    values = frames.values.copy()
    values[1::2, 55:] = 0.0
    return Frames(frames.times, values, frames.present)


def test_live_v3_reads_the_experts_seven_after_the_55_and_older_profiles_read_the_55_as_before() -> None:
    rng = np.random.default_rng(3)
    visual = expert_frames(3.0, rng)
    no_audio = Frames.empty(25)
    words = [Word("hello", 0.5, 0.9)]
    old = align_window(words, no_audio, Frames(visual.times, visual.values[:, :55], visual.present), 0.0, 3.0,
                       OneTokenPerWord(), profile=LIVE_V2)
    v2 = align_window(words, no_audio, visual, 0.0, 3.0, OneTokenPerWord(), profile=LIVE_V2)
    v3 = align_window(words, no_audio, visual, 0.0, 3.0, OneTokenPerWord(), profile=LIVE_V3)
    assert old.visual.shape == v2.visual.shape == (50, 55) and v3.visual.shape == (50, 62)
    np.testing.assert_array_equal(v2.visual, old.visual)  # live-v2 sees exactly what it saw before the expert
    np.testing.assert_array_equal(v3.visual[:, :55], v2.visual)
    # position 0 = slot [0, 0.25): frames 0..3, the expert ran on 0 and 2 only
    np.testing.assert_allclose(v3.visual[0, 55:], visual.values[[0, 2], 55:].mean(0), rtol=1e-6)
    assert v3.visual[0, 55:].sum() == pytest.approx(1.0, abs=1e-5)
    ran = visual.values[::2, 55:].astype(np.float64)
    np.testing.assert_allclose(v3.face_emotions, ran.mean(0) / ran.mean(0).sum(), rtol=1e-9)
    np.testing.assert_array_equal(v2.face_emotions, v3.face_emotions)  # the face's emotion, whatever the profile
    # 55-wide frames (the tracker alone): the expert did not run
    bare = align_window(words, no_audio, Frames(visual.times, visual.values[:, :55], visual.present), 0.0, 3.0,
                        OneTokenPerWord(), profile=LIVE_V3)
    assert not bare.visual[:, 55:].any() and bare.face_emotions is None
    with pytest.raises(FeatureError, match="visual frames are 60 wide, expected 62"):
        align_window(words, no_audio, Frames(visual.times, visual.values[:, :60], visual.present), 0.0, 3.0,
                     OneTokenPerWord(), profile=LIVE_V3)


def test_live_v3_is_recorded_with_the_expert_and_checked_on_load() -> None:
    described = LIVE_V3.describe()
    assert described["dims"] == {"text": 384, "audio": 25, "visual": 62} and LIVE_V3.feature_dims == (384, 25, 62)
    assert described["visual"]["names"][55:] == [f"face_{e}" for e in EMOTIONS] == list(FACE_FRAME_NAMES[55:])
    assert check_profile(described) is LIVE_V3 and check_profile(LIVE_V2.describe()) is LIVE_V2
    assert "expert" not in LIVE_V2.describe()["visual"] and LIVE_V2.dims["visual"] == LIVE_V1.dims["visual"] == 55
    other = {**described, "visual": {**described["visual"], "expert": {"weights_sha256": "0" * 64}}}
    with pytest.raises(FeatureError, match="other face expert weights"):
        check_profile(other)


def small_checkpoint(path: Path, profile, *, emotion_classes: int = 0, modalities=("text", "audio", "visual")) -> Path:
    from dmd_model.artefacts.checkpoint import save_checkpoint
    from dmd_model.config import DMDConfig
    from dmd_model.network.dmd import DMD

    torch.manual_seed(0)
    cfg = DMDConfig.from_dict({"name": "face_test", "model": {
        "feature_dims": list(profile.feature_dims), "seq_lens": [50, 50, 50], "d_model": 16, "num_heads": 4,
        "layers": 1, "emotion_classes": emotion_classes}})
    return save_checkpoint(path, DMD(cfg.model), cfg, profile=profile.describe(), modalities=modalities)


def worker_for(path: Path, redis_url: str = "redis://127.0.0.1:1", *, voice_expert: bool = False):
    """A worker on this checkpoint; without the voice expert unless asked (these tests are about the
    face: tests/test_voice_expert.py has the voice's)."""
    from dmd_model.artefacts.predict import Predictor
    from workers.infer.worker import InferenceWorker
    from workers.settings import InferenceSettings

    return InferenceWorker(connect(redis_url), Predictor(path, device="cpu", threads=1),
                           InferenceSettings(device="cpu", max_wait_ms=1.0, voice_expert=voice_expert), asr_grace_s=0.0,
                           name="test", text_encoder=OneTokenPerWord())


def test_an_old_live_v2_checkpoint_runs_with_55_face_features_and_a_live_v3_one_with_62(tmp_path: Path) -> None:
    from workers.infer.worker import _Job

    rng = np.random.default_rng(5)
    visual = expert_frames(6.0, rng)
    audio = Frames(np.arange(0.005, 6.0, 0.01), np.zeros((600, 25), np.float32), np.zeros(600, bool))
    for profile, width in ((LIVE_V2, 55), (LIVE_V3, 62)):
        worker = worker_for(small_checkpoint(tmp_path / f"{profile.name}.pt", profile))
        assert worker.profile is profile
        job = _Job(None, WindowNotice("alice", 8, 3.0, 6.0, time.time()), [Word("great", 4.0, 4.9)], audio, visual,
                   time.monotonic())
        worker._align_batch([job])
        assert job.window.visual.shape == (50, width) and job.window.profile == profile.name
        (prediction,) = worker.predictor.predict(job.window.text[None], job.window.audio[None],
                                                 job.window.visual[None])
        assert math.isfinite(prediction.sentiment)


# --- presence vs use, and the face in the estimate, through Redis ---------------------------------

async def write_session(r, sid: str, seconds: float, rng: np.random.Generator, face_until: float) -> list[int]:
    """Voiced acoustic frames all along, a face (with the expert's probabilities) until `face_until`."""
    session = Session(r, sid)
    await start_session(r, sid, "test", {"asr": "none"})
    t = np.arange(0, seconds, 0.01)
    afeat = rng.normal(size=(len(t), 25)).astype(np.float32)
    afeat[:, 0], afeat[:, 10] = 0.5, 20.0  # loud and pitched: voiced
    await session.add(Frames(t, afeat, voiced_mask(afeat)), ACOUSTIC)
    frames = face_frames(np.arange(0, seconds, 0.1), rng)
    gone = frames.times >= face_until
    values = frames.values.copy()
    values[gone] = 0.0
    await session.add(Frames(frames.times, values, ~gone), FACE)
    spec = WindowSpec()
    windows = list(range(spec.first, spec.last_ending_by(seconds) + 1))
    for k in windows:
        await session.notify_window(spec.window(k))
    return windows


def serve(worker, redis_url: str, sid: str, seconds: float, face_until: float) -> tuple[list[dict], Frames]:
    async def main() -> tuple[list[dict], Frames]:
        r = connect(redis_url)
        windows = await write_session(r, sid, seconds, np.random.default_rng(7), face_until)
        await run_worker_until_published(worker, len(windows))
        found = [e.to_dict() for e in await Session(r, sid).estimates(1000)]
        faces = await Session(r, sid).read_frames(FACE, 0.0, seconds)
        await r.aclose()
        assert [e["window"] for e in found] == windows
        return found, faces

    return asyncio.run(main())


def face_mean(faces: Frames, t0: float, t1: float) -> list[float]:
    rows = faces.between(t0, t1)
    mean = rows.values[rows.present, 55:].astype(np.float64).mean(0)
    return list(mean / mean.sum())


@pytest.mark.timeout(120)
def test_a_text_only_checkpoint_sees_the_face_present_not_used_and_gets_its_emotion(redis_url: str,
                                                                                     tmp_path: Path) -> None:
    """The bundled default's situation: trained on text alone, no emotion head. Before issue 15 a
    visible face was `present: false` and the estimate had no emotions."""
    worker = worker_for(small_checkpoint(tmp_path / "text.pt", LIVE_V1, modalities=("text",)), redis_url)
    found, faces = serve(worker, redis_url, "smile", 8.0, face_until=4.0)
    assert faces.values.shape[1] == 62  # the face frames' width through Redis
    with_face = [e for e in found if e["t_end"] <= 4.0]
    without = [e for e in found if e["t_start"] >= 4.0 - 1e-9]
    assert with_face and without
    for e in found:
        validate_estimate(e)
        m = e["modalities"]
        assert m["audio"]["present"] and not m["audio"]["used"]  # a voice the model cannot read
        assert not m["text"]["present"] and not m["text"]["used"]
        assert m["text"]["emotions"] is None and m["audio"]["emotions"] is None
    for e in with_face:
        visual = e["modalities"]["visual"]
        assert visual["present"] and not visual["used"]
        assert list(visual["emotions"].values()) == pytest.approx(face_mean(faces, e["t_start"], e["t_end"]),
                                                                  abs=1e-9)
    first = with_face[0]  # the EMA starts at the first window's own emotions: the face's alone
    assert first["emotions"] == pytest.approx(first["modalities"]["visual"]["emotions"], abs=1e-9)
    assert first["emotion"] == max(first["emotions"], key=first["emotions"].get)
    for e in without:  # the face gone: nothing of it, and no emotions without an emotion head
        assert not e["modalities"]["visual"]["present"] and e["modalities"]["visual"]["emotions"] is None
        assert e["emotions"] is None and e["emotion"] is None


@pytest.mark.timeout(120)
def test_an_emotion_head_without_visual_input_is_pooled_with_the_face(redis_url: str, tmp_path: Path) -> None:
    from workers.infer.worker import _Job

    path = small_checkpoint(tmp_path / "e7.pt", LIVE_V2, emotion_classes=7, modalities=("text", "audio"))
    worker = worker_for(path, redis_url)
    found, faces = serve(worker, redis_url, "pooled", 4.0, face_until=99.0)
    first = found[0]
    assert first["modalities"]["visual"]["present"] and not first["modalities"]["visual"]["used"]
    assert first["modalities"]["audio"]["present"] and first["modalities"]["audio"]["used"]
    # what the model alone says of that window, pooled by hand with the face's mean
    async def window_frames() -> tuple[Frames, Frames]:
        r = connect(redis_url)
        session = Session(r, "pooled")
        out = (await session.read_frames(ACOUSTIC, first["t_start"], first["t_end"]),
               await session.read_frames(FACE, first["t_start"], first["t_end"]))
        await r.aclose()
        return out

    audio, visual = asyncio.run(window_frames())
    job = _Job(None, WindowNotice("pooled", first["window"], first["t_start"], first["t_end"], time.time()), [],
               audio, visual, time.monotonic())
    worker._align_batch([job])
    (prediction,) = worker.predictor.predict(job.window.text[None], job.window.audio[None], job.window.visual[None])
    face = face_mean(faces, first["t_start"], first["t_end"])
    assert list(first["modalities"]["visual"]["emotions"].values()) == pytest.approx(face, abs=1e-9)
    assert list(first["emotions"].values()) == pytest.approx(pool(prediction.emotions, face, worker.fusion), abs=1e-6)
    assert list(first["modalities"]["audio"]["emotions"].values()) == pytest.approx(
        prediction.modality_emotions["audio"], abs=1e-6)


# --- one code path: capture and extraction give the same face frames ------------------------------

@pytest.fixture(scope="module")
def short_face_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("face") / "face.mp4", 2.0, sound="tone", fps=10)


@pytest.mark.timeout(120)
def test_capture_and_extraction_give_the_same_face_frames_with_the_experts_probabilities(
        redis_url: str, short_face_clip: Path) -> None:
    pytest.importorskip("mediapipe")
    from dmd_model.features import extract_media
    from workers.capture import Capture, FileSource
    from workers.settings import PipelineSettings

    settings = PipelineSettings()  # every tracked frame through the expert (capture.face_expert_every: 1)
    settings.capture.video_fps = 10  # every frame of the 10 fps clip, as extraction takes them
    assert settings.capture.face_expert_every == 1

    async def captured() -> tuple[Frames, int]:
        r = connect(redis_url)
        capture = Capture(r, "twins", FileSource(short_face_clip, speed=0), settings)
        stats = await capture.run(asr="none")
        frames = await Session(r, "twins").read_frames(FACE, 0.0, 100.0)
        await r.aclose()
        return frames, stats.face_expert_runs

    live, runs = asyncio.run(captured())
    offline = extract_media(short_face_clip, face_expert_every=1).visual
    assert live.values.shape == offline.values.shape == (20, 62) and live.present.all()
    assert runs == 20
    np.testing.assert_array_equal(live.times, offline.times)
    np.testing.assert_array_equal(live.values, offline.values)  # the same frames give the same 62 values
    np.testing.assert_allclose(live.values[:, 55:].sum(1), 1.0, atol=1e-5)  # the expert ran on every face
    without = extract_media(short_face_clip, face_expert_every=0).visual
    np.testing.assert_array_equal(without.values[:, :55], offline.values[:, :55])
    assert not without.values[:, 55:].any()


def test_the_expert_rate_runs_it_on_every_nth_frame_with_a_face(short_face_clip: Path) -> None:
    pytest.importorskip("mediapipe")
    from dmd_model.features import FaceFeatureStream, decode_media

    frames = [f for f in decode_media(short_face_clip, audio=False)][:9]
    with FaceFeatureStream(expert_every=3) as face:
        for f in frames:
            face.feed(f.rgb, f.t)
        taken = face.take()
        assert face.expert_runs == 3
    ran = taken.values[:, 55:].sum(1) > 0.5
    assert ran.tolist() == [True, False, False] * 3
    with pytest.raises(FeatureError, match="expert_every = -1"):
        FaceFeatureStream(expert_every=-1)
