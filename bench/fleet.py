"""A fleet (issue 19): three balancer instances on one host, load skewed 80/10/10 across them,
each backend's connections bounded for the whole fleet or per instance.

    python3 bench/fleet.py        (or BENCH_SCENARIOS=fleet make bench)

Backends: three `bin/test_server --delay DELAY` (ports 19601-19603): an answer takes DELAY, so a
backend connection carries at most 1 s / DELAY requests a second and the bound on connections, not
the CPU, is what limits the rate. In front of them, three instances of one kind at a time, each
started fresh for its run (one wrk per instance, all three at once):

  fleet    Juggler built with a `[fleet]` section: the three instances share each backend's
           N connections through etcd (Debian's etcd-server, started here for the whole study)
  static   Juggler built without `[fleet]`, floor(N / 3) connections per backend per instance:
           the split a fleet without coordination has to take to keep the same bound
  haproxy  three HAProxy processes, `maxconn floor(N / 3)` per server each (they queue the rest):
           their backends see 3 × maxconn

Load: one `wrk -t1` per instance, connections CONNS split 80/10/10 (closed loop: a connection sends
its next request when the answer came), WARM_UP s unmeasured first (the fleet moves its shares
towards demand about once a second, smoothed), then BENCH_DURATION s measured. Every 100 ms during
both, the established connections to each backend port are counted from the kernel's table (`ss`;
the balancers' side of each connection, so each counts once); the table shows the most seen.
Settings: BENCH_DURATION (8), BENCH_ROUNDS (2), BENCH_FLEET_N (6), BENCH_FLEET_CONNS (40),
BENCH_SKIP_BUILD=1.
"""

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import study  # noqa: E402
from load import RoundResult, parse_wrk  # noqa: E402
from procs import Processes, wait_listening  # noqa: E402
from study import HOST  # noqa: E402

BACKEND_PORTS = [19601, 19602, 19603]
DELAY = "5ms"
# The instances' load shares, in percent; the first is the busy one.
SKEW = [80, 10, 10]
# Each instance runs one worker thread: three instances, three wrk processes and three backends
# share this machine's 2 cores.
WORKERS = 1
WARM_UP = 3
SAMPLE_EVERY_S = 0.1
# Client port and peer port of the study's etcd. The fleet's etcd endpoint is compiled into the
# Juggler build (as every setting is), so the study owns fixed ports, checked free before it starts.
ETCD_PORTS = (19631, 19632)
ETCD = "/usr/bin/etcd"
# HTTP port of each instance of each kind; the fleet's admin listeners (status.json) at +10.
PORTS = {"fleet": [19611, 19612, 19613], "static": [19614, 19615, 19616], "haproxy": [19617, 19618, 19619]}
ADMIN_OFFSET = 10
PATH = "/test.txt"

# Prints wrk's latency histogram (µs → answers) at the end, so that the three wrk runs can be
# merged into one p99: percentiles of parts do not combine. `latency(i)` is the i-th distinct
# latency and its count, `#latency` how many there are (wrk 4's Lua API). The histogram is the one
# wrk takes its own percentiles from, with the samples its correction for a stalled connection adds.
LATENCY_HISTOGRAM = """
function done(summary, latency, requests)
  for i = 1, #latency do
    local us, n = latency(i)
    io.write(string.format("latency %d %d\\n", us, n))
  end
end
"""


def pool(n: int) -> dict[str, int]:
    """Connections per backend per instance of each kind; the fleet's is the fleet-wide n."""
    return {"fleet": n, "static": n // 3, "haproxy": n // 3}


def split(total: int) -> list[int]:
    """wrk connections per instance: SKEW of the total, at least one each."""
    return [max(1, round(total * share / 100)) for share in SKEW]


def juggler_config(kind: str, n: int) -> tuple[str, str]:
    servers = ", ".join(f'"{HOST}:{p}"' for p in BACKEND_PORTS)
    first = PORTS[kind][0]
    fleet = ""
    if kind == "fleet":
        fleet = f"""
[fleet]
etcd = ["http://{HOST}:{ETCD_PORTS[0]}"]
lease = "3s"
fallback_lease = "12s"
"""
    keys = f'balance = "round_robin"\nconnections_per_server = {pool(n)[kind]}\nservers = [{servers}]\n'
    return study.juggler_config("bench/fleet.py", first, kind, keys, WORKERS,
                                admin=f"{HOST}:{first + ADMIN_OFFSET}", sections=fleet)


def build_jugglers(out: Path, n: int) -> dict[str, Path]:
    """Two builds (the config is compiled in), each run three times. The upstream's name tells
    them apart in `--print-routes`."""
    built = {}
    for kind in ("fleet", "static"):
        lb, routes = juggler_config(kind, n)
        built[kind] = study.build_juggler(f"juggler-{kind}", lb, routes, out, f"upstream {kind}:")
    return built


def start_etcd(procs: Processes, out: Path) -> None:
    """A single-member etcd on ETCD_PORTS with fresh data, answering /health, for the whole study."""
    for port in ETCD_PORTS:
        with socket.socket() as probe:
            if probe.connect_ex((HOST, port)) == 0:
                raise RuntimeError(f"{HOST}:{port} is taken: the fleet study's etcd needs it "
                                   "(bench/fleet.py ETCD_PORTS)")
    data = out / "etcd-data"
    shutil.rmtree(data, ignore_errors=True)
    client, peer = (f"http://{HOST}:{port}" for port in ETCD_PORTS)
    log = out / "logs" / "etcd.log"
    proc = procs.start("etcd", [ETCD, "--name", "bench", "--data-dir", str(data),
                                "--listen-client-urls", client, "--advertise-client-urls", client,
                                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                                "--initial-cluster", f"bench={peer}", "--log-level", "warn"], log)
    wait_listening(ETCD_PORTS[0], proc, log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{client}/health", timeout=2) as answer:
                if json.load(answer).get("health") == "true":
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"etcd did not become healthy within 20 s; log {log}")


def fleet_status(port: int) -> dict | None:
    """The `fleet` part of an instance's /status.json, None if it cannot be read."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port + ADMIN_OFFSET}/status.json", timeout=2) as answer:
            return json.load(answer).get("fleet")
    except (OSError, ValueError):
        return None


def wait_registered(ports: list[int], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        states = [(fleet_status(port) or {}).get("state") for port in ports]
        if all(state == "registered" for state in states):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the fleet instances did not all register in etcd within {within:g} s: {states}")


def start(procs: Processes, kind: str, out: Path, binaries: dict[str, Path], n: int, round_number: int) -> list[str]:
    """The three instances of this kind; returns their process names."""
    names = []
    for i, port in enumerate(PORTS[kind], start=1):
        name = f"{kind}-{i}"
        if kind == "haproxy":
            servers = "".join(f"    server s{j + 1} {HOST}:{p} maxconn {pool(n)[kind]}\n"
                              for j, p in enumerate(BACKEND_PORTS))
            study.start_haproxy(procs, name, study.haproxy_cfg(kind, port, "roundrobin", servers, workers=WORKERS),
                                port, out)
        else:
            # A name of its own each round: a record an earlier round left in etcd (its lease not
            # yet expired) must not be mistaken for this process's.
            study.start_juggler(procs, name, binaries[kind], port, out,
                                ["--instance", f"bench-{round_number}-{i}", "--listen-http", f"{HOST}:{port}",
                                 "--admin", f"{HOST}:{port + ADMIN_OFFSET}"])
        names.append(name)
    if kind == "fleet":
        wait_registered(PORTS[kind])
    return names


@dataclass
class InstanceRun:
    result: RoundResult
    # wrk's latency histogram: µs → answers.
    latency: dict[int, int]
    # Slots this instance held per backend half a second before the end (the fleet's limit).
    limits: list[int] | None


def percentile_ms(histogram: dict[int, int], pct: float) -> float:
    """As wrk computes it: the smallest latency with at least pct % of the answers at or below it."""
    count = sum(histogram.values())
    if not count:
        return 0.0
    rank = int(pct / 100 * count + 1)  # wrk: C's round(pct / 100 * count + 0.5)
    seen = 0
    for us in sorted(histogram):
        seen += histogram[us]
        if seen >= rank:
            return us / 1000
    return max(histogram) / 1000


def run_wrks(kind: str, conns: list[int], duration: float,
             log_stem: Path) -> tuple[list[str], list[list[int] | None]]:
    """One wrk -t1 per instance of this kind, all at once; returns their outputs, and the limits
    (slots per backend) each fleet instance held half a second before the end."""
    script = log_stem.parent / "latency_histogram.lua"
    script.write_text(LATENCY_HISTOGRAM)
    limits: list[list[int] | None] = [None] * len(conns)

    def read_limits():
        for i, port in enumerate(PORTS[kind]):
            status = fleet_status(port)
            if status:
                limits[i] = [backend["limit"] for backend in status.get("backends", [])]

    reader = threading.Timer(max(0.0, duration - 0.5), read_limits) if kind == "fleet" else None
    wrks = [subprocess.Popen(study.wrk_argv(port, PATH, duration, c, script, threads=1),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for port, c in zip(PORTS[kind], conns)]
    if reader:
        reader.start()
    outputs = []
    try:
        for i, wrk in enumerate(wrks):
            output, _ = wrk.communicate(timeout=duration + 60)
            outputs.append(output)
            Path(f"{log_stem}.{i + 1}.log").write_text(output)
    finally:
        for wrk in wrks:
            if wrk.poll() is None:
                wrk.kill()
                wrk.wait()
        if reader:
            reader.cancel()
            reader.join()
    return outputs, limits


def measure(procs: Processes, kind: str, out: Path, binaries: dict[str, Path], n: int, conns: list[int],
            duration: int, round_number: int) -> dict:
    names = start(procs, kind, out, binaries, n, round_number)
    try:
        time.sleep(0.5)  # pools filled
        stem = out / "logs" / f"fleet.{kind}.{round_number}"
        # The bound must hold all along, while the shares move too: sampled from the warm-up on.
        with study.ConnectionSampler(BACKEND_PORTS, SAMPLE_EVERY_S) as sampler:
            run_wrks(kind, conns, WARM_UP, Path(f"{stem}.warm-up"))
            outputs, limits = run_wrks(kind, conns, duration, stem)
    finally:
        procs.stop(names)
    instances = []
    for output, limit in zip(outputs, limits):
        histogram = {}
        for line in output.splitlines():
            if line.startswith("latency "):
                _, us, count = line.split()
                histogram[int(us)] = int(count)
        instances.append(InstanceRun(parse_wrk(output), histogram, limit))
    merged: dict[int, int] = {}
    for instance in instances:
        for us, count in instance.latency.items():
            merged[us] = merged.get(us, 0) + count
    problems = [f"instance {i}: {r.result.problem}" for i, r in enumerate(instances, 1) if r.result.problem]
    problems += [f"instance {i}: wrk printed no latency histogram" for i, r in enumerate(instances, 1)
                 if not r.latency and not r.result.problem]
    return {"rps": [r.result.rps for r in instances], "p99": [r.result.p99_ms for r in instances],
            "total_rps": sum(r.result.rps for r in instances), "total_p99": percentile_ms(merged, 99),
            "failed": sum(r.result.errors + r.result.non_2xx for r in instances),
            "conns": list(sampler.most), "samples": sampler.samples,
            "limits": [r.limits for r in instances], "problems": problems}


def slots(limits: list[list[int] | None]) -> str:
    """Each instance's slots per backend: `4/4/4 | 1/1/1 | 1/1/1` (`?`: not read)."""
    return " | ".join("/".join(map(str, per_backend)) if per_backend else "?" for per_backend in limits)


def describe(row: dict) -> str:
    limits = ""
    if any(row["limits"]):
        limits = "  slots held at the end " + slots(row["limits"])
    return (f"{row['total_rps']:>8,.0f} req/s ("
            + " + ".join(f"{r:,.0f}" for r in row["rps"]) + ")  p99 "
            + " / ".join(f"{p:.2f}" for p in row["p99"]) + f" ms, all {row['total_p99']:.2f} ms  "
            f"failed {row['failed']}  most backend conns {row['conns']} ({row['samples']} samples){limits}"
            + ("  (" + "; ".join(row["problems"]) + ")" if row["problems"] else ""))


def table(results: dict[str, list[dict]], n: int, conns: list[int], duration: int, rounds: int) -> str:
    share = pool(n)
    what = {"fleet": f"Juggler ×3, `[fleet]`, n = {n} per backend for the fleet",
            "static": f"Juggler ×3, no `[fleet]`, {share['static']} per backend each",
            "haproxy": f"HAProxy ×3, `maxconn {share['haproxy']}` per server each"}
    lines = [
        f"### Fleet: three instances, load {'/'.join(map(str, SKEW))} ({' / '.join(map(str, conns))} wrk connections), "
        f"backends answering after {DELAY}, {rounds} × {duration} s after {WARM_UP} s warm-up (medians)",
        "",
        "| row | req/s per instance | req/s total | p99 ms per instance | p99 ms total | failed "
        "| most conns per backend |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    notes = []
    for kind, rows in results.items():
        med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
        per = lambda key, fmt: " / ".join(format(statistics.median(r[key][i] for r in rows), fmt)  # noqa: E731
                                          for i in range(len(SKEW)))
        most = " / ".join(str(max(r["conns"][i] for r in rows)) for i in range(len(BACKEND_PORTS)))
        lines.append(f"| {what[kind]} | {per('rps', ',.0f')} | {med('total_rps'):,.0f} | {per('p99', '.2f')} | "
                     f"{med('total_p99'):.2f} | {sum(r['failed'] for r in rows)} | {most} |")
        notes += [f"- {kind}, round {i}: {p}" for i, r in enumerate(rows, 1) for p in r["problems"]]
    lines += ["", "Per instance: busy / quiet / quiet. *Failed*: wrk's socket errors + non-2xx, summed over "
              f"the rounds. *Most conns per backend*: the most established connections to each backend port "
              f"(19601 / 19602 / 19603) in any sample, every {SAMPLE_EVERY_S * 1000:.0f} ms from the warm-up on, "
              f"over all rounds (the bound: {n})."]
    fleet_limits = [r["limits"] for r in results.get("fleet", []) if any(r["limits"])]
    if fleet_limits:
        lines.append("Fleet slots held per backend half a second before the end (busy | quiet | quiet), by round: "
                     + "; ".join(slots(limits) for limits in fleet_limits) + ".")
    if "fleet" in results and "static" in results:
        ratio = (statistics.median(r["total_rps"] for r in results["fleet"])
                 / (statistics.median(r["total_rps"] for r in results["static"]) or 1))
        lines.append(f"Fleet ÷ static split, total req/s: {ratio:.2f}×.")
    return "\n".join(lines + ([""] + notes if notes else []))


def run(out_root: Path, duration: int, rounds: int) -> str:
    """Builds both Juggler variants, runs every kind `rounds` times in turn; returns the table."""
    n = int(os.environ.get("BENCH_FLEET_N", "6"))
    conns = split(int(os.environ.get("BENCH_FLEET_CONNS", "40")))
    out = out_root / "fleet"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    if not Path(ETCD).exists():
        return f"### Fleet\n\nSkipped: {ETCD} is missing (apt-get install etcd-server; `make bench` installs it)."
    binaries = build_jugglers(out, n)
    kinds = [k for k in PORTS if k != "haproxy" or shutil.which("haproxy")]
    results: dict[str, list[dict]] = {kind: [] for kind in kinds}
    procs = Processes(out / "pids")
    try:
        start_etcd(procs, out)
        study.start_test_servers(procs, out, BACKEND_PORTS, [["--delay", DELAY]] * len(BACKEND_PORTS))
        for round_number in range(1, rounds + 1):
            for kind in kinds:
                row = measure(procs, kind, out, binaries, n, conns, duration, round_number)
                results[kind].append(row)
                print(f"  round {round_number} {kind:8} {describe(row)}", flush=True)
    finally:
        procs.stop_all()
    text = table(results, n, conns, duration, rounds)
    (out / "results.md").write_text(text + "\n")
    return text


if __name__ == "__main__":
    sys.exit(study.main(run, duration=8, rounds=2))
