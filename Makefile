# quench: see README.md. Every target works on a fresh Debian machine as root.
GO        ?= go
BIN       ?= $(CURDIR)/bin
TESTFLAGS ?= -race -timeout 25m
export GOFLAGS := -buildvcs=false

.PHONY: all build tools test test-short vet fmt demo bench bench-quick fuzz soak clean

all: build

## build: the three binaries into ./bin
build:
	$(GO) build -o $(BIN)/ ./cmd/...

## tools: peers and load generators from the tools module (scripts/go.mod)
tools:
	cd scripts && $(GO) build -o $(BIN)/ \
		github.com/containers/gvisor-tap-vsock/cmd/gvproxy \
		github.com/containers/gvisor-tap-vsock/cmd/vm \
		github.com/codesenberg/bombardier \
		github.com/americanexpress/baton
	mv -f $(BIN)/vm $(BIN)/gvforwarder

## test: every test, race detector on; root-only tests run when root
test: vet
	$(GO) build ./... ./examples/...
	$(GO) test $(TESTFLAGS) ./...
	cd scripts && $(GO) vet ./... && $(GO) test $(TESTFLAGS) ./...

test-short:
	$(GO) test -short ./...

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

## demo: the whole system in a local simulation (needs root)
demo: build tools
	scripts/demo.sh

## bench: side-by-side benchmarks against the peers, medians of 3 (~30 min, needs root);
## generates BENCHMARKS.md and the charts in docs/bench/ (scripts/bench/report)
bench: build tools
	scripts/bench/run.sh

## bench-quick: one short run of everything (a few minutes); writes only
## scripts/bench/results/BENCHMARKS-quick.md and scripts/bench/results/charts/
bench-quick: build tools
	QUICK=1 scripts/bench/run.sh

## soak: the whole system under mixed load while quench-host is killed,
## restarted and frozen and quench-enclave is killed and frozen, SOAK_ROUNDS times each
## (about 6 s a round); fails if a path stays down or a daemon that stayed up
## keeps descriptors or goroutines (needs root; make test runs 2 rounds)
SOAK_ROUNDS ?= 25
soak:
	QUENCH_SOAK_ROUNDS=$(SOAK_ROUNDS) $(GO) test -count=1 -timeout 60m -run '^TestSoak(Userspace)?$$' -v ./internal/e2e/

## fuzz: a short run of every fuzz target
fuzz:
	scripts/fuzz.sh

clean:
	rm -rf $(BIN)
