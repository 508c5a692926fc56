"""Processes the bench starts, and what it reads about them from /proc and `ss`.

Every server runs in its own session (process group), so stopping it also stops the workers it
forked (nginx), and nothing the bench started outlives it: `Processes.stop_all` runs on every exit
path, and `bench/out/pids` lists the groups still running for run.sh's EXIT trap as a backstop.
"""

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path


class Processes:
    """The servers this run started, stopped together at the end."""

    def __init__(self, pid_file: Path):
        self.pid_file = pid_file
        self.running: dict[str, subprocess.Popen] = {}
        self.pid_file.write_text("")

    def start(self, name: str, argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.running[name] = proc
        self._write_pid_file()
        return proc

    def reap(self, names: list[str]) -> dict[str, int]:
        """Forget those of these servers that have exited by themselves (a Juggler that handed
        everything to its successor; it forks nothing, so its group is empty); return their exit
        codes by name."""
        gone = {name: proc.returncode for name, proc in self.running.items()
                if name in names and proc.poll() is not None}
        for name in gone:
            del self.running[name]
        if gone:
            self._write_pid_file()
        return gone

    def stop_all(self) -> None:
        self.stop(list(self.running))

    def stop(self, names: list[str]) -> None:
        """Stop these servers and every process in their groups; wait until they are gone."""
        stopping = [self.running.pop(name) for name in names if name in self.running]
        for proc in stopping:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in stopping:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # The group may still hold a worker whose parent already exited.
            _signal_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        self._write_pid_file()

    def _write_pid_file(self) -> None:
        self.pid_file.write_text("".join(f"{p.pid}\n" for p in self.running.values()))


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    # The group id is the leader's pid (start_new_session); it names only what this run started.
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_listening(port: int, proc: subprocess.Popen, log: Path, timeout: float = 15.0) -> None:
    """Return once 127.0.0.1:port accepts connections; raise with the log's tail if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} (exit code {proc.poll()}); log {log}:\n{tail}")


def process_tree(root_pid: int) -> set[int]:
    """The root and its direct children: nginx's master and workers, or a single process."""
    pids = {root_pid}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # Field 4 (ppid) follows the parenthesised command name, which may itself hold spaces.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == root_pid:
            pids.add(int(entry.name))
    return pids


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU time of the processes (every thread of each), in seconds, from
    /proc/<pid>/stat; a process that is gone counts 0."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        # After the parenthesised command name: field 3 (state) is [0]; utime (14) and stime (15).
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / _CLOCK_TICKS


def machine_cpu_ticks() -> tuple[int, int]:
    """(idle, all) CPU time of the whole machine so far, in clock ticks, from /proc/stat: the
    share idle over a round tells a balancer that leaves the cores waiting on each other (work
    handed between threads, wake-ups) from one that keeps them busy."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user already).
    return fields[3] + fields[4], sum(fields[:8])


def rss_kib(pids: set[int]) -> int:
    """Resident memory summed over the processes, in KiB (VmRSS)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


_PID = re.compile(r"pid=(\d+)")


def established_to(ports: list[int], owners: bool = False) -> list[tuple[int, set[int]]]:
    """For each established TCP connection to one of `ports`, seen from the side that connected
    (`ss` prints local, then peer: the peer is the port): that port, and with `owners` the pids
    holding it (empty otherwise; asking costs `ss` a walk over every process's descriptors).
    Each address pair once: a dump of the kernel's table is read in batches while sockets come
    and go and can list one twice, and a sampler reporting the most it saw over many dumps would
    read that as a broken bound (the same lesson as tests/support/tcp_table.rs)."""
    expr = " or ".join(f"dport = :{p}" for p in ports)
    out = subprocess.run(
        ["ss", "-Htnp" if owners else "-Htn", "state", "established", f"( {expr} )"],
        capture_output=True,
        text=True,
        timeout=20,
    ).stdout
    connections = []
    seen = set()
    for line in out.splitlines():
        # Columns: Recv-Q Send-Q Local:port Peer:port users:((...)) — the state column is omitted.
        fields = line.split()
        if len(fields) < 4 or (fields[2], fields[3]) in seen:
            continue
        seen.add((fields[2], fields[3]))
        peer_port = int(fields[3].rsplit(":", 1)[1])
        connections.append((peer_port, {int(pid) for pid in _PID.findall(line)}))
    return connections


def established_by_pid(ports: list[int]) -> list[tuple[int, set[int]]]:
    """established_to with the pids holding each connection."""
    return established_to(ports, owners=True)


def count_owned(connections: list[tuple[int, set[int]]], owners: set[int]) -> int:
    return sum(1 for _port, holders in connections if holders & owners)


def count_owned_by_port(connections: list[tuple[int, set[int]]], owners: set[int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for port, holders in connections:
        if holders & owners:
            counts[port] = counts.get(port, 0) + 1
    return dict(sorted(counts.items()))
