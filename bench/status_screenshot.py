#!/usr/bin/env python3
"""Screenshot of Juggler's status page under load (issue 13), the last step of `make bench`.

Starts the release `bin/juggler` (the compiled-in config: HTTP on :8080, admin on 127.0.0.1:9901,
upstream `default` over localhost:6901-6903) with three `bin/test_server`s, the second one slow
(1-15 ms a request, so its queue fills), loads it with wrk (or Python clients if wrk is missing)
at two rates in turn so the sparklines show a step, drains localhost:6903 partway through when the
admin token file exists, and takes a 1280x800 headless-Chromium screenshot of /status while the
load runs. It also prints `bin/juggler status` and keeps a scrape of /metrics.

Output: $BENCH_OUT/status.png (default bench/out; git ignores it) and status_shot/ beside it
(logs, metrics.txt); docs/status.png is one such shot, committed by hand. Settings:
STATUS_SHOT_SECONDS of load in all (65: the sparklines show a full minute),
STATUS_SHOT_SKIP_BUILD=1 to use bin/ as it is, STATUS_SHOT_TOKEN_FILE (juggler_config/admin.token).
Every process it starts runs in its own process group and is killed on every way out.
"""

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("BENCH_OUT", ROOT / "bench" / "out"))
SECONDS = int(os.environ.get("STATUS_SHOT_SECONDS", "65"))
TOKEN_FILE = Path(os.environ.get("STATUS_SHOT_TOKEN_FILE", ROOT / "juggler_config" / "admin.token"))
HTTP = ("127.0.0.1", 8080)
ADMIN = ("127.0.0.1", 9901)
BACKENDS = [
    (6901, []),
    (6902, ["--delay", "1ms..15ms"]),
    (6903, ["--delay", "0ms..3ms", "--fail-rate", "0.005"]),
]
DRAINED = "localhost:6903"

started: list[subprocess.Popen] = []


def start(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    started.append(proc)
    return proc


def stop_all() -> None:
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    for proc in started:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    started.clear()


def port_free(address: tuple[str, int]) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(address) != 0


def wait_listening(address: tuple[str, int], what: str, limit: float = 10) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not port_free(address):
            return
        time.sleep(0.05)
    raise SystemExit(f"status_screenshot: {what} did not listen on {address[0]}:{address[1]} within {limit} s")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    print("installing: chromium")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)
    return "chromium"


def python_load(connections: int, seconds: float) -> None:
    """wrk's stand-in: `connections` keep-alive clients GETting /test.txt for `seconds`."""
    deadline = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection(*HTTP, timeout=15)
        while time.monotonic() < deadline:
            try:
                conn.request("GET", "/test.txt")
                conn.getresponse().read()
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection(*HTTP, timeout=15)
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def load(connections: int, seconds: int, log: Path) -> subprocess.Popen | threading.Thread:
    if shutil.which("wrk"):
        return start(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s",
                      f"http://{HTTP[0]}:{HTTP[1]}/test.txt"], log)
    thread = threading.Thread(target=python_load, args=(connections, seconds), daemon=True)
    thread.start()
    return thread


def admin_post(path: str, token: str) -> str:
    request = urllib.request.Request(f"http://{ADMIN[0]}:{ADMIN[1]}{path}", method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=3) as answer:
        return f"{answer.status}"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    logs = OUT / "status_shot"
    logs.mkdir(exist_ok=True)
    browser = chromium()
    if os.environ.get("STATUS_SHOT_SKIP_BUILD") != "1":
        subprocess.run(["make", "-s", "all"], cwd=ROOT, check=True)
    busy = [f"{host}:{port}" for host, port in [HTTP, ADMIN] + [("127.0.0.1", p) for p, _ in BACKENDS]
            if not port_free((host, port))]
    if busy:
        print(f"status_screenshot: {', '.join(busy)} already in use (a `make run`?); no screenshot",
              file=sys.stderr)
        return 1

    for port, extra in BACKENDS:
        start(["./bin/test_server", "--port", str(port), "--root", f"./test_server_root_{port - 6900}",
               *extra], logs / f"test_server_{port}.log")
        wait_listening(("127.0.0.1", port), f"test_server {port}")
    start(["./bin/juggler"], logs / "juggler.log")
    wait_listening(HTTP, "juggler")
    wait_listening(ADMIN, "juggler's admin listener")

    # Two rates in turn, then the screenshot while the second still runs.
    first = SECONDS // 2
    load(32, first, logs / "wrk1.log")
    time.sleep(first * 0.6)
    token = TOKEN_FILE.read_text().strip() if TOKEN_FILE.exists() else None
    if token:
        print(f"drain {DRAINED}: {admin_post(f'/backends/{DRAINED}/drain', token)}")
    else:
        print(f"no token file at {TOKEN_FILE}: no backend drained in the shot")
    time.sleep(first * 0.4)
    second = SECONDS - first
    load(128, second + 5, logs / "wrk2.log")
    time.sleep(second)

    shot = OUT / "status.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--force-device-scale-factor=1", f"--user-data-dir={logs / 'chromium-profile'}",
                    "--window-size=1280,800", "--virtual-time-budget=2500", f"--screenshot={shot}",
                    f"http://{ADMIN[0]}:{ADMIN[1]}/status"],
                   check=True, timeout=60, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with urllib.request.urlopen(f"http://{ADMIN[0]}:{ADMIN[1]}/metrics", timeout=3) as answer:
        (logs / "metrics.txt").write_bytes(answer.read())
    status = subprocess.run(["./bin/juggler", "status"], cwd=ROOT, capture_output=True, text=True,
                            timeout=10)
    print(status.stdout + status.stderr, end="")
    if token:
        print(f"undrain {DRAINED}: {admin_post(f'/backends/{DRAINED}/undrain', token)}")
    print(f"status page screenshot: {shot}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sys.exit(main())
    finally:
        stop_all()
