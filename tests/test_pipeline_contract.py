"""The estimate contract at the end of the pipeline: a NaN is never published. A model whose output
is NaN gets no estimate out; its windows are retried, then dead-lettered with the reason."""

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
from stream.consumer import dead_letter_count, read_dead_letters
from stream.keys import WINDOWS, SessionKeys
from stream.lifecycle import start_session
from stream.messages import ACOUSTIC, FACE, WindowNotice
from stream.publish import watch_estimates
from stream.session import Session
from stream.window import WindowSpec

pytest.register_assert_rewrite("pipeline_helpers")
from pipeline_helpers import face_frames, write_checkpoint  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("nan") / "nan.pt", nan=True)


def test_the_nan_checkpoint_really_outputs_nan(nan_checkpoint: Path) -> None:
    from dmd_model.artefacts.predict import Predictor

    predictor = Predictor(nan_checkpoint, device="cpu")
    with pytest.raises(FloatingPointError, match="non-finite"):
        predictor.predict(np.ones((1, 50, 384), np.float32), np.ones((1, 50, 25), np.float32),
                          np.ones((1, 50, 55), np.float32))


@pytest.mark.timeout(90)
def test_a_model_that_outputs_nan_publishes_nothing_and_its_windows_go_to_the_dead_letters(
        redis_url: str, nan_checkpoint: Path, caplog: pytest.LogCaptureFixture) -> None:
    from dmd_model.artefacts.predict import Predictor
    from dmd_model.features import load_text_encoder
    from workers.infer.worker import InferenceWorker
    from workers.settings import InferenceSettings

    windows = [6, 7, 8]

    async def main() -> None:
        r = connect(redis_url)
        session = Session(r, "nan")
        await start_session(r, "nan", "test", {"asr": "none"})
        t = np.arange(0, 4.0, 0.01)
        rng = np.random.default_rng(0)
        afeat = rng.normal(size=(len(t), 25)).astype(np.float32)
        await session.add(Frames(t, afeat, voiced_mask(afeat)), ACOUSTIC)
        tv = np.arange(0, 4.0, 0.2)
        await session.add(face_frames(tv, rng), FACE)
        for k in windows:
            await session.notify_window(WindowSpec().window(k))
        received = []
        subscribed = asyncio.Event()

        async def subscriber() -> None:
            async for e in watch_estimates(r, "nan", ready=subscribed):
                received.append(e)

        sub = asyncio.create_task(subscriber())
        await subscribed.wait()
        settings = InferenceSettings(claim_idle_ms=200, max_deliveries=2, max_wait_ms=1.0, device="cpu")
        worker = InferenceWorker(r, Predictor(nan_checkpoint, device="cpu"), settings, asr_grace_s=0.0,
                                 name="nan-worker", text_encoder=load_text_encoder())
        task = asyncio.create_task(worker.run())

        async def all_dead() -> bool:
            await asyncio.sleep(0.05)
            return await dead_letter_count(r) >= len(windows)

        await eventually(all_dead, 30, "every window in the dead letters")
        worker.stop()
        await asyncio.wait_for(task, 20)
        sub.cancel()
        await asyncio.gather(sub, return_exceptions=True)
        assert received == [], "an estimate of a NaN model was published"
        assert await r.xlen(SessionKeys("nan").estimates) == 0
        assert worker.published == 0
        letters = await read_dead_letters(r)
        assert sorted(WindowNotice.from_fields(d.fields).window for d in letters) == windows
        for d in letters:
            assert d.stream == WINDOWS and d.deliveries == 3
            assert "delivered 3 times (limit 2)" in d.reason, d.reason
        assert (await r.xpending(WINDOWS, "infer"))["pending"] == 0
        await r.aclose()

    with caplog.at_level(logging.ERROR, logger="dmd.infer"):
        asyncio.run(main())
    assert any("non-finite" in rec.getMessage() for rec in caplog.records), "the reason was not logged"
