"""Prometheus metrics of a worker process, and a registry that works without prometheus_client.

Every worker exposes the same names (prefix `dmd_`), labelled by `worker` (its role):
window latency (notice read to estimate published) as a histogram from 10 ms to 5 s, windows
published, duplicates skipped, failures, dead letters, queue depths, dropped video frames, audio
overruns, and the consumer group's lag and pending counts (sampled by `sample_group`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("dmd.metrics")

LATENCY_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)

try:  # optional: the model package and tests run without it
    import prometheus_client as _prom
except ImportError:  # pragma: no cover - depends on the environment
    _prom = None


class _Null:
    """Stands in for a metric when prometheus_client is absent; still counts, for tests and logs."""

    def __init__(self) -> None:
        self.value = 0.0
        self.samples: list[float] = []

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def set(self, value: float) -> None:
        self.value = value

    def observe(self, value: float) -> None:
        self.samples.append(value)
        del self.samples[:-10_000]

    def labels(self, *args: Any, **kwargs: Any) -> _Null:
        return self


class Metrics:
    """The metrics of one process. Without prometheus_client every metric is a local counter."""

    def __init__(self, role: str = "worker", registry: Any = None) -> None:
        self.role = role
        make = self._factory(registry)
        self.latency = make("histogram", "dmd_window_latency_seconds",
                            "Notice read to estimate published, per window", buckets=LATENCY_BUCKETS)
        self.windows = make("counter", "dmd_windows_published_total", "Estimates published")
        self.duplicates = make("counter", "dmd_windows_duplicate_total",
                               "Windows already published by another worker or delivery")
        self.failures = make("counter", "dmd_window_failures_total", "Windows left pending after an error")
        self.dead_letters = make("counter", "dmd_dead_letters_total", "Entries sent to dmd:dead")
        self.pending = make("gauge", "dmd_queue_depth", "Windows being prepared or waiting for the model")
        self.batch_size = make("histogram", "dmd_batch_size", "Windows per forward pass",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.dropped_frames = make("counter", "dmd_video_frames_dropped_total",
                                   "Video frames dropped because the face tracker fell behind")
        self.audio_overruns = make("counter", "dmd_audio_overruns_total",
                                   "Audio chunks a live source could not queue (reported, never silent)")
        self.group_lag = make("gauge", "dmd_group_lag", "Entries of dmd:windows not yet read by the group")
        self.group_pending = make("gauge", "dmd_group_pending", "Entries read by the group but not acknowledged")
        self.asr_cpu = make("gauge", "dmd_asr_cpu_fraction", "CPU time per second of audio, per ASR session")

    def _factory(self, registry: Any):
        def make(kind: str, name: str, doc: str, **kwargs: Any):
            if _prom is None:
                return _Null()
            cls = {"counter": _prom.Counter, "gauge": _prom.Gauge, "histogram": _prom.Histogram}[kind]
            try:
                return cls(name, doc, ["worker"], registry=registry or _prom.REGISTRY, **kwargs).labels(self.role)
            except ValueError:  # already registered in this process (several workers in one process)
                collector = (registry or _prom.REGISTRY)._names_to_collectors.get(name)
                if collector is None:
                    collector = (registry or _prom.REGISTRY)._names_to_collectors.get(name.removesuffix("_total"))
                return collector.labels(self.role)
        return make

    @staticmethod
    def serve(port: int, host: str = "127.0.0.1") -> bool:
        """Expose /metrics on `port`; False (with a log line) when prometheus_client is absent."""
        if not port:
            return False
        if _prom is None:
            log.warning("metrics.port = %d but prometheus_client is not installed: pip install prometheus-client",
                        port)
            return False
        _prom.start_http_server(port, addr=host)
        log.info("Prometheus metrics on http://%s:%d/metrics", host, port)
        return True


async def sample_group(redis: Any, metrics: Metrics, stream: str | Sequence[str], group: str) -> None:
    """Read the group's lag and pending count (XINFO GROUPS) into the gauges: of one stream, or summed
    over several (the partitions of a shared stream, stream.keys.Partitions)."""
    streams = [stream] if isinstance(stream, str) else list(stream)
    pending = lag = 0.0
    found = lag_known = False
    try:
        for one in streams:
            for info in await redis.xinfo_groups(one):
                name = info.get("name")
                if (name.decode() if isinstance(name, bytes) else name) == group:
                    found = True
                    pending += float(info.get("pending") or 0)
                    if info.get("lag") is not None:
                        lag_known = True
                        lag += float(info["lag"])
    except Exception as exc:  # noqa: BLE001 - metrics never take a worker down
        log.debug("could not sample %s/%s: %s", stream, group, exc)
        return
    if found:
        metrics.group_pending.set(pending)
        if lag_known:
            metrics.group_lag.set(lag)
