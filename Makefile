# transitca — make test is the one command that runs every test, building
# what the tests need (the pinned Vault server) first.

GO ?= go
GOTEST_FLAGS ?= -count=1 -timeout 20m

.PHONY: all build test vault lint bench fmt vet generate-check

all: build

build:
	$(GO) build -o bin/ca ./cmd/ca

vault:
	./scripts/build-vault.sh

test: vault
	$(GO) vet ./...
	$(GO) test $(GOTEST_FLAGS) ./...

bench: vault
	$(GO) test -run '^$$' -bench . -benchtime 2s ./issuer/

vet:
	$(GO) vet ./...

fmt:
	gofmt -l -w .

lint:
	cd tools && $(GO) build -o ../bin/golangci-lint github.com/golangci/golangci-lint/v2/cmd/golangci-lint
	./bin/golangci-lint run ./...
