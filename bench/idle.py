"""The idle scenarios: thousands of keep-alive client connections, each after one request.

What they measure is the price of an idle client: the target's resident memory growth divided by
the connections it holds, and whether its backend connection count stays put meanwhile.

The connections are held by client processes (this file run as a script), at most
CONNS_PER_CLIENT each: one process may hold at most 20,000 descriptors on this machine, and
16,000 connections plus the target's own would not fit in one. Each client opens its share, sends
one GET on each (over TLS for the TLS scenario), reads the whole answer, prints one line
`opened N failed M [first error]` and holds everything until its stdin closes.
"""

import asyncio
import json
import math
import os
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from procs import count_owned, established_by_pid, rss_kib
from targets import BACKEND_PORTS, HOST

REQUEST = b"GET /small.txt HTTP/1.1\r\nHost: bench\r\n\r\n"
# Opening every connection at once would overflow listen backlogs and measure SYN retries instead;
# 64 in flight per client process.
OPENING_AT_ONCE = 64
# Connections opened and closed before measuring, so one-off allocations on the first requests
# (pools, buffers, code paths touched first) do not count as per-connection cost.
WARM_UP_CONNS = 256
# Connections per client process: well below the 20,000 descriptors one process may hold.
CONNS_PER_CLIENT = 4000
# How long a client may take to open its share (TLS handshakes in Python are the slow part).
OPEN_TIMEOUT_S = 180


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
    def bytes_per_conn(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) * 1024 / self.opened if self.opened else 0.0


def hold_idle_connections(target, count: int, tls: bool = False, settle: float = 2.0) -> IdleResult:
    """Open `count` idle connections to the target (its HTTPS port when `tls`), read its memory
    before and `settle` seconds after, then close them all."""
    port = target.https_port if tls else target.http_port
    # `direct` has no balancer: its memory is backend 1's, and it holds no backend connections.
    pids = target.pids() or target.server_pids()
    _run_clients(port, WARM_UP_CONNS, tls, settle=0.2)
    # Read as long after the warm-up as `after` is after the opening: an allocator that returns
    # freed pages within a second or two (Juggler's jemalloc does) would otherwise count the
    # warm-up's garbage in `before` only, and a connection would seem to cost less than nothing.
    time.sleep(settle)
    before = rss_kib(pids)
    started = time.monotonic()
    clients = [_start_client(port, share, tls) for share in _shares(count)]
    try:
        reports = [_read_report(client) for client in clients]
        opening_s = time.monotonic() - started
        # Let the target finish whatever it does after a response (buffers shrink, tasks park).
        time.sleep(settle)
        after = rss_kib(pids)
        held = count_owned(established_by_pid([port]), {c.pid for c in clients})
        backend = count_owned(established_by_pid(BACKEND_PORTS), target.pids()) if target.pid else None
    finally:
        _close_clients(clients)
    opened = sum(r["opened"] for r in reports)
    failed = sum(r["failed"] for r in reports)
    errors = [r["error"] for r in reports if r.get("error")]
    problem = f"{failed} connections failed, first: {errors[0]}" if failed else None
    result = IdleResult(opened, failed, held, before, after, backend, problem)
    print(f"    {target.name}: {result.opened} idle {'TLS ' if tls else ''}connections in {opening_s:.1f}s, "
          f"{result.bytes_per_conn:,.0f} B each, held {held}, backend conns {result.backend_conns}"
          + (f" ({problem})" if problem else ""), flush=True)
    # Give the target a moment to notice the closes before the next one is measured.
    time.sleep(1.0)
    return result


def _shares(count: int) -> list[int]:
    clients = max(1, math.ceil(count / CONNS_PER_CLIENT))
    return [count // clients + (1 if i < count % clients else 0) for i in range(clients)]


def _start_client(port: int, count: int, tls: bool) -> subprocess.Popen:
    argv = [sys.executable, str(Path(__file__).resolve()), str(port), str(count)] + (["tls"] if tls else [])
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _read_report(client: subprocess.Popen) -> dict:
    # The client prints its report once every connection is open (or failed); nothing else.
    line = client.stdout.readline() if client.stdout else ""
    try:
        return json.loads(line)
    except ValueError:
        return {"opened": 0, "failed": 0, "error": f"client printed {line.strip()[:200]!r} (exit {client.poll()})"}


def _close_clients(clients: list[subprocess.Popen]) -> None:
    for client in clients:
        try:
            if client.stdin:
                client.stdin.close()
        except OSError:
            pass
    for client in clients:
        try:
            client.wait(timeout=30)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()


def _run_clients(port: int, count: int, tls: bool, settle: float) -> None:
    """Open, hold for `settle` seconds, close (the warm-up)."""
    clients = [_start_client(port, share, tls) for share in _shares(count)]
    try:
        for client in clients:
            _read_report(client)
        time.sleep(settle)
    finally:
        _close_clients(clients)


# ---------------------------------------------------------------------------------------------
# The client process


async def _one_request(port: int, tls: ssl.SSLContext | None, gate: asyncio.Semaphore):
    async with gate:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port, ssl=tls), 20)
        writer.write(REQUEST)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        if not head.startswith(b"HTTP/1.1 200"):
            writer.close()
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await asyncio.wait_for(reader.readexactly(length), 20)
        return writer


async def _client(port: int, count: int, tls: bool) -> None:
    context = None
    if tls:
        # The bench's certificate is self-signed; HTTP/1.1 only, as an idle browser tab would hold.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["http/1.1"])
    gate = asyncio.Semaphore(OPENING_AT_ONCE)
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(_one_request(port, context, gate) for _ in range(count)), return_exceptions=True),
        OPEN_TIMEOUT_S)
    writers = [o for o in outcomes if isinstance(o, asyncio.StreamWriter)]
    errors = [o for o in outcomes if not isinstance(o, asyncio.StreamWriter)]
    report = {"opened": len(writers), "failed": len(errors), "error": repr(errors[0]) if errors else None}
    print(json.dumps(report), flush=True)
    # Hold until the bench closes stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for writer in writers:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)


if __name__ == "__main__":
    port_arg, count_arg = int(sys.argv[1]), int(sys.argv[2])
    try:
        asyncio.run(_client(port_arg, count_arg, tls=len(sys.argv) > 3 and sys.argv[3] == "tls"))
    except (asyncio.TimeoutError, OSError) as error:
        print(json.dumps({"opened": 0, "failed": count_arg, "error": repr(error)}), flush=True)
