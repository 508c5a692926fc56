"""Uneven backends (issue 15, part 4): three backends, one answering 20x slower than the others.

    python3 bench/uneven.py        (or BENCH_SCENARIOS=uneven make bench)

Backends: three `bin/test_server`s, two with `--delay 1ms`, one with `--delay 20ms`, serving
test_server_root_{1,2,3} (each answers `server N`, so a wrk script can count who answered). In
front of them, one at a time and started fresh, each holding at most POOL connections per backend:

  juggler-rr  Juggler, balance = "round_robin", connections_per_server = POOL
  juggler-lq  Juggler, balance = "least_queued", connections_per_server = POOL
  nginx       least_conn, max_conns=POOL, keepalive (open-source nginx has no queue: a full
              upstream answers 502, counted as non-2xx)
  haproxy     balance leastconn, maxconn POOL per server (it queues), http-reuse always

Load: `wrk -t2 -cCONNS -dDURATION --latency` per target and round; the table has req/s, 2xx/s, p50,
p99, non-2xx and each backend's share of the answers (medians over the rounds), and the most
established connections seen on each backend port (`ss`, every 250 ms).
Settings: BENCH_DURATION (5), BENCH_ROUNDS (3), BENCH_UNEVEN_CONNS (64), BENCH_SKIP_BUILD=1.
"""

import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import parse_wrk  # noqa: E402
from procs import Processes, wait_listening  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
BACKEND_PORTS = [19201, 19202, 19203]
DELAYS = ["20ms", "1ms", "1ms"]  # backend 1 is the slow one: 20x
POOL = 8
WORKERS = 2
PORTS = {"juggler-rr": 19211, "juggler-lq": 19212, "nginx": 19213, "haproxy": 19214}

COUNT_ANSWERS = """
-- Counts which backend answered (its body is `server N`), per thread, summed in done(); `counts`
-- is a global so that done() can read each thread's copy with thread:get().
counts = {}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {} end
function response(status, headers, body)
  local key = body:match("server %d") or ("status " .. status)
  counts[key] = (counts[key] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local c = thread:get("counts")
    for k, v in pairs(c) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do io.write(string.format("answered %s %d\\n", k, v)) end
end
"""


def juggler_config(balance: str, port: int) -> tuple[str, str]:
    servers = ", ".join(f'"{HOST}:{p}"' for p in BACKEND_PORTS)
    lb = f"""# Written by bench/uneven.py.
[listen]
http = "{HOST}:{port}"
https = "off"
tls = "off"

[queue]
max_queued_per_server = 4096

[proxy]
worker_threads = {WORKERS}

[upstreams.uneven]
balance = "{balance}"
connections_per_server = {POOL}
servers = [{servers}]
"""
    routes = '[[route]]\nmethods = "*"\npaths = ["/*"]\nupstream = "uneven"\n'
    return lb, routes


def build_juggler(name: str, balance: str, out: Path) -> Path:
    binary = out / name
    if os.environ.get("BENCH_SKIP_BUILD") == "1" and binary.exists():
        return binary
    config = out / f"{name}-config"
    config.mkdir(parents=True, exist_ok=True)
    lb, routes = juggler_config(balance, PORTS[name])
    (config / "load_balancer.toml").write_text(lb)
    (config / "routes.toml").write_text(routes)
    env = dict(os.environ, JUGGLER_CONFIG=str(config), JUGGLER_ROUTES=str(config / "routes.toml"))
    log = out / f"{name}-build.log"
    print(f"building {name} (cargo build --release --bin juggler; log {log}) ...", flush=True)
    with open(log, "wb") as sink:
        subprocess.run(["cargo", "build", "--release", "--bin", "juggler"], cwd=REPO, env=env,
                       stdout=sink, stderr=sink, check=True)
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    shutil.copy2(target_dir / "release" / "juggler", binary)
    shown = subprocess.run([str(binary), "--print-routes"], capture_output=True, text=True, check=True)
    if f"balance {balance}" not in shown.stdout:
        raise RuntimeError(f"{binary} was not built with balance {balance}:\n{shown.stdout}")
    return binary


def nginx_conf(workdir: Path) -> str:
    servers = "".join(f"        server {HOST}:{p} max_conns={POOL};\n" for p in BACKEND_PORTS)
    return f"""worker_processes {WORKERS};
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    keepalive_requests 1000000;
    upstream uneven {{
        least_conn;
        zone uneven 64k;
{servers}        keepalive {POOL};
        keepalive_requests 1000000;
    }}
    server {{
        listen {HOST}:{PORTS["nginx"]} backlog=4096;
        location / {{
            proxy_pass http://uneven;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def haproxy_conf() -> str:
    servers = "".join(f"    server s{i + 1} {HOST}:{p} maxconn {POOL}\n" for i, p in enumerate(BACKEND_PORTS))
    return f"""global
    nbthread {WORKERS}
    maxconn 9000

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 60s
    timeout http-keep-alive 300s
    timeout queue 10s

frontend uneven
    bind {HOST}:{PORTS["haproxy"]} backlog 4096
    default_backend uneven

backend uneven
    balance leastconn
{servers}"""


def start(procs: Processes, name: str, out: Path, binaries: dict[str, Path]):
    log = out / "logs" / f"uneven.{name}.log"
    if name.startswith("juggler"):
        env = dict(os.environ, RUST_LOG="warn")
        proc = procs.start(name, [str(binaries[name]), "--control-socket", str(out / f"{name}.sock")], log, env)
    elif name == "nginx":
        workdir = out / "nginx-uneven"
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "nginx.conf").write_text(nginx_conf(workdir))
        proc = procs.start(name, ["nginx", "-p", str(workdir), "-c", str(workdir / "nginx.conf")], log)
    else:
        (out / "haproxy-uneven.cfg").write_text(haproxy_conf())
        proc = procs.start(name, ["haproxy", "-db", "-f", str(out / "haproxy-uneven.cfg")], log)
    wait_listening(PORTS[name], proc, log)


def backend_connections() -> list[int]:
    """Established connections to each backend port right now (only one balancer runs at a time,
    and nothing else talks to the backends)."""
    shown = subprocess.run(["ss", "-Htn", "state", "established"], capture_output=True, text=True)
    counts = [0, 0, 0]
    for line in shown.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            for i, port in enumerate(BACKEND_PORTS):
                if fields[3].endswith(f":{port}"):
                    counts[i] += 1
    return counts


def run_round(name: str, duration: int, conns: int, out: Path, round_number: int) -> dict:
    script = out / "count_answers.lua"
    script.write_text(COUNT_ANSWERS)
    argv = ["wrk", "-t2", f"-c{conns}", f"-d{duration}s", "--latency", "-s", str(script),
            f"http://{HOST}:{PORTS[name]}/test.txt"]
    most = [0, 0, 0]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.25):
            most[:] = [max(a, b) for a, b in zip(most, backend_connections())]

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    finally:
        stop.set()
        sampler.join()
    output = done.stdout + done.stderr
    (out / "logs" / f"uneven.{name}.{round_number}.log").write_text(output)
    result = parse_wrk(output)
    answered = {key: int(n) for key, n in re.findall(r"^answered (.+) (\d+)$", output, re.M)}
    total = sum(n for key, n in answered.items() if key.startswith("server")) or 1
    share = [100.0 * answered.get(f"server {i}", 0) / total for i in (1, 2, 3)]
    failed = result.non_2xx + result.errors
    return {"rps": result.rps, "ok": result.rps - failed / duration, "p50": result.p50_ms,
            "p99": result.p99_ms, "non2xx": failed, "share": share, "conns": most,
            "problem": result.problem}


def table(results: dict[str, list[dict]], duration: int, rounds: int, conns: int) -> str:
    lines = [
        f"### Uneven backends: one of three answers 20x slower ({DELAYS[0]} vs {DELAYS[1]}), "
        f"{conns} wrk connections, {POOL} connections per backend, {rounds} × {duration} s (medians)",
        "",
        "| target | req/s | 2xx/s | p50 ms | p99 ms | non-2xx + errors | share slow / fast / fast "
        "| most backend conns |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, rows in results.items():
        med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
        share = " / ".join(f"{statistics.median(r['share'][i] for r in rows):.1f} %" for i in range(3))
        conns = " / ".join(str(max(r["conns"][i] for r in rows)) for i in range(3))
        lines.append(f"| {name} | {med('rps'):,.0f} | {med('ok'):,.0f} | {med('p50'):.2f} | {med('p99'):.2f} | "
                     f"{int(med('non2xx'))} | {share} | {conns} |")
    return "\n".join(lines)


def run(out_root: Path, duration: int, rounds: int) -> str:
    """Builds both Juggler variants, runs every target `rounds` times; returns the table."""
    conns = int(os.environ.get("BENCH_UNEVEN_CONNS", "64"))
    out = out_root / "uneven"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    test_server = REPO / "bin" / "test_server"
    if not test_server.exists():
        subprocess.run(["make", "all"], cwd=REPO, check=True)
    binaries = {"juggler-rr": build_juggler("juggler-rr", "round_robin", out),
                "juggler-lq": build_juggler("juggler-lq", "least_queued", out)}
    names = [n for n in PORTS if n.startswith("juggler") or shutil.which(n)]
    procs = Processes(out / "pids")
    results: dict[str, list[dict]] = {name: [] for name in names}
    try:
        for i, (port, delay) in enumerate(zip(BACKEND_PORTS, DELAYS), start=1):
            log = out / "logs" / f"uneven.backend{i}.log"
            proc = procs.start(f"backend{i}", [str(test_server), "--port", str(port), "--root",
                                               str(REPO / f"test_server_root_{i}"), "--delay", delay], log)
            wait_listening(port, proc, log)
        for round_number in range(1, rounds + 1):
            for name in names:
                start(procs, name, out, binaries)
                time.sleep(0.5)  # pools filled
                row = run_round(name, duration, conns, out, round_number)
                procs.stop([name])
                results[name].append(row)
                print(f"  round {round_number} {name:11} {row['rps']:>9,.0f} req/s  p50 {row['p50']:7.2f} ms  "
                      f"p99 {row['p99']:7.2f} ms  non-2xx {row['non2xx']}  share "
                      + " / ".join(f"{s:.1f}%" for s in row["share"])
                      + f"  backend conns {row['conns']}"
                      + (f"  ({row['problem']})" if row["problem"] else ""), flush=True)
    finally:
        procs.stop_all()
    text = table(results, duration, rounds, conns)
    (out / "results.md").write_text(text + "\n")
    return text


def main() -> int:
    os.chdir(REPO)
    duration = int(os.environ.get("BENCH_DURATION", "5"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    out_root = Path(os.environ.get("BENCH_OUT", REPO / "bench" / "out")).resolve()
    print("\n" + run(out_root, duration, rounds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
