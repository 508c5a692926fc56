"""The idle scenarios: thousands of keep-alive client connections, each after one request.

What they measure is the price of an idle client: the target's resident memory growth divided by
the connections it holds, and whether its backend connection count stays put meanwhile.

The connections are held by client processes (this file run as a script), at most
CONNS_PER_CLIENT each: one process may hold at most 20,000 descriptors on this machine, and
16,000 connections plus the target's own would not fit in one. Each client opens its share, sends
one GET on each (plain HTTP/1.1, HTTP/1.1 over TLS, or HTTP/2 over TLS as browsers mostly
connect), reads the whole answer, prints one JSON line `{"opened": N, "failed": M, "error": ...}`
and holds everything until its stdin closes.
"""

import asyncio
import contextlib
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

REQUEST_PATH = "/small.txt"
REQUEST = f"GET {REQUEST_PATH} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
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


# How a client speaks: plain HTTP/1.1, HTTP/1.1 over TLS, or HTTP/2 over TLS.
MODES = ("plain", "tls", "h2")


def hold_idle_connections(target, count: int, mode: str = "plain", settle: float = 2.0) -> IdleResult:
    """Open `count` idle connections to the target (its HTTPS port unless `mode` is plain), read
    its memory before and `settle` seconds after, then close them all."""
    assert mode in MODES, mode
    port = target.http_port if mode == "plain" else target.https_port
    # `direct` has no balancer: its memory is backend 1's, and it holds no backend connections.
    pids = target.pids() or target.server_pids()
    _run_clients(port, WARM_UP_CONNS, mode, settle=0.2)
    # Read as long after the warm-up as `after` is after the opening: an allocator that returns
    # freed pages within a second or two (Juggler's jemalloc does) would otherwise count the
    # warm-up's garbage in `before` only, and a connection would seem to cost less than nothing.
    time.sleep(settle)
    before = rss_kib(pids)
    started = time.monotonic()
    clients = [_start_client(port, share, mode) for share in _shares(count)]
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
    kind = {"plain": "", "tls": "TLS ", "h2": "HTTP/2 "}[mode]
    print(f"    {target.name}: {result.opened} idle {kind}connections in {opening_s:.1f}s, "
          f"{result.bytes_per_conn:,.0f} B each, held {held}, backend conns {result.backend_conns}"
          + (f" ({problem})" if problem else ""), flush=True)
    # Give the target a moment to notice the closes before the next one is measured.
    time.sleep(1.0)
    return result


def _shares(count: int) -> list[int]:
    clients = max(1, math.ceil(count / CONNS_PER_CLIENT))
    return [count // clients + (1 if i < count % clients else 0) for i in range(clients)]


def _start_client(port: int, count: int, mode: str) -> subprocess.Popen:
    argv = [sys.executable, str(Path(__file__).resolve()), str(port), str(count), mode]
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


def _run_clients(port: int, count: int, mode: str, settle: float) -> None:
    """Open, hold for `settle` seconds, close (the warm-up)."""
    clients = [_start_client(port, share, mode) for share in _shares(count)]
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


async def _one_h2_request(port: int, tls: ssl.SSLContext, gate: asyncio.Semaphore):
    """One GET over a fresh HTTP/2 connection; returns what keeps the connection open."""
    # Imported here: only the HTTP/2 scenario needs the h2 package (bench/run.sh installs it).
    import h2.config
    import h2.connection
    import h2.events

    async with gate:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port, ssl=tls), 20)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [(":method", "GET"), (":path", REQUEST_PATH), (":scheme", "https"),
                                   (":authority", "bench")], end_stream=True)
        writer.write(conn.data_to_send())
        status = None
        while True:
            data = await asyncio.wait_for(reader.read(65536), 20)
            if not data:
                raise ConnectionError("closed before the response ended")
            ended = False
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers).get(b":status")
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                    ended = True
            writer.write(conn.data_to_send())
            if ended:
                break
        if status != b"200":
            writer.close()
            raise ConnectionError(f"HTTP/2 status {status!r}")
        return reader, writer, conn


async def _answer_pings(reader, writer, conn) -> None:
    """Keeps an idle HTTP/2 connection the way a browser does: its PINGs answered, nothing sent."""
    with contextlib.suppress(Exception):
        while data := await reader.read(65536):
            conn.receive_data(data)
            writer.write(conn.data_to_send())


async def _client(port: int, count: int, mode: str) -> None:
    context = None
    if mode != "plain":
        # The bench's certificate is self-signed.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["h2"] if mode == "h2" else ["http/1.1"])
    gate = asyncio.Semaphore(OPENING_AT_ONCE)
    one = _one_h2_request if mode == "h2" else _one_request
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(one(port, context, gate) for _ in range(count)), return_exceptions=True),
        OPEN_TIMEOUT_S)
    held = [o for o in outcomes if not isinstance(o, BaseException)]
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    report = {"opened": len(held), "failed": len(errors), "error": repr(errors[0]) if errors else None}
    print(json.dumps(report), flush=True)
    pumps = [asyncio.create_task(_answer_pings(*o)) for o in held if isinstance(o, tuple)]
    # Hold until the bench closes stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    writers = [o[1] if isinstance(o, tuple) else o for o in held]
    for writer in writers:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
    for pump in pumps:
        pump.cancel()


if __name__ == "__main__":
    port_arg, count_arg, mode_arg = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    try:
        asyncio.run(_client(port_arg, count_arg, mode_arg))
    except (asyncio.TimeoutError, OSError) as error:
        print(json.dumps({"opened": 0, "failed": count_arg, "error": repr(error)}), flush=True)
