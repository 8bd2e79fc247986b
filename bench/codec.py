"""Decoding stream entries: our codecs (msgpack + the validators of `stream.messages`) per message
kind, and, when msgspec is installed, the same window notice decoded into a msgspec Struct with the
constraints msgspec can express (for the question whether msgspec structs would make the validators
shorter and decoding no slower). Prints JSON; never asserts a time.

    python bench/codec.py [--repeats 20000]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from hostinfo import cpu_model  # noqa: E402

from dmd_types import Frames, PcmChunk, Word  # noqa: E402
from stream.messages import ACOUSTIC, FACE, AsrWords, WindowNotice, decode, to_fields  # noqa: E402


def per_call_us(fn: Callable[[], Any], repeats: int) -> float:
    """Median over 5 rounds of the mean time of one call, in microseconds."""
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        rounds.append((time.perf_counter() - start) / repeats * 1e6)
    return round(sorted(rounds)[2], 2)


try:
    import msgspec

    class Notice(msgspec.Struct):
        type: str
        session: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
        window: Annotated[int, msgspec.Meta(ge=0)]
        t_start: float
        t_end: Annotated[float, msgspec.Meta(ge=0)]
        notice_time: Annotated[float, msgspec.Meta(ge=0)]
except ImportError:  # not a dependency of the project: the comparison is left out
    msgspec = None


def msgspec_notice(repeats: int, raw: bytes) -> dict[str, Any] | None:
    if msgspec is None:
        return None
    decoder = msgspec.msgpack.Decoder(Notice)

    def decode_notice() -> Notice:
        n = decoder.decode(raw)
        # what msgspec cannot say in the schema: finite times, the end after the start
        if not (np.isfinite(n.t_start) and np.isfinite(n.t_end) and n.t_end > n.t_start):
            raise ValueError("window.t_end")
        return n

    return {"window_notice_msgspec_us": per_call_us(decode_notice, repeats), "msgspec": msgspec.__version__}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    notice = to_fields(WindowNotice("alice", 42, 18.0, 21.0, 1.7e9))
    pcm = to_fields(PcmChunk(1.0, rng.integers(-3000, 3000, 1600).astype(np.int16)))
    afeat = to_fields(Frames(np.arange(10) / 100, rng.standard_normal((10, 25)).astype(np.float32),
                             np.ones(10, bool)), ACOUSTIC)
    vfeat = to_fields(Frames([1.0], rng.random((1, 62)).astype(np.float32), np.ones(1, bool)), FACE)
    words = to_fields(AsrWords(tuple(Word(w, 0.3 * i, 0.3 * i + 0.25, 0.9) for i, w in
                                     enumerate(["i", "really", "liked", "this", "movie", "a", "lot"])), 2.5))
    kinds = {"window_notice": (notice, WindowNotice), "pcm_100ms": (pcm, PcmChunk), "afeat_10": (afeat, ACOUSTIC),
             "vfeat_1": (vfeat, FACE), "words_7": (words, AsrWords)}
    result: dict[str, Any] = {"machine": cpu_model(), "python": platform.python_version(),
                              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "repeats": args.repeats}
    for name, (fields, kind) in kinds.items():
        result[f"{name}_us"] = per_call_us(lambda f=fields, k=kind: decode(f, k), args.repeats)
    result.update(msgspec_notice(args.repeats, notice["m"]) or {"msgspec": "not installed"})
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
