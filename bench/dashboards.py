"""Many dashboards at once against `dmd serve --no-workers` on loopback: N event streams opened
together, the time until every one has its history (`ready`), and how many got 503 past the cap.
Prints JSON; never asserts a time.

    python bench/dashboards.py --redis redis://127.0.0.1:6379/15 --streams 1000 [--max-streams 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import aiohttp  # noqa: E402
from hostinfo import cpu_model  # noqa: E402

from workers.pipeline import serve  # noqa: E402
from workers.settings import load_settings  # noqa: E402
from workers.web.app import ServeOptions  # noqa: E402

TOKEN = "bench"


async def one(session: aiohttp.ClientSession, url: str, answered: asyncio.Future, release: asyncio.Event) -> None:
    async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        if response.status != 200:
            answered.set_result(response.status)
            return
        async for line in response.content:
            if line.startswith(b"event: ready"):
                answered.set_result(200)
                await release.wait()
                return
        answered.set_result(-1)


async def main(args: argparse.Namespace) -> dict:
    stop, ready = asyncio.Event(), asyncio.Future()
    settings = load_settings(overrides={"redis": {"url": args.redis}}, environ={})
    options = ServeOptions(port=0, token=TOKEN, max_streams=args.max_streams)
    task = asyncio.create_task(serve(settings, options, workers=False, stop=stop, on_ready=ready.set_result))
    base = await asyncio.wait_for(ready, 30)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=300)) as session:
            release = asyncio.Event()
            answers = [asyncio.get_running_loop().create_future() for _ in range(args.streams)]
            start = time.monotonic()
            streams = [asyncio.create_task(one(session, f"{base}/dashboard/events", a, release)) for a in answers]
            statuses = await asyncio.gather(*answers)
            seconds = time.monotonic() - start
            release.set()
            await asyncio.gather(*streams)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    return {"streams": args.streams, "max_streams": args.max_streams, "ready": statuses.count(200),
            "refused_503": statuses.count(503), "other": len(statuses) - statuses.count(200) - statuses.count(503),
            "seconds_until_all_answered": round(seconds, 2), "machine": cpu_model(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis", required=True)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--max-streams", type=int, default=1000)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
