"""`make bench-ab A=<rev> B=<rev>`: two builds of Juggler side by side, in alternating rounds.

A change of a few percent drowns in the noise of one run after the other on a shared machine: the
machine's state drifts between runs by more than that. So both builds run at once against the same
three nginx backends, and the load alternates between them round by round (A B A B ...); each pair
of neighbouring rounds gives one ratio B/A, and the median of those ratios is the verdict. Runs in
a private network namespace (bench/ab.sh re-executes itself under `unshare --net`), so nothing
else on the machine's loopback shares its ports or its connection tables.

Each revision is exported with `git archive` (a clean tree: nothing uncommitted leaks in) and built
like `make all` builds the shipped binary (static, release profile of that revision), with the
bench's config compiled in (pool of 8 per backend, 2 worker threads; AB_WORKERS, AB_WORKERS_A,
AB_WORKERS_B and AB_POOL, AB_POOL_A, AB_POOL_B change that; AB_PIPELINE, AB_PIPELINE_A,
AB_PIPELINE_B = 1 build with the upstream's `pipeline = true`). Binaries are cached by commit
under bench/out/ab/bin, so bisecting builds each commit once.

Settings (environment): AB_ROUNDS pairs of rounds (default 6), AB_DURATION seconds per round
(default 8), AB_CONNS wrk connections (default 64), AB_PATH (default /small.txt, 12 B),
AB_SCRIPT (a wrk Lua script: AB_PATH=/post AB_SCRIPT=bench/post16k.lua is the bench's 16 KiB POST),
AB_RUST_LOG (default warn: no access log; `info` measures it on; AB_RUST_LOG_A / AB_RUST_LOG_B for
one side, e.g. A=HEAD B=HEAD AB_RUST_LOG_B=info: the access log's cost); AB_TOOL=callgrind counts
instructions per request instead (one window each, under valgrind: exact, not timed); AB_LOAD=h2
loads over HTTPS with HTTP/2 (h2load, AB_H2_CONNS x AB_H2_STREAMS, default 10 x 10) instead of
wrk's plain HTTP/1.1, in either mode (the builds then have an HTTPS listener).
AB_MODE=together loads A and B at the same time, each with half the connections, in every
round: the paired ratio of requests per CPU-second is about three times tighter (both halves see
the same machine state), req/s is not (see bench/README.md).
Output: a table on stdout and in bench/out/ab/<A>-<B>.md (with the share of the machine's CPU time
left idle during the rounds: at full load a balancer that keeps the cores waiting on each other
shows there first); raw wrk output under bench/out/ab/logs.
"""

import os
import re
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import load
import targets as sides
from procs import (Processes, cpu_seconds, established_by_pid, count_owned, machine_cpu_ticks, process_tree,
                   wait_listening)

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out" / "ab"
TRIPLE, STATIC = sides.TRIPLE, sides.STATIC


def resolve(ref: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=9", "--verify", f"{ref}^{{commit}}"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"bench-ab: {ref!r} names no commit: {done.stderr.strip()}")
    return done.stdout.strip()


def over_h2() -> bool:
    """AB_LOAD=h2: the load is HTTP/2 over TLS (h2load), wall clock or callgrind."""
    return os.environ.get("AB_LOAD") == "h2"


def build(commit: str, port: int) -> Path:
    """The release binary of `commit` with the bench's config, built once and cached."""
    workers = worker_threads(port)
    pool = pool_size(port)
    binary = OUT / "bin" / (f"juggler-{commit}-{port}{'-tls' if over_h2() else ''}"
                            f"{'' if workers == sides.WORKERS else f'-w{workers}'}"
                            f"{'' if pool == sides.POOL_PER_BACKEND else f'-p{pool}'}"
                            f"{'-pipeline' if pipelines(port) else ''}")
    if binary.exists():
        return binary
    source = OUT / "src" / commit
    if not (source / "Cargo.toml").exists():
        shutil.rmtree(source, ignore_errors=True)
        source.mkdir(parents=True)
        archive = subprocess.Popen(["git", "-C", str(REPO), "archive", commit], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(source)], stdin=archive.stdout, check=True)
        archive.stdout.close()
        if archive.wait() != 0:
            sys.exit(f"bench-ab: git archive {commit} failed")
    # Every file dated now, before every build. Cargo shares the artifacts of path packages across
    # trees by their workspace-relative path and judges freshness by mtime: sources dated at their
    # commit, or extracted before another revision was built, looked fresh and that other
    # revision's crates were linked in.
    now = time.time()
    for path in source.rglob("*"):
        if path.is_file():
            os.utime(path, (now, now))
    config = OUT / "config" / str(port)
    config.mkdir(parents=True, exist_ok=True)
    target = sides.Target("juggler", "B", port, port + 1000)
    # The admin listener (and with it metric counting) as shipped, on a port of each build's own;
    # a revision from before `[admin]` existed has neither.
    admin = f"{sides.HOST}:{port + 2}" if sides.supports_admin(source) else None
    certs = None
    if over_h2():
        certs, problem = sides.make_certs(REPO, OUT)
        if problem:
            sys.exit(f"bench-ab: {problem}")
    lb, routes = sides.juggler_config(certs, target, admin, workers, pool, pipelines(port))
    (config / "load_balancer.toml").write_text(lb)
    (config / "routes.toml").write_text(routes)
    log = OUT / "logs" / f"build-{commit}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # One target directory for every revision: dependencies are compiled once per profile.
    env = dict(os.environ, JUGGLER_CONFIG=str(config), JUGGLER_ROUTES=str(config / "routes.toml"),
               CARGO_TARGET_DIR=str(OUT / "target"), RUSTFLAGS=STATIC)
    # `make bench-ab A=.. B=..` passes A and B down in MAKEFLAGS, and jemalloc's own Makefile
    # (built by tikv-jemalloc-sys) has a variable A, the archive suffix: it then wrote
    # libjemalloc_pic.<commit> and the link failed.
    for inherited in ("MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "MAKELEVEL"):
        env.pop(inherited, None)
    print(f"building {commit} for port {port} (log: {log}) ...", flush=True)
    started = time.monotonic()
    with open(log, "wb") as sink:
        done = subprocess.run(["cargo", "build", "--release", "--target", TRIPLE, "--bin", "juggler"],
                              cwd=source, env=env, stdout=sink, stderr=sink)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        sys.exit(f"bench-ab: building {commit} failed:\n{tail}")
    binary.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(OUT / "target" / TRIPLE / "release" / "juggler", binary)
    print(f"built {commit} in {time.monotonic() - started:.0f} s", flush=True)
    return binary


class Load:
    """One load generator run against one build, with that build's CPU time counted over it."""

    def __init__(self, name: str, port: int, pid: int, log: Path, share: int = 1):
        """`share`: how many loads run at once (AB_MODE=together: 2), each with that fraction of
        the connections, so the machine carries the same load as one round alone."""
        duration = int(os.environ.get("AB_DURATION", "8"))
        path = os.environ.get("AB_PATH", "/small.txt")
        self.name, self.log = name, log
        self.measured = process_tree(pid)
        self.cpu_before = cpu_seconds(self.measured)
        self.idle_before, self.all_before = machine_cpu_ticks()
        if over_h2():
            self.argv = ["h2load", *h2_streams(share), "-t1", f"-D{duration}",
                         f"--log-file={log.with_suffix('.latency')}", f"https://{sides.HOST}:{port + 1000}{path}"]
        else:
            conns = max(1, int(os.environ.get("AB_CONNS", "64")) // share)
            self.argv = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", "5s",
                         *wrk_script(), f"http://{sides.HOST}:{port}{path}"]
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.timeout = duration + 60

    def finish(self) -> dict:
        output = self.proc.communicate(timeout=self.timeout)[0]
        cpu = cpu_seconds(self.measured) - self.cpu_before
        idle_after, all_after = machine_cpu_ticks()
        idle = 100 * (idle_after - self.idle_before) / max(all_after - self.all_before, 1)
        self.log.write_text(" ".join(self.argv) + "\n" + output)
        result = (load.parse_h2load(output, self.log.with_suffix(".latency")) if over_h2()
                  else load.parse_wrk(output))
        if result.problem or result.errors or result.non_2xx:
            sys.exit(f"bench-ab: {self.name}: {result.problem or ''} errors {result.errors}, "
                     f"non-2xx {result.non_2xx} (see {self.log})")
        backend = count_owned(established_by_pid(sides.BACKEND_PORTS), self.measured)
        return {"rps": result.rps, "per_cpu": result.requests / cpu if cpu > 0 else 0.0, "p99": result.p99_ms,
                "backend_conns": backend, "idle": idle}


def run_round(name: str, port: int, pid: int, log: Path) -> dict:
    return Load(name, port, pid, log).finish()


def together() -> bool:
    """AB_MODE=together: each round loads A and B at the same time, each with half the
    connections, instead of one after the other. Both then see the same machine state to the
    millisecond (the neighbour that moves a whole alternating round moves both halves alike), at
    the price of measuring each build at half the load, beside the other."""
    return os.environ.get("AB_MODE") == "together"


def h2_streams(share: int = 1) -> list[str]:
    """h2load's connections and streams per connection: AB_H2_CONNS x AB_H2_STREAMS (10 x 10, as
    the bench's `https-h2` row), the connections divided by `share` (see `Load`)."""
    conns = max(1, int(os.environ.get("AB_H2_CONNS", "10")) // share)
    return [f"-c{conns}", f"-m{os.environ.get('AB_H2_STREAMS', '10')}"]


def count_instructions(name: str, binary: Path, port: int, procs: Processes) -> dict:
    """Instructions per request, counted by callgrind: the same for the same binary and load,
    whatever else the machine does, so it shows a change of 1 % that wall-clock rounds cannot
    (AB_TOOL=callgrind). Counted over a measured window after a warm-up; the dump is kept for
    callgrind_annotate, function by function."""
    workdir = OUT / "run" / f"{name}-callgrind"
    workdir.mkdir(parents=True, exist_ok=True)
    dump = OUT / f"callgrind.{binary.name}.out"
    for stale in OUT.glob(f"callgrind.{binary.name}.out*"):
        stale.unlink()
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}", str(binary)]
    proc = procs.start(f"{name}-callgrind", argv, workdir / "stderr.log",
                       env=dict(os.environ, RUST_LOG=os.environ.get("AB_RUST_LOG", "warn")))
    wait_listening(port, proc, workdir / "stderr.log", timeout=120)
    duration = os.environ.get("AB_DURATION", "8")
    path = os.environ.get("AB_PATH", "/small.txt")
    if over_h2():
        url = f"https://{sides.HOST}:{port + 1000}{path}"
        load_for = lambda seconds: ["h2load", *h2_streams(), "-D", str(seconds), url]  # noqa: E731
    else:
        conns = os.environ.get("AB_CONNS", "64")
        url = f"http://{sides.HOST}:{port}{path}"
        load_for = lambda seconds: ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "10s",  # noqa: E731
                                    *wrk_script(), url]
    subprocess.run(load_for(3), capture_output=True, timeout=120)
    subprocess.run(["callgrind_control", "--zero", str(proc.pid)], capture_output=True, timeout=60)
    output = subprocess.run(load_for(duration), capture_output=True, text=True, timeout=300).stdout
    result = h2load_done(output) if over_h2() else load.parse_wrk(output)
    subprocess.run(["callgrind_control", "--dump", str(proc.pid)], capture_output=True, timeout=120)
    procs.stop([f"{name}-callgrind"])
    # The dump taken on request is <file>.<n>; the one at exit (the stop) is not counted.
    dumps = sorted(OUT.glob(f"callgrind.{binary.name}.out.*"), key=lambda p: p.stat().st_mtime)
    if not dumps or not result.requests:
        sys.exit(f"bench-ab: callgrind of {name} gave no dump or no requests (see {workdir})")
    totals = re.search(r"^(?:summary|totals):\s*(\d+)", dumps[-1].read_text(errors="replace"), re.M)
    instructions = int(totals.group(1)) if totals else 0
    print(f"{name}: {instructions:,} instructions over {result.requests:,} requests "
          f"({dumps[-1]})", flush=True)
    return {"per_request": instructions / result.requests, "dump": dumps[-1]}


def h2load_done(output: str) -> load.RoundResult:
    """The requests h2load completed (all that callgrind's count needs), or none."""
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", output)
    succeeded = int(done.group(2)) if done else 0
    return load.RoundResult(0, 0, 0, 0, 0, [], requests=succeeded)


def count_series(revisions: list[str], binaries: list[Path]) -> None:
    """Instructions per request of each revision in turn (a bisect's curve: where it jumps)."""
    procs = Processes(OUT / "pids")
    counted = []
    try:
        sides.start_backends(procs, OUT, None)
        for index, (commit, binary) in enumerate(zip(revisions, binaries)):
            counted.append(count_instructions(commit, binary, 18080 + 100 * index, procs))
    finally:
        procs.stop_all()
    first = counted[0]["per_request"]
    lines = [f"# Instructions per request (callgrind), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             (f"h2load -c{os.environ.get('AB_H2_CONNS', '10')} -m{os.environ.get('AB_H2_STREAMS', '10')} HTTPS "
              if over_h2() else f"wrk -t1 -c{os.environ.get('AB_CONNS', '64')} ")
             + f"{os.environ.get('AB_PATH', '/small.txt')}, "
             f"RUST_LOG={os.environ.get('AB_RUST_LOG', 'warn')}, pool {per_side(pool_size)} x 3 nginx backends"
             f"{', pipeline ' + per_side(pipelines) if pipelines(18080) or pipelines(18180) else ''}, "
             f"worker threads {per_side(worker_threads)}", "",
             "| revision | instructions per request | vs previous | vs first |", "|---|---:|---:|---:|"]
    for index, (commit, got) in enumerate(zip(revisions, counted)):
        previous = counted[index - 1]["per_request"] if index else got["per_request"]
        lines.append(f"| {commit} | {got['per_request']:,.0f} | {got['per_request'] / previous:.3f} | "
                     f"{got['per_request'] / first:.3f} |")
    lines += ["", "function by function: callgrind_annotate " + " ".join(str(got["dump"]) for got in counted)]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    (OUT / f"{revisions[0]}-{revisions[-1]}-callgrind.md").write_text(text)


def wrk_script() -> list[str]:
    """AB_SCRIPT: a wrk Lua script for every round, e.g. AB_PATH=/post AB_SCRIPT=bench/post16k.lua
    (the bench's 16 KiB POST)."""
    script = os.environ.get("AB_SCRIPT")
    return ["-s", str(Path(script).resolve())] if script else []


def worker_threads(port: int) -> int:
    """Runtime threads of the build on `port`: AB_WORKERS_A / AB_WORKERS_B (the first and second
    revision), else AB_WORKERS, else the bench's 2. One revision against itself on one thread and
    on two: A=HEAD B=HEAD AB_WORKERS_B=1 (issue 18's thread layout)."""
    side = "A" if port == 18080 else "B"
    return int(os.environ.get(f"AB_WORKERS_{side}") or os.environ.get("AB_WORKERS", str(sides.WORKERS)))


def pool_size(port: int) -> int:
    """Connections per backend of the build on `port`: AB_POOL_A / AB_POOL_B, else AB_POOL, else
    the bench's 8. One revision against itself with a pool big enough that no request queues:
    A=HEAD B=HEAD AB_POOL_B=64 (what waiting for a slot costs at 64 connections)."""
    side = "A" if port == 18080 else "B"
    return int(os.environ.get(f"AB_POOL_{side}") or os.environ.get("AB_POOL", str(sides.POOL_PER_BACKEND)))


def pipelines(port: int) -> bool:
    """Whether the build on `port` has the upstream's `pipeline = true`: AB_PIPELINE_A /
    AB_PIPELINE_B = 1, else AB_PIPELINE. One revision with and without it: A=HEAD B=HEAD
    AB_PIPELINE_B=1."""
    side = "A" if port == 18080 else "B"
    return (os.environ.get(f"AB_PIPELINE_{side}") or os.environ.get("AB_PIPELINE", "0")) == "1"


def per_side(setting) -> str:
    """A build setting (`pool_size`, `worker_threads`) as the header says it: one value, or the
    first revision's and the others' when they differ."""
    first, others = setting(18080), setting(18180)
    return str(first) if first == others else f"{first} (first) / {others} (others)"


def rust_log(side: str) -> str:
    """RUST_LOG for one side: AB_RUST_LOG_A / AB_RUST_LOG_B, else AB_RUST_LOG, else warn (no access
    log). One revision against itself with the log off and on: A=HEAD B=HEAD AB_RUST_LOG_B=info."""
    return os.environ.get(f"AB_RUST_LOG_{side}") or os.environ.get("AB_RUST_LOG", "warn")


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f} - {max(values):,.0f})"


def main() -> None:
    callgrind = os.environ.get("AB_TOOL") == "callgrind"
    if len(sys.argv) != 3 and not (callgrind and len(sys.argv) > 3):
        sys.exit("usage: ab.py A-REV B-REV (with AB_TOOL=callgrind: any number of revisions, in order)")
    revisions = [resolve(ref) for ref in sys.argv[1:]]
    # Built outside the namespace (cargo may need the registry), measured inside it.
    built = [build(commit, 18080 + 100 * index) for index, commit in enumerate(revisions)]
    if os.environ.get("AB_IN_NETNS") != "1":
        script = f"ip link set lo up && AB_IN_NETNS=1 exec python3 {Path(__file__).resolve()} {' '.join(revisions)}"
        os.execvp("unshare", ["unshare", "--net", "--", "sh", "-c", script])
    if callgrind:
        return count_series(revisions, built)
    a, b = revisions
    rounds = int(os.environ.get("AB_ROUNDS", "6"))
    ports = {"A": 18080, "B": 18180}
    binaries = {"A": built[0], "B": built[1]}
    procs = Processes(OUT / "pids")
    results: dict[str, list[dict]] = {"A": [], "B": []}
    logs = OUT / "logs"
    try:
        sides.start_backends(procs, OUT, None)
        pids = {}
        for side in ("A", "B"):
            workdir = OUT / "run" / side
            workdir.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ, RUST_LOG=rust_log(side))
            argv = [str(binaries[side])]
            shown = subprocess.run(argv + ["--help"], capture_output=True, text=True).stdout
            if "--control-socket" in shown:
                # Its own, not ./juggler.sock (a `make run` in the repository uses that one).
                argv += ["--control-socket", str(workdir / "juggler.sock")]
            proc = procs.start(side, argv, workdir / "stderr.log", env=env)
            wait_listening(ports[side], proc, workdir / "stderr.log")
            pids[side] = proc.pid
        # A short warm-up of each: pools open, caches warm, the allocator past its first growth.
        for side in ("A", "B"):
            run_round(side, ports[side], pids[side], logs / f"warmup-{side}.txt")
        for index in range(rounds):
            # Alternate which goes first, so neither always follows the other.
            order = ("A", "B") if index % 2 == 0 else ("B", "A")
            if together():
                loads = {side: Load(side, ports[side], pids[side], logs / f"round{index}-{side}.txt", share=2)
                         for side in order}
                measured = [(side, loads[side].finish()) for side in order]
            else:
                measured = ((side, run_round(side, ports[side], pids[side], logs / f"round{index}-{side}.txt"))
                            for side in order)
            for side, got in measured:
                results[side].append(got)
                print(f"round {index + 1}/{rounds} {side}: {got['rps']:,.0f} req/s, {got['per_cpu']:,.0f} "
                      f"req/CPU-s, p99 {got['p99']:.2f} ms, {got['backend_conns']} backend conns, "
                      f"machine idle {got['idle']:.1f} %", flush=True)
    finally:
        procs.stop_all()
    report(a, b, results)


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free interval for the median of `values` (the paired ratios): the k-th
    smallest and the k-th largest, with k the largest rank for which Binomial(n, 1/2) puts no more
    than (1 - level) / 2 below it. It assumes only that the pairs are independent, not that the
    noise is normal (it is not: one busy neighbour moves a whole round). None below 6 values,
    too few for a 95 % interval.

    >>> median_interval([float(v) for v in range(1, 17)])
    (4.0, 13.0)
    >>> median_interval([float(v) for v in range(1, 11)])
    (2.0, 9.0)
    >>> median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) is None
    True
    """
    n = len(values)
    ordered = sorted(values)
    below, rank = 0.0, 0
    while rank < n:
        below += math.comb(n, rank) / 2**n
        if below > (1 - level) / 2:
            break
        rank += 1
    if rank == 0:
        return None
    return ordered[rank - 1], ordered[n - rank]


def verdict(paired: list[float]) -> str:
    """What the paired ratios say at 95 %: B faster or slower only when the median's interval
    leaves out 1.

    >>> verdict([1.02, 1.04, 1.05, 1.06, 1.07, 1.09])
    '95 % interval of the median 1.020 - 1.090: B faster'
    >>> verdict([0.91, 0.93, 0.95, 0.96, 0.97, 0.98])
    '95 % interval of the median 0.910 - 0.980: B slower'
    >>> verdict([0.97, 1.05, 1.06, 1.07, 1.08, 1.09])
    '95 % interval of the median 0.970 - 1.090: no difference resolved at this count'
    >>> verdict([1.1, 1.2])
    'too few pairs (2) for a 95 % interval of the median'
    """
    interval = median_interval(paired)
    if interval is None:
        return f"too few pairs ({len(paired)}) for a 95 % interval of the median"
    low, high = interval
    if low > 1:
        said = "B faster"
    elif high < 1:
        said = "B slower"
    else:
        said = "no difference resolved at this count"
    return f"95 % interval of the median {low:.3f} - {high:.3f}: {said}"


def report(a: str, b: str, results: dict[str, list[dict]]) -> None:
    def ratios(key: str) -> list[float]:
        return [rb[key] / ra[key] for ra, rb in zip(results["A"], results["B"]) if ra[key] > 0]

    lines = [
        f"# A/B: A = {a}, B = {b}",
        "",
        f"{len(results['A'])} "
        + ("rounds of A and B loaded together, each with half of " if together() else "alternating rounds of ")
        + (f"h2load {' '.join(h2_streams())} HTTPS " if over_h2() else f"wrk -t1 -c{os.environ.get('AB_CONNS', '64')} ")
        + f"-d{os.environ.get('AB_DURATION', '8')}s {os.environ.get('AB_PATH', '/small.txt')}, "
        f"RUST_LOG A={rust_log('A')} B={rust_log('B')}, worker threads A={worker_threads(18080)} "
        f"B={worker_threads(18180)}, pool A={pool_size(18080)} B={pool_size(18180)} x 3 nginx backends, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| | req/s median (min - max) | req per CPU-s median (min - max) | p99 ms median | backend conns "
        "| machine idle % median |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for side, commit in (("A", a), ("B", b)):
        rows = results[side]
        lines.append(f"| {side} {commit} | {spread([r['rps'] for r in rows])} | "
                     f"{spread([r['per_cpu'] for r in rows])} | "
                     f"{statistics.median([r['p99'] for r in rows]):.2f} | "
                     f"{max(r['backend_conns'] for r in rows)} | "
                     f"{statistics.median([r['idle'] for r in rows]):.1f} |")
    for key, label in (("rps", "req/s"), ("per_cpu", "req per CPU-s")):
        paired = ratios(key)
        lines.append("")
        lines.append(f"B/A {label}: median of paired rounds {statistics.median(paired):.3f} "
                     f"(min {min(paired):.3f}, max {max(paired):.3f}); ratio of medians "
                     f"{statistics.median([r[key] for r in results['B']]) / statistics.median([r[key] for r in results['A']]):.3f}; "
                     f"{verdict(paired)}")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    (OUT / f"{a}-{b}.md").write_text(text)


if __name__ == "__main__":
    main()
