"""The design rule for `stream/`: it imports redis, numpy and msgpack, never `dmd_model` or `workers`
(and so never torch), so the protocol stays light for capture workers and dashboards."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import stream

FORBIDDEN = ("dmd_model", "workers", "torch")


def test_stream_modules_never_import_the_model_or_the_workers() -> None:
    for path in sorted(Path(stream.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_importing_every_stream_module_loads_no_model_code() -> None:
    code = ("import sys, pkgutil, importlib, stream\n"
            "for m in pkgutil.iter_modules(stream.__path__): importlib.import_module('stream.' + m.name)\n"
            f"print(sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_command_line_is_built_without_torch_or_the_feature_libraries() -> None:
    """`dmd --help`, and the parser every `dmd` command builds first, load no model or media code:
    `dmd watch` or `dmd --help` used to import torch (1.3-1.6 s) through the demo clip's path."""
    code = ("import sys, contextlib, io\n"
            "from workers.cli import build_parser\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    build_parser().parse_args(['--help'])\n"
            "print(sorted(n for n in ('torch', 'mediapipe', 'opensmile', 'transformers', 'cv2') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
