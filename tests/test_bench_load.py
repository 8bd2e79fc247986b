"""bench/load.py, the load generator of issue 16: what its simulated sessions send is what capture
and the ASR send (the protocol's codecs decode every entry, ids grow as `Session.add` makes them,
notices come as capture's window planner decides), and a tiny run on a redis-server of its own gets
exactly one estimate per window."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from redis_fixtures import REDIS_SERVER

from stream.messages import ACOUSTIC, FACE, AsrWords, decode
from stream.window import WindowSpec

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_load", ROOT / "bench" / "load.py")
load = importlib.util.module_from_spec(_spec)
sys.modules["bench_load"] = load
_spec.loader.exec_module(load)


def _ids(ops, stream: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in o.entry_id.split("-")) for o in ops if o.kind == "data" and o.stream == stream]


@pytest.mark.parametrize("pcm", [False, True])
def test_every_entry_of_a_simulated_session_decodes_as_capture_and_the_asr_write_it(pcm: bool) -> None:
    recording = load.Recording.random(12.0)
    timeline = load.build_timeline(recording, 25.0, pcm=pcm)  # longer than the recording: it loops
    ops = timeline.ops
    assert [o.kind for o in ops[:1]] == ["start"] and ops[-1].kind == "expire"
    assert [o.t for o in ops] == sorted(o.t for o in ops), "commands out of time order"
    widths = {"afeat": ACOUSTIC.width, "vfeat": FACE.width}
    for op in ops:
        if op.kind != "data":
            continue
        message = decode(op.fields)
        if op.stream in widths:
            assert message.values.shape[1] == widths[op.stream]
            assert float(message.times[-1]) <= op.t + 1e-6, "data sent before its time"
        assert int(op.entry_id.split("-")[0]) == int(np.floor(message.t_end * 1000 + 1e-6))
    for stream in ("afeat", "vfeat", "words") + (("audio",) if pcm else ()):
        ids = _ids(ops, stream)
        assert ids and ids == sorted(set(ids)), f"{stream}: ids must grow"
    assert not _ids(ops, "audio") or pcm
    # about capture's rates: an acoustic entry per 100 ms chunk, face frames at the tracking rate
    assert abs(timeline.entries["afeat"] - 250) <= 10
    assert abs(timeline.entries["vfeat"] - 25 * load.VIDEO_FPS) <= 2 * load.VIDEO_FPS


def test_notices_come_when_every_stream_has_passed_the_window_end() -> None:
    spec = WindowSpec()
    timeline = load.build_timeline(load.Recording.random(12.0), 10.0, spec=spec)
    notices = [o for o in timeline.ops if o.kind == "notice"]
    assert [o.window.index for o in notices] == list(range(spec.first, 20 + 1))
    assert timeline.windows == len(notices)
    for notice in notices[:-1]:
        before = [o for o in timeline.ops[:timeline.ops.index(notice)] if o.kind == "data"]
        for stream in ("afeat", "vfeat"):
            last = max(float(decode(o.fields).times[-1]) for o in before if o.stream == stream)
            assert last >= notice.window.t_end - 1 / load.VIDEO_FPS
        assert notice.t >= notice.window.t_end


def test_the_words_watermark_never_falls_nor_passes_a_word_not_yet_written() -> None:
    recording = load.Recording.random(12.0)
    entries = load.asr_entries(recording.words, 12.0, 0.5)
    marks = [e.watermark for e in entries]
    assert marks == sorted(marks) and marks[-1] == 12.0
    written = [w for e in entries for w in e.words]
    assert written == sorted(recording.words, key=lambda w: w.start)
    for i, e in enumerate(entries):
        later = [w for f in entries[i + 1:] for w in f.words]
        assert all(w.start >= e.watermark - 1e-9 for w in later), "a word starting before a watermark came after it"
        assert isinstance(decode(AsrWords(e.words, e.watermark).to_fields()), AsrWords)


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (apt-get install redis-server)")
@pytest.mark.slow
def test_a_tiny_load_run_gets_one_estimate_per_window(tmp_path: Path) -> None:
    report = tmp_path / "load.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "load.py"), "--sessions", "2", "--duration", "5", "--stagger", "0.5",
         "--features", "random", "--drain", "15", "--out", str(tmp_path / "run"), "--json-out", str(report)],
        capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(report.read_text())
    w = r["windows"]
    assert w["expected"] == 2 * r["per_session"]["windows"] > 0
    assert w["exactly_one_each"], w
    assert w["received"] == w["published"] == w["expected"]
    assert r["inference"]["exit_codes"] == {"load-infer-0": 0}
    assert r["window_end_to_subscriber_ms"]["p50"] > 0
