"""A helper process that opens idle hub subscribers and holds them until told to let go.

One process may hold only as many sockets as its open-file limit allows, and one source address
only ~28,000 connections to one server port (the ephemeral port range), so ``channel.capacity``
spreads its subscribers over several of these, each from its own loopback address. Reads one
JSON object on stdin: ``{"url", "source", "parallel", "subs": [[path, bearer token], ...]}``;
retries a 503 (load shedding) as a client would; prints one JSON line when they are open
(``{"open": n, "failures": {...}}``), holds them until stdin closes, then prints how many were
still open and exits.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from bench import client
from bench.stack import raise_fd_limit

# A connect storm on a busy machine is shed with 503 and Retry-After (the gateway's event loop is
# late); a client retries. Capacity is what the node holds, not how fast it takes connects.
RETRIES = 5


async def hold(spec: dict[str, Any]) -> None:
    gate = asyncio.Semaphore(int(spec.get("parallel", 100)))
    source = str(spec.get("source") or "127.0.0.1")

    async def one(path: str, token: str) -> client.Subscriber:
        for attempt in range(RETRIES + 1):
            async with gate:
                try:
                    return await client.subscribe(
                        spec["url"],
                        path,
                        {"Authorization": "Bearer " + token},
                        timeout=60,
                        source=source,
                    )
                except client.HTTPError as exc:
                    if exc.status != 503 or attempt == RETRIES:
                        raise
            await asyncio.sleep(1.0)  # the hub's Retry-After, as a real client waits
        raise AssertionError("unreachable")

    opened = await asyncio.gather(
        *(one(path, token) for path, token in spec["subs"]), return_exceptions=True
    )
    subs, failures = client.sort_opened(opened)
    print(json.dumps({"open": len(subs), "failures": failures}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the run closes our stdin
    alive = sum(1 for s in subs if s.proto is not None and not s.proto.done.done())
    for sub in subs:
        sub.close()
    print(json.dumps({"still_open": alive}), flush=True)


def main() -> None:
    raise_fd_limit()
    spec = json.loads(sys.stdin.readline())
    asyncio.run(hold(spec))


if __name__ == "__main__":
    main()
