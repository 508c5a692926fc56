"""The idle scenario: thousands of keep-alive client connections, each after one request.

What it measures is the price of an idle client: the target's resident memory growth divided by
the connections it holds, and whether its backend connection count stays put meanwhile.
"""

import asyncio
import os
import time
from dataclasses import dataclass

from procs import count_owned, established_by_pid, rss_kib
from targets import BACKEND_PORTS, HOST

REQUEST = b"GET /small.txt HTTP/1.1\r\nHost: bench\r\n\r\n"
# Opening every connection at once would overflow listen backlogs and measure SYN retries instead;
# 64 in flight is the load scenarios' concurrency.
OPENING_AT_ONCE = 64
# Connections opened and closed before measuring, so one-off allocations on the first requests
# (pools, buffers, TLS-free code paths touched first) do not count as per-connection cost.
WARM_UP_CONNS = 256


@dataclass
class IdleResult:
    opened: int
    failed: int
    held: int  # client connections still established when memory was read
    rss_before_kib: int
    rss_after_kib: int
    backend_conns: int | None
    problem: str | None = None

    @property
    def kib_per_conn(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / self.opened if self.opened else 0.0


async def _one_request(port: int, gate: asyncio.Semaphore):
    async with gate:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
        writer.write(REQUEST)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if not head.startswith(b"HTTP/1.1 200"):
            writer.close()
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await asyncio.wait_for(reader.readexactly(length), 10)
        return writer


async def _hold(target, count: int, settle: float) -> IdleResult:
    # `direct` has no balancer: its memory is backend 1's, and it holds no backend connections.
    pids = target.pids() or target.server_pids()
    before = rss_kib(pids)
    gate = asyncio.Semaphore(OPENING_AT_ONCE)
    outcomes = await asyncio.gather(*(_one_request(target.http_port, gate) for _ in range(count)),
                                    return_exceptions=True)
    writers = [o for o in outcomes if isinstance(o, asyncio.StreamWriter)]
    errors = [o for o in outcomes if not isinstance(o, asyncio.StreamWriter)]
    # Let the target finish whatever it does after a response (buffers shrink, tasks park).
    await asyncio.sleep(settle)
    after = rss_kib(pids)
    held = count_owned(established_by_pid([target.http_port]), {os.getpid()})
    backend = count_owned(established_by_pid(BACKEND_PORTS), target.pids()) if target.pid else None
    for writer in writers:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
    problem = f"{len(errors)} connections failed, first: {errors[0]!r}" if errors else None
    return IdleResult(len(writers), len(errors), held, before, after, backend, problem)


def hold_idle_connections(target, count: int, settle: float = 2.0) -> IdleResult:
    asyncio.run(_hold(target, WARM_UP_CONNS, 0.2))
    time.sleep(0.5)
    started = time.monotonic()
    result = asyncio.run(_hold(target, count, settle))
    print(f"    {target.name}: {result.opened} idle connections in {time.monotonic() - started:.1f}s, "
          f"{result.kib_per_conn:.2f} KiB each, backend conns {result.backend_conns}", flush=True)
    # Give the target a moment to notice the closes before the next one is measured.
    time.sleep(1.0)
    return result
