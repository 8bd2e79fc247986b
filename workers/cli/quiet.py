"""Native libraries' log noise kept off a user's terminal.

MediaPipe and TensorFlow Lite write glog-style lines straight to file descriptor 2 from C++ ("W0000
00:00:... face_landmarker_graph.cc:181] ...", "INFO: Created TensorFlow Lite XNNPACK delegate",
"WARNING: Logging before InitGoogle()"), and no environment variable of theirs turns them off. The
`dmd` command (not the library, not the tests) routes fd 2 through a pipe whose reader drops those
lines and passes everything else on at once, partial lines (progress bars) included; `--verbose`
keeps them.
"""

from __future__ import annotations

import atexit
import os
import threading

NOISE_PREFIXES = (b"W0000 ", b"I0000 ", b"INFO: Created TensorFlow Lite", b"WARNING: Logging before InitGoogle")
_installed = False
_restore = None


def is_noise(line: bytes) -> bool:
    """A native library's warning or info line (errors, E0000, are kept)."""
    return line.startswith(NOISE_PREFIXES)


def _could_become_noise(partial: bytes) -> bool:
    return any(p.startswith(partial[:len(p)]) for p in NOISE_PREFIXES)


class LineFilter:
    """Feed bytes, get back what to pass on: whole lines that are not noise, and a partial line as soon
    as it cannot be the start of a noise line."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = []
        while (newline := self.buffer.find(b"\n")) >= 0:
            line, self.buffer = self.buffer[:newline + 1], self.buffer[newline + 1:]
            if not is_noise(line):
                out.append(line)
        if self.buffer and not _could_become_noise(self.buffer):
            out.append(self.buffer)
            self.buffer = b""
        return b"".join(out)

    def finish(self) -> bytes:
        rest, self.buffer = self.buffer, b""
        return b"" if is_noise(rest) else rest


def quiet_native_logs() -> None:
    """Route fd 2 through the filter for the rest of the process (once)."""
    global _installed
    if _installed:
        return
    _installed = True
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    flt = LineFilter()

    def pump() -> None:
        while data := os.read(read_end, 65536):
            if kept := flt.feed(data):
                os.write(real, kept)
        if rest := flt.finish():
            os.write(real, rest)

    thread = threading.Thread(target=pump, name="dmd-stderr-filter", daemon=True)
    thread.start()

    done = threading.Event()

    def restore(timeout: float = 2.0) -> None:
        if done.is_set():
            return
        done.set()
        os.dup2(real, 2)  # the pipe's last writer is gone: the pump reads what is left, then ends
        thread.join(timeout=timeout)

    global _restore
    _restore = restore
    atexit.register(restore)


def drain(timeout: float = 2.0) -> None:
    """Pass on what the filter still holds and give fd 2 back: for a process that leaves with
    `os._exit`, which runs no atexit handler (the last log lines would be lost in the pipe)."""
    if _restore is not None:
        _restore(timeout)
