# l4lb: name-based VIPs and layer-4 load balancing on nftables.
# `make demo` and `make test` do all set-up on a fresh machine (Debian, root).

SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)

GO       ?= go
BIN      := bin/l4lb
PKGS     := ./...
# Debian packages the tests, demo and bench run: the tools are independent
# witnesses (nft, conntrack, dig) and load generators (iperf3, dnsperf).
APT_PKGS := nftables iproute2 conntrack iperf3 dnsutils dnsperf socat curl iptables procps ca-certificates etcd-server etcd-client
APT_BINS := nft ip conntrack iperf3 dig dnsperf socat curl iptables sysctl etcd etcdctl

.PHONY: all build test test-short lint fmt demo deps deps-apt deps-go fuzz clean bench bench-quick bench-bin

all: build

## deps: install the Debian packages and Go modules everything here needs
deps: deps-apt deps-go

deps-apt:
	@missing=0; for b in $(APT_BINS); do command -v $$b >/dev/null 2>&1 || missing=1; done; \
	if [ $$missing = 1 ]; then \
		echo "installing Debian packages: $(APT_PKGS)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $(APT_PKGS) >/dev/null; \
	fi

deps-go:
	$(GO) mod download

## build: the l4lb binary in bin/
build:
	$(GO) build -o $(BIN) ./cmd/l4lb

## test: every test; kernel tests run in namespaces they create (root)
test: deps build
	$(GO) test -count=1 -timeout 30m $(PKGS)

## test-short: the tests that need no root
test-short:
	$(GO) test -short $(PKGS)

## lint: gofmt and go vet
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

fmt:
	gofmt -w $$(git ls-files '*.go')

## fuzz: a short run of the parser fuzzer
fuzz:
	$(GO) test ./vip -run '^$$' -fuzz FuzzDesired -fuzztime 60s
	$(GO) test ./mesos -run '^$$' -fuzz FuzzStream -fuzztime 60s

## demo: the main job on the embedded example, in namespaces it removes
demo: deps build
	$(GO) run ./scripts/demo

## bench: the full benchmark (data path against kube-proxy's layouts, control
## plane, convergence) in namespaces it removes; 11 to 16 minutes here. Writes
## bench/results/latest.{json,md}, the plots, and the README's Benchmarks table.
BENCH := bin/l4lb-bench
bench-bin:
	$(GO) build -o $(BENCH) ./bench/cmd/l4lb-bench

bench: deps build bench-bin
	$(BENCH) --mode full --out bench/results --readme README.md

## bench-quick: the same with short runs and small sizes, under 2 minutes
bench-quick: deps build bench-bin
	$(BENCH) --mode quick --out bench/results --readme README.md

clean:
	rm -rf bin
