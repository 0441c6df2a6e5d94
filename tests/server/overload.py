"""Open-loop load at a fixed offered rate (requests are sent on schedule, whatever the answers), for
measuring what a rate limiter admits. Used by tests/server/test_ratelimit_overload.py and its long profile."""
from __future__ import annotations

import asyncio
import collections
import time

import aiohttp


async def offer(urls: list[str], *, rate: float, seconds: float, headers: dict, body: bytes,
                concurrency: int = 200) -> dict:
    """Send ``rate`` requests per second for ``seconds`` seconds, round-robin over ``urls``.
    Returns counts by status and the admitted (200) rate over the whole run."""
    counts: collections.Counter = collections.Counter()
    sem = asyncio.Semaphore(concurrency)
    n = int(rate * seconds)
    start = time.perf_counter()
    late = 0

    async def one(session, i):
        async with sem:
            try:
                async with session.post(urls[i % len(urls)], data=body, headers=headers) as resp:
                    await resp.read()
                    counts[resp.status] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                counts[type(exc).__name__] += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        tasks = []
        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.05:
                late += 1
            tasks.append(asyncio.create_task(one(session, i)))
        await asyncio.gather(*tasks)
    offered_seconds = n / rate
    return {"sent": n, "counts": dict(counts), "admitted": counts[200], "offered_rps": rate,
            "admitted_rps": counts[200] / offered_seconds, "late_sends": late,
            "wall_seconds": time.perf_counter() - start}
