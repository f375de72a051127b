# Herd's way in: `make test` sets up what a fresh machine lacks and runs
# every test; `make demo` runs the whole story on one machine.

GO          ?= go
# Build and test with a patched toolchain: go1.26.8's standard library has
# known vulnerabilities Herd reaches. The go command fetches it once.
export GOTOOLCHAIN := go1.26.10
CACHE       := $(CURDIR)/.cache
TOOLS       := $(CACHE)/bin
CUE_VERSION := v0.17.1
BENCHSTAT_VERSION := v0.0.0-20260908200009-22c9c6c9d4da
# govulncheck, and the Go vulnerability database it reads, built locally from
# the golang.org/x/vulndb module's OSV reports (no database server needed).
VULN_VERSION   := v1.9.0
VULNDB_VERSION := v0.0.0-20261105234957-e22db6528018
VULNDB         := $(CACHE)/vulndb-$(VULNDB_VERSION)

export PATH := $(TOOLS):$(PATH)

# Debian packages the tests drive for real. clang-14 and llvm-14 compile
# the eBPF programs (make generate, and the staleness test of bpf/programs);
# iproute2, iptables and util-linux make the events the monitor's tests count;
# iproute2 also makes the network namespaces of the sysctl test (node/apply).
APT_PACKAGES := git ostree gnupg openssh-client openssh-server dbus-daemon curl bubblewrap busybox-static \
                containerd runc containernetworking-plugins prometheus \
                clang-14 llvm-14 libbpf-dev iproute2 iptables util-linux

.PHONY: all build test unit e2e demo lint fmt bench bench-bpf fuzz vuln tools deps generate k8s-bins testenv clean

all: build

# Two binaries sharing packages: herd (CLI and controller) and herd-agent
# (the node agent, lean: no CUE, CEL, kustomize or controller-runtime).
# Both are built static (CGO_ENABLED=0), as Flux builds its controllers: no
# libc to match on the node, and no dynamic symbol table, which cost the
# controller 28 MiB of RSS (docs/benchmarks.md).
#
# grpcnotrace drops grpc's golang.org/x/net/trace, whose html/template makes
# the linker keep every method: 18 MB more binary for the agent.
BUILD_TAGS := grpcnotrace
build:
	CGO_ENABLED=0 $(GO) build -tags $(BUILD_TAGS) -o bin/herd ./cmd/herd
	CGO_ENABLED=0 $(GO) build -tags $(BUILD_TAGS) -o bin/herd-monitor ./bpf/cmd/herd-monitor
	CGO_ENABLED=0 $(GO) build -tags $(BUILD_TAGS) -o bin/herd-agent ./cmd/herd-agent

## test: everything, on real parts (Git servers, OSTree, a Kubernetes control plane).
test: deps tools k8s-bins lint
	$(GO) test -count=1 -timeout 45m ./...

## unit: the fast tests that need no real servers (tests named Integration do).
unit:
	$(GO) test -count=1 -skip Integration ./schema/... ./planner/... ./cmd/... ./node/fsm/... ./node/apply/... ./node/systemd/... ./node/metrics/... ./node/logging/... ./node/health/... ./node/diagnose/...

## e2e: the user story end to end (also part of make test).
e2e: deps tools k8s-bins
	$(GO) test -count=1 -timeout 20m -v ./test/e2e

## demo: the whole story on this machine; state in .demo/, Ctrl-C stops it.
demo: deps k8s-bins build
	$(GO) build -o bin/herd-demo ./test/cmd/demo
	bin/herd-demo

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' ; git ls-files -o --exclude-standard '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go'; git ls-files -o --exclude-standard '*.go')

## bench: the benchmarks of docs/benchmarks.md; compare runs with benchstat.
bench: tools
	$(GO) test -run '^$$' -bench . -benchmem -count 6 ./planner/ ./schema/ | tee $(CACHE)/bench.txt
	benchstat $(CACHE)/bench.txt

## bench-bpf: the eBPF node monitor's figures (root; about 4 minutes).
bench-bpf: deps tools
	$(GO) test ./bpf/monitor -run '^$$' -bench EventCost -benchtime 1x -count 3
	$(GO) test ./bpf/monitor -run '^$$' -bench Scrape500Cgroups -count 6 | tee $(CACHE)/bench-bpf.txt
	benchstat $(CACHE)/bench-bpf.txt
	$(GO) test ./bpf/monitor -run '^$$' -bench MonitorCPU -benchtime 1x -count 2

## fuzz: fuzz the fleet loader and validator, each input evaluated in a
## child process under a budget as the controller does, so a hang or a crash
## is reported with its input (FUZZTIME=10m for longer).
FUZZTIME ?= 60s
fuzz:
	$(GO) test ./schema/sandbox -run '^$$' -fuzz FuzzLoad -fuzztime $(FUZZTIME) -fuzzminimizetime 0

## vuln: govulncheck against the local vulnerability database; fails on any
## vulnerability Herd's code can reach.
vuln: $(TOOLS)/govulncheck $(VULNDB)/index/db.json
	govulncheck -db file://$(VULNDB) ./...

$(TOOLS)/govulncheck:
	GOBIN=$(TOOLS) $(GO) install golang.org/x/vuln/cmd/govulncheck@$(VULN_VERSION)

# indexdb (from x/vulndb) turns the module's data/osv reports into the
# database layout govulncheck reads (index/db.json, index/modules.json, ID/).
$(VULNDB)/index/db.json:
	GOBIN=$(TOOLS) $(GO) install golang.org/x/vulndb/cmd/indexdb@$(VULNDB_VERSION)
	src=$$(cd $$(mktemp -d) && $(GO) mod download -json golang.org/x/vulndb@$(VULNDB_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
	rm -rf $(VULNDB).tmp && indexdb -vulns $$src/data/osv -out $(VULNDB).tmp && rm -rf $(VULNDB) && mv $(VULNDB).tmp $(VULNDB)

tools: $(TOOLS)/cue $(TOOLS)/benchstat

$(TOOLS)/cue:
	GOBIN=$(TOOLS) $(GO) install cuelang.org/go/cmd/cue@$(CUE_VERSION)

$(TOOLS)/benchstat:
	GOBIN=$(TOOLS) $(GO) install golang.org/x/perf/cmd/benchstat@$(BENCHSTAT_VERSION)

## deps: install the Debian packages the tests use, when missing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		if [ "$$(id -u)" -ne 0 ]; then echo "run as root, or install:$$missing"; exit 1; fi; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

## generate: recompile the eBPF programs of bpf/programs (bpf2go, pinned
## clang-14); commit the objects and Go loaders it writes.
generate: deps
	$(GO) generate ./bpf/...

## k8s-bins: build (once) etcd, kube-apiserver, kube-controller-manager, kubectl.
k8s-bins:
	sh test/k8s/build.sh >/dev/null

## testenv: start a real control plane and print its kubeconfig (Ctrl-C stops it).
testenv: k8s-bins
	$(GO) run ./test/cmd/testenv

clean:
	rm -rf bin
