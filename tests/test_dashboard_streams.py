"""Many dashboards at once: their event streams share the hub's one Redis subscription and take turns
reading the history, so 300 streams opened together on loopback all get their history and go live,
and past `max_streams` a dashboard gets a clean 503."""

from __future__ import annotations

import asyncio

import pytest

aiohttp = pytest.importorskip("aiohttp")

TOKEN = "s3cret"


async def _open_stream(session, url: str, answered: asyncio.Future, release: asyncio.Event) -> None:
    """Open a dashboard's stream: `answered` gets (status, whether the `ready` event came); the stream
    stays open until `release`, as a dashboard's would."""
    async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        if response.status != 200:
            answered.set_result((response.status, False))
            return
        async for line in response.content:
            if line.startswith(b"event: ready"):
                answered.set_result((200, True))
                await release.wait()
                return
        answered.set_result((200, False))


def _serve_and(redis_url: str, max_streams: int, clients: int) -> list[tuple[int, bool]]:
    from workers.pipeline import serve
    from workers.settings import load_settings
    from workers.web.app import ServeOptions

    async def run() -> list[tuple[int, bool]]:
        stop, ready = asyncio.Event(), asyncio.Future()
        settings = load_settings(overrides={"redis": {"url": redis_url}}, environ={})
        options = ServeOptions(port=0, token=TOKEN, max_streams=max_streams)
        task = asyncio.create_task(serve(settings, options, workers=False, stop=stop, on_ready=ready.set_result))
        base = await asyncio.wait_for(ready, 20)
        try:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
                release = asyncio.Event()
                answers = [asyncio.get_running_loop().create_future() for _ in range(clients)]
                streams = [asyncio.create_task(_open_stream(session, f"{base}/dashboard/events", a, release))
                           for a in answers]
                results = await asyncio.wait_for(asyncio.gather(*answers), 60)
                release.set()
                await asyncio.gather(*streams)
                return results
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)

    return asyncio.run(run())


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_300_dashboards_opening_together_all_get_their_history(redis_server) -> None:
    results = _serve_and(redis_server.url, max_streams=1000, clients=300)
    assert results.count((200, True)) == 300, sorted(set(results))


@pytest.mark.timeout(60)
def test_past_the_cap_a_dashboard_gets_503(redis_server) -> None:
    results = _serve_and(redis_server.url, max_streams=5, clients=12)
    assert sorted(results) == [(200, True)] * 5 + [(503, False)] * 7
