# transitca — "make test" is the one command that runs every test, building
# what the tests need (the pinned Vault server, kube-apiserver, etcd,
# Prometheus, and Istio's pilot-agent and pilot-discovery) first.

GO ?= go
GOTEST_FLAGS ?= -count=1 -timeout 20m

.PHONY: all build release image test test-e2e test-deps soak fuzz vault kube prometheus istio lint bench fmt vet generate generate-check

all: build

build:
	$(GO) build -o bin/ca ./cmd/ca

# The release binary and the container image, built with the flags of
# scripts/build-release.sh (static, stripped, version and commit stamped).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
IMAGE ?= transitca

release:
	VERSION=$(VERSION) COMMIT=$(COMMIT) ./scripts/build-release.sh bin/ca

image:
	docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t $(IMAGE):$(VERSION) .

# The Vault server the tests start, built once per machine and pinned version.
vault:
	./scripts/build-vault.sh

# The Kubernetes API server and etcd the tests start, built the same way.
kube:
	./scripts/build-kube.sh

# The Prometheus server and promtool the tests run (the traffic figures of
# "ca report encryption", the alert rules and their unit tests), built the
# same way from test/prometheus.
prometheus:
	./scripts/build-prometheus.sh

# Istio's own programs the tests run as processes, pilot-agent (istio-agent)
# and pilot-discovery (istiod), from the istio.io/istio pinned in
# test/e2e/go.mod, built the same way.
istio:
	./scripts/build-istio.sh

# Programs the tests run that come from Debian packages (openssl).
test-deps:
	./scripts/install-test-deps.sh

test: test-deps vault kube prometheus istio generate-check
	$(GO) vet ./...
	$(MAKE) lint
	$(GO) test $(GOTEST_FLAGS) ./...
	cd test/e2e && $(GO) vet ./... && $(GO) test $(GOTEST_FLAGS) ./...
	cd test/bench && $(GO) vet ./... && $(GO) test $(GOTEST_FLAGS) ./...
	cd test/deploy && $(GO) vet ./... && $(GO) test $(GOTEST_FLAGS) ./...
	cd test/observability && $(GO) vet ./... && $(GO) test $(GOTEST_FLAGS) ./...

test-e2e: vault kube istio
	cd test/e2e && $(GO) test $(GOTEST_FLAGS) -v ./...

# The long fault runs: the daemon killed with SIGKILL under load
# $(CRASH_ROUNDS) times (3 in "make test"), and the other fault tests of
# test/e2e (Vault faults, SIGTERM, floods) again.
CRASH_ROUNDS ?= 20
soak: vault
	cd test/e2e && TRANSITCA_CRASH_ROUNDS=$(CRASH_ROUNDS) $(GO) test $(GOTEST_FLAGS) -v \
		-run 'TestCrashKeepsEveryIssuedCertificate|TestSIGTERMUnderLoad|TestVaultFaults|TestSlowClientFlood|TestUnauthenticatedFlood' ./...

# Every fuzz target for FUZZTIME each ("go test" runs only their seeds).
FUZZTIME ?= 2m
fuzz:
	FUZZTIME=$(FUZZTIME) GO=$(GO) ./scripts/fuzz.sh

bench: vault kube
	$(GO) test -run '^$$' -bench . -benchtime 2s ./issuer/
	cd test/bench && $(GO) run ./cmd/benchdriver -out ../../docs/benchmarks.md -command "make bench"

vet:
	$(GO) vet ./...
	cd test/e2e && $(GO) vet ./...
	cd test/deploy && $(GO) vet ./...
	cd test/observability && $(GO) vet ./...

fmt:
	gofmt -l -w .

lint:
	./scripts/build-tools.sh golangci-lint
	./bin/golangci-lint run --allow-parallel-runners ./...

# Regenerate the admin API's Go code from proto/ with the pinned generators.
generate:
	./scripts/build-tools.sh buf protoc-gen-go protoc-gen-go-grpc
	cd proto && ../bin/buf lint && ../bin/buf generate

# Fail when the committed generated code is stale.
generate-check:
	./scripts/generate-check.sh
