GO ?= go
PROTOC ?= protoc
GOBIN ?= $(shell $(GO) env GOPATH)/bin

.PHONY: build test proto lint bench deps

build:
	$(GO) build -o bin/regent ./cmd/regent

# The whole suite, as CI runs it: installs what the tests need, then go test -race.
test:
	./scripts/test.sh

proto:
	@command -v $(PROTOC) >/dev/null || { echo "protoc not found: apt-get install protobuf-compiler"; exit 1; }
	GOBIN=$(GOBIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	GOBIN=$(GOBIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
	PATH=$(GOBIN):$$PATH $(PROTOC) -I proto \
		--go_out=proto --go_opt=paths=source_relative \
		--go-grpc_out=proto --go-grpc_opt=paths=source_relative \
		proto/regent/v1/*.proto

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s ./...
