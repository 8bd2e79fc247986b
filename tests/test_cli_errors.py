"""No traceback for a user's mistake: each bad input below ends its command with exit status 2 and one
line on standard error that names the value and what to do."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from workers.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "workers" / "assets" / "demo.mp4")
DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def files(tmp: Path) -> dict[str, str]:
    (tmp / "bad.yaml").write_text("capture: [unclosed\n")
    (tmp / "list.yaml").write_text("- a\n- b\n")
    (tmp / "section.yaml").write_text("nonsense:\n  x: 1\n")
    (tmp / "not_a_checkpoint.pt").write_text("hello")
    (tmp / "notes.txt").write_text("no media here")
    return {k: str(tmp / k) for k in ("bad.yaml", "list.yaml", "section.yaml", "not_a_checkpoint.pt", "notes.txt")}


# (arguments, environment, words the message must hold)
CASES = [
    (["run", "--source", "missing.mp4"], {}, "'missing.mp4' is neither webcam"),
    (["run", "--source", "webcam", "--camera", "/dev/no-such-camera"], {}, "cannot open camera '/dev/no-such-camera'"),
    (["run", "--source", "{notes.txt}"], {}, "notes.txt"),
    (["run", "--source", DEMO, "--settings", "{bad.yaml}"], {}, "is not valid YAML"),
    (["run", "--source", DEMO, "--settings", "{list.yaml}"], {}, "holds a list"),
    (["run", "--source", DEMO, "--settings", "{section.yaml}"], {}, "unknown pipeline section(s) ['nonsense']"),
    (["run", "--source", DEMO, "--settings", "missing.yaml"], {}, "'missing.yaml' not found"),
    (["run", "--source", DEMO], {"REDIS_URL": "http://localhost"}, "scheme 'http'"),
    (["run", "--source", DEMO], {"REDIS_URL": DEAD_REDIS}, "does not answer"),
    (["run", "--source", DEMO], {"DMD_INFERENCE_MAX_BATCH": "many"}, "inference.max_batch = 'many'"),
    (["run", "--source", DEMO], {"DMD_INFERENCE_MAX_BATCH": "0"}, "inference.max_batch = 0"),
    (["run", "--source", DEMO, "--asr", "vosk"], {}, "asr.engine = vosk needs asr.vosk_model"),
    (["run", "--source", DEMO, "--checkpoint", "missing.pt"], {}, "missing.pt"),
    (["run", "--source", DEMO, "--checkpoint", "{not_a_checkpoint.pt}"], {}, "not_a_checkpoint.pt"),
    (["infer"], {}, "set --redis or REDIS_URL"),
    (["capture", "--source", DEMO, "--session", "s"], {}, "set --redis or REDIS_URL"),
    (["watch"], {}, "set --redis or REDIS_URL"),
    (["watch", "--redis", DEAD_REDIS], {}, "does not answer"),
    (["capture", "--source", DEMO, "--session", "s", "--redis", DEAD_REDIS], {}, "does not answer"),
    (["asr", "--asr", "none", "--redis", DEAD_REDIS], {}, "does not answer"),
    (["asr", "--asr", "vosk", "--vosk-model", "/no/such/model", "--redis", DEAD_REDIS], {}, "/no/such/model"),
    (["serve", "--ice-server", "http://stun.example"], {}, "expected a stun:, stuns:, turn: or turns: URL"),
    (["serve", "--max-sessions", "0"], {}, "--max-sessions 0"),
    (["serve", "--no-workers"], {}, "--no-workers needs the workers' Redis"),
    (["info", "missing.pt"], {}, "missing.pt"),
    (["train", "--data", "missing.pkl", "--epochs", "1"], {}, "'missing.pkl' not found"),
    (["extract", "no-such-folder", "-o", "x.pkl"], {}, "no-such-folder"),
    (["models", "install", "../escape"], {}, "'../escape' is not usable as a folder name"),
    (["convert", "ravdess", "no-such-folder", "--out", "x"], {}, "no-such-folder is not a folder"),
    (["convert", "emodb", ".", "--out", "x"], {}, "no emodb files under ."),
]


def case_id(case: tuple) -> str:
    argv, env, _ = case
    return " ".join(argv).replace(DEMO, "demo.mp4") + (f" {env}" if env else "")


@pytest.mark.parametrize(("argv", "env", "words"), CASES, ids=[case_id(c) for c in CASES])
def test_a_bad_input_gets_exit_status_2_and_one_line_naming_it(argv, env, words, tmp_path, monkeypatch,
                                                              capsys) -> None:
    paths = files(tmp_path)
    argv = [paths[a[1:-1]] if a.startswith("{") else a for a in argv]
    for name in ("REDIS_URL", "DMD_INFERENCE_MAX_BATCH", "DMD_ASR_ENGINE", "DMD_ASR_VOSK_MODEL", "DMD_VOSK_MODEL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"dmd {argv[0]}: ")]
    assert code == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert len(lines) == 1 and words in lines[0], err[-2000:]


def test_a_port_in_use_is_said_in_one_line(redis_server, capsys, monkeypatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--no-workers", "--redis", redis_server.url, "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and f"{port}" in err.splitlines()[-1], err[-2000:]
