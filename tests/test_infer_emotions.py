"""The inference worker serves a checkpoint as it was trained: windows aligned with the checkpoint's
own feature profile (live-v2: voice and face on fixed time slots), and its emotion head's
probabilities published with the estimate (schema 2)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from dmd_model.features import LIVE_V1, LIVE_V2, FeatureError, align_window, voiced_mask
from dmd_model.features.text import TokenEmbeddings
from dmd_types import EMOTIONS, Frames, Word
from stream.connection import connect
from stream.estimate import validate_estimate
from stream.messages import WindowNotice
from stream.publish import read_ema

pytest.register_assert_rewrite("pipeline_helpers")
from pipeline_helpers import check_estimates, run_worker_until_published  # noqa: E402
from test_pipeline_worker import write_session  # noqa: E402

torch = pytest.importorskip("torch")


class OneTokenPerWord:
    """A text encoder without a model: one 384-wide vector per word (the live profiles' width)."""

    dim = 384

    def encode(self, words: Sequence[str]) -> TokenEmbeddings:
        vectors = np.stack([np.full(self.dim, len(w), np.float32) for w in words]) if words else \
            np.zeros((0, self.dim), np.float32)
        return TokenEmbeddings(vectors, np.arange(len(words)), tuple(words))


def checkpoint(path: Path, profile: dict, emotion_classes: int = 0) -> Path:
    from dmd_model.artefacts.checkpoint import save_checkpoint
    from dmd_model.config import DMDConfig
    from dmd_model.network.dmd import DMD

    torch.manual_seed(0)
    cfg = DMDConfig.from_dict({"name": "live_test", "model": {
        "feature_dims": [384, 25, 55], "seq_lens": [50, 50, 50], "d_model": 16, "num_heads": 4, "layers": 1,
        "emotion_classes": emotion_classes}})
    return save_checkpoint(path, DMD(cfg.model), cfg, profile=profile)


def worker_for(path: Path, redis_url: str = "redis://127.0.0.1:1"):
    from dmd_model.artefacts.predict import Predictor
    from workers.infer.worker import InferenceWorker
    from workers.settings import InferenceSettings

    return InferenceWorker(connect(redis_url), Predictor(path, device="cpu", threads=1),
                           InferenceSettings(device="cpu", max_wait_ms=1.0), asr_grace_s=0.0, name="test",
                           text_encoder=OneTokenPerWord())


def frames(seconds: float) -> tuple[Frames, Frames]:
    rng = np.random.default_rng(2)
    t = np.arange(0.005, seconds, 0.01)
    audio = rng.normal(size=(len(t), 25)).astype(np.float32)
    tv = np.arange(0, seconds, 1 / 15)
    return Frames(t, audio, voiced_mask(audio)), Frames(tv, rng.uniform(size=(len(tv), 55)).astype(np.float32),
                                                        np.ones(len(tv), bool))


def test_a_live_v2_checkpoints_windows_are_aligned_on_time_slots_as_it_was_trained(tmp_path: Path) -> None:
    from workers.infer.worker import _Job

    worker = worker_for(checkpoint(tmp_path / "v2.pt", LIVE_V2.describe()))
    assert worker.profile == LIVE_V2
    audio, visual = frames(6.0)
    words = [Word("really", 3.4, 3.8), Word("great", 4.0, 4.9)]
    job = _Job(None, WindowNotice("alice", 8, 3.0, 6.0, time.time()), words, audio, visual, time.monotonic())
    worker._align_batch([job])
    window = job.window
    assert window.profile == "live-v2" and window.n_tokens == 2
    # 12 slots of 0.25 s over the 3 s window, whatever the words (live-v1 would give 2 positions, one per word)
    assert window.length == 12
    np.testing.assert_allclose(window.spans[:12], [[3.0 + 0.25 * i, 3.25 + 0.25 * i] for i in range(12)])
    slots = align_window(words, audio, visual, 3.0, 6.0, OneTokenPerWord(), profile=LIVE_V2)
    np.testing.assert_array_equal(window.audio, slots.audio)
    np.testing.assert_array_equal(window.visual, slots.visual)
    assert align_window(words, audio, visual, 3.0, 6.0, OneTokenPerWord(), profile=LIVE_V1).length == 2


def test_a_live_v1_checkpoint_keeps_its_word_aligned_windows(tmp_path: Path) -> None:
    from workers.infer.worker import _Job

    worker = worker_for(checkpoint(tmp_path / "v1.pt", LIVE_V1.describe()))
    audio, visual = frames(6.0)
    job = _Job(None, WindowNotice("alice", 8, 3.0, 6.0, time.time()), [Word("great", 4.0, 4.9)], audio, visual,
               time.monotonic())
    worker._align_batch([job])
    assert job.window.profile == "live-v1" and job.window.length == 1


def test_a_checkpoint_whose_features_cannot_be_computed_live_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FeatureError, match="which the live pipeline cannot compute"):
        worker_for(checkpoint(tmp_path / "mmsa.pt", {"name": "mmsa-bert", "dims": {"text": 384}}))


@pytest.mark.timeout(90)
def test_a_checkpoint_with_an_emotion_head_publishes_smoothed_emotions_and_each_modalitys(
        redis_url: str, tmp_path: Path) -> None:
    worker = worker_for(checkpoint(tmp_path / "e7.pt", LIVE_V2.describe(), emotion_classes=7), redis_url)

    async def main() -> list[dict]:
        from stream.session import Session

        r = connect(redis_url)
        windows = await write_session(r, "feelings", 6.0, np.random.default_rng(4))
        await run_worker_until_published(worker, len(windows))
        found = [e.to_dict() for e in await Session(r, "feelings").estimates(1000)]
        check_estimates(found, windows, session="feelings", latency=False)
        state = await read_ema(r, "feelings")  # the emotions' EMA is kept beside the sentiment's
        assert state.window == windows[-1] and state.emotions == pytest.approx(list(found[-1]["emotions"].values()))
        await r.aclose()
        return found

    estimates = asyncio.run(main())
    for e in estimates:
        validate_estimate(e)
        assert list(e["emotions"]) == list(EMOTIONS) and abs(math.fsum(e["emotions"].values()) - 1) < 1e-6
        assert e["emotion"] == max(e["emotions"], key=e["emotions"].get)
        for m in ("text", "audio", "visual"):
            assert abs(math.fsum(e["modalities"][m]["emotions"].values()) - 1) < 1e-6
