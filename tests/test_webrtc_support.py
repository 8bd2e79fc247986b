"""What the WebRTC and dashboard tests share: a `dmd serve` process on a real Redis, a headless
Chromium driven through the DevTools protocol (over aiohttp's websocket client: no browser
automation package), an aiortc client (`workers.web.client`) looping the demo clip as camera and
microphone, and the fake camera (y4m) and microphone (wav) files that Chromium plays, cut from the
same clip.

Chromium is Debian's `chromium` (CI installs it); tests that need it skip, saying so, where it is
missing. Screenshots go to $DMD_SCREENSHOTS (default: the test's temporary folder).

The checks at the bottom test these helpers themselves.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fractions
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_CLIP = ROOT / "workers" / "assets" / "demo.mp4"
TOKEN = "test-token-5f3a"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = "Debian's chromium is not installed (apt-get install chromium; CI installs it)"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--mute-audio", "--window-size=1280,900",
                  "--autoplay-policy=no-user-gesture-required"]


def screenshots_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("DMD_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def make_checkpoint(path: Path, emotion_classes: int = 0) -> Path:
    """A small random live-profile checkpoint (the pipeline runs on it; its numbers mean nothing);
    `emotion_classes` 7: with an emotion head, so its estimates carry emotions."""
    import dmd_model.features
    from dmd_model.artefacts.checkpoint import save_checkpoint
    from dmd_model.config import DMDConfig
    from dmd_model.network.dmd import DMD

    cfg = DMDConfig.from_dict({"name": "live_test", "model": {"feature_dims": [384, 25, 55],
                                                              "seq_lens": [50, 50, 50], "d_model": 16,
                                                              "num_heads": 4, "layers": 1,
                                                              "emotion_classes": emotion_classes}})
    return save_checkpoint(path, DMD(cfg.model), cfg, profile=dmd_model.features.PROFILE.describe())


# -- fake camera and microphone files --------------------------------------------------------------------
def write_fake_media(folder: Path, seconds: float = 6.0, clip: Path = DEMO_CLIP) -> tuple[Path, Path]:
    """The first `seconds` of `clip` as a y4m (yuv420p, its frame rate) and a 48 kHz mono wav: what
    Chromium's --use-file-for-fake-*-capture take. Chromium loops them."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    y4m, wav = folder / "camera.y4m", folder / "microphone.wav"
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or fractions.Fraction(15)
        frames = []
        for frame in container.decode(stream):
            if frame.time is not None and frame.time >= seconds:
                break
            frames.append(frame.reformat(format="yuv420p"))
    with y4m.open("wb") as f:
        w, h = frames[0].width, frames[0].height
        f.write(f"YUV4MPEG2 W{w} H{h} F{rate.numerator}:{rate.denominator} Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n")
            f.write(frame.to_ndarray().tobytes())
    from workers.web.client import clip_sound

    pcm = clip_sound(clip, 48_000, seconds)
    with wave.open(str(wav), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(48_000)
        f.writeframes(pcm.tobytes())
    return y4m, wav


# -- dmd serve as a process --------------------------------------------------------------------------------
class ServeProcess:
    """`python -m workers.cli serve` (`dmd serve`) on a free port, its log in `log_path`."""

    def __init__(self, redis_url: str, checkpoint: Path, log_path: Path, *, token: str = TOKEN,
                 extra: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self.url = ""
        self.redis_url = redis_url
        redis = ["--redis", redis_url] if redis_url else []  # none: an embedded Redis
        cmd = [sys.executable, "-m", "workers.cli", "serve", "--port", "0", *redis, "--checkpoint", str(checkpoint),
               "--asr", "none", "--token", token, *(extra or [])]
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=environment,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("dmd serve: http"):
                    self.url = line.split()[2].split("/?")[0].rstrip("/")
                    return self.url
            if self.proc.poll() is not None:
                raise RuntimeError(f"dmd serve exited with {self.proc.returncode}:\n{text[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"dmd serve did not start within {timeout} s:\n{self.log_path.read_text()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def running_serve(redis_url: str, checkpoint: Path, log_path: Path, **kwargs: Any) -> Iterator[ServeProcess]:
    server = ServeProcess(redis_url, checkpoint, log_path, **kwargs)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


# -- headless Chromium over the DevTools protocol ------------------------------------------------------------
class Chromium:
    """A headless Chromium with a fresh profile, one page, driven over the DevTools protocol.

    `media`: (y4m, wav) to play as the camera and microphone, permission granted; None with
    `deny_media`: the permission prompt is refused."""

    def __init__(self, folder: Path, media: tuple[Path, Path] | None = None, deny_media: bool = False) -> None:
        if CHROMIUM is None:
            pytest.skip(NO_CHROMIUM)
        self.folder = folder
        self.profile = folder / "profile"
        self.flags = [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0"]
        if media is not None:
            y4m, wav = media
            self.flags += ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                           f"--use-file-for-fake-video-capture={y4m}", f"--use-file-for-fake-audio-capture={wav}"]
        elif deny_media:
            self.flags += ["--use-fake-device-for-media-stream", "--deny-permission-prompts"]
        self.proc: subprocess.Popen | None = None
        self._http: Any = None
        self._ws: Any = None
        self._reader: asyncio.Task | None = None
        self._calls: dict[int, asyncio.Future] = {}
        self._next = 0
        self.console: list[str] = []

    async def __aenter__(self) -> Chromium:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, timeout: float = 30.0) -> None:
        import aiohttp

        self.profile.mkdir(parents=True, exist_ok=True)
        self._stderr = (self.folder / "chromium.log").open("w")
        self.proc = subprocess.Popen([CHROMIUM, *self.flags, "about:blank"], stdout=subprocess.DEVNULL,
                                     stderr=self._stderr, start_new_session=True)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit {self.proc.poll()}): "
                                   f"{(self.folder / 'chromium.log').read_text()[-2000:]}")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        self._http = aiohttp.ClientSession()
        page = None
        while page is None:
            async with self._http.get(f"http://127.0.0.1:{port}/json/list") as r:
                targets = await r.json(content_type=None)
            page = next((t for t in targets if t.get("type") == "page"), None)
            if page is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("chromium has no page target")
                await asyncio.sleep(0.05)
        self._ws = await self._http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        await self.call("Runtime.enable")
        await self.call("Page.enable")

    async def _read(self) -> None:
        import aiohttp

        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            if "id" in data:
                future = self._calls.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            elif data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            elif data.get("method") == "Runtime.exceptionThrown":
                self.console.append("exception: " + json.dumps(data["params"].get("exceptionDetails", {}))[:500])
        for future in self._calls.values():
            if not future.done():
                future.set_exception(RuntimeError("the DevTools connection closed"))

    async def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        self._next += 1
        future = asyncio.get_running_loop().create_future()
        self._calls[self._next] = future
        await self._ws.send_str(json.dumps({"id": self._next, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def goto(self, url: str, timeout: float = 20.0) -> None:
        await self.call("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'", timeout)

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0, interval: float = 0.2) -> Any:
        """The value of `expression` once it is truthy; fails after `timeout` s with the page's state."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(RuntimeError):
                value = await self.evaluate(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                state = await self.evaluate("JSON.stringify({state: window.dmd && window.dmd.state, "
                                            "error: window.dmd && window.dmd.error, href: location.href})")
                raise AssertionError(f"{expression!r} still false after {timeout} s; page: {state}; "
                                     f"console: {self.console[-10:]}")
            await asyncio.sleep(interval)

    async def screenshot(self, path: Path) -> Path:
        data = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.call("Browser.close", timeout=3), 4)
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # its own process group: the browser and its helpers
                self.proc.wait(5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # helpers left behind by the browser, if any
            self._stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)


# -- an aiortc client (workers.web.client) -------------------------------------------------------------
def peer_client(base_url: str, session: str | None = None, seconds: float = 4.0, token: str = TOKEN) -> Any:
    """A client of `dmd serve` looping the first `seconds` of the demo clip as camera and microphone."""
    from workers.web.client import ServeClient, clip_tracks

    return ServeClient(base_url, list(clip_tracks(DEMO_CLIP, seconds=seconds)), token=token, session=session)


# -- checks of the helpers themselves ------------------------------------------------------------------------
def test_fake_camera_and_microphone_files_are_what_chromium_reads(tmp_path: Path) -> None:
    import av

    y4m, wav = write_fake_media(tmp_path, seconds=1.0)
    header = y4m.read_bytes()[:64].split(b"\n")[0].decode()
    assert header.startswith("YUV4MPEG2 W320 H320 F15:1") and "C420" in header
    with av.open(str(y4m)) as container:  # FFmpeg reads it back as 15 frames of 320x320
        frames = list(container.decode(video=0))
    assert len(frames) == 15 and (frames[0].width, frames[0].height) == (320, 320)
    with wave.open(str(wav)) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, 48_000)
        assert math.isclose(f.getnframes() / 48_000, 1.0, abs_tol=0.01)
