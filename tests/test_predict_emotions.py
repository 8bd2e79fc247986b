"""The predictor's emotion probabilities: the fused head's softmax and, per modality, the mean of its
homogeneous and heterogeneous heads' softmaxes; None for a checkpoint without an emotion head."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dmd_model.artefacts.predict import Predictor  # noqa: E402
from dmd_types import EMOTIONS  # noqa: E402


def tiny_checkpoint(path: Path, emotion_classes: int) -> Path:
    import dmd_model.features
    from dmd_model.artefacts.checkpoint import save_checkpoint
    from dmd_model.config import DMDConfig
    from dmd_model.network.dmd import DMD

    torch.manual_seed(3)
    cfg = DMDConfig.from_dict({"name": "tiny", "model": {"feature_dims": [384, 25, 55], "seq_lens": [50, 50, 50],
                                                         "d_model": 16, "num_heads": 4, "layers": 1,
                                                         "emotion_classes": emotion_classes}})
    return save_checkpoint(path, DMD(cfg.model), cfg, profile=dmd_model.features.PROFILE.describe())


def inputs(batch: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(batch, 50, 384)).astype(np.float32), rng.normal(size=(batch, 50, 25)).astype(np.float32),
            rng.uniform(size=(batch, 50, 55)).astype(np.float32))


def softmax(x: torch.Tensor) -> np.ndarray:
    return torch.softmax(x.double(), -1).numpy()


def test_fused_and_per_modality_emotion_probabilities_of_a_seven_emotion_head(tmp_path: Path) -> None:
    predictor = Predictor(tiny_checkpoint(tmp_path / "e7.pt", 7), device="cpu", bf16=False)
    text, audio, visual = inputs()
    predictions = predictor.predict(text, audio, visual)
    with torch.inference_mode():
        out = predictor.model(*(torch.as_tensor(x) for x in (text, audio, visual)), distill=True, check=False)
    short = {"text": "l", "audio": "a", "visual": "v"}
    for b, p in enumerate(predictions):
        assert len(p.emotions) == len(EMOTIONS) and abs(math.fsum(p.emotions) - 1) < 1e-12
        assert p.emotions == pytest.approx(softmax(out["emotion_logit"][b]), abs=1e-6)
        assert set(p.modality_emotions) == {"text", "audio", "visual"}
        for m, k in short.items():
            want = (softmax(out[f"emotion_{k}_homo"][b]) + softmax(out[f"emotion_{k}_hetero"][b])) / 2
            assert p.modality_emotions[m] == pytest.approx(want, abs=1e-6)
            assert abs(math.fsum(p.modality_emotions[m]) - 1) < 1e-12
            assert all(0 <= q <= 1 for q in p.modality_emotions[m])


def test_a_four_emotion_head_predicts_the_first_four_and_the_rest_get_zero(tmp_path: Path) -> None:
    predictor = Predictor(tiny_checkpoint(tmp_path / "e4.pt", 4), device="cpu", bf16=False)
    (p,) = predictor.predict(*inputs(1))
    assert len(p.emotions) == 7 and p.emotions[4:] == [0.0, 0.0, 0.0] and abs(math.fsum(p.emotions) - 1) < 1e-12
    assert all(v[4:] == [0.0, 0.0, 0.0] for v in p.modality_emotions.values())


def test_a_checkpoint_without_an_emotion_head_gives_none(tmp_path: Path) -> None:
    predictor = Predictor(tiny_checkpoint(tmp_path / "e0.pt", 0), device="cpu", bf16=False)
    for p in predictor.predict(*inputs(2)):
        assert p.emotions is None and p.modality_emotions is None and math.isfinite(p.sentiment)


def test_the_bundled_default_checkpoint_gives_the_seven_emotions() -> None:
    import dmd_model

    default = Path(dmd_model.__file__).resolve().parent / "checkpoints" / "default.pt"
    predictor = Predictor(default, device="cpu")
    shapes = [predictor.input_shape(m) for m in ("text", "audio", "visual")]
    arrays = [np.zeros((1, *shape), np.float32) for shape in shapes]
    (p,) = predictor.predict(*arrays)
    assert predictor.emotion_classes == len(EMOTIONS) and len(p.emotions) == len(EMOTIONS)
    assert abs(sum(p.emotions) - 1) < 1e-5 and set(p.modality_emotions) == {"text", "audio", "visual"}


def test_a_head_of_more_emotions_than_the_seven_is_refused_naming_the_count(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"has 9 emotion classes, more than the 7 of dmd_types\.EMOTIONS"):
        Predictor(tiny_checkpoint(tmp_path / "e9.pt", 9), device="cpu")
