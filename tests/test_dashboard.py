"""The live dashboard of `dmd serve`: its event stream (history from the estimates streams, then
live from Redis pub/sub) and the page in a headless Chromium, with one session that has ended and
one that is live, served by a checkpoint without an emotion head (the face's emotions, from the face
expert, are the only ones shown), and one whose estimates carry emotions (top emotion, per-modality
bars, emotion timeline). Screenshots of the page
go to $DMD_SCREENSHOTS (default: the test's temporary folder)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Iterator

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
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    folder = tmp_path_factory.mktemp("dashboard")
    redis = RedisServer(folder / "redis")
    redis.start()
    try:
        with running_serve(redis.url, make_checkpoint(folder / "live_test.pt"), folder / "serve.log") as server:
            yield server
    finally:
        redis.stop()


async def _events(base: str, stop_after: float, token: str = TOKEN) -> list[tuple[str, dict]]:
    """The dashboard's Server-Sent Events for `stop_after` seconds, parsed."""
    events: list[tuple[str, dict]] = []
    async with aiohttp.ClientSession() as http, http.get(f"{base}/dashboard/events?token={token}") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        name = None

        async def read() -> None:
            nonlocal name
            async for raw in r.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[6:])))

        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(read(), stop_after)
    return events


def test_dashboard_opened_late_shows_the_history_then_live_estimates_of_every_session(stack, tmp_path) -> None:
    base = stack.url

    async def run() -> tuple[list, list, dict, str]:
        # a session that has come and gone before the dashboard opens
        earlier = peer_client(base, "earlier-peer", seconds=3.0)
        await earlier.connect()
        await earlier.wait_estimates(3, timeout=45)
        await earlier.close()
        # and one that is live while it is open
        live = peer_client(base, "live-peer", seconds=3.0)
        await live.connect()
        try:
            await live.wait_estimates(1, timeout=45)
            events = await _events(base, stop_after=2.5)
            async with Chromium(tmp_path) as browser:
                await browser.goto(f"{base}/dashboard?token={TOKEN}")
                await browser.wait_for("window.dmd.state === 'live'", 20)
                await browser.wait_for("Object.keys(window.dmd.sessions).length >= 2 && "
                                       "document.querySelectorAll('.session-card').length >= 2", 20)
                before = await browser.evaluate("window.dmd.estimates.filter(e => e.session === 'live-peer').length")
                await browser.wait_for(f"window.dmd.estimates.filter(e => e.session === 'live-peer').length > "
                                       f"{before}", 20)  # and it keeps coming
                await asyncio.sleep(0.3)  # one frame for the page to draw
                await browser.screenshot(screenshots_dir(tmp_path) / "dashboard.png")
                estimates = await browser.evaluate("window.dmd.estimates")
                page = await browser.evaluate("""JSON.stringify({
                    cards: [...document.querySelectorAll('.session-card')].map(c => ({
                        session: c.dataset.session, state: c.dataset.state,
                        cells: c.querySelectorAll('.heatmap-grid .cell').length,
                        rows: c.querySelectorAll('.modalities-table tbody tr').length,
                        latency: c.querySelector('.latency').textContent,
                        label: c.querySelector('.now-label').textContent,
                        emotion: c.querySelector('.now-emotion').textContent,
                        emotionTimeline: !c.querySelector('.emotion-timeline').hidden,
                        bars: c.querySelectorAll('.emotion-row').length,
                        used: [...c.querySelectorAll('.modalities-table tbody tr')].map(
                            r => r.children[1].textContent + '/' + r.children[2].textContent),
                        states: [...c.querySelectorAll('.emotion-bars-state')].map(n => n.textContent)}))})""")
        finally:
            await live.close()
        return events, estimates, json.loads(page), live.session

    events, estimates, page, live_session = asyncio.run(run())

    # the event stream: the sessions first, the history, "ready", then live estimates, no duplicates
    names = [name for name, _ in events]
    assert names[0] == "sessions" and "ready" in names
    sessions = {s["session"]: s for s in events[0][1]}
    assert sessions["earlier-peer"]["state"] == "ended" and sessions["live-peer"]["state"] == "live"
    ready = names.index("ready")
    history = [data for name, data in events[:ready] if name == "estimate"]
    after = [data for name, data in events[ready:] if name == "estimate"]
    assert {e["session"] for e in history} == {"earlier-peer", "live-peer"}
    assert after and all(e["session"] == "live-peer" for e in after)
    keys = [(e["session"], e["window"]) for e in history + after]
    assert len(keys) == len(set(keys))

    # the page
    assert {e["session"] for e in estimates} == {"earlier-peer", live_session}
    keys = [(e["session"], e["window"]) for e in estimates]
    assert len(keys) == len(set(keys))
    cards = {c["session"]: c for c in page["cards"]}
    assert cards["earlier-peer"]["state"] == "ended" and cards["live-peer"]["state"] == "live"
    for card in cards.values():
        assert card["cells"] == 18  # two 3x3 heat maps
        assert card["rows"] == 3  # text, audio, visual
        assert "latency (ms)" in card["latency"] and card["label"] in ("negative", "neutral", "positive")
        # a checkpoint without an emotion head: the only emotions are the face's, where a face was seen
        assert (card["emotion"] == "") == (card["bars"] == 0) and card["bars"] in (0, 7)  # the face's bars only
        # trained with all three modalities: what was observed is used
        assert len(card["used"]) == 3 and all(cell in ("yes/yes", "no/no") for cell in card["used"])
        if card["bars"]:
            assert card["emotionTimeline"] and card["states"][2].endswith("; emotions from the face expert")
    for e in estimates:
        m = e["modalities"]
        assert m["text"]["emotions"] is None and m["audio"]["emotions"] is None  # no emotion head
        assert (e["emotions"] is None) == (m["visual"]["emotions"] is None)
        assert (m["visual"]["emotions"] is not None) == m["visual"]["present"]  # the expert runs on every face
    assert any(e["emotions"] for e in estimates), "the demo clip's face gave no emotion"
    assert (screenshots_dir(tmp_path) / "dashboard.png").stat().st_size > 10_000


def test_dashboard_shows_the_top_emotion_each_modalitys_bars_and_an_emotion_timeline(stack, tmp_path) -> None:
    import redis.asyncio as aioredis
    from test_stream_estimate import HAPPY, SAD, make_estimate

    from stream.publish import EstimatePublisher

    async def run() -> dict:
        client = aioredis.Redis.from_url(stack.redis_url)
        publisher = EstimatePublisher(client, alpha=0.5)
        for k in range(6, 26):  # happy, then sad: the smoothed top emotion turns to sad
            await publisher.publish(make_estimate(window=k, session="feelings", emotions=HAPPY if k < 12 else SAD))
        await client.aclose()
        async with Chromium(tmp_path) as browser:
            await browser.goto(f"{stack.url}/dashboard?token={TOKEN}")
            await browser.wait_for("window.dmd.state === 'live' && window.dmd.sessions.feelings && "
                                   "window.dmd.sessions.feelings.estimates.length === 20", 20)
            await browser.wait_for("document.querySelector('#session-feelings .emotion-row') !== null", 10)
            await asyncio.sleep(0.3)
            await browser.screenshot(screenshots_dir(tmp_path) / "dashboard-emotions.png")
            return json.loads(await browser.evaluate("""(() => {
                const c = document.getElementById('session-feelings');
                const canvas = c.querySelector('.emotion-timeline');
                const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
                let drawn = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) drawn++;
                const voice = c.querySelector('.modality-emotions .emotion-bars:nth-child(2)');
                const bar = voice.querySelector('.emotion-row[data-emotion=sad]');
                return JSON.stringify({
                    emotion: c.querySelector('.now-emotion').textContent, drawn,
                    timeline: !canvas.hidden, rows: c.querySelectorAll('.emotion-row').length,
                    titles: [...c.querySelectorAll('.emotion-bars-title')].map(n => n.textContent),
                    voiceSad: bar.querySelector('.emotion-p').textContent,
                    last: window.dmd.sessions.feelings.estimates[19]});
            })()"""))

    page = asyncio.run(run())
    last = page["last"]
    assert last["emotion"] == "sad" and page["emotion"] == f"sad {math.floor(last['emotions']['sad'] * 100 + 0.5)}%"
    assert page["timeline"] and page["drawn"] > 1000
    assert page["titles"] == ["text", "voice", "face"] and page["rows"] == 21
    assert page["voiceSad"] == "70%"  # the window's own unimodal probabilities, not smoothed


def test_dashboard_page_refuses_a_wrong_token(stack, tmp_path) -> None:
    async def run() -> tuple[str, str]:
        async with Chromium(tmp_path) as browser:
            await browser.goto(f"{stack.url}/dashboard?token=wrong")
            text = await browser.evaluate("document.body.innerText")
            title = await browser.evaluate("document.title")
        return text, title

    text, title = asyncio.run(run())
    assert "token" in title and "A token is needed" in text


def test_dashboard_events_refuse_a_wrong_token(stack) -> None:
    async def run() -> int:
        async with aiohttp.ClientSession() as http, http.get(f"{stack.url}/dashboard/events?token=no") as r:
            return r.status

    assert asyncio.run(run()) == 401


def test_recent_history_is_bounded_to_the_most_recently_active_sessions(stack, redis_server) -> None:
    """`dashboard_history` on many sessions: the newest first, at most `sessions` of them."""
    import redis.asyncio as aioredis

    from stream.estimate import Estimate, ModalityResult
    from stream.publish import EstimatePublisher
    from workers.web.hub import dashboard_history

    def estimate(session: str, window: int) -> Estimate:
        modality = ModalityResult(True, 0.1, 0.2)
        eye = [[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]]
        return Estimate(session=session, window=window, t_start=window * 0.5 - 3, t_end=window * 0.5,
                        sentiment=0.5, label="positive", modalities={m: modality for m in ("text", "audio", "visual")},
                        edges_homo=eye, edges_hetero=eye, latency_ms={"model": 1.0}, model="t", checkpoint="x")

    async def run() -> list[Estimate]:
        client = aioredis.Redis.from_url(redis_server.url)
        await client.flushall()
        publisher = EstimatePublisher(client)
        for i in range(5):
            for k in range(6, 10):
                await publisher.publish(estimate(f"s{i}", k))
            await asyncio.sleep(0.002)  # entry ids (ms) order the sessions
        found = await dashboard_history(client, sessions=2, count=3)
        await client.aclose()
        return found

    found = asyncio.run(run())
    assert {e.session for e in found} == {"s3", "s4"}
    assert [e.window for e in found if e.session == "s4"] == [7, 8, 9]
