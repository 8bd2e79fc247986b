"""The inference worker under a burst: a file replayed flat out, or many sessions at once, sends
dozens of window notices together; every one is served on the first delivery."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest
from redis_fixtures import eventually

from dmd_model.features import voiced_mask
from dmd_types import Frames
from stream.connection import connect
from stream.keys import SessionKeys
from stream.lifecycle import start_session
from stream.messages import ACOUSTIC, FACE
from stream.session import Session
from stream.window import WindowSpec

pytest.register_assert_rewrite("pipeline_helpers")
from pipeline_helpers import check_estimates, face_frames, write_checkpoint  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("transformers")


async def write_session(r, sid: str, seconds: float, rng: np.random.Generator) -> list[int]:
    """A session's acoustic and face frames (random, finite) and its window notices, all at once."""
    session = Session(r, sid)
    await start_session(r, sid, "test", {"asr": "none"})
    t = np.arange(0, seconds, 0.01)
    afeat = rng.normal(size=(len(t), 25)).astype(np.float32)
    await session.add(Frames(t, afeat, voiced_mask(afeat)), ACOUSTIC)
    tv = np.arange(0, seconds, 0.2)
    await session.add(face_frames(tv, rng), FACE)
    spec = WindowSpec()
    windows = list(range(spec.first, spec.last_ending_by(seconds) + 1))
    for k in windows:
        await session.notify_window(spec.window(k))
    return windows


@pytest.mark.timeout(120)
def test_a_burst_of_window_notices_is_served_on_first_delivery_without_running_out_of_connections(
        redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before the worker bounded its concurrent reads, 60 notices at once opened about 180 pooled
    connections; redis-py refuses the 101st (MaxConnectionsError), and those windows waited for a
    claim (`claim_idle_ms`, 10 s by default) instead of being served at once."""
    from dmd_model.artefacts.predict import Predictor
    from dmd_model.features import load_text_encoder
    from workers.infer.worker import InferenceWorker
    from workers.settings import InferenceSettings

    checkpoint = write_checkpoint(tmp_path / "live_test.pt")

    async def main() -> None:
        r = connect(redis_url)
        rng = np.random.default_rng(1)
        sessions = {f"burst{i}": await write_session(r, f"burst{i}", 8.0, rng) for i in range(6)}
        total = sum(len(w) for w in sessions.values())
        assert total >= 60
        # no second chance in this test; a history other than the default, which the publisher must keep
        settings = InferenceSettings(claim_idle_ms=600_000, device="cpu", estimates_history=1000)
        worker = InferenceWorker(r, Predictor(checkpoint, device="cpu", threads=1), settings, asr_grace_s=0.0,
                                 name="burst", text_encoder=load_text_encoder())
        assert worker.publisher.estimates_maxlen == 1000
        task = asyncio.create_task(worker.run())

        async def all_published() -> bool:
            await asyncio.sleep(0.05)
            return worker.published >= total or task.done()

        await eventually(all_published, 60, "every window published on its first delivery")
        worker.stop()
        await asyncio.wait_for(task, 20)
        failed = [rec.getMessage() for rec in caplog.records if rec.name == "dmd.infer"]
        assert not failed, failed[:3]
        assert worker.published == total and worker.duplicates == 0
        assert worker.consumer.counts["delivered"] == total and not worker.consumer.counts["claimed"]
        for sid, windows in sessions.items():
            found = [e.to_dict() for e in await Session(r, sid).estimates(1000)]
            check_estimates(found, windows, session=sid, latency=True)
            assert await r.xlen(SessionKeys(sid).estimates) == len(windows)
        await r.aclose()

    with caplog.at_level(logging.WARNING, logger="dmd.infer"):
        asyncio.run(main())
