"""What the `dmd` commands share: the options every pipeline command takes, the settings they
make, and JSON on standard output."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from ..settings import PipelineSettings, load_settings

log = logging.getLogger("dmd")

ASR_ENGINES = ("auto", "vosk", "whisper", "none")

# option name on the command line -> (settings section, key)
_SETTING_OPTIONS = {
    "asr": ("asr", "engine"), "vosk_model": ("asr", "vosk_model"), "checkpoint": ("inference", "checkpoint"),
    "device": ("inference", "device"), "speed": ("capture", "speed"), "max_batch": ("inference", "max_batch"),
    "max_wait_ms": ("inference", "max_wait_ms"), "metrics_port": ("metrics", "port"),
}


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def add_pipeline_options(p: argparse.ArgumentParser, *, redis_help: str | None = None) -> None:
    """--settings, --redis and --metrics-port."""
    p.add_argument("--settings", help="pipeline settings YAML (default configs/pipeline/default.yaml)")
    p.add_argument("--redis", help=redis_help or "Redis URL (default $REDIS_URL; `dmd run`/`demo`/`serve`: an embedded "
                   "Redis)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")


def settings_from(args: argparse.Namespace) -> PipelineSettings:
    """The pipeline settings: the defaults, --settings, the environment, then the options given."""
    overrides: dict[str, dict[str, Any]] = {}
    if getattr(args, "redis", None):
        overrides.setdefault("redis", {})["url"] = args.redis
    for name, (section, key) in _SETTING_OPTIONS.items():
        value = getattr(args, name, None)
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    return load_settings(getattr(args, "settings", None), overrides)


_signalled = threading.Event()


def leave_now(code: int, drain_timeout_s: float = 2.0) -> None:
    """End the process with `code` at once (`os._exit`: no interpreter teardown), after flushing
    standard output and error and passing on what the fd-2 log filter still holds (cli/quiet.py)."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
        from .quiet import drain

        drain(timeout=drain_timeout_s)
    os._exit(code)


def stopped_by_signal() -> bool:
    """Whether a command of this process was stopped by SIGINT or SIGTERM (`run_stoppable`)."""
    return _signalled.is_set()


def run_stoppable(main: Callable[[asyncio.Event], Awaitable[int]], *, grace_s: float = 2.5,
                  deadline_s: float = 3.5) -> int:
    """Run a command's `main(stop)` until it returns. SIGINT or SIGTERM sets `stop` (a graceful end:
    the stages finish what is in flight); a command still running `grace_s` later, or at a second
    signal, is cancelled; and whatever still holds the process `deadline_s` after the first signal (a
    cleanup stuck on a Redis that is away, a thread in a library, an event loop that is busy) ends
    with exit status 130. So every command ends within 5 s of a signal, with room for a loaded machine
    (six commands signalled at once on 2 cores took up to 1.5 s past their deadline to go); what was
    in flight stays pending in Redis for another worker.

    The signal is caught by a plain `signal.signal` handler, not the event loop's: it starts the
    hard-exit timer itself, so the deadline holds even when the loop is slow to run its callbacks."""
    state = {"signals": 0}

    def hard_exit() -> None:
        leave_now(130, drain_timeout_s=0.3)

    async def runner() -> int:
        stop = asyncio.Event()
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None

        def on_signal() -> None:  # in the event loop
            if stop.is_set():
                task.cancel()
                return
            stop.set()
            loop.call_later(grace_s, task.cancel)

        def handler(signum: int, frame: object) -> None:  # in the main thread, between two bytecodes
            state["signals"] += 1
            _signalled.set()
            if state["signals"] == 1:
                timer = threading.Timer(deadline_s, hard_exit)
                timer.daemon = True
                timer.start()
            loop.call_soon_threadsafe(on_signal)

        previous = {}
        if threading.current_thread() is threading.main_thread():  # (a test may run a command in a thread)
            previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            return await main(stop)
        except asyncio.CancelledError:
            log.warning("stopped before the end: what was in flight stays pending in Redis for another worker")
            return 130
        finally:
            for sig, was in previous.items():
                signal.signal(sig, was)

    return asyncio.run(runner())
