# wsgateway: `make run` starts the gateway on the example services config,
# `make test` runs every check. Both install what they need first.
# `make install` puts the wsgateway command in $(PREFIX)/bin.

GO        ?= go
BIN       := bin/wsgateway
WS_PORT   ?= 9091
HTTP_PORT ?= 9090
# make run listens on this machine only: its desktops have a terminal, and
# it sets no credentials. BIND=0.0.0.0 (with WEBSOCKETSERVER_SECURITY_TOKEN in
# the environment) serves others.
BIND      ?= 127.0.0.1
PREFIX    ?= /usr/local
VERSION   := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)

# Debian packages the gateway and its tests use: Xvnc and a desktop for the
# built-in service, noVNC's own pages, websockify for the benchmark, and
# Chromium for the browser tests.
APT_PKGS  := nginx-light haproxy redis-server slurmctld slurmd slurm-client tigervnc-standalone-server openbox xterm x11-utils novnc websockify \
             python3-numpy chromium chromium-driver fonts-dejavu-core

.PHONY: all build install run test bench fuzz mutate deps deps-apt deps-npm fmt-check vet clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/wsgateway

# Installs the command (make install PREFIX=~/.local for your own bin).
install: build
	install -d "$(DESTDIR)$(PREFIX)/bin"
	install -m 0755 $(BIN) "$(DESTDIR)$(PREFIX)/bin/wsgateway"
	@echo "installed $(DESTDIR)$(PREFIX)/bin/wsgateway"

deps: deps-apt deps-npm
	$(GO) mod download

# Installs the missing Debian packages (as root, or through sudo), and npm
# for deps-npm when there is none (Debian's, unless one came with Node.js).
deps-apt:
	@missing=""; for p in $(APT_PKGS); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

deps-npm: node_modules/.package-lock.json integration/wslink/node_modules/.package-lock.json

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The real wslink launcher client and playwright-core for the launcher tests.
integration/wslink/node_modules/.package-lock.json: integration/wslink/package.json integration/wslink/package-lock.json
	npm ci --prefix integration/wslink --no-audit --no-fund --loglevel=error
	@touch $@

run: deps build
	@echo
	@echo "wsgateway: dashboard and REST API on http://localhost:$(HTTP_PORT)/ , websockets on ws://localhost:$(WS_PORT)/"
	@echo "  the desktops start on demand: each when a viewer connects (Launch on the dashboard)"
	@echo "  reserve a desktop:  curl -s http://localhost:$(HTTP_PORT)/v1/reserve/Local%20Desktop"
	@echo
	@echo "  listening on $(BIND) only (BIND=0.0.0.0 WEBSOCKETSERVER_SECURITY_TOKEN=<secret> make run serves other machines)"
	@echo
	./$(BIN) --bind_address $(BIND) --http_port $(HTTP_PORT) --remote_session_config scripts/services.json --state_db wsgateway-state.db $(WS_PORT)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './node_modules/*')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# Every test with the race detector; each fuzz target's seed corpus runs
# as a test here. Active fuzzing is make fuzz (minutes: not in make test).
# GORACE: a race-built process otherwise sleeps 1 s on exit (every test
# binary, and every gateway, supervisor and service the tests start).
test: deps fmt-check vet
	GORACE=atexit_sleep_ms=0 $(GO) test -race -count=1 -timeout 30m ./...

# Each fuzz target for a short time (seeds in each package's testdata/fuzz).
FUZZTIME ?= 10s
FUZZ_TARGETS := services:FuzzParseConfig services:FuzzParseReadyLine services:FuzzReadyOutput \
                launcher:FuzzStripComments launcher:FuzzParse launcher:FuzzSafeSubstitute launcher:FuzzSanitize \
                session:FuzzTokens wsframe:FuzzParser wsframe:FuzzMask wsframe:FuzzClose rpc:FuzzDecode internal/text:FuzzCut \
                internal/origin:FuzzClassify internal/peer:FuzzParseHexAddr services:FuzzClientOption \
                launcher:FuzzSubstituteNoLeak jobs:FuzzParamPathUnder
fuzz:
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; fn=$${t#*:}; \
		echo "fuzz $$fn ./$$pkg for $(FUZZTIME)"; \
		before=$$(ls $$pkg/testdata/fuzz/$$fn 2>/dev/null | wc -l); \
		$(GO) test -run='^$$' -fuzz="^$$fn\$$" -fuzztime=$(FUZZTIME) -fuzzminimizetime=5s ./$$pkg && continue; \
		after=$$(ls $$pkg/testdata/fuzz/$$fn 2>/dev/null | wc -l); \
		if [ "$$after" != "$$before" ]; then echo "$$fn found a failing input: $$pkg/testdata/fuzz/$$fn"; exit 1; fi; \
		echo "$$fn failed without a failing input (the fuzzing engine, e.g. a worker too slow to stop on a loaded machine): once more"; \
		$(GO) test -run='^$$' -fuzz="^$$fn\$$" -fuzztime=$(FUZZTIME) -fuzzminimizetime=5s ./$$pkg || exit 1; \
	done

# Mutation testing of the core packages with gremlins (pinned; installed
# when missing): each package's killed/lived/not covered counts, its
# efficacy (killed of covered) and its mutant coverage. Each entry is
# package:files-to-leave-out (a regexp on the file name; - for none), so
# that only the part of a package named in docs/testing.md is counted.
# Full reports in test-artifacts/mutate/. Not part of make test (minutes).
GREMLINS_VERSION ?= v0.6.0
GREMLINS         ?= $(shell $(GO) env GOPATH)/bin/gremlins
MUTATE_PKGS ?= session:- wsframe:wsframetest/ reservation:- auth:- internal/origin:- internal/peer:- \
               services:'(builtin|launch|supervise)\.go$$' \
               launcher:'(http|launcher|pool|process|proxy)\.go$$'
mutate:
	@$(GO) version -m "$(GREMLINS)" 2>/dev/null | grep -Eq "^\s+mod\s+github.com/go-gremlins/gremlins\s+$(GREMLINS_VERSION)\s" || \
		$(GO) install github.com/go-gremlins/gremlins/cmd/gremlins@$(GREMLINS_VERSION)
	@mkdir -p test-artifacts/mutate; set -e; for e in $(MUTATE_PKGS); do pkg=$${e%%:*}; ex=$${e#*:}; \
		out=test-artifacts/mutate/$$(echo $$pkg | tr / _).txt; \
		if [ "$$ex" = "-" ]; then set -- ; else set -- -E "$$ex"; fi; \
		"$(GREMLINS)" unleash --workers 1 --timeout-coefficient 20 "$$@" ./$$pkg >$$out 2>&1 || true; \
		printf '%-16s %s | %s | %s\n' "$$pkg" \
			"$$(grep -E '^Killed' $$out | tr -s ' ')" \
			"$$(grep -E '^Test efficacy' $$out)" "$$(grep -E '^Mutator coverage' $$out)"; \
	done

# Measures wsgateway against direct TCP and websockify on loopback and prints
# the tables of docs/performance.md. BENCH_FLAGS=-quick for a short run,
# BENCH_FLAGS="-json bench.json" to keep every figure.
BENCH_FLAGS ?=
bench: deps-apt build
	$(GO) run ./cmd/wsbench -gateway $(BIN) $(BENCH_FLAGS)

clean:
	rm -rf bin test-artifacts
