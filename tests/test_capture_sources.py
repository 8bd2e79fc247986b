"""File sources played side by side in one process (`dmd run` / `dmd serve` with several sessions):
each decodes in a thread of its own and paces from its first item, so no session waits for another."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from media_helpers import write_media

from dmd_types import PcmChunk
from workers.capture import FileSource


def test_more_file_sessions_than_the_default_executor_has_threads_all_start_at_once(tmp_path: Path) -> None:
    # 12 sources: beyond the loop's default executor (min(32, cores + 4) threads), where the
    # sessions past its size waited for whole files to be played by the others
    clip = write_media(tmp_path / "clip.mp4", seconds=4.0)

    async def main() -> list[tuple[float, float]]:
        began = time.monotonic()

        async def play(source: FileSource) -> tuple[float, float]:
            first = last = None
            async for item in source.media():
                now = time.monotonic() - began
                first = now if first is None else first
                if isinstance(item, PcmChunk) and item.t0 >= 1.0:  # a second of media in: paced, not rushed
                    last = now
                    await source.close()
            return first, last

        return await asyncio.gather(*(play(FileSource(clip, speed=1.0)) for _ in range(12)))

    results = asyncio.run(main())
    firsts = [f for f, _ in results]
    assert max(firsts) < 0.9, f"the last of 12 sources began {max(firsts):.1f} s in: a session waited for others"
    for first, last in results:
        assert last is not None and 0.8 < last - first < 2.0, (first, last)  # real time from its first item
