# berth — see README.md.
GO      ?= go
BIN     := build/berth
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
ARGS    ?=

.PHONY: all build run tools test unit stress e2e lint fuzz bench soak clean image image-push client-matrix

all: build

## build: the static binary in build/berth
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) .

## run: build and serve with the default config (Docker Hub proxy on :5000, data in ./berth-data)
run: build
	./$(BIN) serve $(ARGS)

## image: berth's OCI image for linux/amd64 and linux/arm64, without a Docker daemon (build/berth-image.tar, an OCI layout)
PLATFORMS := linux/amd64 linux/arm64
image:
	for p in $(PLATFORMS); do \
	  CGO_ENABLED=0 GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o build/berth-$${p%/*}-$${p#*/} . || exit 1; \
	done
	$(GO) run ./scripts/mkimage -version $(VERSION) -out build/berth-image.tar $(foreach p,$(PLATFORMS),$(p)=build/berth-$(subst /,-,$(p)))

## image-push REGISTRY=host:port/repo [INSECURE=1]: build the image and push it as $(REGISTRY):$(VERSION)
image-push: image
	@test -n "$(REGISTRY)" || { echo "make image-push REGISTRY=host[:port]/repository"; exit 2; }
	$(GO) run ./scripts/mkimage -version $(VERSION) -push $(REGISTRY):$(VERSION) $(if $(INSECURE),-insecure) $(foreach p,$(PLATFORMS),$(p)=build/berth-$(subst /,-,$(p)))

## tools: install the pinned test tools (registry, crane, regctl, oras, conformance, skopeo, docker.io)
tools:
	./scripts/install-tools.sh

## lint: gofmt, go vet and staticcheck (pinned, from make tools)
STATICCHECK := build/tools/bin/staticcheck
lint:
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./e2e/
	@test -x $(STATICCHECK) || ./scripts/install-tools.sh
	$(STATICCHECK) ./...
	$(STATICCHECK) -tags e2e ./e2e/
	GOOS=darwin $(GO) build -o /dev/null .   # still builds off Linux, for development

## unit: unit and integration tests (in-process upstream), with the race detector
unit:
	$(GO) test -race -count=1 ./...

## stress: the unit packages 20 times over with the race detector; a test that fails
## once in twenty is a defect (about 40 minutes on 2 cores; the server package is most of it)
STRESS_COUNT ?= 20
stress:
	$(GO) test -race -count=$(STRESS_COUNT) -timeout 60m ./server/ ./store/ ./upstream/ ./internal/... .

## e2e: the built binary against real registries, clients and a Docker daemon
e2e: tools build
	BERTH_BIN=$(CURDIR)/$(BIN) $(GO) test -tags e2e -count=1 -timeout 15m -v ./e2e/

## client-matrix: put the client matrix of the last e2e run (build/client-matrix.md) into docs/clients.md
client-matrix:
	./scripts/client-matrix.sh

## test: everything CI runs
test: lint unit e2e

## fuzz: the proxy's promise for a minute, then a short run of each parser's target
fuzz:
	$(GO) test ./server/ -run '^$$' -fuzz FuzzProxyPromise -fuzztime 60s
	$(GO) test ./server/ -run '^$$' -fuzz FuzzParsePath -fuzztime 30s
	$(GO) test ./server/ -run '^$$' -fuzz FuzzParseScopes -fuzztime 30s
	$(GO) test ./server/ -run '^$$' -fuzz FuzzAuthorization -fuzztime 30s
	$(GO) test ./server/ -run '^$$' -fuzz FuzzAllowlistDial -fuzztime 30s
	$(GO) test ./internal/reghost/ -run '^$$' -fuzz FuzzParse -fuzztime 30s

## bench: berth against distribution's proxy mode, nginx, a direct pull and the link alone, on loopback and across emulated long, lossy and narrow paths, a cluster behind nginx, the cost curve at 10k/100k/1M blobs (table and build/bench/cost-curve.png) and the thousand-node model; 3 runs, medians and ratios (about 40 minutes;
## servers under test on CPU 0, the driver, load generators and upstream on CPU 1)
bench: tools build
	GO=$(GO) scripts/bench.sh

## soak: the crash test with 300 SIGKILLs (about 5 minutes)
soak: tools build
	BERTH_BIN=$(CURDIR)/$(BIN) E2E_KILLS=300 E2E_CRASH_MINUTES=10 $(GO) test -tags e2e -count=1 -timeout 30m -v -run TestCrashSafety ./e2e/

clean:
	rm -rf build
