"""The session clock and its windows.

Session time is seconds since the session started (media timestamps for a file, a monotonic clock
for a webcam or microphone, first arrival plus `pts * time_base` for a WebRTC track). Window k spans
`[k*hop - length, k*hop]`, so a new window ends every hop and each is `length` long; the first
window lying wholly inside the session is k = ceil(length / hop) (k = 6, [0, 3] with the defaults).

A window is complete when every stream it needs has data up to its end: the watermark of a set of
streams is the least of their times, and `WindowPlanner` turns fed times into complete windows with
the three-call shape of a streaming stage: `feed`, `take_ready`, `finish`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

_EPS = 1e-9  # slack for float arithmetic: 3.0 / 0.1 must count as 30, not 29.999999999999996


@dataclass(frozen=True)
class Window:
    """Window `index` of a session: data with `t_start <= t < t_end` (session seconds)."""

    index: int
    t_start: float
    t_end: float

    @property
    def length(self) -> float:
        return self.t_end - self.t_start


@dataclass(frozen=True)
class WindowSpec:
    """Window length and hop in seconds (defaults 3.0 and 0.5)."""

    length: float = 3.0
    hop: float = 0.5

    def __post_init__(self) -> None:
        for name in ("length", "hop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"window {name} = {value!r}: expected a positive number of seconds")
        object.__setattr__(self, "length", float(self.length))
        object.__setattr__(self, "hop", float(self.hop))

    def window(self, index: int) -> Window:
        return Window(index, round(index * self.hop - self.length, 9), round(index * self.hop, 9))

    @property
    def first(self) -> int:
        """Index of the first window that lies wholly inside the session (starts at or after 0)."""
        return math.ceil(self.length / self.hop - _EPS)

    def last_ending_by(self, t: float) -> int:
        """Index of the last window that ends at or before `t`."""
        return math.floor(t / self.hop + _EPS)

    def first_ending_after(self, t: float) -> int:
        """Index of the first window that ends at or after `t` (so it holds data up to `t`)."""
        return math.ceil(t / self.hop - _EPS)


def watermark(times: Mapping[str, float | None], needs: Iterable[str] | None = None) -> float | None:
    """The time up to which every stream in `needs` (default: all of `times`) has data: the least of
    their times, or None while one of them has none yet."""
    names = list(times) if needs is None else list(needs)
    if not names:
        raise ValueError("a watermark needs at least one stream")
    values = [times.get(name) for name in names]
    if any(v is None for v in values):
        return None
    return min(values)  # type: ignore[type-var]


class WindowPlanner:
    """Decides which windows are complete, from the times up to which streams have data.

    ```
    planner = WindowPlanner(["afeat", "vfeat"])
    planner.feed("afeat", 3.2); planner.feed("vfeat", 3.1)
    planner.take_ready()   # [Window(6, 0.0, 3.0)]
    planner.finish()       # end of input: the windows that still hold data
    ```

    Times may arrive in any order and from streams in any interleaving: a stream's time only moves
    forward (an earlier time than one already fed is ignored), and each window is handed out once.
    """

    def __init__(self, streams: Sequence[str], spec: WindowSpec | None = None, first_window: int | None = None
                 ) -> None:
        if not streams:
            raise ValueError("a window planner needs at least one stream to wait for")
        self.spec = spec or WindowSpec()
        self.streams = tuple(streams)
        self._times: dict[str, float | None] = dict.fromkeys(self.streams)
        self._ended: set[str] = set()
        self._next = self.spec.first if first_window is None else int(first_window)
        self._taken = 0
        self._finished = False

    def feed(self, stream: str, t: float) -> None:
        """`stream` has data up to session time `t`."""
        if self._finished:
            raise RuntimeError("feed() after finish(): make a new WindowPlanner for a new session")
        if stream not in self._times:
            raise ValueError(f"unknown stream {stream!r}: this planner waits for {', '.join(self.streams)}")
        if not math.isfinite(t):
            raise ValueError(f"time {t!r} fed for {stream!r} is not finite")
        current = self._times[stream]
        if current is None or t > current:
            self._times[stream] = t

    def end_stream(self, stream: str) -> None:
        """`stream` has ended (a track closed): windows no longer wait for it."""
        if stream not in self._times:
            raise ValueError(f"unknown stream {stream!r}: this planner waits for {', '.join(self.streams)}")
        self._ended.add(stream)

    @property
    def watermark(self) -> float | None:
        """Least time over the streams still open, None while one has no data yet."""
        open_streams = [s for s in self.streams if s not in self._ended]
        if not open_streams:
            return self._latest()
        return watermark(self._times, open_streams)

    @property
    def next_window(self) -> int:
        return self._next

    def take_ready(self) -> list[Window]:
        """The windows that became complete since the last call, in order."""
        mark = self.watermark
        if mark is None:
            return []
        return self._take_until(self.spec.last_ending_by(mark))

    def finish(self) -> list[Window]:
        """End of input: every window not yet taken that holds data, up to the one that covers the last
        data. A session shorter than one window still gets the first window."""
        self._finished = True
        latest = self._latest()
        if latest is None:
            return []
        last = self.spec.first_ending_after(latest)
        if self._taken == 0:
            last = max(last, self._next)
        return self._take_until(last)

    def _latest(self) -> float | None:
        fed = [t for t in self._times.values() if t is not None]
        return max(fed) if fed else None

    def _take_until(self, last: int) -> list[Window]:
        windows = [self.spec.window(k) for k in range(self._next, last + 1)]
        if windows:
            self._next = last + 1
            self._taken += len(windows)
        return windows
