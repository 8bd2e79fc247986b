"""`dmd watch`: the estimates of one or all sessions as they are published.

A terminal view (one row per session: sentiment bar, smoothed value, label, the most probable
emotion with its smoothed probability ("-" without emotions), the modalities (`TAv`: upper case
observed and used by the model, lower case observed but not used, `.` not observed), the face's own
emotion where the face expert gave the face's emotions, the latest words, latency), or with
`--json` one JSON estimate per line on standard output, for piping. On start it shows the recent
history from the sessions' estimates streams, so a view opened late is not empty; after Redis went
away and came back it shows what it missed the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import redis.asyncio as aioredis

from stream.connection import CONNECTION_ERRORS, Backoff
from stream.estimate import Estimate
from stream.publish import watch_estimates
from stream.session import Session, sessions_with

log = logging.getLogger("dmd.watch")

BAR_WIDTH = 21
RECONNECT_HISTORY = 200  # estimates per session read back after a reconnect, to show what was missed


def sentiment_bar(value: float, width: int = BAR_WIDTH) -> str:
    """A text bar from -3 to 3 with a marker at `value`: `-----|--#---`."""
    centre = width // 2
    pos = round((max(-3.0, min(3.0, value)) + 3) / 6 * (width - 1))
    cells = ["-"] * width
    cells[centre] = "|"
    cells[pos] = "#"
    return "".join(cells)


def top_emotion(estimate: Estimate) -> str:
    """The most probable (smoothed) emotion and its probability, `happy 62%`; `-` without emotions."""
    if estimate.emotions is None or estimate.emotion is None:
        return "-"
    return f"{estimate.emotion} {estimate.emotions[estimate.emotion]:.0%}"


def modality_letters(estimate: Estimate) -> str:
    """`TAv`: a letter per modality, upper case observed and used, lower case observed but not used, `.` absent."""
    letters = []
    for m in ("text", "audio", "visual"):
        r = estimate.modalities[m]
        letters.append(m[0].upper() if r.present and r.used else m[0] if r.present else ".")
    return "".join(letters)


def face_emotion(estimate: Estimate) -> str:
    """The face's own top emotion (`face happy 81%`) where the face was seen but not read by the model
    (the face expert's); "" otherwise."""
    visual = estimate.modalities["visual"]
    if not visual.present or visual.used or not visual.emotions:
        return ""
    name = max(visual.emotions, key=lambda k: visual.emotions[k])  # type: ignore[index]
    return f"face {name} {visual.emotions[name]:.0%}"


async def recent_history(redis: aioredis.Redis, session: str | None, count: int = 20) -> list[Estimate]:
    """The last `count` estimates of a session, or of every session that has an estimates stream."""
    if session is not None:
        return await Session(redis, session).estimates(count)
    found: list[Estimate] = []
    async for sid in sessions_with(redis, "estimates"):
        try:
            found.extend(await Session(redis, sid).estimates(count))
        except ValueError:  # an estimate that does not decode: the session's history is left out
            continue
    return sorted(found, key=lambda e: (e.session, e.window))


class TerminalView:
    """A live table of sessions (rich when available, plain lines otherwise)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.rows: dict[str, Estimate] = {}
        self.count = 0
        self._live: Any = None

    def __enter__(self) -> TerminalView:
        try:
            from rich.console import Console
            from rich.live import Live

            if self.out.isatty():
                self._live = Live(self._table(), console=Console(file=self.out), refresh_per_second=8)
                self._live.__enter__()
        except ImportError:
            self._live = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def update(self, estimate: Estimate) -> None:
        self.rows[estimate.session] = estimate
        self.count += 1
        if self._live is not None:
            self._live.update(self._table())
        else:
            self.out.write(self.line(estimate) + "\n")
            self.out.flush()

    @staticmethod
    def line(e: Estimate) -> str:
        words = " ".join(w.text for w in e.words)[-40:]
        total = e.latency_ms.get("notice_to_publish")
        latency = f"{total:5.0f} ms" if total is not None else ""
        face = face_emotion(e)
        return (f"{e.session:<12} {e.t_end:7.1f}s {sentiment_bar(e.sentiment)} {e.sentiment:+.2f} "
                f"ema {e.smoothed:+.2f} {e.label:<8} {top_emotion(e):<14} [{modality_letters(e)}] {latency}  "
                f"{face + '  ' if face else ''}{words}")

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title=f"Live DMD: {len(self.rows)} session(s), {self.count} estimates",
                      caption="sentiment -3 (negative) .. +3 (positive); modalities: T text, A audio, V visual "
                              "(upper case: used by the model, lower case: observed, not used)")
        for name in ("session", "time", "sentiment", "value", "smoothed", "label", "emotion", "modalities", "face",
                     "latency", "words"):
            table.add_column(name, no_wrap=name != "words")
        for e in self.rows.values():
            colour = {"negative": "red", "neutral": "white", "positive": "green"}[e.label]
            total = e.latency_ms.get("notice_to_publish")
            table.add_row(e.session, f"{e.t_end:.1f}s", sentiment_bar(e.sentiment), f"{e.sentiment:+.2f}",
                          f"{e.smoothed:+.2f}", f"[{colour}]{e.label}[/{colour}]", top_emotion(e),
                          modality_letters(e), face_emotion(e)[5:] or "-",
                          f"{total:.0f} ms" if total is not None else "-",
                          " ".join(w.text for w in e.words)[-48:])
        return table


async def watch(redis: aioredis.Redis, session: str | None = None, *, as_json: bool = False,
                history: int = 10, out: TextIO | None = None, until: Callable[[Estimate], bool] | None = None,
                ready: asyncio.Event | None = None, timeout: float | None = None,
                backoff: Backoff | None = None) -> int:
    """Show estimates until cancelled, `until(estimate)` is true, or `timeout` seconds pass.
    Returns the number of estimates shown (history included).

    When Redis goes away (a restart), the watcher backs off, subscribes again and first shows what
    was published in between, from the estimates streams (each window once, as before)."""
    watcher = _Watcher(redis, session, as_json=as_json, history=history, out=out or sys.stdout, until=until,
                       ready=ready, timeout=timeout)
    backoff = backoff or Backoff(base=0.1, cap=2.0)
    reconnected = False
    with watcher.view if watcher.view is not None else _Nothing():
        while True:
            try:
                await watcher.follow(reconnected, backoff)
                return watcher.shown
            except CONNECTION_ERRORS as exc:
                delay = backoff.next_delay()
                if watcher.deadline is not None and time.monotonic() + delay >= watcher.deadline:
                    return watcher.shown
                log.warning("watching estimates: Redis unreachable (%s: %s); subscribing again in %.2f s",
                            type(exc).__name__, exc, delay)
                reconnected = True
                await asyncio.sleep(delay)


class _Watcher:
    """What `watch` has shown (each window once) and how it follows one subscription."""

    def __init__(self, redis: aioredis.Redis, session: str | None, *, as_json: bool, history: int, out: TextIO,
                 until: Callable[[Estimate], bool] | None, ready: asyncio.Event | None, timeout: float | None) -> None:
        self.redis, self.session, self.as_json, self.history, self.out = redis, session, as_json, history, out
        self.until, self.ready = until, ready
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.view = None if as_json else TerminalView(out)
        self.shown = 0
        self.seen: set[tuple[str, int]] = set()
        self.last: dict[str, int] = {}  # session -> the latest window shown

    def emit(self, e: Estimate) -> bool:
        """Show `e` unless it was shown; True when `until` says to stop."""
        if (e.session, e.window) in self.seen:
            return False
        self.seen.add((e.session, e.window))
        self.last[e.session] = max(e.window, self.last.get(e.session, e.window))
        self.shown += 1
        if self.as_json:
            self.out.write(json.dumps(e.to_dict(), separators=(",", ":")) + "\n")
            self.out.flush()
        elif self.view is not None:
            self.view.update(e)
        return self.until is not None and self.until(e)

    async def _missed(self, reconnected: bool) -> list[Estimate]:
        """The history to show first: after a reconnect, what was published while we were away."""
        if reconnected:
            return [e for e in await recent_history(self.redis, self.session, max(self.history, RECONNECT_HISTORY))
                    if e.window > self.last.get(e.session, -1)]
        return await recent_history(self.redis, self.session, self.history) if self.history else []

    async def follow(self, reconnected: bool, backoff: Backoff) -> None:
        """Subscribe, show the history (or what was missed), then follow until done (returns) or the
        connection fails (raises)."""
        subscribed = asyncio.Event()
        stream = watch_estimates(self.redis, self.session, ready=subscribed)
        pending = asyncio.ensure_future(stream.__anext__())
        waiter = asyncio.ensure_future(subscribed.wait())
        try:
            # subscribe first, then read the history: nothing falls in between
            await asyncio.wait({pending, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if not subscribed.is_set():
                pending.result()  # the subscription failed: raise its error
            backoff.reset()
            if self.ready is not None:
                self.ready.set()
            if any(self.emit(e) for e in await self._missed(reconnected)):
                return
            while True:
                remaining = None if self.deadline is None else self.deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    e = await asyncio.wait_for(asyncio.shield(pending), remaining)
                except (asyncio.TimeoutError, StopAsyncIteration):
                    return
                pending = asyncio.ensure_future(stream.__anext__())
                if self.emit(e):
                    return
        finally:
            waiter.cancel()
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
            await stream.aclose()


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
