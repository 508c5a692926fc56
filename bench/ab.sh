#!/usr/bin/env bash
# `make bench-ab A=<rev> B=<rev>`: bench/ab.py in alternating rounds (see its docstring). Needs
# root for the private network namespace; installs nginx, wrk, protoc (and h2load, valgrind
# when the settings need them) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 2 ]]; then
    echo "usage: bench/ab.sh A-REV B-REV   (e.g. bench/ab.sh HEAD~1 HEAD)" >&2
    exit 2
fi
missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
command -v ss >/dev/null || missing+=(iproute2)
# Building a revision needs protoc (the etcd client compiles etcd's .proto files).
command -v protoc >/dev/null || missing+=(protobuf-compiler)
[[ "${AB_LOAD:-}" != h2 ]] || command -v h2load >/dev/null || missing+=(nghttp2-client)
[[ "${AB_TOOL:-}" != callgrind ]] || command -v valgrind >/dev/null || missing+=(valgrind)
if ((${#missing[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
ulimit -n 20000
mkdir -p bench/out/ab
trap 'if [[ -f bench/out/ab/pids ]]; then while read -r pid; do kill -KILL -- "-$pid" 2>/dev/null || true; done <bench/out/ab/pids; fi' EXIT
PYTHONDONTWRITEBYTECODE=1 python3 bench/ab.py "$@"
