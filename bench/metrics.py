"""Metrics on vs off: what Juggler's metric counting costs.

Juggler counts requests (and serves them on its admin listener) unless its config says
`[admin] listen = "off"`. The bench's main Juggler is built with the admin listener on a free
loopback port; this scenario builds a second one with `listen = "off"`, starts both, and loads them
in turn (on, off, off, on, …) with the 12 B GET at 64 connections, so both see the same drifts of
this shared machine. It reports the on/off ratios of req/s and of requests per CPU-second, then
reads `/metrics` from the "on" build once to show that it did count.
"""

import http.client
import os
import re
import statistics
from pathlib import Path

import load
import targets as sides
from procs import Processes

OFF = "juggler-metrics-off"
# Ports of the metrics-off build (the main Juggler has 18080/18443).
OFF_PORTS = (18086, 18449)
# What the ratios are held to (issue 14): counting may cost at most 2 %.
TARGET_RATIO = 0.98


def admin_port_file(out: Path) -> Path:
    """Where the main build's admin port is kept, for BENCH_SKIP_BUILD=1 runs."""
    return out / "juggler.admin"


def build_main_juggler(repo: Path, out: Path, certs, target) -> str | None:
    """Build the main Juggler: with the admin listener on a free port when this tree has one."""
    admin = None
    try:
        source = sides.juggler_source(repo, out)[0]
    except RuntimeError as error:
        return str(error)
    if sides.supports_admin(source):
        kept = admin_port_file(out)
        if kept.exists() and os.environ.get("BENCH_SKIP_BUILD") == "1":
            admin = kept.read_text().strip()
        else:
            admin = f"{sides.HOST}:{sides.free_port()}"
            kept.write_text(admin)
    elif admin_port_file(out).exists():
        admin_port_file(out).unlink()
    return sides.build_juggler(repo, out, certs, target, admin_listen=admin)


def run_scenario(procs: Processes, out: Path, certs, title: str, duration: int, rounds: int, logs: Path,
                 start_balancers) -> str:
    """Build the metrics-off Juggler, load both builds in turn; return the table."""
    lines = [f"### {title}", ""]
    repo = Path(sides.__file__).resolve().parent.parent
    if not sides.supports_admin(sides.juggler_source(repo, out)[0]):
        return "\n".join(lines + ["skipped: this tree's Juggler has no `[admin]` section yet", ""])
    kept = admin_port_file(out)
    if not (out / "juggler").exists() or not kept.exists():
        return "\n".join(lines + ["skipped: the main Juggler (admin on) was not built", ""])
    admin = kept.read_text().strip()
    on = sides.Target("juggler", "B", 18080, 18443)
    off = sides.Target(OFF, "B'", *OFF_PORTS)
    why_not = sides.build_juggler(repo, out, certs, off, variant=OFF, admin_listen="off")
    if why_not:
        return "\n".join(lines + [f"skipped: the metrics-off build failed: {why_not}", ""])
    scenario = _Scenario()
    results: dict[str, list[load.RoundResult]] = {on.name: [], off.name: []}
    live = start_balancers(procs, out, [on, off], certs)
    try:
        if len(live) < 2:
            return "\n".join(lines + ["skipped: " + "; ".join(f"{t.name}: {t.skipped}" for t in (on, off)
                                                               if t.skipped), ""])
        for round_number in range(1, rounds + 1):
            # on, off, then off, on: a drift of the machine during the run favours neither.
            for target in (on, off) if round_number % 2 else (off, on):
                log = logs / f"metrics.{target.name}.{round_number}.log"
                result = load.run_round("wrk", target, scenario, duration, log)
                results[target.name].append(result)
                print(f"    round {round_number} {target.name:20} {result.rps:>10,.0f} req/s  "
                      f"p99 {result.p99_ms:7.2f} ms  {result.per_cpu_s or 0:>8,.0f} req/CPU-s  "
                      f"errors {result.errors}  non-2xx {result.non_2xx}", flush=True)
        counted = scrape_request_total(admin)
    finally:
        procs.stop([t.name for t in live])
    return table(lines, admin, results[on.name], results[off.name], counted)


class _Scenario:
    """What load.run_round reads of a scenario: the 12 B GET at 64 connections."""

    path = "/small.txt"
    conns = 64
    https = False
    script = None


def scrape_request_total(admin: str) -> str:
    """The request counters of `/metrics` on the admin listener, as `name value` text, or why not."""
    host, port = admin.rsplit(":", 1)
    try:
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
        conn.close()
    except (OSError, http.client.HTTPException) as error:
        return f"GET /metrics on {admin} failed: {error!r}"
    if response.status != 200:
        return f"GET /metrics on {admin} answered {response.status}"
    # Prometheus text: `name{labels} value`; the request counters are the *_requests_total series.
    totals: dict[str, float] = {}
    for line in body.splitlines():
        found = re.match(r"([a-zA-Z_:][\w:]*requests_total)(\{[^}]*\})?\s+([0-9.eE+-]+)", line)
        if found:
            totals[found.group(1)] = totals.get(found.group(1), 0) + float(found.group(3))
    if not totals:
        return f"GET /metrics on {admin}: no *requests_total series in {len(body)} bytes"
    return ", ".join(f"{name} = {value:,.0f}" for name, value in totals.items())


def table(lines: list[str], admin: str, on: list, off: list, counted: str) -> str:
    def median(results, value):
        values = [value(r) for r in results if value(r)]
        return statistics.median(values) if values else None

    rows = []
    for name, results in (("on (admin on " + admin + ")", on), ('off (`[admin] listen = "off"`)', off)):
        rows.append(f"| {name} | {median(results, lambda r: r.rps):,.0f} | "
                    f"{statistics.median(r.p99_ms for r in results):.2f} | "
                    f"{median(results, lambda r: r.per_cpu_s) or 0:,.0f} | "
                    + " / ".join(f"{r.rps:,.0f}" for r in results) + " |")
    rps_ratio = _ratio(median(on, lambda r: r.rps), median(off, lambda r: r.rps))
    cpu_ratio = _ratio(median(on, lambda r: r.per_cpu_s), median(off, lambda r: r.per_cpu_s))
    verdict = lambda ratio: "n/a" if ratio is None else ("met" if ratio >= TARGET_RATIO else "missed")
    return "\n".join(lines + [
        f"{len(on)} rounds each, on and off in turn (on, off, off, on, …); medians.",
        "",
        "| metrics | req/s | p99 ms | req per CPU-s | req/s by round |",
        "|---|---:|---:|---:|---|",
        *rows,
        "",
        f"- on ÷ off: req/s {_fmt(rps_ratio)} ({verdict(rps_ratio)}), req per CPU-s {_fmt(cpu_ratio)} "
        f"({verdict(cpu_ratio)}); target ≥ {TARGET_RATIO}",
        f"- counted by the \"on\" build (GET /metrics after the run): {counted}",
        "",
    ])


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _fmt(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.3f}"
