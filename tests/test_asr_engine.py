"""Pure code of the ASR: word normalisation, word error rate, LocalAgreement-2 on synthetic
hypotheses, and the engine base's guarantees (session clock, watermark, word order)."""

from __future__ import annotations

import numpy as np
import pytest

from dmd_types import Word, normalise_text, normalise_word
from workers.asr.engine import Engine, NoEngine, word_error_rate
from workers.asr.whisper import LocalAgreement, cut_repetition, ends_sentence, hyp_words, word_key


@pytest.mark.parametrize(("raw", "words"), [
    (" Hello,", ["hello"]),
    ("I'm", ["im"]),            # MOSI writes "im", "didnt", "shouldve"
    ("don’t", ["dont"]),
    ("well-known", ["well", "known"]),
    ("-sposed.", ["sposed"]),
    ("Mr.", ["mr"]),
    ("...", []),
    ("[unk]", []),
    ("<noise>", []),
    ("(laughs)", []),
    ("1,000", ["1", "000"]),
    ("헬멧", ["헬멧"]),           # other scripts pass unchanged
])
def test_words_are_lower_case_without_punctuation(raw: str, words: list[str]) -> None:
    assert normalise_word(raw) == words


def test_word_error_rate_counts_substitutions_deletions_and_insertions() -> None:
    ref = normalise_text("He was not an ill disposed young man")
    assert word_error_rate(ref, ref) == 0.0
    assert word_error_rate(ref, normalise_text("he was not an old sposed young man")) == pytest.approx(2 / 8)
    assert word_error_rate(ref, normalise_text("he was an ill disposed young man")) == pytest.approx(1 / 8)
    assert word_error_rate(ref, normalise_text("so he was not an ill disposed young man")) == pytest.approx(1 / 8)
    assert word_error_rate([], []) == 0.0 and word_error_rate([], ["x"]) == 1.0


# --- LocalAgreement-2 on synthetic hypotheses --------------------------------------------------------

def hyp(text: str, t0: float = 0.0, step: float = 0.5) -> list[Word]:
    """A hypothesis: word i spans [t0 + i*step, t0 + (i+1)*step]."""
    return hyp_words([(w, t0 + i * step, t0 + (i + 1) * step, 0.9) for i, w in enumerate(text.split())])


def keys(words: list[Word]) -> str:
    return " ".join(word_key(w) for w in words)


def test_local_agreement_commits_the_common_prefix_of_two_hypotheses() -> None:
    la = LocalAgreement()
    assert la.insert(hyp("the cat")) == []  # one hypothesis alone commits nothing
    assert keys(la.insert(hyp("the cat sat on"))) == "the cat"
    assert keys(la.pending) == "sat on"
    assert keys(la.insert(hyp("the cat sat on the mat"))) == "sat on"
    assert keys(la.insert(hyp("the cat sat on a mat"))) == ""  # "the" vs "a": no agreement yet
    assert keys(la.insert(hyp("the cat sat on a mat today"))) == "a mat"
    assert keys(la.flush()) == "today"
    assert la.committed_end == pytest.approx(3.5)


def test_local_agreement_compares_normalised_words() -> None:
    la = LocalAgreement()
    la.insert(hyp_words([(" Well,", 0.0, 0.4, 0.9), (" I'm", 0.4, 0.6, 0.9)]))
    committed = la.insert(hyp_words([(" well", 0.0, 0.4, 0.9), (" im", 0.4, 0.6, 0.9), (" here.", 0.6, 0.9, 0.9)]))
    assert keys(committed) == "well im"
    assert committed[0].text == "well"  # the newest hypothesis' spelling and times are kept


def test_a_revised_word_stops_the_commit_at_the_first_disagreement() -> None:
    la = LocalAgreement()
    la.insert(hyp("i'll last to be"))
    assert keys(la.insert(hyp("unless to be rather"))) == ""
    assert keys(la.insert(hyp("unless to be rather cold"))) == "unless to be rather"


def test_words_before_the_last_commit_are_not_committed_again() -> None:
    la = LocalAgreement()
    la.insert(hyp("a b c d"))
    assert keys(la.insert(hyp("a b c d e"))) == "a b c d"  # committed up to 2.0 s
    # the buffer still holds the committed audio: the next hypotheses repeat it, with shifted times
    assert keys(la.insert(hyp("a b c d e f", t0=0.02))) == "e"
    # a hypothesis that starts by repeating the last committed words near the commit point
    assert keys(la.insert(hyp("d e f g", t0=2.45))) == "f"
    assert keys(la.pending) == "g"


def test_flush_commits_a_final_hypothesis_without_agreement() -> None:
    la = LocalAgreement()
    la.insert(hyp("one two"))
    la.insert(hyp("one two three"))
    assert keys(la.flush(hyp("one two three four five"))) == "three four five"
    assert la.pending == []


def test_force_commits_pending_words_that_end_early_enough() -> None:
    la = LocalAgreement()
    la.insert(hyp("x y z w"))  # pending, no agreement
    assert keys(la.force_until(1.0)) == "x y"
    assert keys(la.pending) == "z w" and la.committed_end == 1.0


def test_sentence_ends_are_found_but_not_after_abbreviations() -> None:
    words = hyp_words([(" Mr.", 0, 0.3, 1), (" John", 0.3, 0.6, 1), (" came.", 0.6, 0.9, 1), (' "Yes?"', 1, 1.2, 1)])
    assert [ends_sentence(w) for w in words] == [False, False, True, True]


# --- the engine base ---------------------------------------------------------------------------------

class Scripted(Engine):
    """An engine that commits words it is told to, with the watermark it is told (for the base's rules)."""

    name = "scripted"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.next: tuple[list[Word], float] = ([], 0.0)
        self.fed: list[int] = []
        self.restarted: list[float] = []

    def _feed(self, pcm: np.ndarray) -> None:
        self.fed.append(len(pcm))

    def _take(self):
        result, self.next = self.next, ([], 0.0)
        return result

    def _finish(self):
        return [Word("end.", self.audio_end - 0.1, self.audio_end)], self.audio_end

    def _restart(self):
        self.restarted.append(self.audio_end)
        return self._finish()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * 16000), np.int16)


def test_the_watermark_never_goes_back_and_covers_every_word() -> None:
    e = Scripted()
    e.feed(silence(2.0), 1.0)  # the session's audio starts at 1.0 s
    e.next = ([Word("Hello,", 1.2, 1.5)], 1.0)  # a candidate below the word's end
    words, wm = e.take()
    assert [(w.text, w.start, w.end) for w in words] == [("hello", 1.2, 1.5)] and wm == 1.5
    e.next = ([], 2.5)
    assert e.take() == ([], 2.5)
    e.next = ([], 2.0)  # an engine whose candidate goes back: the watermark stays
    assert e.take() == ([], 2.5)
    e.next = ([], 9.0)  # never past the audio fed
    assert e.take()[1] == 3.0


def test_a_word_found_before_the_watermark_is_moved_to_it_and_counted() -> None:
    e = Scripted()
    e.feed(silence(3.0), 0.0)
    e.next = ([], 2.0)
    e.take()
    e.next = ([Word("late", 1.8, 2.3), Word("early", 1.0, 1.2), Word("ok", 2.4, 2.6)], 2.6)
    words, wm = e.take()
    assert [(w.text, w.start) for w in words] == [("late", 2.0), ("early", 2.0), ("ok", 2.4)]
    assert words[1].end == 2.0 and wm == 2.6
    assert e.stats()["late_words"] == 2


def test_gaps_are_filled_up_to_a_second_and_a_longer_gap_restarts_the_clock() -> None:
    e = Scripted()
    e.feed(silence(1.0), 0.0)
    e.feed(silence(1.0), 1.5)  # 0.5 s missing: filled with silence
    assert e.fed == [16000, 8000, 16000] and e.audio_end == pytest.approx(2.5)
    e.feed(silence(1.0), 10.0)  # 7.5 s missing: the run ends, the clock starts again at 10.0
    assert e.restarted == [pytest.approx(2.5)] and e.origin == 10.0 and e.audio_end == pytest.approx(11.0)
    words, wm = e.take()
    assert [w.text for w in words] == ["end"] and wm == 10.0  # nothing was said in the gap
    e.feed(silence(1.0), 10.5)  # overlaps what was fed: only the new half second is used
    assert e.fed[-1] == 8000 and e.audio_end == pytest.approx(11.5)


def test_a_resumed_engine_drops_the_words_an_earlier_run_committed() -> None:
    e = Scripted()
    e.resume_from(5.0)
    e.feed(silence(3.0), 3.0)  # two seconds of context before the resume point
    assert e.take() == ([], 5.0)
    e.next = ([Word("said", 3.5, 4.0), Word("cut", 4.95, 5.3), Word("new", 5.4, 5.8)], 5.8)
    words, wm = e.take()
    assert [(w.text, w.start) for w in words] == [("cut", 5.0), ("new", 5.4)] and wm == 5.8
    assert e.stats()["context_words"] == 1 and e.stats()["late_words"] == 0
    with pytest.raises(RuntimeError, match="resume_from after audio was fed"):
        e.resume_from(6.0)


def test_finish_gives_the_last_words_and_the_end_of_audio() -> None:
    e = Scripted()
    e.feed(silence(2.0), 0.5)
    words, wm = e.finish()
    assert [(w.text, w.start, w.end) for w in words] == [("end", pytest.approx(2.4), 2.5)] and wm == 2.5
    with pytest.raises(RuntimeError, match="feed after finish"):
        e.feed(silence(0.1), 2.5)


def test_audio_of_the_wrong_type_is_refused_with_what_to_send() -> None:
    with pytest.raises(ValueError, match=r"audio is float32 \(10,\), expected int16 \(samples,\) at 16000 Hz mono"):
        NoEngine().feed(np.zeros(10, np.float32), 0.0)


def test_no_engine_follows_the_audio_without_words() -> None:
    e = NoEngine()
    assert e.take() == ([], 0.0)
    e.feed(silence(0.25), 3.0)
    assert e.take() == ([], 3.25)
    e.feed(silence(0.5), 3.25)
    assert e.finish() == ([], 3.75)
    assert e.stats()["audio_s"] == 0.75 and e.stats()["words"] == 0


def test_a_repetition_loop_is_cut_and_real_repeats_are_kept() -> None:
    loop = hyp("he might even have been made amiable himself he might even have been made amiable himself he might")
    assert keys(cut_repetition(loop)) == "he might even have been made amiable himself"
    assert keys(cut_repetition(hyp("it was really really good"))) == "it was really really good"
    assert keys(cut_repetition(hyp("no no no"))) == "no no no"  # shorter than a phrase of four
