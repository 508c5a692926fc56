#!/usr/bin/env python3
"""What an idle keep-alive client connection costs Juggler (and nginx) in resident memory.

    python3 bench/idle_rss.py                      # build, then 8,000 and 16,000 plain, 8,000 TLS
    python3 bench/idle_rss.py --skip-build --conns 8000 --tls-conns 0 --nginx

For each scenario the balancer is started fresh, warmed up (a few hundred connections opened, used
and closed, so one-off allocations do not count), and its RSS (VmRSS of every process in its
group, from /proc/<pid>/status) read. Then N connections are opened by several client processes
(one process may hold at most 20,000 descriptors), each sends one complete GET and reads the whole
answer, and all are held idle. RSS is read again after `--settle` seconds (Juggler parks an idle
connection after 50 ms) and once more after `--late` seconds (jemalloc returns freed pages to the
system over ~10 s, so the early reading still holds pages the connections no longer use). The
cost per connection is (RSS_after - RSS_before) / N.

Everything runs on 127.0.0.1 on its own ports (28080/28443 for the balancer, 29001-29003 for three
`test_server` backends), with its own config under bench/out/idle_rss/, so it does not disturb
`make bench`. The Juggler binary is built with that config baked in (cargo build --release with
JUGGLER_CONFIG) and copied to bench/out/idle_rss/juggler; `--skip-build` reuses the copy.
"""

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out" / "idle_rss"
HOST = "127.0.0.1"
HTTP_PORT = 28080
HTTPS_PORT = 28443
BACKEND_PORTS = [29001, 29002, 29003]
REQUEST = b"GET /small.txt HTTP/1.1\r\nHost: bench\r\n\r\n"
# Per client process: connections being opened at once (more overflows the listen backlog and
# measures SYN retries), and most connections one process holds (its descriptor limit is 20,000).
OPENING_AT_ONCE = 32
PER_PROCESS = 4000
WARM_UP = 512


def juggler_config() -> str:
    servers = ", ".join(f'"{HOST}:{p}"' for p in BACKEND_PORTS)
    # No admin listener (its port would clash with another Juggler's); older builds have none.
    admin = '[admin]\nlisten = "off"\n' if (REPO / "codegen/src/validate/admin.rs").exists() else ""
    return f"""# Written by bench/idle_rss.py.
[listen]
http = "{HOST}:{HTTP_PORT}"
https = "{HOST}:{HTTPS_PORT}"
tls = "on"
tls_cert = "{OUT}/certs/server.crt"
tls_key = "{OUT}/certs/server.key"

[limits]
client_idle_timeout = "300s"
max_client_connections = 19000

[proxy]
worker_threads = 2

{admin}
[upstreams.bench]
connections_per_server = 8
servers = [{servers}]
"""


ROUTES = """# Written by bench/idle_rss.py.
[[route]]
methods = "*"
paths = ["/*"]
upstream = "bench"
"""


def nginx_config() -> str:
    servers = "\n".join(f"        server {HOST}:{p};" for p in BACKEND_PORTS)
    return f"""# Written by bench/idle_rss.py: nginx as a plain keep-alive proxy, as `make bench` runs it.
worker_processes 2;
worker_rlimit_nofile 40000;
pid {OUT}/nginx/nginx.pid;
error_log {OUT}/nginx/error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 100000;
    upstream bench {{
{servers}
        keepalive 1024;
    }}
    server {{
        listen {HOST}:{HTTP_PORT} backlog=4096;
        listen {HOST}:{HTTPS_PORT} ssl backlog=4096;
        ssl_certificate {OUT}/certs/server.crt;
        ssl_certificate_key {OUT}/certs/server.key;
        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def find_binary(name: str) -> Path:
    for candidate in (REPO / "target" / "release" / name, REPO / "bin" / name):
        if candidate.exists():
            return candidate
    sys.exit(f"{name} not found: run `cargo build --release --bin {name}` (or `make all`)")


def prepare(skip_build: bool) -> Path:
    (OUT / "juggler_config").mkdir(parents=True, exist_ok=True)
    (OUT / "www").mkdir(exist_ok=True)
    (OUT / "nginx").mkdir(exist_ok=True)
    (OUT / "www" / "small.txt").write_text("hello world\n")
    (OUT / "juggler_config" / "load_balancer.toml").write_text(juggler_config())
    (OUT / "routes.toml").write_text(ROUTES)
    (OUT / "nginx" / "nginx.conf").write_text(nginx_config())
    if not (OUT / "certs" / "server.crt").exists():
        subprocess.run([str(find_binary("ssl_cert")), "--dir", str(OUT / "certs")], check=True)
    binary = OUT / "juggler"
    if skip_build:
        if not binary.exists():
            sys.exit(f"--skip-build but {binary} does not exist")
        return binary
    env = dict(os.environ, JUGGLER_CONFIG=str(OUT / "juggler_config"), JUGGLER_ROUTES=str(OUT / "routes.toml"))
    print("building Juggler (cargo build --release --bin juggler) ...", flush=True)
    subprocess.run(["cargo", "build", "--release", "--bin", "juggler"], cwd=REPO, env=env, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    shutil.copy2(target / "release" / "juggler", binary)
    described = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                               capture_output=True, text=True)
    (OUT / "juggler.commit").write_text(described.stdout.strip())
    return binary


def wait_listening(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {HOST}:{port} after {timeout}s")


def group_fds(pgid: int) -> int:
    total = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    total += len(os.listdir(f"/proc/{entry}/fd"))
            except OSError:
                continue
    return total


def group_rss_kib(pgid: int) -> int:
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != pgid:
                continue
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total


# ------------------------------------------------------------------------------------------------
# Client processes


async def _one(port: int, tls: ssl.SSLContext | None, gate: asyncio.Semaphore):
    async with gate:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port, ssl=tls, server_hostname="localhost" if tls else None), 20)
        writer.write(REQUEST)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await asyncio.wait_for(reader.readexactly(length), 20)
        return writer


async def _client(count: int, port: int, use_tls: bool, ready, release) -> None:
    tls = None
    if use_tls:
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        tls.set_alpn_protocols(["http/1.1"])
    gate = asyncio.Semaphore(OPENING_AT_ONCE)
    outcomes = await asyncio.gather(*(_one(port, tls, gate) for _ in range(count)), return_exceptions=True)
    writers = [o for o in outcomes if isinstance(o, asyncio.StreamWriter)]
    errors = [repr(o) for o in outcomes if not isinstance(o, asyncio.StreamWriter)]
    ready.put((len(writers), errors[:1], len(errors)))
    await asyncio.get_running_loop().run_in_executor(None, release.wait)
    for writer in writers:
        writer.transport.abort()


def _client_process(count, port, use_tls, ready, release) -> None:
    asyncio.run(_client(count, port, use_tls, ready, release))


def hold(count: int, port: int, use_tls: bool, on_held) -> tuple[int, int]:
    """Opens `count` idle connections from several processes, calls `on_held()` while they are
    all open, then closes them. Returns (held, failed)."""
    ctx = mp.get_context("fork")
    ready, release = ctx.Queue(), ctx.Event()
    shares = [PER_PROCESS] * (count // PER_PROCESS) + ([count % PER_PROCESS] if count % PER_PROCESS else [])
    procs = [ctx.Process(target=_client_process, args=(n, port, use_tls, ready, release)) for n in shares]
    for proc in procs:
        proc.start()
    held = failed = 0
    for _ in procs:
        ok, first_error, errors = ready.get(timeout=600)
        held += ok
        failed += errors
        if first_error:
            print(f"    {errors} connections failed, first: {first_error[0]}", flush=True)
    try:
        on_held()
    finally:
        release.set()
        for proc in procs:
            proc.join(timeout=30)
    return held, failed


# ------------------------------------------------------------------------------------------------
# Scenarios


def start(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as sink:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=OUT)


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    # nginx's workers outlive the master by a moment, still holding the listeners: wait for the
    # whole group to be gone, or the next balancer cannot bind.
    deadline = time.monotonic() + 10
    while group_fds(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def measure(name: str, argv: list[str], count: int, use_tls: bool, settle: float, late: float) -> dict:
    port = HTTPS_PORT if use_tls else HTTP_PORT
    log = OUT / f"{name}.{'tls' if use_tls else 'plain'}{count}.log"
    proc = start(argv, log)
    try:
        wait_listening(port)
        hold(WARM_UP, port, use_tls, lambda: time.sleep(0.2))
        time.sleep(late)
        before = group_rss_kib(proc.pid)
        readings = {}

        def read():
            time.sleep(settle)
            readings["settle"] = group_rss_kib(proc.pid)
            readings["fds"] = group_fds(proc.pid)
            time.sleep(max(0.0, late - settle))
            readings["late"] = group_rss_kib(proc.pid)

        held, failed = hold(count, port, use_tls, read)
    finally:
        if proc.poll() is not None:
            print(f"    {name} exited by itself ({proc.returncode}); see {log}", flush=True)
        stop(proc)
    row = {"target": name, "tls": use_tls, "conns": held, "failed": failed, "before_kib": before}
    row["fds"] = readings.pop("fds")
    for when, kib in readings.items():
        row[when] = (kib - before) * 1024 / held if held else float("nan")
    print(f"  {name:12} {'TLS  ' if use_tls else 'plain'} {held:6} conns ({failed} failed, "
          f"{row['fds']} fds open): RSS {before} KiB before; per connection {row['settle']:5.0f} B "
          f"after {settle:g}s, {row['late']:5.0f} B after {late:g}s", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", default="8000,16000", help="plain connection counts (comma-separated)")
    parser.add_argument("--tls-conns", default="8000", help="TLS connection counts; 0 for none")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before the first reading")
    parser.add_argument("--late", type=float, default=15.0, help="seconds before the second reading")
    parser.add_argument("--nginx", action="store_true", help="measure nginx the same way")
    parser.add_argument("--skip-build", action="store_true", help="reuse bench/out/idle_rss/juggler")
    parser.add_argument("--also", action="append", default=[], metavar="NAME=PATH",
                        help="another Juggler binary built with this config, e.g. an older commit's")
    args = parser.parse_args()

    binary = prepare(args.skip_build)
    plain = [int(n) for n in args.conns.split(",") if int(n) > 0]
    tls = [int(n) for n in args.tls_conns.split(",") if int(n) > 0]
    targets = [("juggler", [str(binary)])]
    for other in args.also:
        name, _, path = other.partition("=")
        targets.append((name, [str(Path(path).resolve())]))
    if args.nginx:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        targets.append(("nginx", [nginx, "-p", str(OUT / "nginx"), "-c", str(OUT / "nginx" / "nginx.conf"),
                                  "-g", "daemon off;"]))
    backend = find_binary("test_server")
    backends = [start([str(backend), "--port", str(p), "--root", str(OUT / "www")], OUT / f"backend{p}.log")
                for p in BACKEND_PORTS]
    rows = []
    try:
        for p in BACKEND_PORTS:
            wait_listening(p)
        commit = (OUT / "juggler.commit").read_text().strip() if (OUT / "juggler.commit").exists() else "?"
        print(f"idle RSS, juggler built from {commit}", flush=True)
        for _ in range(args.rounds):
            for count, use_tls in [(n, False) for n in plain] + [(n, True) for n in tls]:
                for name, argv in targets:
                    rows.append(measure(name, argv, count, use_tls, args.settle, args.late))
    finally:
        for proc in backends:
            stop(proc)
    print("\n| target | scenario | conns | B/conn after %gs | B/conn after %gs |" % (args.settle, args.late))
    print("|---|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['target']} | {'TLS' if row['tls'] else 'plain'} | {row['conns']} | "
              f"{row['settle']:.0f} | {row['late']:.0f} |")


if __name__ == "__main__":
    main()
