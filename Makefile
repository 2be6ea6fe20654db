# The engine's build, test and benchmark entry points. `make test` is what CI
# runs (.ci/run); it installs what the tests need on a fresh machine.

GO          ?= go
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
FUZZTIME    ?= 30s
# How long the fuzzer may spend shrinking a new input: Go's default, 60 s,
# would take most of a short FUZZTIME away from fuzzing.
FUZZMINTIME ?= 3s
BENCHTIME   ?= 2s
PKGS        := ./...

.PHONY: all build run test test-short deps lint bench tiers chaos soak fuzz clean image

all: build

# VERSION and COMMIT are stamped into the binary (ingest version prints
# them, with the Go version) by build and image.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/ingest ./cmd/ingest

# image builds the container images without a container engine: a static
# binary (CGO_ENABLED=0) as the only layer, user 65532, entrypoint /ingest
# (deploy/image). IMAGE has every subcommand; SLIM_IMAGE is built with
# -tags nostorage, without the embedded TSDB and its query engine, for the
# frontend, middletier and feed tiers (deploy/k8s runs them on it). Each
# bin/image/*.tar is for docker load, kind load image-archive and crane
# push; bin/image/oci and bin/image/oci-slim are OCI image layouts.
# deploy/Dockerfile builds the same images with Docker (--build-arg
# TAGS=nostorage for the slim one). docs/kubernetes.md records the sizes.
IMAGE      ?= ingest:dev
SLIM_IMAGE ?= ingest:dev-slim

image:
	mkdir -p bin/image
	CGO_ENABLED=0 GOOS=linux $(GO) build -trimpath -ldflags "-s -w $(LDFLAGS)" -o bin/image/ingest ./cmd/ingest
	CGO_ENABLED=0 GOOS=linux $(GO) build -trimpath -tags nostorage -ldflags "-s -w $(LDFLAGS)" -o bin/image/ingest-slim ./cmd/ingest
	$(GO) run ./deploy/image -binary bin/image/ingest -tag $(IMAGE) -version $(VERSION) \
		-tar bin/image/ingest.tar -oci bin/image/oci
	$(GO) run ./deploy/image -binary bin/image/ingest-slim -tag $(SLIM_IMAGE) -version $(VERSION) \
		-tar bin/image/ingest-slim.tar -oci bin/image/oci-slim

# run starts the whole engine in one process on its embedded defaults: data
# in ./data, devices on ws://127.0.0.1:8080/v1/ingest without auth (loopback
# only), the status page on http://127.0.0.1:8081/status/. Its log lists
# every URL.
run: build
	./bin/ingest all --insecure-no-auth --data.dir data

# deps installs what the test suite needs: Go modules, and from Debian's
# packages strace (the WAL's fsync-ordering test watches system calls) and
# the external stores the storage sinks are tested against: prometheus,
# influxdb (its binary is influxd) and victoria-metrics; and chromium, in
# which the status page's test opens the page headless; mosquitto-clients
# (mosquitto_pub, mosquitto_sub), which the MQTT tests connect with, and
# mosquitto, the broker the MQTT benchmark compares with. The tests run their
# own instances on free loopback ports with their own data directories, so
# the services these packages may start on their default ports are no
# obstacle. A package is looked up with dpkg, not by a command name, which
# can differ from the package's. Recommended packages are not installed:
# the tests need none of them (chromium alone would pull in CUPS and more).
#
# Debian's packages of the stores and the broker start their services as
# they install, on the ports make run takes (prometheus on 9090, mosquitto
# on 1883; influxdb and victoria-metrics on 8086 and 8428): make run after a
# first make test would stop at once with "listen 127.0.0.1:9090
# (--storage.http.listen): address already in use". So the services of the
# packages deps has just installed are stopped and disabled again; the
# tests start their own instances, and docs/grafana.md shows how to run a
# Prometheus of your own on another port. Services of packages that were
# installed already are left as they are.
APT_PACKAGES := strace prometheus influxdb victoria-metrics chromium mosquitto mosquitto-clients
APT_SERVICES := prometheus influxdb victoria-metrics mosquitto
# apt-get and systemctl need root: a user who is not runs them through sudo.
SUDO         := $(if $(filter 0,$(shell id -u)),,sudo)

deps:
	$(GO) mod download
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing || exit 1; \
		services=""; for s in $(APT_SERVICES); do \
			case " $$missing " in *" $$s "*) services="$$services $$s.service";; esac; \
		done; \
		if [ -n "$$services" ] && command -v systemctl >/dev/null; then \
			echo "stopping and disabling the services just installed:$$services"; \
			$(SUDO) systemctl disable --now $$services >/dev/null 2>&1 || true; \
		fi; \
	fi

# The last two lines test the patched copies of tidwall/wal and
# go-zeromq/zmq4 the engine builds with (modules of their own, so ./...
# leaves them out).
test: deps lint
	$(GO) test -race -count=1 -timeout 20m $(PKGS)
	cd third_party/tidwall-wal && $(GO) test -race -count=1 .
	cd third_party/go-zeromq-zmq4 && $(GO) test -race -count=1 .

test-short: deps
	$(GO) test -short -count=1 $(PKGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) run $(STATICCHECK) $(PKGS)

# bench runs the Go benchmarks and the bench tool's standard scenarios whose
# figures docs/benchmarks.md records; results and plots go to bench/out/.
# The frontend's benchmark and the first bench scenario measure the same
# frontend with the same devices (internal/loadgen) on the same cores;
# bench's summary gives its own and the frontend's CPU time per message.
bench: build
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) ./wal/
	$(GO) test -run '^$$' -bench Hop -benchtime 1000000x ./uplink/
	$(GO) test -run '^$$' -bench AckRoundTrip -benchtime 5000x ./uplink/
	$(GO) test -run '^$$' -bench BenchmarkTSDBWrite -benchtime 3s ./storage/embedded/
	$(GO) test -run '^$$' -bench 'BenchmarkPipelined$$' -benchtime 2000000x ./frontend/
	mkdir -p bench/out
	$(GO) run ./bench -spawn bin/ingest -devices 100 -window 16 -duration 20s \
		-json bench/out/closed-100x16.json -plot bench/out/closed-100x16.svg
	$(GO) run ./bench -spawn bin/ingest -devices 10000 -rate 1 -ramp 20s -duration 30s \
		-json bench/out/paced-10k.json -plot bench/out/paced-10k.svg
	$(GO) run ./bench -spawn-all bin/ingest -devices 100 -window 16 -duration 20s \
		-json bench/out/pipeline-100x16.json -plot bench/out/pipeline-100x16.svg
	$(GO) run ./bench -spawn-all bin/ingest -devices 100 -rate 100 -duration 30s \
		-json bench/out/pipeline-10k-per-s.json -plot bench/out/pipeline-10k-per-s.svg

# tiers runs three frontends, three middletiers and two storage writers of
# one group as separate processes, 3,000 devices at 1 msg/s, and prints each
# tier's CPU per message, msg/s per core and each process's share
# (docs/scaling.md).
tiers: build
	mkdir -p bench/out
	$(GO) run ./bench -spawn bin/ingest -tiers -tiers.frontends 3 -tiers.middletiers 3 -tiers.writers 2 \
		-devices 3000 -rate 1 -ramp 10s -duration 40s -json bench/out/tiers-3-3-2.json

# chaos runs the tiers as separate processes for 10 minutes, killing one at
# random every 5 s, and checks every acknowledged message is stored once.
# (make test runs a 20-second version, TestChaosShort.)
chaos: build
	mkdir -p bench/out
	$(GO) run ./bench -spawn bin/ingest -chaos -chaos.every 5s -devices 50 -rate 20 -duration 10m \
		-json bench/out/chaos-10m.json -plot bench/out/chaos-10m.svg

# soak runs 10,000 devices at 1 message/s for SOAK_DURATION (an hour)
# through the whole engine in one process (ingest all), printing a line a
# minute: acknowledged/s, ack p50/p99/p99.9/max, device → live feed p99, and
# the engine's resident memory, open files, goroutines, heap and CPU, which
# must stay flat; then every acknowledged message is checked in the store.
# The lines are also in bench/out/soak.json ("intervals").
SOAK_DURATION ?= 60m
soak: build
	mkdir -p bench/out
	$(GO) run ./bench -spawn-all bin/ingest -devices 10000 -rate 1 -ramp 60s -duration $(SOAK_DURATION) \
		-interval 1m -drain 60s -check.wait 10m -json bench/out/soak.json -plot bench/out/soak.svg

# fuzz runs every fuzz target for FUZZTIME each (FUZZMINTIME of it at most
# shrinking each new input).
fuzz:
	@set -e; for pkg in $$($(GO) list $(PKGS)); do \
		for target in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "fuzz $$pkg $$target"; \
			$(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINTIME) $$pkg; \
		done; \
	done

clean:
	rm -rf bin
