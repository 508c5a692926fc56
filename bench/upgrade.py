"""The `upgrade` scenario: each balancer is swapped five times while wrk loads it (issue 11).

Every target runs alone (started fresh, stopped after), twice per round: once with five swaps
spread over the run (at 15 %, 30 %, 45 %, 60 % and 75 % of it: 3, 6, 9, 12, 15 s of 20 s) and once
without, as the baseline for its latency and connection counts. A swap is what each balancer
offers for putting a new config in service without dropping the listener:

- juggler: `juggler --upgrade --control-socket <its socket>` (the same binary): the new process
  takes over listeners, idle clients and pooled backend connections; the old one exits by itself.
- nginx: `nginx -s reload` (SIGHUP to the master): new workers, old workers finish gracefully.
- haproxy: master-worker mode (`-W`) with `stats socket … expose-fd listeners`; SIGUSR2 to the
  master, which re-executes itself as `haproxy -sf <old worker> -x sockpair@<fd> -W -db -f …`
  (seen with strace on 2.6.12: the `-x` socket is its own socketpair to the old worker, not the
  stats socket), so the new worker takes the old one's listening sockets instead of binding new
  ones; the old worker finishes its connections gracefully.

While wrk runs, a sampler asks the kernel (sock_diag netlink, as `ss` does) every 10 ms and counts the established connections
to each backend port (only one balancer runs at a time, and nothing else talks to the backends),
so a balancer whose old and new generation each open their own connections shows it.
"""

import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import targets as sides
from load import _duration_ms, parse_wrk
from procs import Processes, process_tree

SWAPS = 5
SAMPLE_INTERVAL_S = 0.010
CONNS = 64
PATH = "/small.txt"
# Juggler's upgrade phases (one line each), but not its per-request access log (juggler::access).
JUGGLER_LOG = "warn,juggler::upgrade=info"

HOW_RELOADED = {
    "juggler": "`juggler --upgrade` (same binary)",
    "nginx": "`nginx -s reload`",
    "nginx-maxconns": "`nginx -s reload`",
    "haproxy": "SIGUSR2 to the master (`-W`, `-x` via `expose-fd listeners`)",
}


@dataclass
class UpgradeRun:
    swapped: bool
    requests: int = 0
    errors: int = 0  # wrk socket errors: connect, read, write, timeout
    non_2xx: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    # Most established connections seen on each backend port in any one sample.
    max_by_port: dict[int, int] = field(default_factory=dict)
    samples: int = 0
    # Swaps after which a new process (Juggler) or new workers (nginx, HAProxy) served.
    swaps_done: int = 0
    notes: list[str] = field(default_factory=list)
    problem: str | None = None

    @property
    def failed(self) -> int:
        return self.errors + self.non_2xx


def duration_s() -> int:
    return int(os.environ.get("BENCH_UPGRADE_DURATION", "20"))


def swap_times(duration: float) -> list[float]:
    return [duration * 0.15 * i for i in range(1, SWAPS + 1)]


def run_scenario(procs: Processes, out: Path, targets, certs, rounds: int, logs: Path, check_serves) -> dict:
    """target name → its runs (with and without swaps, every round); skips targets that fail to start."""
    duration = duration_s()
    results: dict[str, list[UpgradeRun]] = {}
    for round_number in range(1, rounds + 1):
        for target in targets:
            if target.skipped:
                continue
            if target.name not in HOW_RELOADED:
                continue  # direct: nothing to swap
            for swapped in (False, True):
                run = run_once(procs, out, target, certs, duration, swapped, check_serves,
                               logs / f"upgrade.{target.name}.{round_number}-{'swaps' if swapped else 'steady'}")
                if run is None:
                    break
                results.setdefault(target.name, []).append(run)
                by_port = " ".join(f"{p}:{n}" for p, n in run.max_by_port.items())
                print(f"    round {round_number} {target.letter} {target.name:15} "
                      f"{'5 swaps' if swapped else 'steady '} {run.requests:>9,} requests  failed {run.failed} "
                      f"(socket errors {run.errors}, non-2xx {run.non_2xx})  p99 {run.p99_ms:7.2f} ms  "
                      f"max {run.max_ms:7.2f} ms  max backend conns {by_port} ({run.samples} samples)"
                      + (f"  swaps done {run.swaps_done}/{SWAPS}" if swapped else "")
                      + (f"  ({run.problem})" if run.problem else ""),
                      flush=True)
                for note in run.notes:
                    print(f"        {note}", flush=True)
    return results


def run_once(procs, out, target, certs, duration, swapped, check_serves, log_base: Path) -> UpgradeRun | None:
    try:
        sides.start_target(procs, out, target, certs, reloadable=True, env={"RUST_LOG": JUGGLER_LOG})
    except RuntimeError as error:
        target.skipped = "did not start"
        print(f"{target.name} skipped, did not start: {error}", flush=True)
        return None
    names = [target.name]
    try:
        broken = check_serves(target.http_port)
        if broken:
            target.skipped = f"does not proxy the bench's requests: {broken}"
            print(f"{target.name} skipped: {target.skipped}", flush=True)
            return None
        swapper = Swapper(procs, out, target, names)
        return load_with_swaps(target, duration, swap_times(duration) if swapped else [], swapper, log_base, swapped)
    finally:
        procs.stop(names)
        target.pid = None


def load_with_swaps(target, duration: int, at: list[float], swapper: "Swapper", log_base: Path,
                    swapped: bool) -> UpgradeRun:
    argv = ["wrk", "-t2", f"-c{CONNS}", f"-d{duration}s", "--latency", "--timeout", "5s",
            f"http://{sides.HOST}:{target.http_port}{PATH}"]
    stop_sampling = threading.Event()
    max_by_port = {port: 0 for port in sides.BACKEND_PORTS}
    timeline: list[str] = []
    counter = {"samples": 0}
    sampler = threading.Thread(target=_sample, args=(stop_sampling, max_by_port, timeline, counter))
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler.start()
    try:
        for offset in at:
            pause = started + offset - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if proc.poll() is not None:
                break
            swapper.swap(time.monotonic() - started)
        output, _ = proc.communicate(timeout=duration + 60)
    except BaseException:
        # Interrupted (SIGTERM → SystemExit) or wrk hung: the load generator must not outlive the bench.
        proc.kill()
        proc.wait()
        raise
    finally:
        stop_sampling.set()
        sampler.join()
    log_base.with_name(log_base.name + ".log").write_text(" ".join(argv) + "\n" + output)
    log_base.with_name(log_base.name + ".conns").write_text(
        "# seconds since wrk started, established connections per backend port (written when they change)\n"
        + "".join(timeline))
    wrk = parse_wrk(output)
    run = UpgradeRun(swapped=swapped, errors=wrk.errors, non_2xx=wrk.non_2xx, p50_ms=wrk.p50_ms,
                     p99_ms=wrk.p99_ms, max_by_port=max_by_port, samples=counter["samples"],
                     problem=wrk.problem)
    requests = re.search(r"(\d+) requests in", output)
    run.requests = int(requests.group(1)) if requests else 0
    # Thread stats: "Latency   avg   stdev   max   +/- stdev".
    latency = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", output, re.M)
    if latency:
        run.max_ms = _duration_ms(latency.group(1))
    if proc.returncode != 0 and not run.problem:
        run.problem = f"wrk exited {proc.returncode}"
    if swapped:
        run.swaps_done, run.notes = swapper.finish()
    return run


def _sample(stop: threading.Event, max_by_port: dict[int, int], timeline: list[str], counter: dict) -> None:
    """Every 10 ms: established connections to each backend port."""
    ports = list(max_by_port)
    started = time.monotonic()
    last = None
    with EstablishedCounter(ports) as counter_socket:
        while not stop.is_set():
            counts = counter_socket.count()
            counter["samples"] += 1
            for port, n in counts.items():
                if n > max_by_port[port]:
                    max_by_port[port] = n
            if counts != last:
                timeline.append(f"{time.monotonic() - started:7.3f} "
                                + " ".join(f"{p}:{n}" for p, n in counts.items()) + "\n")
                last = counts
            stop.wait(SAMPLE_INTERVAL_S)


class EstablishedCounter:
    """Established TCP connections to some local ports, counted through the kernel's sock_diag
    netlink interface (what `ss` uses), with the port range filtered in the kernel.

    Not /proc/net/tcp: on this machine it lists thousands of TIME_WAIT sockets from the test suites
    running beside the bench (~30 ms per read, too slow for 10 ms samples), and a read spread over
    several system calls can list a connection twice while sockets come and go. A netlink dump can
    repeat one too, so connections are counted once per address/port 4-tuple.
    """

    _SOCK_DIAG_BY_FAMILY = 20
    _NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
    _NLMSG_ERROR, _NLMSG_DONE = 2, 3
    _TCP_ESTABLISHED = 1
    _INET_DIAG_REQ_BYTECODE = 1
    _INET_DIAG_BC_D_GE, _INET_DIAG_BC_D_LE = 4, 5

    def __init__(self, ports: list[int]):
        self.ports = ports
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 4)  # NETLINK_SOCK_DIAG
        low, high = min(ports), max(ports)
        # Bytecode: accept when dport >= low and dport <= high. Each comparison is an op
        # (code, jump if yes, jump if no) followed by an op-sized slot holding the port; jumping
        # to the end accepts, to 4 bytes past it rejects.
        bytecode = (struct.pack("=BBH", self._INET_DIAG_BC_D_GE, 8, 20) + struct.pack("=BBH", 0, 0, low)
                    + struct.pack("=BBH", self._INET_DIAG_BC_D_LE, 8, 12) + struct.pack("=BBH", 0, 0, high))
        attribute = struct.pack("=HH", 4 + len(bytecode), self._INET_DIAG_REQ_BYTECODE) + bytecode
        # inet_diag_req_v2: family, protocol, extensions, pad, states; then an empty socket id.
        request = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0,
                              1 << self._TCP_ESTABLISHED) + bytes(48) + attribute
        self.message = struct.pack("=IHHII", 16 + len(request), self._SOCK_DIAG_BY_FAMILY,
                                   self._NLM_F_REQUEST | self._NLM_F_DUMP, 0, 0) + request

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.sock.close()

    def count(self) -> dict[int, int]:
        self.sock.send(self.message)
        seen: set[bytes] = set()
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind == self._NLMSG_DONE:
                    return self._by_port(seen)
                if kind == self._NLMSG_ERROR:
                    (errno,) = struct.unpack_from("=i", data, offset + 16)
                    raise OSError(-errno, "sock_diag dump failed")
                # inet_diag_msg: family, state, timer, retrans, then the socket id:
                # sport, dport (big-endian), source and destination addresses.
                seen.add(data[offset + 20:offset + 60])
                offset += (length + 3) & ~3
            if not data:
                return self._by_port(seen)

    def _by_port(self, seen: set[bytes]) -> dict[int, int]:
        counts = {port: 0 for port in self.ports}
        for ident in seen:
            port = struct.unpack_from("!H", ident, 2)[0]
            if port in counts:
                counts[port] += 1
        return counts


class Swapper:
    """Puts a new generation of the target in service, the way that balancer is meant to be reloaded."""

    def __init__(self, procs: Processes, out: Path, target, names: list[str]):
        self.procs, self.out, self.target, self.names = procs, out, target, names
        self.workdir = out / "run" / target.name
        self.generation = 0
        self.notes: list[str] = []
        # nginx / HAProxy: the master's children just before each swap (and once at the end).
        self.children: list[set[int]] = []
        self.master = target.pid

    def _workers(self) -> set[int]:
        return process_tree(self.master) - {self.master} if self.master else set()

    def swap(self, at: float) -> None:
        name = self.target.name
        if name == "juggler":
            self.generation += 1
            for old, code in self.procs.reap(self.names).items():
                if code != 0:
                    self.notes.append(f"{old} exited with {code} before swap {self.generation}")
            new = f"juggler-upgrade-{self.generation}"
            socket = sides.control_socket(self.out, self.target)
            env = dict(os.environ, RUST_LOG=JUGGLER_LOG)
            self.procs.start(new, [str(self.out / "juggler"), "--upgrade", "--control-socket", str(socket)],
                             self.workdir / f"stderr.upgrade-{self.generation}.log", env=env)
            self.names.append(new)
        elif name in ("nginx", "nginx-maxconns"):
            self.children.append(self._workers())
            conf = self.workdir / "nginx.conf"
            done = subprocess.run(["nginx", "-p", str(self.workdir), "-e", str(self.workdir / "error.log"),
                                   "-c", str(conf), "-s", "reload"], capture_output=True, text=True, timeout=15)
            if done.returncode != 0:
                self.notes.append(f"nginx -s reload at {at:.1f} s exited {done.returncode}: {done.stderr.strip()}")
        elif name == "haproxy":
            self.children.append(self._workers())
            os.kill(self.master, signal.SIGUSR2)
        else:
            raise ValueError(name)

    def finish(self) -> tuple[int, list[str]]:
        """How many swaps put a new generation in service, and what is worth knowing about them."""
        name = self.target.name
        if name == "juggler":
            done = 0
            for generation in range(1, self.generation + 1):
                log = self.workdir / f"stderr.upgrade-{generation}.log"
                text = log.read_text(errors="replace") if log.exists() else ""
                if "accepting on the inherited listeners" in text:
                    done += 1
                else:
                    self.notes.append(f"upgrade {generation} did not take over: {text.strip()[-300:]}")
            # Give the last predecessor a moment to hand over its last connections and exit.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                for old, code in self.procs.reap(self.names).items():
                    if code != 0:
                        self.notes.append(f"{old} exited with {code}")
                if not any(n in self.procs.running for n in self.names[:-1]):
                    break
                time.sleep(0.05)
            alive = [n for n in self.names if n in self.procs.running]
            if alive != self.names[-1:]:
                self.notes.append(f"still running at the end: {', '.join(alive) or 'nothing'}")
            return done, self.notes
        self.children.append(self._workers())
        done = sum(1 for before, after in zip(self.children, self.children[1:]) if after - before)
        return done, self.notes
