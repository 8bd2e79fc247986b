"""Consumers of schema 2 outside the browser: `dmd watch` shows the top emotion beside the sentiment,
and the session timeline (PNG and HTML) has an emotion panel when the estimates have emotions."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from test_stream_estimate import HAPPY, SAD, face_only, make_estimate

from dmd_types import EMOTIONS
from stream.estimate import Estimate
from workers.view.timeline import write_html, write_png
from workers.view.watch import TerminalView, face_emotion, modality_letters, top_emotion


def session(emotions: bool) -> list[dict]:
    out = []
    for k in range(6, 16):
        own = (HAPPY if k < 11 else SAD) if emotions else None
        out.append(make_estimate(window=k, sentiment=0.84, emotions=own).with_smoothed(0.5, own).to_dict())
    return out


def test_watch_prints_the_top_emotion_and_its_probability_beside_the_sentiment() -> None:
    line = TerminalView.line(make_estimate(emotions=SAD).with_smoothed(0.61, HAPPY))
    assert re.search(r"ema \+0\.61 positive\s+happy 50%", line)
    assert top_emotion(make_estimate().with_smoothed(0.61)) == "-"
    assert "ema +0.61 positive -" in TerminalView.line(make_estimate().with_smoothed(0.61))
    out = io.StringIO()
    TerminalView(out).update(make_estimate(emotions=SAD).with_smoothed(0.61, SAD))
    assert "sad 70%" in out.getvalue()


def test_watch_shows_what_was_observed_beside_what_the_model_used_and_the_faces_own_emotion() -> None:
    seen = Estimate.from_dict(face_only())  # a face the model does not read: its emotions are the face expert's
    assert modality_letters(seen) == "TAv" and face_emotion(seen) == "face happy 50%"
    assert "[TAv]" in TerminalView.line(seen) and "face happy 50%" in TerminalView.line(seen)
    plain = make_estimate().with_smoothed(0.61)  # the face not observed
    assert modality_letters(plain) == "TA." and face_emotion(plain) == ""


def test_the_timeline_has_an_emotion_panel_when_the_estimates_have_emotions(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    with_emotions = write_html(session(True), tmp_path / "e.html")
    page = with_emotions.read_text()
    assert 'aria-label="emotion timeline"' in page and page.count('class="emotion"') == len(EMOTIONS)
    assert "7.5s: sad 70%" in page and "3.0s: happy 50%" in page  # the top emotion of a window, as a tooltip
    data = json.loads(page.split('id="dmd-timeline">')[1].split("</script>")[0])
    assert data["points"][0]["emotion"] == "happy" and data["points"][-1]["emotions"]["sad"] == 0.7
    without = write_html(session(False), tmp_path / "s.html").read_text()
    assert "emotion timeline" not in without and 'aria-label="sentiment timeline"' in without

    from PIL import Image

    tall = Image.open(write_png(session(True), tmp_path / "e.png"))
    short = Image.open(write_png(session(False), tmp_path / "s.png"))
    assert tall.size[0] == short.size[0] and tall.size[1] > short.size[1] * 1.3  # the panel below the sentiment


def test_a_schema_1_estimate_dict_draws_without_emotions(tmp_path: Path) -> None:
    old = session(False)
    for e in old:
        e["schema"] = 1
        del e["emotions"], e["emotion"]
    assert "emotion timeline" not in write_html(old, tmp_path / "old.html").read_text()
