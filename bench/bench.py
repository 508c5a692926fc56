"""`make bench`: Juggler against nginx, HAProxy, Pingora and Caddy in front of the same three nginx
backends.

Run through bench/run.sh (which installs the tools). Settings come from the environment:
  BENCH_DURATION  seconds per round (default 5)
  BENCH_ROUNDS    rounds per scenario; each round loads every target once, in turn (default 2)
  BENCH_QUICK=1   a smoke run: 2 s rounds, 1 round, a quarter of the idle connections
                  (BENCH_DURATION/BENCH_ROUNDS/BENCH_IDLE_SCALE still win when set)
  BENCH_SCENARIOS comma-separated scenario keys to run (default: DEFAULT_SCENARIOS; see SCENARIOS)
  BENCH_TARGETS   comma-separated target names to run (default: targets.DEFAULT_TARGETS)
  BENCH_IDLE_SCALE factor on the idle scenarios' connection counts (default 1: 8,000 and 16,000)
  BENCH_METRICS_ROUNDS rounds of the metrics on/off scenario, each loading both builds (default 2)
  BENCH_UPGRADE_DURATION seconds per run of the upgrade scenario (default 20; it ignores BENCH_DURATION)
  BENCH_SKIP_BUILD=1 reuse bench/out/juggler (and bench/out/juggler-metrics-off) instead of building
  BENCH_JUGGLER_REF=<commit> build Juggler from that commit alone (exported to bench/out/juggler-src)
                  instead of the working tree with whatever is uncommitted in it
Output: one table per scenario as it runs, then every scenario in one table; all of them in
bench/out/results.md, and every tool's raw output under bench/out/logs/.
"""

import http.client
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import fleet
import idle
import load
import metrics
import protect
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
    tool: str  # "wrk", "h2load", "idle", "metrics", "upgrade", "uneven", "protect" or "fleet"
    path: str = "/small.txt"
    conns: int = 64
    streams: int = 1  # h2load: concurrent streams per connection
    https: bool = False
    # Idle scenarios over TLS: HTTP/2 (ALPN h2) instead of HTTP/1.1.
    http2: bool = False
    script: Path | None = None
    # The scenario's name in the table of all scenarios.
    label: str = ""


SCENARIOS = [
    Scenario("get12-c64", "12 B GET, 64 connections (wrk, HTTP/1.1)", "wrk", label="12 B GET, 64 conns"),
    Scenario("get12-c512", "12 B GET, 512 connections (wrk, HTTP/1.1)", "wrk", conns=512,
             label="12 B GET, 512 conns"),
    Scenario("get64k-c64", "64 KiB GET, 64 connections (wrk, HTTP/1.1)", "wrk", path="/64k.bin",
             label="64 KiB GET, 64 conns"),
    Scenario("post16k-c64", "16 KiB POST, 64 connections (wrk, HTTP/1.1)", "wrk", path="/post",
             script=BENCH / "post16k.lua", label="16 KiB POST, 64 conns"),
    Scenario("https-h1-c64", "HTTPS, HTTP/1.1 keep-alive, 12 B GET, 64 connections (wrk)", "wrk", https=True,
             label="HTTPS HTTP/1.1, 64 conns"),
    Scenario("https-h2", "HTTPS, HTTP/2, 12 B GET, 10 connections × 10 streams (h2load)", "h2load",
             conns=10, streams=10, https=True, label="HTTPS HTTP/2, 10 × 10 streams"),
    Scenario("idle", "{n} idle keep-alive client connections, plain HTTP/1.1 (each after one request)", "idle",
             conns=8000, label="idle {n} plain"),
    Scenario("idle-16k", "{n} idle keep-alive client connections, plain HTTP/1.1 (each after one request)",
             "idle", conns=16000, label="idle {n} plain"),
    Scenario("idle-tls", "{n} idle keep-alive client connections over TLS, HTTP/1.1 (each after one request)",
             "idle", conns=8000, https=True, label="idle {n} TLS"),
    Scenario("idle-h2", "{n} idle client connections over TLS, HTTP/2 (each after one request)",
             "idle", conns=8000, https=True, http2=True, label="idle {n} HTTP/2"),
    Scenario("metrics", "Metrics on vs off: Juggler with and without [admin] (metric counting), "
             "12 B GET, 64 connections, alternating", "metrics"),
    Scenario("upgrade", "Upgrade under load: five swaps during a 12 B GET run with 64 connections (wrk)", "upgrade"),
    Scenario("uneven", "Uneven backends: one of three 20x slower, round robin vs least_queued vs least_conn",
             "uneven"),
    Scenario("protect", "Protecting backends: a hung backend, a 500-only one and an adaptive n, "
             "against HAProxy and nginx", "protect"),
    Scenario("fleet", "Fleet: three instances, load 80/10/10, a fleet-shared n against a static split and HAProxy",
             "fleet"),
]
# The studies with backends, targets and tables of their own, by tool.
STUDIES = {"uneven": uneven, "protect": protect, "fleet": fleet}
# Run unless BENCH_SCENARIOS names others: upgrade, uneven, protect and fleet are studies of their own,
# with their own tables (about 10 minutes more each; fleet about 2), run by name.
DEFAULT_SCENARIOS = ["get12-c64", "get12-c512", "get64k-c64", "post16k-c64", "https-h1-c64", "https-h2",
                     "idle", "idle-16k", "idle-tls", "idle-h2", "metrics"]


def env_list(name: str) -> list[str] | None:
    value = os.environ.get(name, "").strip()
    return [v.strip() for v in value.split(",") if v.strip()] or None


def raise_open_files() -> None:
    # 4,000 idle connections per client process, wrk's, and the servers' own (each server inherits
    # this limit): run.sh sets 20,000, this makes sure of it.
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
    pingora = "?"
    lock = BENCH / "pingora" / "Cargo.lock"
    if lock.exists():
        found = re.search(r'name = "pingora"\nversion = "([^"]+)"', lock.read_text())
        pingora = found.group(1) if found else "?"
    caddy_binary, _ = sides.find_caddy()
    caddy = version([str(caddy_binary), "version"], r"v(\S+)") if caddy_binary else "?"
    nginx = version(["nginx", "-v"], r"nginx/(\S+)")
    haproxy = version(["haproxy", "-v"], r"version (\S+)")
    wrk = version(["wrk", "-v"], r"wrk (\S+)")
    h2load = version(["h2load", "--version"], r"nghttp2/(\S+)")
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return "\n".join([
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores ({cpu}), "
        f"{mem_gib:.0f} GiB, Linux {platform.release()}; everything on 127.0.0.1.",
        f"Juggler {commit}, nginx {nginx}, HAProxy {haproxy}, Pingora {pingora} (bench/pingora), Caddy {caddy}, "
        f"wrk {wrk}, h2load {h2load}.",
        f"{rounds} rounds × {duration} s per target and scenario"
        + (f" (upgrade: {upgrade.duration_s()} s per run, with and without swaps)" if "upgrade" in keys else "")
        + ", targets loaded in turn (A B C … A B …); "
        f"backends: 3 × nginx (1 worker each); balancers: {sides.WORKERS} workers/threads each, "
        f"pool {sides.POOL_PER_BACKEND} per backend where bounded (Juggler, HAProxy, Caddy); "
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
            per_cpu = f"{result.per_cpu_s:>8,.0f}" if result.per_cpu_s else "       –"
            print(f"    round {round_number} {target.letter} {target.name:15} {result.rps:>10,.0f} req/s  "
                  f"p99 {result.p99_ms:7.2f} ms  {per_cpu} req/CPU-s  RSS {result.rss_kib / 1024:6.1f} MiB  "
                  f"errors {result.errors}  non-2xx {result.non_2xx}  "
                  f"backend conns {result.backend_conns} {by_port(result.backend_conns_by_port)}"
                  + (f"  ({result.problem})" if result.problem else ""),
                  flush=True)
    return results


def main() -> int:
    os.chdir(REPO)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop_on_signal)
    raise_open_files()
    quick = os.environ.get("BENCH_QUICK") == "1"
    duration = int(os.environ.get("BENCH_DURATION", "2" if quick else "5"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "1" if quick else "2"))
    idle_scale = float(os.environ.get("BENCH_IDLE_SCALE", "0.25" if quick else "1"))
    out = Path(os.environ.get("BENCH_OUT", BENCH / "out")).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    wanted_scenarios = env_list("BENCH_SCENARIOS") or DEFAULT_SCENARIOS
    wanted_targets = env_list("BENCH_TARGETS") or sides.DEFAULT_TARGETS
    scenarios = [s for s in SCENARIOS if s.key in wanted_scenarios]
    targets = [t for t in sides.all_targets() if t.name in wanted_targets]
    started = time.monotonic()

    certs, no_tls = sides.make_certs(REPO, out)
    if no_tls:
        print(f"HTTPS scenarios skipped: {no_tls}", flush=True)
        scenarios = [s for s in scenarios if not s.https]
    prepare_targets(out, certs, targets, any(s.tool == "metrics" for s in scenarios))

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
        # (label, "load" or "idle", results) of each scenario that goes into the table of all.
        summary: list[tuple[str, str, dict]] = []
        for scenario in scenarios:
            idle_conns = max(1, round(scenario.conns * idle_scale))
            title = scenario.title.format(n=f"{idle_conns:,}")
            print(f"\n== {title}", flush=True)
            if scenario.tool in STUDIES:
                # Backends, targets and ports of their own (bench/uneven.py, protect.py, fleet.py).
                table = STUDIES[scenario.tool].run(out, duration, rounds)
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
            if scenario.tool == "metrics":
                rounds_each = int(os.environ.get("BENCH_METRICS_ROUNDS", "2"))
                table = metrics.run_scenario(procs, out, certs, title, duration, rounds_each, logs,
                                             start_balancers)
                print("\n" + table, flush=True)
                tables.append(table)
                continue
            # Fresh balancers for every scenario: connections one scenario left cached (nginx keeps
            # whatever it opened) must not count in the next, and idle memory starts from a clean heap.
            live = start_balancers(procs, out, targets, certs)
            try:
                if scenario.tool == "idle":
                    mode = "h2" if scenario.http2 else "tls" if scenario.https else "plain"
                    measured = {t.name: idle.hold_idle_connections(t, idle_conns, mode) for t in live}
                    table = report.idle_table(title, targets, measured)
                    summary.append((scenario.label.format(n=f"{idle_conns:,}"), "idle", measured))
                else:
                    measured = run_load_scenario(scenario, live, duration, rounds, logs)
                    table = report.load_table(title, targets, measured)
                    summary.append((scenario.label, "load", measured))
            finally:
                procs.stop([t.name for t in live])
            print("\n" + table, flush=True)
            tables.append(table)

        header = machine_header(duration, rounds, out, [s.key for s in scenarios])
        every = ""
        if summary:
            every = ("### All scenarios\n\n" + report.summary_table(targets, summary)
                     + "".join(f"\n- {t.name}: {t.skipped}" for t in targets if t.skipped) + "\n")
            print("\n" + every, flush=True)
        (out / "results.md").write_text(header + "\n\n" + every + "\n" + "\n".join(tables))
        print(f"\n{header}\nTotal {time.monotonic() - started:.0f} s. Tables written to {out / 'results.md'}",
              flush=True)
        return 0
    finally:
        procs.stop_all()


def prepare_targets(out: Path, certs, targets, metrics_scenario: bool) -> None:
    """Build or find what each target needs; a target that cannot be had is skipped with the
    reason, and the bench goes on with the others."""
    juggler = next((t for t in targets if t.name == "juggler"), None)
    if juggler or metrics_scenario:
        built = juggler or sides.Target("juggler", "B", 18080, 18443)
        skipped = metrics.build_main_juggler(REPO, out, certs, built)
        if juggler:
            juggler.skipped = skipped
        if skipped:
            print(f"Juggler skipped: {skipped}", flush=True)
    for target in targets:
        if target.name in ("juggler-wide", "juggler-pipelined"):
            # With its admin listener (and so metric counting) on where the tree has one, as the
            # main build: only the pool (wide) or `pipeline = true` (pipelined) differs. Its port
            # follows the target's, clear of the others'.
            try:
                with_admin = sides.supports_admin(sides.juggler_source(REPO, out)[0])
                admin = f"{sides.HOST}:{target.http_port + 1}" if with_admin else None
                wide = target.name == "juggler-wide"
                target.skipped = sides.build_juggler(
                    REPO, out, certs, target, variant=target.name, admin_listen=admin,
                    pool=sides.WIDE_POOL if wide else sides.POOL_PER_BACKEND, pipeline=not wide)
            except RuntimeError as error:
                target.skipped = str(error)
        elif target.name == "pingora":
            try:
                target.skipped = sides.build_pingora(REPO, out)
            except OSError as error:
                target.skipped = f"cannot build bench/pingora: {error}"
        elif target.name == "caddy":
            _, target.skipped = sides.find_caddy()
        elif target.name in ("nginx", "nginx-maxconns", "haproxy") and not shutil.which(target.name.split("-")[0]):
            target.skipped = f"{target.name.split('-')[0]} is not installed"
        if target.skipped and target.name != "juggler":
            print(f"{target.name} skipped: {target.skipped}", flush=True)


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
