"""Extraction in several processes: each builds its own extractor set (text model, aligner, face
tracker); a clip whose process dies is reported with the exit code and the run goes on."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
from collections.abc import Callable
from typing import Any

from ..features.profile import get_profile
from .labels import ClipSpec
from .samples import Extractor, Failure, Sample, extract_one


def _worker_main(tasks: Any, results: Any, settings: dict[str, Any]) -> None:
    """A worker process: build an extractor set once, then extract clips until told to stop."""
    try:
        import torch

        torch.set_num_threads(max(1, int(settings.get("threads", 1))))
    except ImportError:
        pass
    extractor = Extractor(get_profile(settings["profile"]), settings["cache_dir"], settings["recogniser"])
    pid = os.getpid()
    while True:
        item = tasks.get()
        if item is None:
            break
        index, spec = item
        results.put(("start", pid, index, None))
        results.put(("done", pid, index, extract_one(extractor, spec)))
    results.put(("bye", pid, extractor.text.hits, extractor.text.misses))


def run_parallel(specs: list[ClipSpec], workers: int, settings: dict[str, Any],
                  on_result: Callable[[int, Sample | Failure], None]) -> tuple[int, int]:
    """Extract in `workers` processes (spawned: no state forked from a parent holding threads). A
    process that dies is replaced; the clip it held fails with its exit code. Returns text-cache
    hits and misses over the workers."""
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    for item in enumerate(specs):
        tasks.put(item)
    procs: dict[int, Any] = {}

    def start() -> None:
        p = ctx.Process(target=_worker_main, args=(tasks, results, settings), daemon=True)
        p.start()
        procs[p.pid] = p

    for _ in range(workers):
        start()
    holding: dict[int, int] = {}  # pid -> index of the clip it is working on
    done: set[int] = set()
    hits = misses = 0
    stopped = False
    try:
        while len(done) < len(specs) or procs:
            if len(done) == len(specs) and not stopped:
                for _ in procs:
                    tasks.put(None)
                stopped = True
            try:
                kind, pid, a, b = results.get(timeout=0.5)
            except queue.Empty:
                for pid, p in list(procs.items()):
                    if not p.is_alive():
                        p.join()
                        del procs[pid]
                        index = holding.pop(pid, None)
                        if index is not None and index not in done:
                            spec = specs[index]
                            done.add(index)
                            on_result(index, Failure(spec.id, spec.split, f"the extraction process died (exit code "
                                                     f"{p.exitcode}) while extracting this clip", spec.media))
                        if len(done) < len(specs):
                            start()
                continue
            if kind == "start":
                holding[pid] = a
            elif kind == "done":
                holding.pop(pid, None)
                if a not in done:
                    done.add(a)
                    on_result(a, b)
            elif kind == "bye":
                hits, misses = hits + a, misses + b
                p = procs.pop(pid, None)
                if p is not None:
                    p.join()
    finally:
        for p in procs.values():
            p.terminate()
    return hits, misses
