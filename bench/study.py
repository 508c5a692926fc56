"""What the studies with backends of their own share (bench/uneven.py, protect.py, fleet.py):
`bin/test_server` backends, Juggler built with the study's config baked in, HAProxy and nginx
started from a config text, wrk with a Lua script that counts who answered and when, and a
sampler of the established connections to the backends.

Only one balancer (in the fleet study: one kind, three instances) runs at a time and nothing else
talks to a study's backends, so counting the established connections to a backend port counts
that balancer's.
"""

import math
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from targets import STATIC, TRIPLE

from load import RoundResult, parse_wrk
from procs import Processes, established_to, wait_listening

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
# wrk's answers are counted per this many milliseconds of wall-clock time.
BUCKET_MS = 100

COUNT_ANSWERS = """
-- Counts which backend answered (its body is `server N`; anything else by status), and how many
-- answers came in each 100 ms of wall-clock time (LuaJIT's ffi reads the clock: os.time() has
-- whole seconds only). Per thread, summed in done(); `counts` and `buckets` are globals so that
-- done() can read each thread's copy with thread:get().
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } study_timespec;
int clock_gettime(int clock, study_timespec *now);
]]
local now = ffi.new("study_timespec")
counts = {}
buckets = {}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {} buckets = {} end
function response(status, headers, body)
  local key = body:match("server %d") or ("status " .. status)
  counts[key] = (counts[key] or 0) + 1
  ffi.C.clock_gettime(0, now)  -- CLOCK_REALTIME, as Python's time.time()
  local bucket = tonumber(now.tv_sec) * 10 + math.floor(tonumber(now.tv_nsec) / 100000000)
  buckets[bucket] = (buckets[bucket] or 0) + 1
end
function done(summary, latency, requests)
  local total, per_bucket = {}, {}
  for _, thread in ipairs(threads) do
    for k, v in pairs(thread:get("counts")) do total[k] = (total[k] or 0) + v end
    for k, v in pairs(thread:get("buckets")) do per_bucket[k] = (per_bucket[k] or 0) + v end
  end
  for k, v in pairs(total) do io.write(string.format("answered %s %d\\n", k, v)) end
  for k, v in pairs(per_bucket) do io.write(string.format("bucket %d %d\\n", k, v)) end
end
"""


def test_server() -> Path:
    """bin/test_server, built (release) if missing."""
    binary = REPO / "bin" / "test_server"
    if not binary.exists():
        subprocess.run(["make", "all"], cwd=REPO, check=True)
    return binary


def start_test_servers(procs: Processes, out: Path, ports: list[int], extra_args: list[list[str]]) -> None:
    """One test_server per port, serving test_server_root_{1,2,3} (each answers `server N`), with
    its own extra arguments; returns once all listen."""
    binary = test_server()
    for i, (port, extra) in enumerate(zip(ports, extra_args), start=1):
        log = out / "logs" / f"backend{i}.log"
        proc = procs.start(f"backend{i}", [str(binary), "--port", str(port), "--root",
                                           str(REPO / f"test_server_root_{i}"), *extra], log)
        wait_listening(port, proc, log)


def juggler_config(written_by: str, port: int, upstream: str, upstream_keys: str, workers: int,
                   admin: str | None = None, sections: str = "") -> tuple[str, str]:
    """A study's load_balancer.toml and routes.toml: one HTTP listener on `port`, `[admin]`
    listening on `admin` when given, any further `sections` (e.g. `[fleet]`), and one upstream
    with `upstream_keys` (balance, pool, servers, protection) that every path goes to."""
    admin_section = f'[admin]\nlisten = "{admin}"\n\n' if admin is not None else ""
    lb = f"""# Written by {written_by}.
[listen]
http = "{HOST}:{port}"
https = "off"
tls = "off"

{admin_section}[queue]
max_queued_per_server = 4096

[proxy]
worker_threads = {workers}
{sections}
[upstreams.{upstream}]
{upstream_keys}"""
    routes = f'[[route]]\nmethods = "*"\npaths = ["/*"]\nupstream = "{upstream}"\n'
    return lb, routes


def main(run: Callable[[Path, int, int], str], duration: int, rounds: int) -> int:
    """A study run as a script: `run(out_root, duration, rounds)` with BENCH_DURATION,
    BENCH_ROUNDS and BENCH_OUT from the environment (`duration` and `rounds` the defaults)."""
    os.chdir(REPO)
    duration = int(os.environ.get("BENCH_DURATION", str(duration)))
    rounds = int(os.environ.get("BENCH_ROUNDS", str(rounds)))
    out_root = Path(os.environ.get("BENCH_OUT", REPO / "bench" / "out")).resolve()
    print("\n" + run(out_root, duration, rounds), flush=True)
    return 0


def build_juggler(name: str, lb: str, routes: str, out: Path, shows: str) -> Path:
    """Compiles Juggler with this load_balancer.toml and routes.toml baked in, into out/<name>;
    `shows`: a line `juggler --print-routes` must print, proving the config took."""
    binary = out / name
    if os.environ.get("BENCH_SKIP_BUILD") == "1" and binary.exists():
        return binary
    config = out / f"{name}-config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "load_balancer.toml").write_text(lb)
    (config / "routes.toml").write_text(routes)
    env = dict(os.environ, JUGGLER_CONFIG=str(config), JUGGLER_ROUTES=str(config / "routes.toml"),
               RUSTFLAGS=STATIC)
    log = out / f"{name}-build.log"
    print(f"building {name} (cargo build --release --target {TRIPLE} --bin juggler, static as `make all` "
          f"builds it; log {log}) ...", flush=True)
    with open(log, "wb") as sink:
        subprocess.run(["cargo", "build", "--release", "--target", TRIPLE, "--bin", "juggler"], cwd=REPO,
                       env=env, stdout=sink, stderr=sink, check=True)
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    shutil.copy2(target_dir / TRIPLE / "release" / "juggler", binary)
    shown = subprocess.run([str(binary), "--print-routes"], capture_output=True, text=True, check=True)
    if shows not in shown.stdout:
        raise RuntimeError(f"{binary} was not built with the config of {name} (no {shows!r}):\n{shown.stdout}")
    return binary


def start_juggler(procs: Processes, name: str, binary: Path, port: int, out: Path,
                  extra_args: list[str] = ()) -> None:
    """extra_args: flags after --control-socket (a fleet instance's --instance, --listen-http, --admin)."""
    log = out / "logs" / f"{name}.log"
    env = dict(os.environ, RUST_LOG="warn")
    proc = procs.start(name, [str(binary), "--control-socket", str(out / f"{name}.sock"), *extra_args], log, env)
    wait_listening(port, proc, log)


def start_nginx(procs: Processes, name: str, conf: Callable[[Path], str], port: int, out: Path) -> None:
    """conf: the nginx.conf text, given its working directory."""
    log = out / "logs" / f"{name}.log"
    workdir = out / name
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "nginx.conf").write_text(conf(workdir))
    proc = procs.start(name, ["nginx", "-p", str(workdir), "-c", str(workdir / "nginx.conf")], log)
    wait_listening(port, proc, log)


def start_haproxy(procs: Processes, name: str, cfg: str, port: int, out: Path) -> None:
    log = out / "logs" / f"{name}.log"
    (out / f"{name}.cfg").write_text(cfg)
    proc = procs.start(name, ["haproxy", "-db", "-f", str(out / f"{name}.cfg")], log)
    wait_listening(port, proc, log)


def backend_connections(ports: list[int]) -> list[int]:
    """Established connections to each of these ports right now, counted on the balancer's side,
    each address pair once (procs.established_to)."""
    counts = dict.fromkeys(ports, 0)
    for port, _owners in established_to(ports):
        counts[port] += 1
    return [counts[port] for port in ports]


class ConnectionSampler:
    """The most established connections seen on each backend port (backend_connections), sampled
    every `interval` seconds on a thread of its own while the `with` block runs."""

    def __init__(self, ports: list[int], interval: float):
        self.ports = ports
        self.interval = interval
        self.most = [0] * len(ports)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def __enter__(self) -> "ConnectionSampler":
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.most[:] = [max(a, b) for a, b in zip(self.most, backend_connections(self.ports))]
            self.samples += 1


def wrk_argv(port: int, path: str, duration: float, conns: int, script: Path, threads: int = 2) -> list[str]:
    """wrk against 127.0.0.1:port with --latency, a 5 s timeout and a Lua script."""
    return ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", "5s",
            "-s", str(script), f"http://{HOST}:{port}{path}"]


@dataclass
class WrkRun:
    result: RoundResult
    # Answers by who gave them: "server N" (the backend's body), else "status S".
    answered: dict[str, int]
    # Answers per BUCKET_MS of wall-clock time, keyed by time.time() * 1000 // BUCKET_MS.
    buckets: dict[int, int]
    # The most established connections seen on each backend port (sampled every 250 ms).
    most_conns: list[int]
    # time.time() when each of the `events` passed to run_wrk ran.
    marks: list[float] = field(default_factory=list)

    def share(self, key: str) -> float:
        """Percent of all answers (of every kind) counted under `key`."""
        return 100.0 * self.answered.get(key, 0) / (sum(self.answered.values()) or 1)

    def share_5xx(self) -> float:
        return sum(self.share(k) for k in self.answered if re.fullmatch(r"status 5\d\d", k))

    def rate_between(self, start: float, end: float) -> float:
        """Answers per second in the whole buckets between two time.time() values."""
        first = math.ceil(start * 1000 / BUCKET_MS)
        last = math.floor(end * 1000 / BUCKET_MS)  # exclusive
        if last <= first:
            return 0.0
        answers = sum(n for bucket, n in self.buckets.items() if first <= bucket < last)
        return answers * 1000 / ((last - first) * BUCKET_MS)


def run_wrk(port: int, path: str, duration: int, conns: int, backend_ports: list[int], log: Path,
            events: list[tuple[float, Callable[[], None]]] = ()) -> WrkRun:
    """wrk -t2 against 127.0.0.1:port for `duration` s, counting answers (COUNT_ANSWERS) and
    sampling the backend connections; `events`: (seconds after the start, what to do then)."""
    script = log.parent / "count_answers.lua"
    script.write_text(COUNT_ANSWERS)
    argv = wrk_argv(port, path, duration, conns, script)
    marks: list[float] = []
    stop = threading.Event()

    def act(started: float):
        for at, action in sorted(events, key=lambda e: e[0]):
            if stop.wait(max(0.0, started + at - time.monotonic())):
                return
            action()
            marks.append(time.time())

    actor = threading.Thread(target=act, args=(time.monotonic(),))
    with ConnectionSampler(backend_ports, 0.25) as sampler:
        actor.start()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
        finally:
            stop.set()
            actor.join()
    output = done.stdout + done.stderr
    log.write_text(output)
    answered = {key: int(n) for key, n in re.findall(r"^answered (.+) (\d+)$", output, re.M)}
    buckets = {int(b): int(n) for b, n in re.findall(r"^bucket (\d+) (\d+)$", output, re.M)}
    return WrkRun(parse_wrk(output), answered, buckets, sampler.most, marks)


def haproxy_cfg(name: str, port: int, balance: str, servers: str, backend_lines: str = "",
                workers: int = 2) -> str:
    """A study's HAProxy: one frontend on `port`, one backend `name` with `servers` lines."""
    from targets import HAPROXY_DEFAULTS
    return f"""global
    nbthread {workers}
    maxconn 9000

{HAPROXY_DEFAULTS}
frontend {name}
    bind {HOST}:{port} backlog 4096
    default_backend {name}

backend {name}
    balance {balance}
{backend_lines}{servers}"""
