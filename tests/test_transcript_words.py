"""A transcript built from overlapping windows shows each word once, in the timeline (Python) and in
the pages (common.js, run with Node.js when it is installed)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from workers.view.timeline import _words

COMMON_JS = Path(__file__).resolve().parents[1] / "workers" / "web" / "static" / "common.js"


def window(start: float, end: float, said: list[tuple[str, float, float]]) -> dict:
    """An estimate's words as the alignment gives them: cut to the window's edges."""
    return {"words": [{"word": w, "start": max(s, start), "end": min(e, end), "confidence": 1.0}
                      for w, s, e in said if min(e, end) - max(s, start) > 0]}


SAID = [("a", 0.2, 0.4), ("really", 0.5, 1.0), ("really", 1.1, 1.6), ("ambitious", 2.8, 3.6), ("plan", 3.7, 4.1)]
WINDOWS = [window(t - 3.0, t, SAID) for t in (3.0, 3.5, 4.0, 4.5)]  # 3 s windows, 0.5 s hop


def test_the_timeline_shows_each_word_once_and_a_repeated_word_twice() -> None:
    assert [w["word"] for w in _words(WINDOWS)] == ["a", "really", "really", "ambitious", "plan"]


def test_the_pages_show_each_word_once_and_a_repeated_word_twice() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed")
    script = ("globalThis.window = {location: {search: ''}};\n" + COMMON_JS.read_text()
              + f"\nprocess.stdout.write(DMD.wordsOf({json.dumps(WINDOWS)}, 40));\n")
    out = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "a really really ambitious plan"
