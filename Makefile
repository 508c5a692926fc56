# Juggler's verbs, as in the original: routes, all, clean, ssl_cert — plus run, test, bench.
#
# The route table and settings are compiled in from routes.toml and juggler_config/. Build a variant
# without editing the tree with JUGGLER_ROUTES=<file> and/or JUGGLER_CONFIG=<dir> (cargo passes them
# to build.rs, which rebuilds when they change).

CARGO   ?= cargo
TARGET  := x86_64-unknown-linux-gnu
# FAST=1: profile `fast` (no LTO) for the edit loop; the default is the shipped `release` (thin LTO).
PROFILE := $(if $(FAST),fast,release)
RELEASE := target/$(TARGET)/$(PROFILE)
# bin/juggler is one static binary: glibc linked in, nothing to install next to it (non-PIE, so
# `file` reports "statically linked").
STATIC  := -C target-feature=+crt-static -C relocation-model=static
BINS    := juggler test_server ssl_cert

.PHONY: all routes clean ssl_cert test run test_servers bench bench-ab fuzz upgrade soak fleet protoc test_tools

# The fleet's etcd client (etcd-client) compiles etcd's .proto files when it is built, which needs
# `protoc`: every verb that builds the runtime installs it first (Debian's protobuf-compiler, as
# root) or says what is missing, instead of failing deep in the build with a build-script panic.
protoc:
	@command -v protoc >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing protoc (Debian's protobuf-compiler): the etcd client's build needs it"; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler) >/dev/null \
				&& command -v protoc >/dev/null; \
		else \
			echo "protoc is missing: install protobuf-compiler (the etcd client's build compiles etcd's .proto files)" >&2; \
			exit 1; \
		fi; }

## all: build bin/juggler (static), bin/test_server and bin/ssl_cert in release mode (thin LTO);
## FAST=1 without LTO, for the edit -> binary loop
all: protoc
	RUSTFLAGS="$(STATIC)" $(CARGO) build --profile $(PROFILE) --target $(TARGET) $(addprefix --bin ,$(BINS))
	@mkdir -p bin
	@# Each binary is written beside its old self and renamed over it: a running bin/juggler (the one
	@# `make upgrade` takes over from) cannot be written to, but it can be replaced.
	@# Debug info goes beside the binary (gdb and perf find it through the debuglink); symbols stay.
	@for bin in $(BINS); do cp $(RELEASE)/$$bin bin/$$bin.new || exit 1; done
	@objcopy --only-keep-debug bin/juggler.new bin/juggler.debug
	@objcopy --strip-debug --add-gnu-debuglink=bin/juggler.debug bin/juggler.new
	@for bin in $(BINS); do mv -f bin/$$bin.new bin/$$bin; done
	@echo "built: $(addprefix bin/,$(BINS)) (debug info: bin/juggler.debug)"

## routes: validate the config, regenerate distributer.rs and print a summary of it
routes:
	$(CARGO) run -q -p juggler-codegen --bin juggler-routes -- --out target/juggler/distributer.rs

## clean: remove bin/, all build output and the generated distributer.rs
clean:
	$(CARGO) clean
	rm -rf bin

## ssl_cert: self-signed certificate and key (mode 0600) for localhost into juggler_config/
ssl_cert: protoc
	$(CARGO) run -q --bin ssl_cert -- --dir juggler_config
	@if git check-ignore -q juggler_config/server.key 2>/dev/null; then \
		echo "git ignores juggler_config/server.key and server.crt (.gitignore): they stay out of commits"; \
	else \
		echo "warning: git does not ignore juggler_config/server.key: keep it out of commits" >&2; \
	fi

# The tests run a real etcd (tests/fleet.rs) and a real headless Chromium (tests/status_page.rs):
# `make test` installs them first, as `.ci/run` does (Debian's etcd-server and chromium, as root),
# or says which are missing, rather than leaving a fresh machine with four failures to decode.
test_tools:
	@missing=""; \
	command -v etcd >/dev/null || missing="$$missing etcd-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing$$missing: the fleet tests run etcd, the status page test a headless Chromium"; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null; \
		else \
			echo "missing:$$missing (the fleet tests run etcd, the status page test a headless Chromium): those tests will fail" >&2; \
		fi; \
	fi

## test: every test of the workspace (unit, codegen, integration over loopback)
test: protoc test_tools
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi
	cd bench && PYTHONDONTWRITEBYTECODE=1 python3 -m doctest ab.py

## deb: target/debian/juggler_<version>+config.<hash>_amd64.deb of bin/juggler (cargo-deb, installed
## if missing): /usr/bin/juggler, the systemd units of contrib/systemd, a juggler system user; the
## debug info beside it as juggler_<version>_amd64.debug (install it as
## /usr/lib/debug/usr/bin/juggler.debug for gdb). The config hash names the compiled-in config.
DEB_VERSION = $(shell ./bin/juggler --version | sed -n 's/^juggler \([^ ]*\) (config \([0-9a-f]*\))$$/\1+config.\2/p')
.PHONY: deb
deb: all
	@command -v cargo-deb >/dev/null || $(CARGO) install cargo-deb --locked
	@test -n "$(DEB_VERSION)" || { echo "cannot read the version from bin/juggler --version" >&2; exit 1; }
	@# --no-build: the package holds the bin/juggler built above, not a build of cargo-deb's own.
	$(CARGO) deb --no-build --no-strip --deb-version $(DEB_VERSION) --output target/debian/
	cp bin/juggler.debug target/debian/juggler_$(DEB_VERSION)_amd64.debug
	@echo "built: target/debian/juggler_$(DEB_VERSION)_amd64.deb"

## run: the three test servers on 6901-6903 and Juggler on the compiled config; Ctrl-C stops all
## (after a `make upgrade`, the test servers stay up for the new Juggler until Ctrl-C here)
run: all
	@trap 'kill $$(jobs -p) 2>/dev/null; wait' EXIT; \
	for i in 1 2 3; do ./bin/test_server --port 690$$i --root ./test_server_root_$$i & done; \
	./bin/juggler; \
	while [ -S juggler.sock ]; do sleep 1; done

## upgrade: build, then hand the Juggler that `make run` started over to the new bin/juggler
## (listeners, idle clients, pooled backend connections; the old process exits when it holds nothing)
upgrade: all
	@test -S juggler.sock || { echo "no running Juggler at ./juggler.sock (start one with make run)" >&2; exit 1; }
	./bin/juggler --upgrade

## fleet: a local fleet demo: etcd on 2379, the three test servers, and three instances of a
## Juggler built from docs/fleet/ (HTTP 8081-8083, admin 9911-9913) sharing each server's 6
## connections; `bin/juggler status --admin 127.0.0.1:9911` shows a share. Ctrl-C stops all.
fleet: all
	JUGGLER_CONFIG=docs/fleet RUSTFLAGS="$(STATIC)" $(CARGO) build --release --target $(TARGET) --bin juggler
	cp $(RELEASE)/juggler bin/juggler-fleet
	@command -v etcd >/dev/null || { echo "etcd is missing: apt-get install etcd-server" >&2; exit 1; }
	@trap 'kill $$(jobs -p) 2>/dev/null; wait' EXIT; \
	rm -rf target/fleet-etcd; \
	etcd --data-dir target/fleet-etcd --log-level warn & \
	for i in 1 2 3; do ./bin/test_server --port 690$$i --root ./test_server_root_$$i & done; \
	sleep 2; \
	for i in 1 2 3; do \
		./bin/juggler-fleet --instance demo-$$i --listen-http 127.0.0.1:808$$i --admin 127.0.0.1:991$$i \
			--control-socket target/fleet-$$i.sock & \
	done; \
	wait

## test_servers: only the three test servers (Ctrl-C stops them)
test_servers: all
	@trap 'kill $$(jobs -p) 2>/dev/null; wait' EXIT; \
	for i in 1 2 3; do ./bin/test_server --port 690$$i --root ./test_server_root_$$i & done; \
	wait

## bench: Juggler against nginx, HAProxy, Pingora and Caddy in one run (installs or builds them if
## missing; BENCH_QUICK=1 for a short smoke run); see bench/README.md; then a screenshot of the
## status page under load (bench/out/status.png, bench/status_screenshot.py)
bench:
	bash bench/run.sh
	python3 bench/status_screenshot.py

## bench-ab: two revisions side by side in alternating rounds (AB_MODE=together: loaded at once), the
## ratio B/A of req/s and req per CPU-second with its spread (A=<rev> B=<rev>, default HEAD~1 and
## HEAD; see bench/ab.py)
A ?= HEAD~1
B ?= HEAD
bench-ab:
	bash bench/ab.sh $(A) $(B)

## fuzz: each fuzz target of tests/fuzz for FUZZ_SECONDS (60) under libFuzzer + ASan; a crash fails
## it and lands in tests/fuzz/artifacts/<target>/ (installs cargo-fuzz if missing)
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := chunked request_head response_head route_match head_vs_hyper
fuzz: protoc
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@# cargo-fuzz needs nightly flags (-Z sanitizer, sancov); stable accepts them this way.
	cd tests/fuzz && for target in $(FUZZ_TARGETS); do \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -O --fuzz-dir . $$target -- \
			-max_total_time=$(FUZZ_SECONDS) -max_len=4096 -print_final_stats=1 || exit 1; \
	done

## soak: chaos soak for SOAK_SECONDS (600): mixed load against a Juggler built from tests/soak/
## while backends are killed, hung and slowed; checks every answer, POSTs sent once, pools at n,
## RSS and fds (tests/soak.rs; runs in a private network namespace, so it needs root). Same target
## and RUSTFLAGS as `make all`: its release dependencies are reused and the Juggler under test is
## built like the shipped one (the next `make all` relinks bin/juggler with the shipped config).
SOAK_SECONDS ?= 600
soak: protoc
	JUGGLER_CONFIG=tests/soak JUGGLER_ROUTES=tests/soak/routes.toml RUSTFLAGS="$(STATIC)" \
		SOAK_SECONDS=$(SOAK_SECONDS) \
		$(CARGO) test --release --target $(TARGET) --test soak -- --ignored --nocapture
