"""Media files, and the profile's promise: a clip extracted offline in one go and the same clip
replayed live (chunk by chunk, frame by frame, window by window) give the same model input."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from media_helpers import write_media

from dmd_model.features import (
    AUDIO_NAMES,
    AudioFeatureStream,
    FaceFeatureStream,
    FeatureError,
    Frames,
    PcmChunk,
    VideoFrame,
    align_transcript,
    align_window,
    decode_media,
    extract_media,
    f0_hz,
    load_text_encoder,
    probe_media,
)

av = pytest.importorskip("av")
pytest.importorskip("opensmile")
pytest.importorskip("mediapipe")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MOSI = DATA / "clips" / "mosi"
ABSENT = "real clips not here (../shared/data/clips): developer data only"
needs_clips = pytest.mark.skipif(not MOSI.is_dir(), reason=ABSENT)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_media(tmp_path_factory.mktemp("media") / "tone.mp4")


def replay(path: Path) -> tuple[Frames, Frames]:
    """The live path: chunks and frames as a capture worker would see them, taken as they come."""
    audio = AudioFeatureStream(t0=0.0)
    face = FaceFeatureStream()  # what live capture runs: the tracker, then the face expert
    a_parts, v_parts = [], []
    for item in decode_media(path):
        if isinstance(item, PcmChunk):
            audio.feed(item.pcm)
            a_parts.append(audio.take())
        else:
            face.feed(item.rgb, item.t)
            v_parts.append(face.take())
    a_parts.append(audio.finish())
    v_parts.append(face.finish())
    return Frames.concat(a_parts, dim=len(AUDIO_NAMES)), Frames.concat(v_parts, dim=62)


def windows(duration: float, length: float, hop: float):
    k = 1
    while k * hop <= duration + hop:
        yield max(0.0, k * hop - length), k * hop
        k += 1


def test_generated_clip_decodes_to_timed_frames_and_contiguous_chunks(clip):
    info = probe_media(clip)
    assert info.has_video and info.has_audio and info.audio_rate == 44100 and info.fps == 15
    items = list(decode_media(clip))
    frames = [i for i in items if isinstance(i, VideoFrame)]
    chunks = [i for i in items if isinstance(i, PcmChunk)]
    assert len(frames) == 45 and frames[0].rgb.shape == (120, 160, 3)
    np.testing.assert_allclose([f.t for f in frames], np.arange(45) / 15, atol=1e-6)
    assert all(c.pcm.dtype == np.int16 for c in chunks) and all(c.pcm.size == 1600 for c in chunks[:-1])
    starts = np.array([c.t0 for c in chunks])
    np.testing.assert_allclose(np.diff(starts), 0.1, atol=1e-9)  # no gaps between chunks


def test_generated_clip_extracts_voice_and_no_face(clip):
    features = extract_media(clip)
    assert len(features.visual) == 45 and not features.visual.present.any()
    assert abs(len(features.audio) - 300) <= 8 and features.pcm.dtype == np.int16
    tone = features.audio.between(0.2, 1.1)
    pause = features.audio.between(1.3, 1.7)
    assert tone.present.mean() > 0.9 and not pause.present.any()
    assert np.median(f0_hz(tone)) == pytest.approx(200, rel=0.03)


def test_generated_clip_offline_and_replayed_give_the_same_model_input(clip):
    encoder = load_text_encoder()
    offline = extract_media(clip)
    audio, visual = replay(clip)
    assert np.abs(offline.audio.values - audio.values).max() <= 1e-4
    assert np.array_equal(offline.visual.values, visual.values)
    words = align_transcript(offline.pcm, "one two three four five")
    for t0, t1 in [(0.0, offline.duration), *windows(offline.duration, 3.0, 0.5)]:
        a = align_window(words, offline.audio, offline.visual, t0, t1, encoder)
        # live: the window reads back only its own span from the streams
        b = align_window(words, audio.between(t0, t1), visual.between(t0, t1), t0, t1, encoder)
        assert a.max_difference(b) <= 1e-4, (t0, t1)


def test_a_file_without_sound_is_refused_unless_asked_for_the_face_only(tmp_path):
    silent = write_media(tmp_path / "silent.mp4", seconds=1.0, audio=False)
    with pytest.raises(FeatureError, match=r"silent.mp4' has no audio stream: pass audio=False"):
        extract_media(silent)
    features = extract_media(silent, audio=False)
    assert len(features.visual) == 15 and len(features.audio) == 0


def test_a_sound_file_has_no_video_stream_to_decode(tmp_path):
    sound = write_media(tmp_path / "sound.m4a", seconds=1.0, video=False)
    with pytest.raises(FeatureError, match="has no video stream: pass video=False"):
        decode_media(sound)
    features = extract_media(sound, video=False)
    assert len(features.audio) > 90 and len(features.visual) == 0


def test_missing_and_unreadable_files_are_named_with_the_fix(tmp_path):
    with pytest.raises(FeatureError, match=r"nothere.mp4' does not exist: check the path"):
        extract_media(tmp_path / "nothere.mp4")
    junk = tmp_path / "notes.mp4"
    junk.write_text("not a video at all\n" * 20)
    with pytest.raises(FeatureError, match=r"cannot read .*notes.mp4' as media.*ffprobe"):
        extract_media(junk)
    with pytest.raises(FeatureError, match="is a folder, not a media file"):
        decode_media(tmp_path)


@needs_clips
def test_mosi_clip_offline_and_replayed_in_windows_give_the_same_model_input():
    encoder = load_text_encoder()
    path = MOSI / "Sqr0AcuoNnk_12.mp4"
    with open(MOSI / "manifest.csv") as f:
        transcript = {r["file"]: r["text"] for r in csv.DictReader(f)}[path.name]
    offline = extract_media(path)
    words = align_transcript(offline.pcm, transcript)
    audio, visual = replay(path)
    whole_offline = align_window(words, offline.audio, offline.visual, 0.0, offline.duration, encoder)
    whole_live = align_window(words, audio, visual, 0.0, offline.duration, encoder)
    assert whole_offline.max_difference(whole_live) <= 1e-4
    assert whole_offline.n_tokens == len(transcript.split()) == 9
    assert all(whole_offline.present.values()) and whole_offline.face_present[: whole_offline.length].all()
    for t0, t1 in windows(offline.duration, 1.0, 0.5):
        a = align_window(words, offline.audio, offline.visual, t0, t1, encoder)
        b = align_window(words, audio.between(t0, t1), visual.between(t0, t1), t0, t1, encoder)
        assert a.max_difference(b) <= 1e-4, (t0, t1)
