"""Protecting backends (issue 20): a backend that hangs, one that answers only 500, and one whose
right `n` is 6, behind Juggler, HAProxy and nginx.

    python3 bench/protect.py        (or BENCH_SCENARIOS=protect make bench)

Three studies, each balancer started fresh for every run, one at a time, all on 127.0.0.1:

  hung     three `bin/test_server`s, wrk -c16; a third of the way through the run backend 1 is
           SIGSTOPped, two thirds through SIGCONTed. Reported: req/s, p99, non-2xx + socket
           errors, and req/s while it was stopped (answers counted per 100 ms by the wrk script).
  500      the same three, backend 1 started with `--fail-rate 1.0` (every answer 500): the share
           of 5xx answers each balancer lets through, and the share backend 1 still got.
  adaptive one `test_server --capacity 6 --delay 5ms` (5 ms per answer up to 6 at once, 20 ms
           more per request beyond), wrk -c32: Juggler's adaptive limit { min = 1, max = 32 }
           against fixed n = 6 and n = 32, HAProxy maxconn 6 and 32 (it queues the rest), and
           nginx without a bound (open-source nginx has no queue: max_conns would answer 502);
           every target gets 3 s of the same load, unmeasured, first (the adaptive limit's ramp
           from min = 1 is not what the issue's target is about).

Protection as each balancer offers it, set alike where they can be:
  Juggler  health_check every 100 ms (timeout 500 ms, fails 2, passes 2), slow_start 2 s,
           eject_after_5xx 5, 8 connections per backend, round robin
  HAProxy  check inter 100ms fall 2 rise 2 (timeout check 500ms), slowstart 2s, maxconn 8,
           observe layer7 error-limit 5 on-error mark-down, roundrobin
  nginx    max_fails=2 fail_timeout=10s, max_conns=8; proxy_read_timeout 1s and
           proxy_next_upstream error timeout http_500, so that a hung or failing backend counts as
           failed at all (open-source nginx has passive checks only, and no slow start)
Settings: BENCH_DURATION (6; a run lasts this long), BENCH_ROUNDS (2), BENCH_SKIP_BUILD=1.
"""

import json
import os
import shutil
import signal
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import study  # noqa: E402
from procs import Processes  # noqa: E402
from study import HOST  # noqa: E402
from targets import _nginx_http_common, _nginx_main  # noqa: E402

BACKEND_PORTS = [19301, 19302, 19303]
WORKERS = 2
POOL = 8
CONNS = 16
ADAPTIVE_CONNS = 32
CAPACITY_ARGS = ["--capacity", "6", "--delay", "5ms"]
# Seconds of the same load before each measured adaptive run: the target is where the
# adaptive limit settles, not its ramp from min = 1 (about a second and a half), which the fixed
# limits do not have.
ADAPTIVE_WARM_UP = 3
PATH = "/test.txt"

# Protection shared by the three balancers of the hung and 500 studies (see the module doc).
CHECK_INTERVAL_MS, CHECK_TIMEOUT_MS, CHECK_FAILS, CHECK_PASSES = 100, 500, 2, 2
SLOW_START_S = 2
EJECT_AFTER_5XX = 5

# Targets of the hung and 500 studies, and of the adaptive one: name → port.
GUARDED = {"juggler": 19311, "haproxy": 19314, "nginx": 19313}
ADAPTIVE = {"juggler-adaptive": 19321, "juggler-n6": 19322, "juggler-n32": 19323,
            "haproxy-maxconn6": 19324, "haproxy-maxconn32": 19325, "nginx-unbounded": 19326}
# Connections per server of each Juggler build of the adaptive study.
JUGGLER_POOLS = {"juggler-adaptive": "{ min = 1, max = 32 }", "juggler-n6": "6", "juggler-n32": "32"}


def admin_port(port: int) -> int:
    """Where a Juggler of the adaptive study answers /status.json (its limit is read from there)."""
    return port + 100


def juggler_config(upstream: str, port: int, pool: str, servers: list[int], protection: str = "",
                   admin: bool = False) -> tuple[str, str]:
    listed = ", ".join(f'"{HOST}:{p}"' for p in servers)
    keys = f'balance = "round_robin"\nconnections_per_server = {pool}\nservers = [{listed}]\n{protection}'
    return study.juggler_config("bench/protect.py", port, upstream, keys, WORKERS,
                                admin=f"{HOST}:{admin_port(port)}" if admin else "off")


def build_jugglers(out: Path) -> dict[str, Path]:
    """One build per config: the config is compiled in. The upstream's name tells them apart in
    `--print-routes`."""
    protection = (
        f'health_check = {{ path = "{PATH}", interval = "{CHECK_INTERVAL_MS}ms", timeout = "{CHECK_TIMEOUT_MS}ms", '
        f'fails = {CHECK_FAILS}, passes = {CHECK_PASSES} }}\n'
        f'slow_start = "{SLOW_START_S}s"\neject_after_5xx = {EJECT_AFTER_5XX}\n'
    )
    configs = {"juggler": ("protect", juggler_config("protect", GUARDED["juggler"], str(POOL), BACKEND_PORTS,
                                                     protection))}
    for name, pool in JUGGLER_POOLS.items():
        upstream = name.removeprefix("juggler-")
        configs[name] = (upstream, juggler_config(upstream, ADAPTIVE[name], pool, BACKEND_PORTS[:1], admin=True))
    return {name: study.build_juggler(name, lb, routes, out, f"upstream {upstream}:")
            for name, (upstream, (lb, routes)) in configs.items()}


def nginx_conf(port: int, servers: str, proxy: str) -> Callable[[Path], str]:
    def conf(workdir: Path) -> str:
        return f"""{_nginx_main(workdir, WORKERS)}http {{
{_nginx_http_common(workdir)}    upstream protect {{
        zone protect 64k;
{servers}        keepalive {POOL};
        keepalive_requests 1000000;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            proxy_pass http://protect;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{proxy}        }}
    }}
}}
"""
    return conf


def guarded_nginx() -> Callable[[Path], str]:
    servers = "".join(f"        server {HOST}:{p} max_conns={POOL} max_fails={CHECK_FAILS} fail_timeout=10s;\n"
                      for p in BACKEND_PORTS)
    proxy = "            proxy_read_timeout 1s;\n            proxy_next_upstream error timeout http_500;\n"
    return nginx_conf(GUARDED["nginx"], servers, proxy)


def haproxy_cfg(port: int, servers: str, backend_lines: str = "") -> str:
    return study.haproxy_cfg("protect", port, "roundrobin", servers, backend_lines, WORKERS)


def guarded_haproxy() -> str:
    servers = "".join(
        f"    server s{i + 1} {HOST}:{p} maxconn {POOL} check inter {CHECK_INTERVAL_MS}ms fall {CHECK_FAILS} "
        f"rise {CHECK_PASSES} slowstart {SLOW_START_S}s observe layer7 error-limit {EJECT_AFTER_5XX} "
        "on-error mark-down\n"
        for i, p in enumerate(BACKEND_PORTS))
    return haproxy_cfg(GUARDED["haproxy"], servers,
                       f"    option httpchk GET {PATH}\n    timeout check {CHECK_TIMEOUT_MS}ms\n")


def start(procs: Processes, name: str, port: int, out: Path, binaries: dict[str, Path]) -> None:
    if name.startswith("juggler"):
        study.start_juggler(procs, name, binaries[name], port, out)
    elif name == "haproxy":
        study.start_haproxy(procs, name, guarded_haproxy(), port, out)
    elif name == "nginx":
        study.start_nginx(procs, name, guarded_nginx(), port, out)
    elif name.startswith("haproxy-maxconn"):
        maxconn = name.removeprefix("haproxy-maxconn")
        study.start_haproxy(procs, name, haproxy_cfg(port, f"    server s1 {HOST}:{BACKEND_PORTS[0]} maxconn {maxconn}\n"),
                            port, out)
    else:  # nginx-unbounded
        study.start_nginx(procs, name, nginx_conf(port, f"        server {HOST}:{BACKEND_PORTS[0]};\n", ""), port, out)


def signal_backend(procs: Processes, sig: int) -> None:
    proc = procs.running.get("backend1")
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, sig)


def measure(procs: Processes, name: str, port: int, out: Path, binaries: dict[str, Path], study_name: str,
            duration: int, round_number: int, conns: int, events=(), warm_up: int = 0) -> study.WrkRun:
    start(procs, name, port, out, binaries)
    try:
        # Pools filled and first checks passed, so start-up is not what is measured.
        time.sleep(1.0)
        if warm_up:
            # The same load, unmeasured, for every target of the study alike.
            study.run_wrk(port, PATH, warm_up, conns, BACKEND_PORTS,
                          out / "logs" / f"{study_name}.{name}.{round_number}.warm-up.log")
        return study.run_wrk(port, PATH, duration, conns, BACKEND_PORTS,
                             out / "logs" / f"{study_name}.{name}.{round_number}.log", events)
    finally:
        procs.stop([name])


def hung_row(run: study.WrkRun) -> dict:
    result = run.result
    stopped = run.rate_between(run.marks[0], run.marks[1]) if len(run.marks) == 2 else 0.0
    return {"rps": result.rps, "p50": result.p50_ms, "p99": result.p99_ms,
            "failed": result.non_2xx + result.errors, "stopped_rps": stopped,
            "share1": run.share("server 1"), "conns": run.most_conns, "problem": result.problem}


def failing_row(run: study.WrkRun) -> dict:
    result = run.result
    return {"rps": result.rps, "p99": result.p99_ms, "share5xx": run.share_5xx(),
            "failed": result.non_2xx + result.errors, "conns": run.most_conns, "problem": result.problem}


def adaptive_row(run: study.WrkRun, limits: list[int]) -> dict:
    result = run.result
    return {"rps": result.rps, "p50": result.p50_ms, "p99": result.p99_ms,
            "failed": result.non_2xx + result.errors, "conns": run.most_conns,
            "limit": limits[-1] if limits else None, "problem": result.problem}


def read_limit(port: int, limits: list[int]) -> None:
    """Appends the backend's usable slots as Juggler's /status.json shows them now."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{admin_port(port)}/status.json", timeout=2) as answer:
            report = json.load(answer)
        limits.append(report["upstreams"][0]["backends"][0]["limit"])
    except (OSError, ValueError, KeyError, IndexError):
        pass


def med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def notes(results: dict[str, list[dict]]) -> list[str]:
    found = sorted({f"- {name}: {r['problem']}" for name, rows in results.items() for r in rows if r["problem"]})
    return [""] + found if found else []


def tables(hung: dict, failing: dict, adaptive: dict, duration: int, rounds: int) -> str:
    third = duration / 3
    lines = [
        f"### Protecting backends: a hung backend, a failing one, a capacity-limited one ({rounds} × {duration} s, "
        "medians)",
        "",
        f"**Hung backend**: three test_servers, wrk -t2 -c{CONNS}; backend 1 SIGSTOPped from {third:g} s to "
        f"{2 * third:g} s. *Stopped req/s*: answers per second while it was stopped.",
        "",
        "| target | req/s | p50 ms | p99 ms | non-2xx + errors | stopped req/s | share backend 1 "
        "| most backend conns |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, rows in hung.items():
        lines.append(f"| {name} | {med(rows, 'rps'):,.0f} | {med(rows, 'p50'):.2f} | {med(rows, 'p99'):.2f} | "
                     f"{int(med(rows, 'failed'))} | {med(rows, 'stopped_rps'):,.0f} | {med(rows, 'share1'):.1f} % | "
                     + " / ".join(str(max(r["conns"][i] for r in rows)) for i in range(3)) + " |")
    lines += notes(hung) + [
        "",
        f"**500-only backend**: backend 1 answers every request `500` (`--fail-rate 1.0`), wrk -t2 -c{CONNS}.",
        "",
        "| target | req/s | p99 ms | share of 5xx answers | non-2xx + errors |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rows in failing.items():
        lines.append(f"| {name} | {med(rows, 'rps'):,.0f} | {med(rows, 'p99'):.2f} | {med(rows, 'share5xx'):.2f} % | "
                     f"{int(med(rows, 'failed'))} |")
    lines += notes(failing) + [
        "",
        f"**Adaptive n**: one `test_server {' '.join(CAPACITY_ARGS)}`, wrk -t2 -c{ADAPTIVE_CONNS}.",
        "",
        "| target | req/s | p50 ms | p99 ms | non-2xx + errors | most backend conns | Juggler's limit at the end |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, rows in adaptive.items():
        limits = " / ".join(str(r["limit"]) for r in rows if r["limit"] is not None) or "–"
        lines.append(f"| {name} | {med(rows, 'rps'):,.0f} | {med(rows, 'p50'):.2f} | {med(rows, 'p99'):.2f} | "
                     f"{int(med(rows, 'failed'))} | {max(r['conns'][0] for r in rows)} | {limits} |")
    fixed = {name: med(adaptive[name], "p99") for name in ("juggler-n6", "juggler-n32") if adaptive.get(name)}
    if fixed and adaptive.get("juggler-adaptive"):
        best = min(fixed.values())
        lines += ["", f"p99 ÷ the best fixed n's ({best:.2f} ms): juggler-adaptive "
                      f"{med(adaptive['juggler-adaptive'], 'p99') / best:.2f}×, "
                      + ", ".join(f"{name} {p99 / best:.2f}×" for name, p99 in fixed.items())
                      + " (the issue's target: adaptive within 1.5×, where fixed 32 is not)."]
    lines += notes(adaptive)
    return "\n".join(lines)


def run(out_root: Path, duration: int, rounds: int) -> str:
    """Builds the Juggler variants, runs every study `rounds` times; returns the tables."""
    out = out_root / "protect"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    binaries = build_jugglers(out)

    def available(names):
        return [n for n in names if n.startswith("juggler") or shutil.which(n.split("-")[0])]

    hung = {name: [] for name in available(GUARDED)}
    failing = {name: [] for name in available(GUARDED)}
    adaptive = {name: [] for name in available(ADAPTIVE)}
    procs = Processes(out / "pids")
    stop_at, cont_at = duration / 3, 2 * duration / 3
    try:
        for round_number in range(1, rounds + 1):
            study.start_test_servers(procs, out, BACKEND_PORTS, [[], [], []])
            for name in hung:
                events = [(stop_at, lambda: signal_backend(procs, signal.SIGSTOP)),
                          (cont_at, lambda: signal_backend(procs, signal.SIGCONT))]
                try:
                    run_ = measure(procs, name, GUARDED[name], out, binaries, "hung", duration, round_number,
                                   CONNS, events)
                finally:
                    signal_backend(procs, signal.SIGCONT)
                hung[name].append(hung_row(run_))
                report_line("hung", round_number, name, hung[name][-1])
            procs.stop(["backend1", "backend2", "backend3"])

            study.start_test_servers(procs, out, BACKEND_PORTS, [["--fail-rate", "1.0"], [], []])
            for name in failing:
                run_ = measure(procs, name, GUARDED[name], out, binaries, "500", duration, round_number, CONNS)
                failing[name].append(failing_row(run_))
                report_line("500", round_number, name, failing[name][-1])
            procs.stop(["backend1", "backend2", "backend3"])

            study.start_test_servers(procs, out, BACKEND_PORTS[:1], [CAPACITY_ARGS])
            for name in adaptive:
                limits: list[int] = []
                events = [(duration - 0.5, lambda: read_limit(ADAPTIVE[name], limits))] \
                    if name.startswith("juggler") else []
                run_ = measure(procs, name, ADAPTIVE[name], out, binaries, "adaptive", duration, round_number,
                               ADAPTIVE_CONNS, events, warm_up=ADAPTIVE_WARM_UP)
                adaptive[name].append(adaptive_row(run_, limits))
                report_line("adaptive", round_number, name, adaptive[name][-1])
            procs.stop(["backend1"])
    finally:
        signal_backend(procs, signal.SIGCONT)
        procs.stop_all()
    text = tables(hung, failing, adaptive, duration, rounds)
    (out / "results.md").write_text(text + "\n")
    return text


def report_line(study_name: str, round_number: int, name: str, row: dict) -> None:
    shown = "  ".join(f"{k} {v:,.2f}" if isinstance(v, float) else f"{k} {v}"
                      for k, v in row.items() if k != "problem")
    print(f"  {study_name} round {round_number} {name:18} {shown}"
          + (f"  ({row['problem']})" if row["problem"] else ""), flush=True)


if __name__ == "__main__":
    sys.exit(study.main(run, duration=6, rounds=2))
