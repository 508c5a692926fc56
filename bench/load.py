"""Driving one target for one round with wrk or h2load, and reading what they report.

While the load runs, a sampler thread counts the target's established connections to the backends
(by the pids holding the sockets, since idle balancers keep their own connections open meanwhile)
and reads the target's resident memory just before the load ends. The CPU time the target's
processes used (user + system, every process and thread) is read right before the load generator
starts and right after it exits, so requests per CPU-second covers the measured window.
"""

import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from procs import count_owned_by_port, cpu_seconds, established_by_pid, rss_kib
from targets import BACKEND_PORTS, DIRECT_TLS_PORT, HOST


@dataclass
class RoundResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    non_2xx: int
    # Established target→backend connections seen at each mid-run sample.
    backend_conns: list[int]
    # The last sample split by backend port: shows which backend an imbalance or a leak is on.
    backend_conns_by_port: dict[int, int] = field(default_factory=dict)
    # Set when the tool failed or printed nothing we could read.
    problem: str | None = None
    # Requests the tool completed (wrk: every answer, error statuses included; h2load: done).
    requests: int = 0
    # CPU seconds (user + system) the target's processes used while the tool ran.
    cpu_s: float = 0.0
    # Resident memory of the target's processes just before the load ended, KiB (0: not read).
    rss_kib: int = 0

    @property
    def per_cpu_s(self) -> float | None:
        """Requests per CPU-second of the target; None when no CPU time was measured."""
        return self.requests / self.cpu_s if self.cpu_s > 0 else None


def url(target, scheme: str, path: str) -> str:
    port = target.https_port if scheme == "https" else target.http_port
    return f"{scheme}://{HOST}:{port}{path}"


def run_round(tool: str, target, scenario, duration: int, log: Path) -> RoundResult:
    scheme = "https" if scenario.https else "http"
    target_url = url(target, scheme, scenario.path)
    if tool == "wrk":
        argv = ["wrk", "-t2", f"-c{scenario.conns}", f"-d{duration}s", "--latency", "--timeout", "5s"]
        if scenario.script:
            argv += ["-s", str(scenario.script)]
        argv.append(target_url)
    else:
        # h2load: `conns` connections, each with up to `streams` concurrent streams; per-request
        # times go to a log file because h2load itself prints no percentiles.
        latency_log = log.with_suffix(".latency")
        argv = ["h2load", f"-c{scenario.conns}", f"-m{scenario.streams}", "-t2", f"-D{duration}",
                f"--log-file={latency_log}", target_url]
    # Whose CPU and memory count: the balancer's processes; for `direct`, backend 1's nginx.
    measured = target.pids() or target.server_pids()
    cpu_before = cpu_seconds(measured)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    owners = target.pids() or {proc.pid}
    samples: list[dict[int, int]] = []
    rss: list[int] = []
    sampler = threading.Thread(target=_sample, args=(owners, measured, duration, samples, rss, proc))
    sampler.start()
    try:
        output, _ = proc.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    except BaseException:
        # Interrupted (SIGTERM → SystemExit): the load generator must not outlive the bench.
        proc.kill()
        proc.wait()
        raise
    finally:
        cpu_after = cpu_seconds(measured)
        sampler.join()
    log.write_text(" ".join(argv) + "\n" + output)
    result = parse_wrk(output) if tool == "wrk" else parse_h2load(output, log.with_suffix(".latency"))
    result.backend_conns = [sum(sample.values()) for sample in samples]
    result.backend_conns_by_port = samples[-1] if samples else {}
    result.cpu_s = cpu_after - cpu_before
    result.rss_kib = rss[0] if rss else 0
    if proc.returncode != 0 and not result.problem:
        result.problem = f"{tool} exited {proc.returncode}"
    return result


def _sample(owners: set[int], measured: set[int], duration: int, samples: list[dict[int, int]],
            rss: list[int], proc) -> None:
    # Backend connections a quarter, half and three quarters into the run (after ramp-up, before
    # wind-down); resident memory at each of those moments and once more 0.3 s before the end, the
    # last reading taken while the load still ran being the one reported. Times are kept from the
    # start: on a busy machine `ss` itself may take a second, and must not push a reading past the end.
    ports = BACKEND_PORTS + [DIRECT_TLS_PORT]
    started = time.monotonic()
    for at in (0.25 * duration, 0.5 * duration, 0.75 * duration, max(0.75 * duration, duration - 0.3)):
        try:
            proc.wait(timeout=max(0.0, at - (time.monotonic() - started)))
            return  # the load already ended; a sample now would not be mid-run
        except subprocess.TimeoutExpired:
            pass
        rss[:] = [rss_kib(measured)]
        if len(samples) < 3:
            samples.append(count_owned_by_port(established_by_pid(ports), owners))


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _duration_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)([a-z]+)", text).groups()
    return float(number) * _UNIT_MS[unit]


def parse_wrk(output: str) -> RoundResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if not (rps and p50 and p99):
        return RoundResult(0, 0, 0, 0, 0, [], problem="wrk printed no result: " + output.strip()[-300:])
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    requests = re.search(r"(\d+) requests in ", output)
    return RoundResult(
        requests=int(requests.group(1)) if requests else 0,
        rps=float(rps.group(1)),
        p50_ms=_duration_ms(p50.group(1)),
        p99_ms=_duration_ms(p99.group(1)),
        errors=sum(int(n) for n in errors.groups()) if errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        backend_conns=[],
    )


def parse_h2load(output: str, latency_log: Path) -> RoundResult:
    rps = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", output)
    requests = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                         r"(\d+) errored, (\d+) timeout", output)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    if not (rps and requests and codes):
        return RoundResult(0, 0, 0, 0, 0, [], problem="h2load printed no result: " + output.strip()[-300:])
    micros = []
    if latency_log.exists():
        # Columns: start time (µs since epoch), status code, µs until the response ended.
        for line in latency_log.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3:
                micros.append(int(fields[2]))
        latency_log.unlink()
    micros.sort()
    _done, _ok, failed, errored, timeout = (int(n) for n in requests.groups())
    _2xx, c3, c4, c5 = (int(n) for n in codes.groups())
    problem = None if micros else "h2load wrote no per-request times"
    if "No protocol negotiated" in output:
        problem = "server did not negotiate h2"
    return RoundResult(
        requests=_done,
        rps=float(rps.group(1)),
        p50_ms=percentile(micros, 50) / 1000,
        p99_ms=percentile(micros, 99) / 1000,
        # h2load's `failed` counts error statuses too (already in non_2xx) as well as the streams
        # that errored or timed out; what is left are the transport failures.
        errors=max(failed - c4 - c5, errored + timeout),
        non_2xx=c3 + c4 + c5,
        backend_conns=[],
        problem=problem,
    )


def percentile(sorted_values: list[int], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return float(sorted_values[index])
