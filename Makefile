# Tracelight developer entry points. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo
CRD := crds/tracingpolicy.yaml
CHART_CRD := charts/tracelight/crds/tracingpolicy.yaml

.PHONY: help build test unit lint fmt crds bench

help: ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

build: ## Build the tracelight binary (release)
	$(CARGO) build --release --locked

unit: ## Unit and golden tests (no cluster)
	$(CARGO) test --locked --all-targets

test: lint unit ## Everything CI runs

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

crds: ## Regenerate the CRD from the Rust types (crds/ and the chart)
	$(CARGO) run --quiet --locked -- crd > $(CRD).tmp
	mv $(CRD).tmp $(CRD)
	cp $(CRD) $(CHART_CRD)

bench: ## Admission benchmark (criterion); last line is RESULT admission_us=...
	$(CARGO) bench --locked --bench admission

.PHONY: e2e-agent
e2e-agent: ## Agent interop: Rust + Python SDKs -> agent -> real OpenTelemetry Collector (builds it once, cached)
	@OTELCOL="$$(e2e/collector/build.sh | tail -n1)" && PY="$$(e2e/collector/python-env.sh | tail -n1)" && \
	TRACELIGHT_OTELCOL="$$OTELCOL" TRACELIGHT_PYTHON="$$PY" \
	$(CARGO) test --locked --test agent collector:: -- --ignored --nocapture
