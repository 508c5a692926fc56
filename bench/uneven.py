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
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import study  # noqa: E402
from procs import Processes  # noqa: E402
from study import HOST  # noqa: E402

BACKEND_PORTS = [19201, 19202, 19203]
DELAYS = ["20ms", "1ms", "1ms"]  # backend 1 is the slow one: 20x
POOL = 8
WORKERS = 2
PORTS = {"juggler-rr": 19211, "juggler-lq": 19212, "nginx": 19213, "haproxy": 19214}

def juggler_config(balance: str, port: int) -> tuple[str, str]:
    servers = ", ".join(f'"{HOST}:{p}"' for p in BACKEND_PORTS)
    keys = f'balance = "{balance}"\nconnections_per_server = {POOL}\nservers = [{servers}]\n'
    return study.juggler_config("bench/uneven.py", port, "uneven", keys, WORKERS)


def build_juggler(name: str, balance: str, out: Path) -> Path:
    lb, routes = juggler_config(balance, PORTS[name])
    return study.build_juggler(name, lb, routes, out, f"balance {balance}")


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
    return study.haproxy_cfg("uneven", PORTS["haproxy"], "leastconn", servers, workers=WORKERS)


def start(procs: Processes, name: str, out: Path, binaries: dict[str, Path]):
    if name.startswith("juggler"):
        study.start_juggler(procs, name, binaries[name], PORTS[name], out)
    elif name == "nginx":
        study.start_nginx(procs, name, nginx_conf, PORTS[name], out)
    else:
        study.start_haproxy(procs, name, haproxy_conf(), PORTS[name], out)


def run_round(name: str, duration: int, conns: int, out: Path, round_number: int) -> dict:
    run = study.run_wrk(PORTS[name], "/test.txt", duration, conns, BACKEND_PORTS,
                        out / "logs" / f"uneven.{name}.{round_number}.log")
    result = run.result
    total = sum(n for key, n in run.answered.items() if key.startswith("server")) or 1
    share = [100.0 * run.answered.get(f"server {i}", 0) / total for i in (1, 2, 3)]
    failed = result.non_2xx + result.errors
    return {"rps": result.rps, "ok": result.rps - failed / duration, "p50": result.p50_ms,
            "p99": result.p99_ms, "non2xx": failed, "share": share, "conns": run.most_conns,
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
    binaries = {"juggler-rr": build_juggler("juggler-rr", "round_robin", out),
                "juggler-lq": build_juggler("juggler-lq", "least_queued", out)}
    names = [n for n in PORTS if n.startswith("juggler") or shutil.which(n)]
    procs = Processes(out / "pids")
    results: dict[str, list[dict]] = {name: [] for name in names}
    try:
        study.start_test_servers(procs, out, BACKEND_PORTS, [["--delay", delay] for delay in DELAYS])
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


if __name__ == "__main__":
    sys.exit(study.main(run, duration=5, rounds=3))
