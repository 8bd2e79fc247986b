"""`dmd serve` end to end: a real Redis, the real web app and workers in their own process, WebRTC
peers from aiortc (in this process) and from a headless Chromium (fake camera and microphone playing
files cut from the bundled demo clip). The checkpoint has an emotion head, so the estimates carry
emotions and the session page shows them (the dashboard's tests serve one without).

Screenshots of the session page and of the refused-camera page go to $DMD_SCREENSHOTS (default:
the test's temporary folder)."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("aiortc")
aiohttp = pytest.importorskip("aiohttp")

from redis_fixtures import RedisServer  # noqa: E402
from test_webrtc_support import (  # noqa: E402
    TOKEN,
    Chromium,
    ServeProcess,
    make_checkpoint,
    peer_client,
    running_serve,
    screenshots_dir,
    write_fake_media,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, RedisServer]]:
    """A redis-server of this module's own and `dmd serve` (web app + inference worker, no ASR) on it,
    serving a checkpoint with an emotion head."""
    folder = tmp_path_factory.mktemp("webrtc")
    redis = RedisServer(folder / "redis")
    redis.start()
    try:
        checkpoint = make_checkpoint(folder / "live_test.pt", emotion_classes=7)
        with running_serve(redis.url, checkpoint, folder / "serve.log") as server:
            yield server, redis
    finally:
        redis.stop()


@pytest.fixture(scope="module")
def fake_media(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_fake_media(tmp_path_factory.mktemp("fake-media"), seconds=6.0)


async def _get(url: str, **kwargs) -> tuple[int, str, dict]:
    async with aiohttp.ClientSession() as http, http.get(url, **kwargs) as r:
        return r.status, await r.text(), dict(r.headers)


async def _sessions(base: str) -> dict:
    status, text, _ = await _get(f"{base}/sessions", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, text
    return json.loads(text)


async def _until_ended(base: str, session: str, timeout: float = 15.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        info = await _sessions(base)
        ended = [s for s in info["ended"] if s["session"] == session]
        if ended and not any(s["session"] == session for s in info["live"]):
            return ended[-1]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"session {session} still live after {timeout} s: {info}")
        await asyncio.sleep(0.2)


def test_aiortc_peer_sends_audio_and_video_and_gets_estimates_over_its_data_channel(stack) -> None:
    server, redis = stack
    from dmd_types import PcmChunk
    from stream.keys import SessionKeys
    from stream.messages import SessionEvent, from_fields

    async def run() -> tuple[Any, dict, dict]:
        client = peer_client(server.url, session="aiortc-peer")
        answer = await client.connect()
        try:
            await client.wait_estimates(3, timeout=45)
        finally:
            await client.close()
        ended = await _until_ended(server.url, client.session)  # the peer left: the session is cleaned up
        return client, answer, ended

    client, answer, ended = asyncio.run(run())
    assert client.session == "aiortc-peer"
    assert "typ srflx" not in answer["sdp"] and "typ relay" not in answer["sdp"]  # no STUN/TURN by default
    assert client.messages[0]["type"] == "session" and client.messages[0]["tracks"] == {"video": True, "audio": True}
    windows = [e["window"] for e in client.estimates]
    assert windows == sorted(windows) and len(set(windows)) == len(windows)
    for e in client.estimates:
        assert e["schema"] == 2 and e["session"] == "aiortc-peer" and -3 <= e["sentiment"] <= 3
        assert len(e["edges"]["homo"]) == 3 and len(e["edges"]["hetero"][0]) == 3
        assert abs(sum(e["emotions"].values()) - 1) < 1e-6 and e["emotion"] in e["emotions"]
        assert all(abs(sum(e["modalities"][m]["emotions"].values()) - 1) < 1e-6 for m in e["modalities"])
    assert any(e["modalities"]["audio"]["present"] for e in client.estimates)
    assert any(e["modalities"]["visual"]["present"] for e in client.estimates)  # the demo clip has a face
    ages = [m["age_ms"] for m in client.messages if m["type"] == "estimate"]
    assert all(-5 < a < 10_000 for a in ages)  # the window's end arrived before its estimate left
    assert ended["state"] == "ended" and ended["source"]["video_frames"] > 20

    r = redis.client()
    try:
        keys = SessionKeys("aiortc-peer")
        events = [SessionEvent.from_fields(f).event for _, f in r.xrange(keys.events)]
        assert events == ["start", "end"]
        chunks = [from_fields(f, PcmChunk) for _, f in r.xrange(keys.audio)]  # refuses any rate but 16 kHz
        assert chunks and all(c.pcm.dtype == np.int16 for c in chunks)
        assert all(c.samples == 1600 for c in chunks[:-1])  # 100 ms
        starts = [c.t0 for c in chunks]
        assert all(abs((b - a) - 0.1) < 1e-6 for a, b in itertools.pairwise(starts))  # contiguous on the clock
        assert r.xlen(keys.vfeat) > 10
    finally:
        r.close()


def test_chromium_sends_its_camera_and_the_page_fills_window_dmd_estimates(stack, fake_media, tmp_path) -> None:
    server, _ = stack

    async def run() -> tuple[list, str, dict]:
        async with Chromium(tmp_path, media=fake_media) as browser:
            await browser.goto(f"{server.url}/?token={TOKEN}&session=chromium-page")
            await browser.wait_for("window.dmd.state === 'live'", 30)
            await browser.wait_for("window.dmd.estimates.length >= 4", 60)
            await browser.screenshot(screenshots_dir(tmp_path) / "session.png")
            estimates = await browser.evaluate("window.dmd.estimates")
            overlay = await browser.evaluate("document.getElementById('label').textContent + '|' + "
                                             "document.querySelectorAll('#modalities .present').length")
            emotions = await browser.evaluate("""JSON.stringify({
                top: document.getElementById('emotion').textContent,
                last: window.dmd.estimates[window.dmd.estimates.length - 1],
                panel: !document.getElementById('emotions').hidden,
                titles: [...document.querySelectorAll('#modality-emotions .emotion-bars-title')]
                    .map(n => n.textContent),
                rows: document.querySelectorAll('#modality-emotions .emotion-row').length,
                drawn: (() => { const c = document.getElementById('emotion-timeline');
                                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                                let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; })()})""")
            await browser.evaluate("document.getElementById('stop').click()")  # the page leaves
            await browser.wait_for("window.dmd.state === 'ended'", 10)
            ended = await _until_ended(server.url, "chromium-page")
        return estimates, overlay, json.loads(emotions), ended

    estimates, overlay, emotions, ended = asyncio.run(run())
    assert all(e["session"] == "chromium-page" and e["schema"] == 2 for e in estimates)
    assert [e["window"] for e in estimates] == sorted(e["window"] for e in estimates)
    assert any(e["modalities"]["audio"]["present"] for e in estimates)
    assert any(e["modalities"]["visual"]["present"] for e in estimates)
    label, present = overlay.split("|")
    assert label in ("negative", "neutral", "positive") and int(present) >= 1
    # the top emotion beside the label, each modality's bars, the emotion timeline drawn
    last = emotions["last"]
    assert emotions["top"] == f"{last['emotion']} {math.floor(last['emotions'][last['emotion']] * 100 + 0.5)}%"
    assert emotions["panel"] and emotions["titles"] == ["text", "voice", "face"] and emotions["rows"] == 21
    assert emotions["drawn"] > 1000
    assert ended["reason"] in ("the page said bye", "the data channel closed", "the connection closed")
    assert (screenshots_dir(tmp_path) / "session.png").stat().st_size > 10_000


def test_a_refused_camera_gives_a_clear_page(stack, tmp_path) -> None:
    server, _ = stack

    async def run() -> tuple[str, str]:
        async with Chromium(tmp_path, deny_media=True) as browser:
            await browser.goto(f"{server.url}/?token={TOKEN}")
            state = await browser.wait_for("['refused', 'error', 'no-device'].includes(window.dmd.state) && "
                                           "window.dmd.state", 20)
            text = await browser.evaluate("document.getElementById('problem').hidden ? '' : "
                                          "document.getElementById('problem').innerText")
            await browser.screenshot(screenshots_dir(tmp_path) / "camera-refused.png")
        return state, text

    state, text = asyncio.run(run())
    assert state == "refused"
    assert "refused" in text and "Try again" in text


def test_wrong_or_missing_token_is_refused(stack) -> None:
    server, _ = stack
    base = server.url

    async def run() -> dict[str, int]:
        codes = {}
        async with aiohttp.ClientSession() as http:
            offer = {"sdp": "v=0\r\n", "type": "offer"}
            for name, headers in (("offer-wrong", {"Authorization": "Bearer nope"}), ("offer-none", {})):
                async with http.post(f"{base}/offer", json=offer, headers=headers) as r:
                    codes[name] = r.status
            for path in ("/dashboard?token=nope", "/dashboard", "/dashboard/events?token=nope", "/config",
                         "/sessions?token=nope"):
                async with http.get(f"{base}{path}") as r:
                    codes[path] = r.status
            async with http.get(f"{base}/dashboard?token={TOKEN}") as r:
                codes["dashboard-right"] = r.status
            async with http.get(f"{base}/config", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                codes["config-right"] = r.status
                codes["ice"] = len((await r.json())["iceServers"])
        return codes

    codes = asyncio.run(run())
    assert {k: v for k, v in codes.items() if k not in ("dashboard-right", "config-right", "ice")} == {
        "offer-wrong": 401, "offer-none": 401, "/dashboard?token=nope": 401, "/dashboard": 401,
        "/dashboard/events?token=nope": 401, "/config": 401, "/sessions?token=nope": 401}
    assert codes["dashboard-right"] == 200 and codes["config-right"] == 200
    assert codes["ice"] == 0  # no public STUN server unless configured


def test_oversized_and_malformed_offers_are_refused_with_the_reason(stack) -> None:
    server, _ = stack
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def run() -> list[tuple[int, str]]:
        results = []
        async with aiohttp.ClientSession() as http:
            for body in ({"sdp": "v=0\r\n" + "a" * 100_000, "type": "offer"},  # over the 64 KiB limit
                         {"type": "answer", "sdp": "v=0"}, {"type": "offer", "sdp": "v=0\r\n"},
                         {"type": "offer", "sdp": "v=0", "session": "no spaces{}"}):
                async with http.post(f"{server.url}/offer", json=body, headers=headers) as r:
                    results.append((r.status, await r.text()))
        return results

    (big, _), (wrong_type, why_type), (bad_sdp, why_sdp), (bad_name, why_name) = asyncio.run(run())
    assert big == 413
    assert wrong_type == 400 and "offer" in why_type
    assert bad_sdp == 400 and "could not be used" in why_sdp
    assert bad_name == 400 and "session id" in why_name


def test_serve_refuses_a_turn_server_without_credentials() -> None:
    import argparse

    from workers.cli.web import add_serve_arguments as add_arguments
    from workers.cli.web import options_from

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ValueError, match="--turn-username"):
        options_from(parser.parse_args(["--ice-server", "turn:turn.example.org:3478"]))
    options = options_from(parser.parse_args(["--ice-server", "stun:stun.example.org:3478", "--ice-server",
                                              "turn:turn.example.org:3478", "--turn-username", "u",
                                              "--turn-credential", "c", "--token", "t"]))
    assert options.ice_servers == [{"urls": ["stun:stun.example.org:3478"]},
                                   {"urls": ["turn:turn.example.org:3478"], "username": "u", "credential": "c"}]
    assert options_from(parser.parse_args([])).ice_servers == []


def test_serve_without_workers_answers_on_the_workers_redis(stack) -> None:
    """`dmd serve --no-workers`: the web app alone, in this process, on the module's Redis."""
    from workers.pipeline import serve
    from workers.settings import load_settings
    from workers.web.app import ServeOptions

    _, redis = stack

    async def run() -> tuple[int, dict, int]:
        stop, ready = asyncio.Event(), asyncio.Future()
        settings = load_settings(overrides={"redis": {"url": redis.url}}, environ={})
        task = asyncio.create_task(serve(settings, ServeOptions(port=0, token=TOKEN), workers=False, stop=stop,
                                         on_ready=ready.set_result))
        base = await asyncio.wait_for(ready, 20)
        try:
            health, _, _ = await _get(f"{base}/healthz")
            info = await _sessions(base)
            refused, _, _ = await _get(f"{base}/sessions")
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
        return health, info, refused

    health, info, refused = asyncio.run(run())
    assert health == 200 and info["live"] == [] and refused == 401


def test_serve_says_what_is_wrong_with_its_redis() -> None:
    from workers.pipeline import serve
    from workers.settings import load_settings
    from workers.web.app import ServeOptions
    from workers.wiring import RedisUnreachable

    options = ServeOptions(port=0)
    with pytest.raises(ValueError, match="--no-workers needs the workers' Redis"):
        asyncio.run(serve(load_settings(environ={}), options, workers=False))
    unreachable = load_settings(overrides={"redis": {"url": "redis://127.0.0.1:1/0"}}, environ={})
    with pytest.raises(RedisUnreachable, match=r"does not answer.*REDIS_URL"):
        asyncio.run(serve(unreachable, options, workers=False))
