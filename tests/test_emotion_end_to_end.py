"""Issue 14 end to end on real voices: `dmd convert` RAVDESS files -> `dmd extract` (live-v2) ->
`dmd train` (two tasks) -> `dmd eval --json` -> `dmd run --source CLIP` with the trained checkpoint.

A handful of clips trains nothing useful; what is tested is that every stage takes the previous
one's output and that the live pipeline serves the checkpoint's profile and emotion heads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dmd_types import EMOTIONS

RAVDESS = Path(__file__).resolve().parents[2] / "shared" / "data" / "emotion_speech" / "ravdess"
# (actor, statement, repetition) x (neutral 01, angry 05): actors 01-02 train, 17 valid, 19 test
CLIPS = [f"Actor_{a}/03-01-{e}-{'01' if e == '01' else '02'}-{s}-{r}-{a}.flac"
         for a in ("01", "02", "17", "19") for e in ("01", "05") for s in ("01", "02") for r in ("01",)]


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.skipif(not RAVDESS.is_dir(), reason="../shared/data/emotion_speech/ravdess is absent (developer data)")
def test_real_voices_extract_train_eval_and_run_live(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline_helpers import pipeline_env

    from workers.cli import main as dmd

    source = tmp_path / "src"
    source.mkdir()
    for clip in CLIPS:
        (source / Path(clip).name).symlink_to(RAVDESS / clip)

    def run(argv: list[str]) -> str:
        capsys.readouterr()
        code = dmd(argv)
        out, err = capsys.readouterr()
        assert code == 0, f"dmd {' '.join(argv)}\n{err[-3000:]}"
        return out

    run(["convert", "ravdess", str(source), "--out", str(tmp_path / "ravdess")])
    run(["extract", str(tmp_path / "ravdess"), "-o", str(tmp_path / "voices.pkl"), "--profile", "live-v2",
         "--cache", str(tmp_path / "cache"), "--quiet"])
    out = run(["train", "--config", "live_v2", "--data", str(tmp_path / "voices.pkl"), "--epochs", "2",
               "--set", "train.epoch_samples=0", "--out", str(tmp_path / "run"), "--quiet"])
    checkpoint = json.loads(out[out.index("{"):])["checkpoints"][0]

    result = json.loads(run(["eval", checkpoint, "--data", str(tmp_path / "voices.pkl"), "--json", "--quiet",
                             "--plot", str(tmp_path / "confusion.png")]).strip().splitlines()[-1])
    emotion = result["emotion"]
    assert emotion["n"] == 4 and 0 <= emotion["uar"] <= 1 and 0 <= emotion["weighted_f1"] <= 1
    assert len(emotion["confusion"]) == len(EMOTIONS) and sum(map(sum, emotion["confusion"])) == 4
    assert (tmp_path / "confusion.png").stat().st_size > 1000

    for name, value in pipeline_env(Path(checkpoint)).items():
        if name.startswith("DMD_"):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("REDIS_URL", raising=False)  # the embedded Redis
    angry = source / Path(CLIPS[-1]).name
    assert angry.name.split("-")[2] == "05"
    out = run(["run", "--source", str(angry), "--speed", "0", "--asr", "none", "--session", "angry", "--json",
               "--checkpoint", checkpoint])
    estimates = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert estimates and all(e["schema"] == 2 for e in estimates)
    for e in estimates:
        assert e["modalities"]["audio"]["present"], e["window"]
        probabilities = e["emotions"]
        assert set(probabilities) == set(EMOTIONS) and abs(sum(probabilities.values()) - 1) < 1e-3
        assert e["emotion"] == max(probabilities, key=probabilities.get)
