"""`make bench`: Juggler against nginx and HAProxy in front of the same three nginx backends.

Run through bench/run.sh (which installs the tools). Settings come from the environment:
  BENCH_DURATION  seconds per round (default 5)
  BENCH_ROUNDS    rounds per scenario; each round loads every target once, in turn (default 3)
  BENCH_SCENARIOS comma-separated scenario keys to run (default: all; see SCENARIOS)
  BENCH_TARGETS   comma-separated target names to run (default: all; see targets.all_targets)
  BENCH_IDLE_CONNS idle keep-alive connections in the idle scenario (default 8000)
  BENCH_UPGRADE_DURATION seconds per run of the upgrade scenario (default 20; it ignores BENCH_DURATION)
  BENCH_SKIP_BUILD=1 reuse bench/out/juggler instead of building it
Output: one table per scenario on stdout, the same tables in bench/out/results.md, and every
tool's raw output under bench/out/logs/.
"""

import http.client
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import idle
import load
import report
import targets as sides
import uneven
import upgrade
from procs import Processes

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"


@dataclass
class Scenario:
    key: str
    title: str
    tool: str  # "wrk", "h2load", "idle" or "upgrade"
    path: str = "/small.txt"
    conns: int = 64
    streams: int = 1  # h2load: concurrent streams per connection
    https: bool = False
    script: Path | None = None


SCENARIOS = [
    Scenario("get12-c64", "12 B GET, 64 connections (wrk, HTTP/1.1)", "wrk"),
    Scenario("get12-c512", "12 B GET, 512 connections (wrk, HTTP/1.1)", "wrk", conns=512),
    Scenario("get64k-c64", "64 KiB GET, 64 connections (wrk, HTTP/1.1)", "wrk", path="/64k.bin"),
    Scenario("post16k-c64", "16 KiB POST, 64 connections (wrk, HTTP/1.1)", "wrk", path="/post",
             script=BENCH / "post16k.lua"),
    Scenario("https-h1-c64", "HTTPS, HTTP/1.1 keep-alive, 12 B GET, 64 connections (wrk)", "wrk", https=True),
    Scenario("https-h2", "HTTPS, HTTP/2, 12 B GET, 10 connections × 10 streams (h2load)", "h2load",
             conns=10, streams=10, https=True),
    Scenario("idle", "8,000 idle keep-alive client connections (each after one request)", "idle"),
    Scenario("upgrade", "Upgrade under load: five swaps during a 12 B GET run with 64 connections (wrk)", "upgrade"),
    Scenario("uneven", "Uneven backends: one of three 20x slower, round robin vs least_queued vs least_conn",
             "uneven"),
]


def env_list(name: str) -> list[str] | None:
    value = os.environ.get(name, "").strip()
    return [v.strip() for v in value.split(",") if v.strip()] or None


def raise_open_files() -> None:
    # 8,000 idle connections plus the servers' own: run.sh sets 20,000, this makes sure of it.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = sides.OPEN_FILES if hard == resource.RLIM_INFINITY else min(sides.OPEN_FILES, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def stop_on_signal(signum, _frame):
    # Turn SIGTERM/SIGHUP into an exception so the `finally` in main stops every server.
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------------------------------------
# Checks that each side serves what the scenarios ask for, before anything is measured.


def check_serves(port: int) -> str | None:
    """None if GET and POST work over one keep-alive connection; else what went wrong."""
    try:
        conn = http.client.HTTPConnection(sides.HOST, port, timeout=5)
        for method, path, body, want in [
            ("GET", "/small.txt", None, sides.SMALL_BODY),
            ("POST", "/post", b"x" * 16384, b"ok\n"),
            # A second POST on the same connection proves the first body was read, not left behind.
            ("POST", "/post", b"y" * 16384, b"ok\n"),
            ("GET", "/64k.bin", None, None),
        ]:
            conn.request(method, path, body=body)
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                return f"{method} {path} answered {response.status}"
            if want is not None and data != want:
                return f"{method} {path} answered {data[:40]!r}"
            if want is None and len(data) != sides.BIG_BODY_SIZE:
                return f"{method} {path} answered {len(data)} bytes"
        conn.close()
        return None
    except (OSError, http.client.HTTPException) as error:
        return f"request failed: {error!r}"


# ---------------------------------------------------------------------------------------------


def machine_header(duration: int, rounds: int, out: Path, keys: list[str]) -> str:
    def version(argv, pattern):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        found = re.search(pattern, done.stdout + done.stderr)
        return found.group(1) if found else "?"

    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    # What bench/out/juggler was built from (written by targets.build_juggler), else HEAD.
    built_from = out / "juggler.commit"
    if built_from.exists():
        commit = built_from.read_text().strip()
    else:
        commit = version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], r"(\w+)") + " (HEAD)"
    nginx = version(["nginx", "-v"], r"nginx/(\S+)")
    haproxy = version(["haproxy", "-v"], r"version (\S+)")
    wrk = version(["wrk", "-v"], r"wrk (\S+)")
    h2load = version(["h2load", "--version"], r"nghttp2/(\S+)")
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return "\n".join([
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores ({cpu}), "
        f"{mem_gib:.0f} GiB, Linux {platform.release()}; everything on 127.0.0.1.",
        f"Juggler {commit}, nginx {nginx}, HAProxy {haproxy}, wrk {wrk}, h2load {h2load}.",
        f"{rounds} rounds × {duration} s per target and scenario"
        + (f" (upgrade: {upgrade.duration_s()} s per run, with and without swaps)" if "upgrade" in keys else "")
        + ", targets loaded in turn (A B C D E A B …); "
        f"backends: 3 × nginx (1 worker each); balancers: {sides.WORKERS} workers/threads each, "
        f"pool {sides.POOL_PER_BACKEND} per backend where bounded; "
        "the load generator (wrk/h2load, 2 threads) shares the same cores.",
    ])


def by_port(counts: dict[int, int]) -> str:
    return "(last: " + " ".join(f"{port}:{n}" for port, n in counts.items()) + ")" if counts else ""


def run_load_scenario(scenario: Scenario, live, duration: int, rounds: int, logs: Path) -> dict:
    results = {t.name: [] for t in live}
    for round_number in range(1, rounds + 1):
        for target in live:
            log = logs / f"{scenario.key}.{target.name}.{round_number}.log"
            result = load.run_round(scenario.tool, target, scenario, duration, log)
            results[target.name].append(result)
            print(f"    round {round_number} {target.letter} {target.name:15} {result.rps:>10,.0f} req/s  "
                  f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}  non-2xx {result.non_2xx}  "
                  f"backend conns {result.backend_conns} {by_port(result.backend_conns_by_port)}"
                  + (f"  ({result.problem})" if result.problem else ""),
                  flush=True)
    return results


def main() -> int:
    os.chdir(REPO)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop_on_signal)
    raise_open_files()
    duration = int(os.environ.get("BENCH_DURATION", "5"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    idle_conns = int(os.environ.get("BENCH_IDLE_CONNS", "8000"))
    out = Path(os.environ.get("BENCH_OUT", BENCH / "out")).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    wanted_scenarios = env_list("BENCH_SCENARIOS")
    wanted_targets = env_list("BENCH_TARGETS")
    scenarios = [s for s in SCENARIOS if not wanted_scenarios or s.key in wanted_scenarios]
    targets = [t for t in sides.all_targets() if not wanted_targets or t.name in wanted_targets]

    certs, no_tls = sides.make_certs(REPO, out)
    if no_tls:
        print(f"HTTPS scenarios skipped: {no_tls}", flush=True)
        scenarios = [s for s in scenarios if not s.https]
    juggler = next((t for t in targets if t.name == "juggler"), None)
    if juggler:
        juggler.skipped = sides.build_juggler(REPO, out, certs, juggler)
        if juggler.skipped:
            print(f"Juggler skipped: {juggler.skipped}", flush=True)

    procs = Processes(out / "pids")
    try:
        backend_pid = sides.start_backends(procs, out, certs)
        for port in sides.BACKEND_PORTS:
            broken = check_serves(port)
            if broken:
                raise RuntimeError(f"backend {port} is not serving the bench's files: {broken}")
        for target in targets:
            if target.name == "direct":
                target.server_pid = backend_pid

        tables = []
        for scenario in scenarios:
            print(f"\n== {scenario.title}", flush=True)
            if scenario.tool == "uneven":
                # Backends, targets and ports of its own (bench/uneven.py).
                table = uneven.run(out, duration, rounds)
                print("\n" + table, flush=True)
                tables.append(table)
                continue
            if scenario.tool == "upgrade":
                # Each target alone, started and stopped per run: the connection sampler counts
                # every connection to the backends, and a swap must not inherit another run's state.
                measured = upgrade.run_scenario(procs, out, targets, certs, rounds, logs, check_serves)
                table = report.upgrade_table(scenario.title, targets, measured, upgrade.HOW_RELOADED,
                                             upgrade.duration_s(), upgrade.SWAPS)
                print("\n" + table, flush=True)
                tables.append(table)
                continue
            # Fresh balancers for every scenario: connections one scenario left cached (nginx keeps
            # whatever it opened) must not count in the next, and idle memory starts from a clean heap.
            live = start_balancers(procs, out, targets, certs)
            try:
                if scenario.tool == "idle":
                    measured = {t.name: idle.hold_idle_connections(t, idle_conns) for t in live}
                    title = scenario.title.replace("8,000", f"{idle_conns:,}")
                    table = report.idle_table(title, targets, measured)
                else:
                    measured = run_load_scenario(scenario, live, duration, rounds, logs)
                    table = report.load_table(scenario.title, targets, measured)
            finally:
                procs.stop([t.name for t in live])
            print("\n" + table, flush=True)
            tables.append(table)

        header = machine_header(duration, rounds, out, [s.key for s in scenarios])
        (out / "results.md").write_text(header + "\n\n" + "\n".join(tables))
        print(f"\n{header}\nTables written to {out / 'results.md'}", flush=True)
        return 0
    finally:
        procs.stop_all()


def start_balancers(procs: Processes, out: Path, targets, certs) -> list:
    """Start every target not yet skipped; one that fails is skipped from then on. Returns the live ones."""
    for target in targets:
        if target.skipped:
            continue
        try:
            sides.start_target(procs, out, target, certs)
        except RuntimeError as error:
            target.skipped = "did not start"
            print(f"{target.name} skipped, did not start: {error}", flush=True)
            continue
        broken = check_serves(target.http_port)
        if broken:
            target.skipped = f"does not proxy the bench's requests: {broken}"
            print(f"{target.name} skipped: {target.skipped}", flush=True)
    return [t for t in targets if not t.skipped]


if __name__ == "__main__":
    sys.exit(main())
