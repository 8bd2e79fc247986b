"""Native libraries' log noise is dropped from `dmd`'s standard error; everything else passes, at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from workers.cli.quiet import LineFilter

ROOT = Path(__file__).resolve().parents[1]


def test_noise_lines_are_dropped_and_other_output_passes_even_mid_line() -> None:
    f = LineFilter()
    out = f.feed(b"W0000 00:00:17 face_landmarker_graph.cc:181] Sets acceleration\nextract:  10%|#")
    assert out == b"extract:  10%|#"  # a progress bar is passed before its line ends
    assert f.feed(b"\rextract: 20%\nINFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n") == b"\rextract: 20%\n"
    assert f.feed(b"W00") == b""  # could still become a noise line: held back
    assert f.feed(b"00 x\nE0000 an error is kept\n") == b"E0000 an error is kept\n"
    assert f.feed(b"WARN") == b""
    assert f.feed(b"ING: disk nearly full\n") == b"WARNING: disk nearly full\n"
    assert f.finish() == b""


def test_the_filter_sits_on_file_descriptor_2_of_the_process() -> None:
    code = ("import os, sys; from workers.cli.quiet import quiet_native_logs; quiet_native_logs(); "
            "os.write(2, b'WARNING: Logging before InitGoogle() is written to STDERR\\nkept\\n'); "
            "print('from python', file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    assert out.stderr == b"kept\nfrom python\n"
