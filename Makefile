# mlq: `make run` and `make test` do all set-up on a fresh machine.
#
# Heavy, shareable things live in one cache (libtorch, the Cargo target
# directory), so fresh clones on the same machine build incrementally.

SHELL := /bin/bash
BUILD_CACHE ?= $(HOME)/.cache/mlq
export BUILD_CACHE
export LIBTORCH := $(BUILD_CACHE)/libtorch-2.11.0
export CARGO_TARGET_DIR ?= $(BUILD_CACHE)/target
CARGO ?= cargo

.PHONY: run test bench soak fuzz api-fuzz deps libtorch db web chromium s3s-fs schemathesis lint web-test clean-test-dbs

## run: set up what is missing, build, and start mlq on http://127.0.0.1:8080
run: deps web
	$(CARGO) build --release --bin mlq
	$(CARGO_TARGET_DIR)/release/mlq serve

## test: set up what is missing and run every check and test
test: deps web chromium s3s-fs schemathesis lint web-test clean-test-dbs
	$(CARGO) test --workspace

## bench: benchmarks; tables on stdout, JSON under target/bench/
bench: deps s3s-fs
	$(CARGO) bench --benches

## soak: the kill -9 soak, SOAK_CYCLES cycles (make test runs a short one)
SOAK_CYCLES ?= 100
soak: deps
	MLQ_SOAK_CYCLES=$(SOAK_CYCLES) $(CARGO) test --test api soak:: -- --nocapture

## fuzz: every fuzz target for FUZZ_SECONDS each (nightly, cargo-fuzz);
## make test runs each target over its committed seeds
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= csv params multipart image zip
fuzz: deps
	@scripts/fuzz.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

## api-fuzz: schemathesis against the OpenAPI document, API_FUZZ_EXAMPLES
## examples per operation and a fresh seed (make test runs 25, seeded)
API_FUZZ_EXAMPLES ?= 1000
api-fuzz: deps schemathesis
	MLQ_SCHEMATHESIS_EXAMPLES=$(API_FUZZ_EXAMPLES) $(CARGO) test --test api openapi::schemathesis -- --nocapture

deps: libtorch db

libtorch:
	@scripts/libtorch.sh

db:
	@scripts/postgres.sh

# The dashboard, built into web/dist (served by mlq at /).
web:
	@scripts/web.sh

# Debian's chromium, for the dashboard's end-to-end tests.
chromium:
	@scripts/chromium.sh

# The dashboard's type check and component tests (vitest).
web-test: web
	cd web && npx tsc --noEmit && npx vitest run

# A real S3-protocol server for tests and benchmarks. Later versions need a
# newer rustc than this project's.
s3s-fs:
	@command -v s3s-fs >/dev/null || $(CARGO) install s3s-fs --version =0.14.1 --features binary --locked

# schemathesis (PyPI) in its own virtual environment, for the API tests.
schemathesis:
	@scripts/schemathesis.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Each integration test creates its own database; drop those of earlier runs.
clean-test-dbs:
	@psql -h 127.0.0.1 -U postgres -d postgres -Atc \
	    "SELECT datname FROM pg_database WHERE datname LIKE 'mlq\_test\_%'" \
	  | while read -r name; do \
	      psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$$name\" WITH (FORCE)"; \
	    done
